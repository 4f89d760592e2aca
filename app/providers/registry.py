"""Build one adapter per configured provider, swapping in the built-in simulator where needed.

With ``TOLLWAY_SIMULATOR=auto`` (the default) a provider whose credential is missing from the
environment is served by the simulator, reached over real HTTP through the same adapter a real
provider uses. ``always`` simulates every provider (tests, benchmarks); ``never`` refuses to start
without credentials.
"""

from __future__ import annotations

import logging

from app.config import Catalog, ConfigError, Settings
from app.providers.anthropic import AnthropicProvider
from app.providers.base import Provider
from app.providers.openai_compat import OpenAICompatProvider

log = logging.getLogger("tollway.providers")
SIMULATOR_CREDENTIAL = "tollway-simulator"


def simulator_base_url(settings: Settings) -> str:
    if settings.simulator_url:
        return settings.simulator_url.rstrip("/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}/simulator"


class ProviderRegistry:
    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self._providers: dict[str, Provider] = {}
        for name, cfg in catalog.providers.items():
            credential = cfg.credential()
            simulated = settings.simulator == "always" or (settings.simulator == "auto" and credential is None)
            if credential is None and settings.simulator == "never":
                raise ConfigError(
                    f"providers.{name}: no credential (set {cfg.api_key_env}) and TOLLWAY_SIMULATOR=never"
                )
            if simulated:
                base = simulator_base_url(settings)
                if cfg.simulator_path:
                    base = f"{base}/{cfg.simulator_path.strip('/')}"
                base_url = f"{base}/v1" if cfg.kind == "openai" else base
                credential = SIMULATOR_CREDENTIAL
                log.warning("provider %s is served by the built-in SIMULATOR (no credential configured)", name)
            else:
                base_url = cfg.base_url
            provider: Provider
            if cfg.kind == "anthropic":
                provider = AnthropicProvider(
                    name, cfg, base_url=base_url, credential=credential, is_simulator=simulated
                )
            else:
                provider = OpenAICompatProvider(
                    name, cfg, base_url=base_url, credential=credential, is_simulator=simulated
                )
            self._providers[name] = provider

    def get(self, name: str) -> Provider:
        return self._providers[name]

    def is_simulated(self, name: str) -> bool:
        return self._providers[name].is_simulator

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()

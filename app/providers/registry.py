"""Build one adapter per configured provider, swapping in the built-in simulator where needed.

Simulation is opt-in only. By default (``TOLLWAY_SIMULATOR=off``) a provider whose credential is
missing stops start-up with a message naming the variables: a production deployment must never
answer with simulated text because a key went missing. ``on`` serves the providers without a
credential from the built-in simulator (``make run``, tests), reached over real HTTP through the same
adapter a real provider uses; ``always`` simulates every provider (benchmarks).
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


def check_credentials(settings: Settings, catalog: Catalog) -> None:
    """Refuse to start when a provider has no credential and simulation was not asked for."""
    if settings.simulator != "off":
        return
    missing = [
        f"{name} ({cfg.api_key_env or 'providers.' + name + '.api_key'})"
        for name, cfg in catalog.providers.items()
        if cfg.credential() is None
    ]
    if missing:
        raise ConfigError(
            "no credential for provider(s): " + ", ".join(missing) + ". Set the variable(s), remove the "
            "provider from the catalog (TOLLWAY_CONFIG), or start with TOLLWAY_SIMULATOR=on to serve them "
            "from the built-in provider simulator (development and tests only: answers are simulated)."
        )


class ProviderRegistry:
    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self._providers: dict[str, Provider] = {}
        check_credentials(settings, catalog)
        for name, cfg in catalog.providers.items():
            credential = cfg.credential()
            simulated = settings.simulator == "always" or (settings.simulator == "on" and credential is None)
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

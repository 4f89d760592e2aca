"""Configuration: environment settings (pydantic-settings) plus the YAML catalog.

The catalog (providers, models with prices, routes) comes from ``TOLLWAY_CONFIG`` or, when unset,
the shipped ``app/default_config.yaml``. Everything is validated at start-up: a bad field stops the
process with the field's path in the message.
"""

from __future__ import annotations

import os
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.origins import parse_origin_list

Tier = Literal["small", "medium", "large"]
TIER_ORDER: dict[str, int] = {"small": 0, "medium": 1, "large": 2}
DEFAULT_CONFIG_PATH = Path(__file__).with_name("default_config.yaml")


class ConfigError(Exception):
    """The configuration is invalid; the message names the bad field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderConfig(_Strict):
    kind: Literal["anthropic", "openai"]
    base_url: str
    # Name of the environment variable holding the credential (never the credential itself).
    api_key_env: str | None = None
    # Literal key, for local upstreams that need a dummy one (vLLM, Ollama). Prefer api_key_env.
    api_key: str | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0
    max_connections: int = 512
    extra_headers: dict[str, str] = Field(default_factory=dict)
    # When the simulator serves this provider, the path segment it is reached under, so that
    # several simulated providers are distinguishable (fault injection per deployment in tests).
    simulator_path: str | None = None
    # OpenAI-style upstreams: the field carrying the output cap (older servers know only max_tokens).
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_completion_tokens"
    # Bounds on what the upstream may send back (docs/configuration.md, "Upstream limits").
    # A whole non-streamed answer must arrive within this (a trickling upstream cannot hold it forever).
    response_timeout_s: float = Field(default=900.0, gt=0)
    # A stream that completes no event for this long is cut (blank lines and comments do not count).
    event_timeout_s: float = Field(default=600.0, gt=0)
    max_header_line_bytes: int = Field(default=8190, ge=256)  # status line, and each header field
    max_header_count: int = Field(default=128, ge=8)
    max_response_bytes: int = Field(default=8 << 20, ge=1024)  # a non-streamed answer, decoded
    max_stream_bytes: int = Field(default=256 << 20, ge=1024)  # a whole stream, decoded
    max_event_bytes: int = Field(default=1 << 20, ge=1024)  # one SSE event
    # Decoded ÷ received bytes above which a compressed answer is refused (checked past 1 MiB decoded).
    max_decompression_ratio: float = Field(default=100.0, ge=1)

    def credential(self) -> str | None:
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return self.api_key


class PriceBand(_Strict):
    """Prices that replace the base prices when the prompt is longer than ``above_input_tokens``."""

    above_input_tokens: int = Field(gt=0)
    input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)
    cache_write_5m: Decimal = Field(ge=0)
    cache_write_1h: Decimal = Field(ge=0)
    cache_read: Decimal = Field(ge=0)


class Prices(_Strict):
    """USD per million tokens."""

    input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)
    cache_write_5m: Decimal = Field(ge=0)
    cache_write_1h: Decimal = Field(ge=0)
    cache_read: Decimal = Field(ge=0)
    bands: list[PriceBand] = Field(default_factory=list)


class Capabilities(_Strict):
    tools: bool = True
    vision: bool = True
    documents: bool = True
    structured_output: bool = True
    # Token log probabilities (Chat Completions ``logprobs``/``top_logprobs``): off unless the
    # provider's docs say the model returns them (OpenAI's GPT-5 reasoning models and Claude do not).
    logprobs: bool = False


class Deployment(_Strict):
    """One place a model is served: a provider and the model id it knows the model by."""

    provider: str
    upstream_model: str | None = None  # defaults to the model's name
    weight: int = Field(default=1, ge=1)


class ModelConfig(_Strict):
    provider: str | None = None  # shorthand for a single deployment
    upstream_model: str | None = None
    deployments: list[Deployment] = Field(default_factory=list)
    display_name: str | None = None
    tier: Tier
    prices: Prices
    context_window: int = Field(gt=0)
    max_output_tokens: int = Field(gt=0)
    capabilities: Capabilities = Field(default_factory=Capabilities)
    # How sampling parameters (temperature, top_p, top_k) are treated for this model:
    # pass = forward; drop = remove silently (model rejects them); reject = 400 to the client.
    sampling: Literal["pass", "drop", "reject"] = "pass"
    # Smallest prefix, in tokens, that the provider will cache for this model.
    min_cache_tokens: int = Field(default=1024, ge=0)
    aliases: list[str] = Field(default_factory=list)
    # Default output budget when an OpenAI-format client gives no max_tokens.
    default_max_tokens: int = Field(default=4096, gt=0)

    @model_validator(mode="after")
    def _one_deployment_at_least(self) -> ModelConfig:
        if not self.deployments and not self.provider:
            raise ValueError("a model needs 'provider' or 'deployments'")
        return self

    def all_deployments(self, name: str) -> list[Deployment]:
        if self.deployments:
            return [
                d
                if d.upstream_model
                else d.model_copy(update={"upstream_model": self.upstream_model or name})
                for d in self.deployments
            ]
        assert self.provider is not None
        return [Deployment(provider=self.provider, upstream_model=self.upstream_model or name)]


TaskClass = Literal[
    "classification", "extraction", "summarization", "rag", "chat", "code", "reasoning", "planning"
]


class RouteConfig(_Strict):
    description: str = ""
    candidates: list[str]  # model names, any order: the router sorts by expected cost
    escalate: bool = False  # verify cheap answers and escalate one tier up on failure
    fallback: bool = True  # fall back to the next adequate model when a model's deployments fail
    min_tier: Tier | None = None
    task: TaskClass | None = None  # a fixed task class (routes like auto:extraction)
    prompt_cache: Literal["off", "auto"] | None = None  # None: the team's policy decides
    deadline_s: float | None = Field(default=None, gt=0)  # None: TOLLWAY_REQUEST_DEADLINE_S


class TeamSeed(_Strict):
    """A team and key declared in config, for deployments without the admin API (and tests)."""

    name: str
    keys: list[str] = Field(default_factory=list)


class Catalog(_Strict):
    providers: dict[str, ProviderConfig]
    models: dict[str, ModelConfig]
    routes: dict[str, RouteConfig] = Field(default_factory=dict)
    # Task class → minimum model tier.
    task_tiers: dict[TaskClass, Tier] = Field(
        default_factory=lambda: {  # type: ignore[arg-type]
            "classification": "small",
            "extraction": "small",
            "summarization": "medium",
            "rag": "medium",
            "chat": "medium",
            "code": "medium",
            "reasoning": "large",
            "planning": "large",
        }
    )
    seed_teams: list[TeamSeed] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references_resolve(self) -> Catalog:
        for name, model in self.models.items():
            for dep in model.all_deployments(name):
                if dep.provider not in self.providers:
                    raise ValueError(f"models.{name}: unknown provider '{dep.provider}'")
        names = set(self.models)
        for alias_owner, model in self.models.items():
            for alias in model.aliases:
                if alias in names:
                    raise ValueError(f"models.{alias_owner}.aliases: '{alias}' is already a model name")
                names.add(alias)
        for rname, route in self.routes.items():
            if rname in self.models:
                raise ValueError(f"routes.{rname}: a route cannot share a model's name")
            for cand in route.candidates:
                if cand not in self.models:
                    raise ValueError(f"routes.{rname}.candidates: unknown model '{cand}'")
        return self

    @cached_property
    def model_index(self) -> dict[str, str]:
        """Every name a client may send (model names and aliases) → the model's canonical name."""
        index: dict[str, str] = {}
        for name, model in self.models.items():
            index[name] = name
            for alias in model.aliases:
                index[alias] = name
        return index

    def resolve_model(self, requested: str) -> str | None:
        return self.model_index.get(requested)


class Settings(BaseSettings):
    """Process settings from the environment (prefix ``TOLLWAY_``)."""

    model_config = SettingsConfigDict(env_prefix="TOLLWAY_", extra="ignore")

    config: Path | None = None  # YAML catalog; default: the shipped one
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    database_url: str = "sqlite+aiosqlite:///./tollway.db"
    # `tollway serve` migrates the database (SQLite or PostgreSQL) once, under a lock, before its
    # workers start; false: the operator runs `tollway db upgrade` as a separate step.
    auto_migrate: bool = True
    redis_url: str | None = None
    redis_cluster: bool = False  # TOLLWAY_REDIS_URL points at a Redis Cluster node
    admin_key: str | None = None
    # A fixed team key for local use: `make run` sets it so the README's examples work as pasted.
    dev_key: str | None = None
    # Opt-in only. "off": a provider without a credential stops start-up. "on": providers without a
    # credential are served by the built-in simulator (development, tests). "always": every provider is.
    simulator: Literal["off", "on", "always"] = "off"
    simulator_url: str | None = None  # an external simulator; default: the one mounted in-process
    max_body_bytes: int = 32 * 1024 * 1024
    # The longest one request may take end to end (a route's deadline_s overrides it).
    request_deadline_s: float = 600.0
    # Close a client connection that has not sent a complete request head within this time.
    header_timeout_s: float = 10.0
    # How long shutdown waits for in-flight streams before ending them with an error event.
    shutdown_grace_s: float = 10.0
    key_cache_ttl_s: float = 2.0
    # Browser access: comma-separated exact origins (https://app.example.com) allowed to call the
    # API cross-origin. Empty (the default): CORS stays closed, browsers on other origins are refused.
    cors_origins: str = ""
    # Budgets
    budget_mode: Literal["strict", "estimate"] = "strict"
    budget_redis_failure: Literal["closed", "open"] = "closed"
    budget_wait_ms: int = 250  # how long a request may wait for in-flight reservations to settle
    reservation_ttl_s: int = 900
    # Caching
    response_cache_ttl_s: int = 3600
    response_cache_max_entry_bytes: int = 1_000_000
    response_cache_max_entries: int = 10_000
    response_cache_max_memory_bytes: int = 256 * 1024 * 1024
    # Ledger
    ledger_batch_size: int = 500
    ledger_flush_interval_s: float = 0.2
    ledger_queue_max: int = 100_000
    # Shutdown waits at most this long for the database or Redis before writing what is left of
    # the ledger to the local spool file.
    ledger_shutdown_grace_s: float = 10.0
    spool_dir: Path = Path("./var/spool")  # the disk spool; with Redis, its fallback and dead letters
    # Observability
    metrics_token: str | None = None
    metrics_port: int | None = None
    metrics_team_label_cap: int = 100
    # Seconds between event-loop lag samples (tollway_event_loop_lag_max_seconds); 0 = probe off.
    loop_lag_probe_s: float = Field(default=0.0, ge=0)
    log_prompts: bool = False
    log_level: str = "INFO"
    # Upstream retry policy
    retry_attempts: int = 2
    retry_base_delay_s: float = 0.2
    retry_max_delay_s: float = 5.0
    cooldown_failures: int = 3
    cooldown_s: float = 30.0

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: str) -> str:
        return ",".join(parse_origin_list(v))

    @property
    def cors_origin_list(self) -> tuple[str, ...]:
        return tuple(o for o in self.cors_origins.split(",") if o)

    @field_validator("max_body_bytes")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("must be positive")
        return v


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(root)"
        lines.append(f"  {path}: {e['msg']}")
    return "\n".join(lines)


def load_catalog(path: Path | None) -> Catalog:
    source = path or DEFAULT_CONFIG_PATH
    try:
        raw: Any = yaml.safe_load(source.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {source}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {source} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {source} must be a mapping at the top level")
    try:
        return Catalog.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, str(source))) from exc


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, "environment (TOLLWAY_*)")) from exc

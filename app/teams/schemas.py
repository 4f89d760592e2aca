"""What the admin API (and the CLI) accepts, validated before anything touches the database.

Unknown fields are rejected (a typo like ``token_per_day`` must not silently mean "unlimited"),
names are 1–100 printable characters, and limits are whole, non-negative and below absurd bounds.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from app.auth.principal import Limits, TeamPolicy

Tier = Literal["small", "medium", "large"]
_TIER_ORDER = {"small": 0, "medium": 1, "large": 2}

# The same bounds the budgets pillar enforces (app/budgets/limits.py): a quadrillion tokens, a
# billion dollars, micro-dollar precision. Anything beyond is a typo, not a budget.
MAX_TOKENS_LIMIT = 10**15
MAX_REQUESTS_PER_MINUTE = 10**15
MAX_USD_LIMIT = Decimal(10**9)
USD_DECIMAL_PLACES = 6
MAX_NAME_LENGTH = 100
MAX_ALLOWED_MODELS = 1000
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _check_name(value: str) -> str:
    if value != value.strip():
        raise ValueError("must not start or end with whitespace")
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    if "/" in value:
        raise ValueError("must not contain '/'")
    return value


def _not_uuid(value: str) -> str:
    try:
        uuid.UUID(value)
    except ValueError:
        return value
    raise ValueError("must not look like an id (a UUID): teams are addressed by id or name")


Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH), AfterValidator(_check_name)]
TeamName = Annotated[Name, AfterValidator(_not_uuid)]
TokenCount = Annotated[int, Field(strict=True, ge=0, le=MAX_TOKENS_LIMIT)]
Usd = Annotated[Decimal, Field(ge=0, le=MAX_USD_LIMIT, decimal_places=USD_DECIMAL_PLACES, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class LimitsIn(_Strict):
    """Budgets and rate limits; null (or absent) means unlimited."""

    tokens_per_day: TokenCount | None = None
    tokens_per_month: TokenCount | None = None
    requests_per_minute: Annotated[int, Field(strict=True, ge=0, le=MAX_REQUESTS_PER_MINUTE)] | None = None
    tokens_per_minute: TokenCount | None = None
    usd_per_day: Usd | None = None
    usd_per_month: Usd | None = None

    def to_limits(self) -> Limits:
        return Limits(**self._values())

    def merged_into(self, current: Limits) -> Limits:
        """PATCH semantics: fields present here replace the current ones (null clears a limit)."""
        values = {name: getattr(current, name) for name in Limits.__dataclass_fields__}
        values.update({k: v for k, v in self._values().items() if k in self.model_fields_set})
        return Limits(**values)

    def _values(self) -> dict[str, Any]:
        data = self.model_dump()
        for name in ("usd_per_day", "usd_per_month"):
            if data[name] is not None:
                data[name] = str(data[name])
        return data


class PolicyIn(_Strict):
    allowed_models: (
        Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=MAX_ALLOWED_MODELS)]
        | None
    ) = None
    min_tier: Tier | None = None
    max_tier: Tier | None = None
    downgrade_at_budget_share: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    prompt_cache: Literal["off", "auto"] = "auto"
    prompt_cache_ttl: Literal["5m", "1h"] = "5m"
    response_cache: Annotated[bool, Field(strict=True)] = False
    default_max_tokens: Annotated[int, Field(strict=True, ge=1, le=10_000_000)] | None = None
    cap_output_to_budget: Annotated[bool, Field(strict=True)] = False
    quality: Literal["strict", "balanced", "economy"] = "balanced"

    @model_validator(mode="after")
    def _tiers_ordered(self) -> PolicyIn:
        if self.min_tier and self.max_tier and _TIER_ORDER[self.min_tier] > _TIER_ORDER[self.max_tier]:
            raise ValueError(f"min_tier '{self.min_tier}' is above max_tier '{self.max_tier}'")
        return self

    def to_policy(self) -> TeamPolicy:
        return self.merged_into(TeamPolicy(), everything=True)

    def merged_into(self, current: TeamPolicy, *, everything: bool = False) -> TeamPolicy:
        values = {name: getattr(current, name) for name in TeamPolicy.__dataclass_fields__}
        for name in TeamPolicy.__dataclass_fields__:
            if everything or name in self.model_fields_set:
                values[name] = getattr(self, name)
        if values["allowed_models"] is not None:
            values["allowed_models"] = frozenset(values["allowed_models"])
        merged = TeamPolicy(**values)
        if merged.min_tier and merged.max_tier and _TIER_ORDER[merged.min_tier] > _TIER_ORDER[merged.max_tier]:
            raise ValueError(f"min_tier '{merged.min_tier}' is above max_tier '{merged.max_tier}'")
        return merged


class TeamCreate(_Strict):
    name: TeamName
    limits: LimitsIn = Field(default_factory=LimitsIn)
    policy: PolicyIn = Field(default_factory=PolicyIn)


class TeamUpdate(_Strict):
    """PATCH body: only the fields given change; inside ``limits``/``policy`` likewise."""

    name: TeamName | None = None
    limits: LimitsIn | None = None
    policy: PolicyIn | None = None


class KeyCreate(_Strict):
    name: Name | None = None
    limits: LimitsIn = Field(default_factory=LimitsIn)
    expires_at: datetime | None = None

    @field_validator("expires_at")
    @classmethod
    def _aware_future(cls, value: datetime | None) -> datetime | None:
        return _expiry(value)


class KeyUpdate(_Strict):
    name: Name | None = None
    limits: LimitsIn | None = None
    expires_at: datetime | None = None

    @field_validator("expires_at")
    @classmethod
    def _aware_future(cls, value: datetime | None) -> datetime | None:
        return _expiry(value)


def _expiry(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if value <= datetime.now(UTC):
        raise ValueError("must be in the future")
    return value

"""Who a request belongs to, and the policy its team set."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal


@dataclass(frozen=True, slots=True)
class Limits:
    """A team's (or key's) limits. ``None`` means unlimited in that window."""

    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    usd_per_day: str | None = None  # Decimal as string (exact), None = unlimited
    usd_per_month: str | None = None

    def is_unlimited(self) -> bool:
        return all(
            v is None
            for v in (
                self.tokens_per_day,
                self.tokens_per_month,
                self.requests_per_minute,
                self.tokens_per_minute,
                self.usd_per_day,
                self.usd_per_month,
            )
        )


@dataclass(frozen=True, slots=True)
class TeamPolicy:
    allowed_models: frozenset[str] | None = None  # None: every model and route
    min_tier: str | None = None
    max_tier: str | None = None
    # Route to a cheaper tier once this share of the tightest token budget is used (0..1).
    downgrade_at_budget_share: float | None = None
    prompt_cache: Literal["off", "auto"] = "auto"
    prompt_cache_ttl: Literal["5m", "1h"] = "5m"
    response_cache: bool = False
    # Default output cap for requests that give no max_tokens (budget worst case).
    default_max_tokens: int | None = None
    # A request whose worst case does not fit the budget left runs with its output capped to what is
    # left (finish_reason "length") instead of being refused with 429. Off by default.
    cap_output_to_budget: bool = False
    # How sure the router must be that a tier is adequate before choosing it (app.routing.model:
    # strict 0.95, balanced 0.85, economy 0.7).
    quality: Literal["strict", "balanced", "economy"] = "balanced"


@dataclass(frozen=True, slots=True)
class BrowserGrant:
    """What a browser token (``twb_…``) allows, on top of its team's policy and its minting key's
    limits: one end user, from these origins, these models or routes (None: the team's), until
    ``expires_at``, within a token budget of its own."""

    token_id: str
    end_user: str
    allowed_origins: frozenset[str]
    allowed_models: frozenset[str] | None
    token_budget: int
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Principal:
    team_id: str
    team_name: str
    key_id: str
    key_prefix: str
    policy: TeamPolicy = field(default_factory=TeamPolicy)
    team_limits: Limits = field(default_factory=Limits)
    key_limits: Limits = field(default_factory=Limits)
    # Set when the caller presented a browser token: key_id/key_limits are then the minting key's.
    browser: BrowserGrant | None = None

    @property
    def end_user(self) -> str | None:
        return self.browser.end_user if self.browser is not None else None

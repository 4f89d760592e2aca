"""What one request leaves behind on its way through the pipeline.

``Trail`` holds the typed result of each stage that has run (``None``: that stage did not run), so
the closing stage can settle, record and log the request however it ended. ``CallLog`` is the
provider stage's own record: every upstream call, which model answered, how long it took.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from app.domain import ChatRequest, ClientFormat, Usage

if TYPE_CHECKING:
    from app.auth.principal import Principal
    from app.budgets.lifetime import Hold
    from app.budgets.limiter import Admission
    from app.routing.router import Plan


# Ids need uniqueness, not secrecy: a seeded PRNG avoids a getrandom() system call per request.
_rng = random.Random(os.urandom(16))


def new_request_id() -> str:
    # Time-ordered (nanoseconds first) so ledger inserts append to the index instead of scattering.
    return f"req_{time.time_ns():016x}{_rng.getrandbits(48):012x}"


@dataclass(slots=True)
class Attempt:
    """One upstream call: which model and deployment, and how it ended."""

    model: str
    provider: str
    usage: Usage = field(default_factory=Usage)
    cost: Decimal = Decimal(0)
    uncached_cost: Decimal = Decimal(0)
    status: int | None = None  # upstream status; None while running or on connection errors
    error: str | None = None
    simulated: bool = False


@dataclass(slots=True)
class CallLog:
    attempts: list[Attempt] = field(default_factory=list)
    escalations: int = 0
    served_model: str | None = None
    provider: str | None = None
    simulated: bool = False
    upstream_seconds: float | None = None
    first_token_at: float | None = None

    def begin(self, model: str, provider: str, *, simulated: bool) -> Attempt:
        attempt = Attempt(model=model, provider=provider, simulated=simulated)
        self.attempts.append(attempt)
        self.served_model, self.provider, self.simulated = model, provider, simulated
        return attempt

    def total_usage(self) -> Usage:
        total = Usage()
        for a in self.attempts:
            total.input_tokens += a.usage.input_tokens
            total.output_tokens += a.usage.output_tokens
            total.cache_write_5m_tokens += a.usage.cache_write_5m_tokens
            total.cache_write_1h_tokens += a.usage.cache_write_1h_tokens
            total.cache_read_tokens += a.usage.cache_read_tokens
        return total

    def total_cost(self) -> tuple[Decimal, Decimal]:
        """(what was billed, what it would have cost without prompt caching)."""
        return (
            sum((a.cost for a in self.attempts), Decimal(0)),
            sum((a.uncached_cost for a in self.attempts), Decimal(0)),
        )


@dataclass(slots=True)
class Trail:
    request_id: str
    client_format: ClientFormat
    started: float = field(default_factory=time.perf_counter)
    principal: Principal | None = None
    chat: ChatRequest | None = None
    plan: Plan | None = None
    admission: Admission | None = None
    budget_hold: Hold | None = None  # a browser token's own budget (app/budgets/lifetime.py)
    calls: CallLog = field(default_factory=CallLog)
    cache_hit: bool = False
    usage_flag: str | None = None  # e.g. "over_reservation": the provider billed past the reserved output
    end_user: str | None = None  # a browser token's end user, or the request's own user id

    @property
    def requested_model(self) -> str:
        return self.chat.model if self.chat else ""


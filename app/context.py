"""The state of one request as it moves through the pipeline."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from app.domain import ChatRequest, ClientFormat, Usage

if TYPE_CHECKING:
    from starlette.datastructures import Headers

    from app.auth.principal import Principal
    from app.budgets.limiter import Admission
    from app.routing.router import Plan


# Ids need uniqueness, not secrecy: a seeded PRNG avoids a getrandom() system call per request.
_rng = random.Random(os.urandom(16))


def new_request_id() -> str:
    # Time-ordered (nanoseconds first) so ledger inserts append to the index instead of scattering.
    return f"req_{time.time_ns():016x}{_rng.getrandbits(48):012x}"


@dataclass
class Attempt:
    """One upstream call: which model and deployment, and how it ended."""

    model: str
    provider: str
    usage: Usage = field(default_factory=Usage)
    cost: Decimal = Decimal(0)
    uncached_cost: Decimal = Decimal(0)
    status: int | None = None  # upstream status; None while running or on connection errors
    error: str | None = None


@dataclass
class RequestContext:
    request_id: str
    client_format: ClientFormat
    headers: Headers
    started: float = field(default_factory=time.perf_counter)
    principal: Principal | None = None
    chat: ChatRequest | None = None
    plan: Plan | None = None
    admission: Admission | None = None
    attempts: list[Attempt] = field(default_factory=list)
    escalations: int = 0
    served_model: str | None = None
    provider: str | None = None
    response_cache_key: str | None = None
    response_cache_store: bool = False
    upstream_started: float | None = None
    upstream_seconds: float | None = None
    first_token_at: float | None = None

    @property
    def requested_model(self) -> str:
        return self.chat.model if self.chat else ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

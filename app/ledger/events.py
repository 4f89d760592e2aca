"""The record of one request, as the pipeline hands it to the recorder."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from app.ledger.safe_text import escape_text


@dataclass(slots=True)
class UsageEvent:
    request_id: str  # unique: the id the response carried in its header
    team_id: str | None
    key_id: str | None
    client_format: str  # "anthropic" | "openai" | "responses"
    requested_model: str
    served_model: str | None = None
    provider: str | None = None
    route_reason: str | None = None
    attempts: int = 1
    input_tokens: int = 0  # uncached input
    output_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    uncached_cost_usd: Decimal = Decimal(0)  # what it would have cost without any caching
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    status: int = 200
    error_type: str | None = None
    stop_reason: str | None = None
    streamed: bool = False
    aborted: bool = False
    response_cache_hit: bool = False
    # The end user behind the request: a browser token's end-user id, or the request's ``user`` /
    # ``metadata.user_id``. Free text from the client: escaped and clipped before storage.
    end_user: str | None = None
    # Why this row's usage is suspect though recorded as billed: "over_reservation" (the provider
    # billed more output than was reserved), "malformed_upstream" ... None when nothing was odd.
    usage_flag: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_json_dict(self) -> dict[str, Any]:
        """The event as JSON-ready values (the spool's and the dead letters' format). Strings are
        escaped as the database would store them (``safe_text``), so the JSON always encodes."""
        d = asdict(self)
        for name in _TEXT_FIELDS:
            d[name] = escape_text(d[name])
        d["cost_usd"] = str(self.cost_usd)
        d["uncached_cost_usd"] = str(self.uncached_cost_usd)
        created = self.created_at
        d["created_at"] = created.isoformat() if isinstance(created, datetime) else str(created)
        return d

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> UsageEvent:
        """The inverse of ``to_json_dict``; keys this version does not know (a spool written by a
        newer release) are ignored, missing ones (an older release) take their defaults."""
        d = {k: v for k, v in d.items() if k in _FIELD_NAMES}
        d["cost_usd"] = Decimal(d["cost_usd"])
        d["uncached_cost_usd"] = Decimal(d["uncached_cost_usd"])
        d["created_at"] = datetime.fromisoformat(d["created_at"])
        return cls(**d)


_FIELD_NAMES = frozenset(UsageEvent.__dataclass_fields__)
_TEXT_FIELDS = tuple(
    name for name, f in UsageEvent.__dataclass_fields__.items() if f.type in ("str", "str | None")
)

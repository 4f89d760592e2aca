"""The record of one request, as the pipeline hands it to the recorder."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any


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
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_json_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cost_usd"] = str(self.cost_usd)
        d["uncached_cost_usd"] = str(self.uncached_cost_usd)
        d["created_at"] = self.created_at.isoformat()
        return d

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> UsageEvent:
        d = dict(d)
        d["cost_usd"] = Decimal(d["cost_usd"])
        d["uncached_cost_usd"] = Decimal(d["uncached_cost_usd"])
        d["created_at"] = datetime.fromisoformat(d["created_at"])
        return cls(**d)

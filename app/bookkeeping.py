"""Stage 7, after the response: settle the budget, write the ledger row, count metrics, log one line.

``Bookkeeper.close`` runs exactly once per request however it ended (answered, refused, failed,
aborted, cut by shutdown), and no exception inside it can skip the rest: a failing settle still
leaves a ledger row, a failing ledger write still leaves metrics and a log line.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from decimal import Decimal

from app.budgets.lifetime import LifetimeBudget
from app.budgets.limiter import Limiter
from app.config import Settings
from app.context import Trail
from app.domain import Usage
from app.ledger.events import UsageEvent
from app.ledger.recorder import Recorder
from app.observability.logging import log_request
from app.observability.metrics import Metrics

log = logging.getLogger("tollway.bookkeeping")


@dataclass(slots=True)
class Ending:
    """How a request ended, as the ledger and metrics see it."""

    status: int
    usage: Usage
    stop_reason: str | None = None
    error_type: str | None = None  # an ErrorKind, or "client_aborted", "shutdown"
    aborted: bool = False
    record: bool = True  # False when no team is known (bad key): counted, not charged
    completion: str | None = None


class Bookkeeper:
    def __init__(
        self,
        settings: Settings,
        limiter: Limiter,
        recorder: Recorder,
        metrics: Metrics,
        lifetime_budget: LifetimeBudget | None = None,
    ) -> None:
        self.settings = settings
        self.limiter = limiter
        self.lifetime_budget = lifetime_budget
        self.recorder = recorder
        self.metrics = metrics

    async def close(self, trail: Trail, ending: Ending) -> None:
        cost, uncached = trail.calls.total_cost()
        if trail.admission is not None:
            try:
                await self.limiter.settle(trail.admission, tokens=ending.usage.total_tokens, usd=cost)
            except Exception:  # the limiter reconciles later; the row below must still be written
                log.exception("budget settlement failed for %s", trail.request_id)
        if trail.budget_hold is not None and self.lifetime_budget is not None:
            await self.lifetime_budget.settle(trail.budget_hold, tokens=ending.usage.total_tokens)  # never raises
        event = self._event(trail, ending, cost, uncached)
        principal = trail.principal
        if ending.record and principal is not None:
            try:
                self.recorder.record(event)
            except Exception:
                log.exception("ledger record failed for %s", trail.request_id)
        team_name = principal.team_name if principal else None
        route = trail.plan.route if trail.plan else None
        ttft = (trail.calls.first_token_at - trail.started) if trail.calls.first_token_at else None
        try:
            self.metrics.observe(
                event, team_name=team_name, route=route, upstream_s=trail.calls.upstream_seconds, ttft_s=ttft
            )
            log_request(
                event,
                team_name=team_name,
                key_prefix=principal.key_prefix if principal else None,
                route=route,
                prompt=trail.chat if self.settings.log_prompts else None,
                completion=ending.completion if self.settings.log_prompts else None,
                log_prompts=self.settings.log_prompts,
            )
        except Exception:
            log.exception("metrics or request log failed for %s", trail.request_id)

    def _event(self, trail: Trail, ending: Ending, cost: Decimal, uncached: Decimal) -> UsageEvent:
        principal = trail.principal
        usage = ending.usage
        calls = trail.calls
        latency = time.perf_counter() - trail.started
        ttft = (calls.first_token_at - trail.started) if calls.first_token_at else None
        return UsageEvent(
            request_id=trail.request_id,
            team_id=principal.team_id if principal else None,
            key_id=principal.key_id if principal else None,
            client_format=trail.client_format,
            requested_model=trail.requested_model,
            served_model=calls.served_model,
            provider=calls.provider,
            route_reason=trail.plan.reason if trail.plan else None,
            attempts=len(calls.attempts),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_write_5m_tokens=usage.cache_write_5m_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cost_usd=cost,
            uncached_cost_usd=uncached,
            latency_ms=latency * 1000,
            ttft_ms=ttft * 1000 if ttft is not None else None,
            status=ending.status,
            error_type=ending.error_type,
            stop_reason=ending.stop_reason,
            streamed=bool(trail.chat and trail.chat.stream),
            aborted=ending.aborted,
            response_cache_hit=trail.cache_hit,
            end_user=trail.end_user,
            usage_flag=trail.usage_flag,
        )

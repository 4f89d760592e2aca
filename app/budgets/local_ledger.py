"""Budget work this process could not write to Redis, kept until Redis is reachable again.

When Redis is down and the policy is fail-open, requests are served and their usage is counted
here; a settle that fails for any admission lands here too, with the reservation to release, and so
does a publish of limits that failed (as "delete the possibly stale record"). The limiter's
background task hands the batches to ``RedisStore.apply``.

Exactly once: a batch keeps its id until Redis confirms it, and the reconcile script records applied
ids, so a batch whose reply was lost is retried without counting twice. New work arriving while a
batch is in flight goes into a new batch.
"""

from __future__ import annotations

import uuid

from app.budgets.store import ReconcileBatch


class LocalLedger:
    def __init__(self) -> None:
        self._open: dict[str, ReconcileBatch] = {}  # team id → batch still accepting work
        self._sealed: list[ReconcileBatch] = []  # handed out, not yet confirmed

    def __bool__(self) -> bool:
        return bool(self._open or self._sealed)

    def _batch(self, team_id: str) -> ReconcileBatch:
        batch = self._open.get(team_id)
        if batch is None:
            batch = self._open[team_id] = ReconcileBatch(team_id=team_id, batch_id=uuid.uuid4().hex)
        return batch

    def add_usage(self, team_id: str, period_key: str, field: str, amount: int, expires_at: int) -> None:
        batch = self._batch(team_id)
        fields = batch.usage.setdefault(period_key, {})
        fields[field] = fields.get(field, 0) + amount
        batch.expires[period_key] = max(batch.expires.get(period_key, 0), expires_at)

    def add_release(self, team_id: str, reservation_id: str) -> None:
        self._batch(team_id).releases.add(reservation_id)

    def add_invalidation(self, team_id: str, limits_record: str) -> None:
        self._batch(team_id).invalidate.add(limits_record)

    def take(self) -> list[ReconcileBatch]:
        """Seal the open batches and return everything not yet confirmed."""
        self._sealed.extend(batch for batch in self._open.values() if not batch.is_empty())
        self._open.clear()
        return list(self._sealed)

    def confirm(self, batches: list[ReconcileBatch]) -> None:
        applied = {id(batch) for batch in batches}
        self._sealed = [batch for batch in self._sealed if id(batch) not in applied]

    def pending_usage(self, period_key: str, field: str) -> int:
        """Usage counted locally for one window and not yet in Redis (for status and tests)."""
        return sum(
            batch.usage.get(period_key, {}).get(field, 0) for batch in (*self._sealed, *self._open.values())
        )

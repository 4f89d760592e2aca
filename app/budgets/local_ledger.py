"""Budget work this process could not confirm in Redis, kept until Redis is reachable again.

A settle that failed (Redis down, a timeout, a broken connection: it may or may not have run), a
settle made while the breaker is open or under fail-open, and the release of an admit that failed or
was cancelled (a settle of nothing) land here as ``PendingSettle`` records; so does a publish of
limits that failed (as "delete the possibly stale record"). The limiter's background task hands the
batches to the store's ``apply``.

Cannot count twice: each pending settle keeps its reservation id and is applied through the same
once-per-id step as a normal settle, so a settle whose first attempt had in fact reached Redis (its
reply lost) is a no-op when reconciled. A batch keeps its id until Redis confirms it, and the
reconcile script records applied batch ids, so a batch whose reply was lost is retried harmlessly.
New work arriving while a batch is in flight goes into a new batch.

With a ``PendingJournal`` every piece of work is also written to disk as it arrives, so a process
killed before Redis came back loses none of it: the next process takes the journal over.
"""

from __future__ import annotations

import uuid

from app.budgets.journal import PendingJournal
from app.budgets.store import PendingSettle, ReconcileBatch
from app.budgets.windows import KIND_PERIOD, N_KINDS, WindowSet

MAX_SETTLES_PER_BATCH = 500  # one reconcile script call stays short (Redis runs scripts one at a time)


class LocalLedger:
    def __init__(self, journal: PendingJournal | None = None) -> None:
        self._open: dict[str, ReconcileBatch] = {}  # team id → batch still accepting work
        self._sealed: list[ReconcileBatch] = []  # handed out, not yet confirmed
        self.journal = journal
        if journal is not None:
            for team_id, work in journal.recover():
                if isinstance(work, PendingSettle):
                    self.add_settle(team_id, work)
                else:
                    self.add_invalidation(team_id, work)

    def __bool__(self) -> bool:
        return bool(self._open or self._sealed)

    def _batch(self, team_id: str) -> ReconcileBatch:
        batch = self._open.get(team_id)
        if batch is not None and len(batch.settles) >= MAX_SETTLES_PER_BATCH:
            self._sealed.append(batch)
            batch = None
        if batch is None:
            batch = self._open[team_id] = ReconcileBatch(team_id=team_id, batch_id=uuid.uuid4().hex)
        return batch

    def add_settle(self, team_id: str, pending: PendingSettle) -> None:
        if self.journal is not None:
            self.journal.settle(team_id, pending)
        self._batch(team_id).settles.append(pending)

    def add_invalidation(self, team_id: str, limits_record: str) -> None:
        if self.journal is not None:
            self.journal.invalidation(team_id, limits_record)
        self._batch(team_id).invalidate.add(limits_record)

    def take(self) -> list[ReconcileBatch]:
        """Seal the open batches and return everything not yet confirmed."""
        self._sealed.extend(batch for batch in self._open.values() if not batch.is_empty())
        self._open.clear()
        return list(self._sealed)

    def confirm(self, batches: list[ReconcileBatch]) -> None:
        applied = {id(batch) for batch in batches}
        self._sealed = [batch for batch in self._sealed if id(batch) not in applied]
        if self.journal is not None and not self:
            self.journal.clear()

    def pending_settles(self) -> int:
        return sum(len(batch.settles) for batch in (*self._sealed, *self._open.values()))

    def pending_usage(self, ws: WindowSet, w: int) -> int:
        """Usage counted locally for window ``w`` of ``ws`` and not yet in Redis (for status)."""
        period_key = ws.period_key(w)
        period = KIND_PERIOD[w % N_KINDS]
        team_scope = w < N_KINDS
        return sum(
            pending.amounts[w % N_KINDS]
            for batch in (*self._sealed, *self._open.values())
            if batch.team_id == ws.team_id
            for pending in batch.settles
            if pending.period_keys[period] == period_key and (team_scope or pending.key_id == ws.key_id)
        )

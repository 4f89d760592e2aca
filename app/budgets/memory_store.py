"""The in-process budget store: the Redis scripts' algorithm in Python, for a single process.

Chosen automatically when no Redis is configured (the embedded default). It keeps the same keys and
the same semantics as ``redis_store.py`` — each method runs without awaiting, so it is atomic with
respect to every other request of the process, as a Lua script is in Redis. Budgets are not shared
between processes and do not survive a restart; run Redis for more than one worker or replica.

Expiry (reservations, usage counters, published limits, settled records) follows the injected clock,
so tests roll windows and expire reservations without sleeping. An admit here cannot be late: it runs
as soon as it is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from app.budgets.store import AlreadySettled, PendingSettle, ReconcileBatch, ReserveOutcome, WindowState
from app.budgets.windows import KIND_PERIOD, N_KINDS, N_WINDOWS, WindowSet, team_keys, usage_field

LIMITS_TTL_S = 600
RECORD_TTL_S = 3_600
SETTLED = "s"  # as in the Lua scripts: settled, later admits/readmits/settles of the id are no-ops
EXPIRED = "x"  # released on expiry: a late settle still counts once


@dataclass(slots=True)
class _Reservation:
    expires_at: float
    entries: list[tuple[str, int]]  # (slot, amount in flight)


class MemoryStore:
    def __init__(self, *, limits_ttl_s: int = LIMITS_TTL_S, record_ttl_s: int = RECORD_TTL_S) -> None:
        self.limits_ttl_s = limits_ttl_s
        self.record_ttl_s = record_ttl_s
        self._usage: dict[str, int] = {}  # slot ("<period hash>|<field>") → settled usage
        self._period_expiry: dict[str, float] = {}  # period hash → when its slots go
        self._period_slots: dict[str, set[str]] = {}
        self._period_heap: list[tuple[float, str]] = []
        self._inflight: dict[str, int] = {}
        self._reservations: dict[str, _Reservation] = {}
        self._reservation_heap: list[tuple[float, str]] = []
        self._finished: dict[str, tuple[str, float]] = {}  # reservation id → (SETTLED | EXPIRED, until)
        self._finished_heap: list[tuple[float, str]] = []
        self._limits: dict[str, tuple[float, tuple[int, ...]]] = {}  # record key → (expires_at, vector)
        self._released = asyncio.Event()

    # ---- the shared steps ---------------------------------------------------------------------

    def _release(self, reservation_id: str) -> None:
        reservation = self._reservations.pop(reservation_id, None)
        if reservation is None:
            return
        for key, amount in reservation.entries:
            left = self._inflight.get(key, 0) - amount
            if left <= 0:
                self._inflight.pop(key, None)
            else:
                self._inflight[key] = left
        self._released.set()

    def _mark(self, reservation_id: str, state: str, until: float) -> None:
        self._finished[reservation_id] = (state, until)
        heapq.heappush(self._finished_heap, (until, reservation_id))

    def _purge(self, now: float) -> None:
        heap = self._reservation_heap
        while heap and heap[0][0] <= now:
            expires_at, rid = heapq.heappop(heap)
            reservation = self._reservations.get(rid)
            if reservation is not None and reservation.expires_at == expires_at:
                self._release(rid)
                self._mark(rid, EXPIRED, now + self.record_ttl_s)
        finished = self._finished_heap
        while finished and finished[0][0] <= now:
            until, rid = heapq.heappop(finished)
            if self._finished.get(rid, ("", 0.0))[1] == until:
                del self._finished[rid]
        period_heap = self._period_heap
        while period_heap and period_heap[0][0] <= now:
            expires_at, period_key = heapq.heappop(period_heap)
            if self._period_expiry.get(period_key) == expires_at:
                del self._period_expiry[period_key]
                for slot in self._period_slots.pop(period_key, ()):
                    self._usage.pop(slot, None)

    def _limits_of(self, record: str, fallback: tuple[int, ...], now: float) -> tuple[int, ...]:
        published = self._limits.get(record)
        if published is None:
            return fallback
        if published[0] <= now:
            del self._limits[record]
            return fallback
        return published[1]

    def _add_usage(self, period_key: str, field: str, amount: int, expires_at: float) -> None:
        slot = f"{period_key}|{field}"
        self._usage[slot] = self._usage.get(slot, 0) + amount
        self._period_slots.setdefault(period_key, set()).add(slot)
        if self._period_expiry.get(period_key) != expires_at:  # as Redis' EXPIRE on the hash
            self._period_expiry[period_key] = expires_at
            heapq.heappush(self._period_heap, (expires_at, period_key))

    # ---- BudgetStore --------------------------------------------------------------------------

    async def reserve(
        self,
        ws: WindowSet,
        reservation_id: str,
        amounts: tuple[int, ...],
        team_limits: tuple[int, ...],
        key_limits: tuple[int, ...],
        *,
        now: float,
        expires_at: float,
        state_ttl_s: int,
        replace: bool,
    ) -> ReserveOutcome:
        if self._finished.get(reservation_id, ("", 0.0))[0] == SETTLED:
            raise AlreadySettled(f"reservation {reservation_id} was already settled")
        self._purge(now)
        tk = team_keys(ws.team_id)
        limits = (
            self._limits_of(tk.team_limits, team_limits, now),
            self._limits_of(tk.key_limits(ws.key_id), key_limits, now),
        )
        old: dict[str, int] = {}
        held = self._reservations.get(reservation_id)
        replace = replace or held is not None  # an id is never reserved twice (see the admit script)
        if held is not None:
            old = dict(held.entries)

        active: list[tuple[int, str, int, int, int, int]] = []
        soft: WindowState | None = None
        hard: WindowState | None = None
        for w in range(N_WINDOWS):
            kind = w % N_KINDS
            limit = limits[w // N_KINDS][kind]
            if limit < 0:
                continue
            key = ws.slot(w)
            amount = amounts[kind]
            used = self._usage.get(key, 0)
            reserved = self._inflight.get(key, 0) - old.get(key, 0)
            if used + reserved + amount > limit:
                state = WindowState(w=w, used=used, reserved=reserved, limit=limit)
                if used + amount > limit:
                    hard = hard or state
                else:
                    soft = soft or state
            active.append((w, key, amount, used, reserved, limit))
        if hard is not None:
            return ReserveOutcome(ok=False, failed=hard, hard=True)
        if soft is not None:
            return ReserveOutcome(ok=False, failed=soft, hard=False)

        if replace:
            self._release(reservation_id)
        entries: list[tuple[str, int]] = []
        states: list[WindowState] = []
        for w, key, amount, used, reserved, limit in active:
            if amount:
                self._inflight[key] = self._inflight.get(key, 0) + amount
                entries.append((key, amount))
            states.append(WindowState(w=w, used=used, reserved=reserved + amount, limit=limit))
        if entries:
            self._reservations[reservation_id] = _Reservation(expires_at=expires_at, entries=entries)
            heapq.heappush(self._reservation_heap, (expires_at, reservation_id))
            self._finished.pop(reservation_id, None)
        return ReserveOutcome(ok=True, states=tuple(states))

    def _settle_once(
        self,
        reservation_id: str,
        key_id: str,
        period_keys: Sequence[str],
        period_expiry: Sequence[float],
        amounts: tuple[int, ...],
        now: float,
    ) -> bool:
        if self._finished.get(reservation_id, ("", 0.0))[0] == SETTLED:
            return False
        self._release(reservation_id)
        for w in range(N_WINDOWS):
            amount = amounts[w % N_KINDS]
            if amount:
                period = KIND_PERIOD[w % N_KINDS]
                self._add_usage(period_keys[period], usage_field(w, key_id), amount, period_expiry[period])
        self._mark(reservation_id, SETTLED, now + self.record_ttl_s)
        return True

    async def settle(
        self, ws: WindowSet, reservation_id: str, amounts: tuple[int, ...], *, now: float, grace_s: int
    ) -> bool:
        expiry = tuple(end + grace_s for end in ws.period_ends)
        return self._settle_once(reservation_id, ws.key_id, ws.period_keys, expiry, amounts, now)

    async def read(
        self, ws: WindowSet, team_limits: tuple[int, ...], key_limits: tuple[int, ...], *, now: float
    ) -> tuple[WindowState, ...]:
        self._purge(now)
        tk = team_keys(ws.team_id)
        limits = (
            self._limits_of(tk.team_limits, team_limits, now),
            self._limits_of(tk.key_limits(ws.key_id), key_limits, now),
        )
        return tuple(
            WindowState(
                w=w,
                used=self._usage.get(ws.slot(w), 0),
                reserved=self._inflight.get(ws.slot(w), 0),
                limit=limits[w // N_KINDS][w % N_KINDS],
            )
            for w in range(N_WINDOWS)
        )

    async def publish(self, team_id: str, key_id: str | None, vector: tuple[int, ...], *, now: float) -> None:
        self._limits[team_keys(team_id).limits(key_id)] = (now + self.limits_ttl_s, vector)

    async def apply(self, batches: Sequence[ReconcileBatch], *, now: float) -> None:
        # Nothing is ever deferred against an in-process store, but apply what is given faithfully.
        for batch in batches:
            for record in batch.invalidate:
                self._limits.pop(record, None)
            for pending in batch.settles:
                self._apply_pending(pending, now)

    def _apply_pending(self, pending: PendingSettle, now: float) -> None:
        self._settle_once(
            pending.reservation_id, pending.key_id, pending.period_keys, pending.period_expiry, pending.amounts, now
        )

    async def wait_for_release(self, timeout_s: float) -> None:
        self._released.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._released.wait(), timeout_s)

    async def aclose(self) -> None:
        return None

    # ---- for tests and introspection ------------------------------------------------------------

    def reservation_count(self) -> int:
        return len(self._reservations)

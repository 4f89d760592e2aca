"""The contract between the limiter and its two stores (Redis with Lua, and in-process memory).

A store knows nothing about principals, Decimal or HTTP: it takes a ``WindowSet`` (the twelve windows
at one instant), six per-kind amounts and two limit vectors, and performs one atomic step. Both stores
implement the same algorithm; ``redis_store.py`` in Lua, ``memory_store.py`` in Python.

reserve:  purge expired reservations; read the published limits (falling back to the ones given);
          for every limited window check ``settled + in flight + amount <= limit``; if all fit,
          add the amounts to every limited window's in-flight total and record the reservation
          (with its expiry) under its id. With ``replace`` the reservation already held under that
          id is discounted in the check and swapped for the new one in the same step.
settle:   once per reservation id: release the reservation (if it still exists) and add the actual
          amounts to the settled usage of all twelve windows given (limited or not, so status can
          show them); then remember the id as settled for ``record_ttl_s``, so a late, repeated or
          reconciled settle of the same id, and an admit or readmit of it, changes nothing.
read:     purge, then report settled, in-flight and limit for all twelve windows.

A reservation id names one admission attempt (the request id plus an attempt suffix). An admit that
reaches Redis after its deadline (the moment its caller stopped waiting) is refused by the script
itself, so a stalled Redis cannot create reservations nobody will settle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from app.budgets.windows import WindowSet


class StoreUnavailable(Exception):
    """The store could not be reached (Redis down, timed out, loading, out of memory ...)."""


@dataclass(frozen=True, slots=True)
class WindowState:
    """One window as the store saw it.

    ``reserved`` is the in-flight total: on a successful reservation it includes the new one; on a
    refusal it is what *other* requests hold (the request's own earlier reservation excluded).
    ``limit`` is ``-1`` for an unlimited window (only in ``read``).
    """

    w: int
    used: int
    reserved: int
    limit: int


@dataclass(frozen=True, slots=True)
class ReserveOutcome:
    ok: bool
    states: tuple[WindowState, ...] = ()  # when ok: every limited window
    failed: WindowState | None = None  # when refused: the window that did not fit
    hard: bool = False  # when refused: settled usage alone leaves no room (waiting cannot help)


class AdmitTooLate(StoreUnavailable):
    """The admit reached Redis after its deadline and changed nothing (a stall, or clock skew)."""

    def __init__(self, message: str, *, server_time: float | None = None) -> None:
        super().__init__(message)
        self.server_time = server_time


class AlreadySettled(StoreUnavailable):
    """An admit or readmit named a reservation id that was already settled (or released)."""


@dataclass(frozen=True, slots=True)
class PendingSettle:
    """A settle (or a release: all amounts 0) that could not be confirmed by Redis.

    Applied later through the same once-per-id step as a normal settle, so it counts exactly once
    whether or not the first attempt had in fact reached Redis.
    """

    reservation_id: str
    key_id: str
    period_keys: tuple[str, str, str]  # usage hashes of the minute, day and month it counts in
    period_expiry: tuple[int, int, int]  # when each hash may expire (unix s, caller's clock)
    amounts: tuple[int, ...]  # per kind


@dataclass(slots=True)
class ReconcileBatch:
    """Work of one team that could not reach Redis, to be applied when it is back.

    ``settles``: pending settles, each applied once per reservation id; ``invalidate``:
    published-limits records to delete (their publish failed, so they may be stale). The batch id
    makes a retried batch a no-op as a whole.
    """

    team_id: str
    batch_id: str
    settles: list[PendingSettle] = field(default_factory=list)
    invalidate: set[str] = field(default_factory=set)

    def is_empty(self) -> bool:
        return not (self.settles or self.invalidate)


class BudgetStore(Protocol):
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
    ) -> ReserveOutcome: ...

    async def settle(
        self, ws: WindowSet, reservation_id: str, amounts: tuple[int, ...], *, now: float, grace_s: int
    ) -> bool:
        """True if applied, False if the id had already been settled (nothing changed)."""
        ...

    async def read(
        self, ws: WindowSet, team_limits: tuple[int, ...], key_limits: tuple[int, ...], *, now: float
    ) -> tuple[WindowState, ...]: ...

    async def publish(
        self, team_id: str, key_id: str | None, vector: tuple[int, ...], *, now: float
    ) -> None: ...

    async def apply(self, batches: Sequence[ReconcileBatch], *, now: float) -> None: ...

    async def wait_for_release(self, timeout_s: float) -> None:
        """Return when some reservation may have been released, or after ``timeout_s``."""
        ...

    async def aclose(self) -> None: ...

"""Admit, then settle: the budget interface the request pipeline calls.

``admit`` reserves a request's worst case (``estimate.worst_case``) in every limited window of its
team and key, in one store step; ``settle`` replaces the reservation with the actual usage once the
response, stream, abort or error is over. Between them the reservation holds budget, so concurrent
requests on any number of replicas cannot together spend more than a limit: that is strict mode's
promise. Reservations expire after ``reservation_ttl_s``, so a process killed mid-request does not
hold budget forever; a settle after expiry still counts its usage (in the windows current then).

What counts: one request per admitted request (requests_per_minute); tokens = input tokens
(uncached + cache writes + cache reads) + output tokens; USD = the ledger's price of that usage.

A principal whose team and key both have no limits is admitted without touching any store.

When Redis cannot be reached, ``budget_redis_failure`` decides: ``closed`` raises
``BudgetBackendUnavailable`` (HTTP 503); ``open`` admits, counts usage in a ``LocalLedger`` and a
background task writes it into Redis once Redis answers again. After a failure the store is not
tried again for ``breaker_s``, so an outage costs one failed connection attempt, not one per request.

Every store step is idempotent per reservation id (the request id plus an attempt suffix): a settle
counts once however often it is sent (late, retried, reconciled), and an admit that failed or was
cancelled is released by id — while an admit that reaches Redis after its deadline changes nothing.
So a stalled or restarted Redis leaves neither orphaned reservations nor double counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from app.auth.principal import Limits, Principal
from app.budgets.capping import cap_output
from app.budgets.errors import BudgetBackendUnavailable, BudgetExceeded, as_gateway_error
from app.budgets.headers import budget_headers, remaining, rfc3339
from app.budgets.journal import PendingJournal
from app.budgets.limits import NO_LIMITS, limits_vector
from app.budgets.local_ledger import LocalLedger
from app.budgets.memory_store import MemoryStore
from app.budgets.redis_store import RedisStore
from app.budgets.store import (
    AdmitTooLate,
    BudgetStore,
    PendingSettle,
    ReserveOutcome,
    StoreUnavailable,
    WindowState,
)
from app.budgets.windows import (
    N_KINDS,
    TOKEN_KINDS,
    WindowSet,
    amounts_vector,
    is_usd,
    micros_to_usd,
    team_keys,
    usd_to_micros,
    window_name,
    window_scope,
    windows_at,
)

if TYPE_CHECKING:
    import redis.asyncio

    from app.config import Settings

log = logging.getLogger(__name__)

NOTHING = (0, 0, 0, 0, 0, 0)  # settling this releases a reservation and counts no usage
FIRST_POLL_S = 0.005
MAX_POLL_S = 0.05
STATE_TTL_MARGIN_S = 60


__all__ = [
    "Admission",
    "BudgetBackendUnavailable",
    "BudgetExceeded",
    "BudgetLimiter",
    "Limiter",
    "as_gateway_error",
    "create_limiter",
]


@dataclass(slots=True, eq=False)
class Admission:
    """A request's reservation. Opaque to the pipeline except ``headers_for`` and ``output_cap``.

    ``output_cap``: set when the team's policy capped the output to what its budget has left; the
    pipeline must then send at most this many output tokens upstream (``max_tokens``) and the client
    sees ``finish_reason: length`` / ``stop_reason: max_tokens`` if the answer is cut there.
    """

    team_id: str
    key_id: str
    request_id: str
    reservation_id: str
    tokens: int
    usd: Decimal
    admitted_at: float
    expires_at: float
    windows: WindowSet | None  # None: unlimited, no store involved
    team_limits: tuple[int, ...] = NO_LIMITS
    key_limits: tuple[int, ...] = NO_LIMITS
    states: tuple[WindowState, ...] = ()  # limited windows as seen at admission
    reserved_in_store: bool = False  # a reservation may exist in the store under reservation_id
    degraded: bool = False  # admitted under fail-open while the store was unreachable
    settled: bool = field(default=False)
    output_tokens: int = 0  # the part of ``tokens`` that is output (may be capped)
    output_usd: Decimal = Decimal(0)  # the part of ``usd`` that is output
    may_cap_output: bool = False  # the team's policy allows capping the output to the budget left
    output_cap: int | None = None

    @property
    def unlimited(self) -> bool:
        return self.windows is None

    def headers_for(self, client_format: str) -> dict[str, str]:
        """Budget headers of the tightest token and request windows (none if unlimited): remaining
        counts settled usage only; ``x-tollway-budget-reserved-*`` what requests in flight hold."""
        if not self.states or self.windows is None:
            return {}
        return budget_headers(self.states, self.windows.ends, self.admitted_at, client_format)

    def token_budget_share_used(self) -> float | None:
        """The largest share (0..1) of any limited token window that is used or reserved."""
        shares = [
            (s.used + s.reserved) / s.limit if s.limit > 0 else 1.0 for s in self.states if s.w % N_KINDS in TOKEN_KINDS
        ]
        return max(shares) if shares else None


class Limiter(Protocol):
    async def admit(
        self,
        principal: Principal,
        *,
        tokens: int,
        usd: Decimal,
        request_id: str,
        output_tokens: int = 0,
        output_usd: Decimal = Decimal(0),
    ) -> Admission: ...

    async def readmit(
        self,
        admission: Admission,
        *,
        tokens: int,
        usd: Decimal,
        output_tokens: int = 0,
        output_usd: Decimal = Decimal(0),
    ) -> Admission: ...

    async def settle(self, admission: Admission, *, tokens: int, usd: Decimal) -> None: ...

    async def publish_limits(self, team_id: str, key_id: str | None, limits: Limits) -> None: ...

    async def status(self, principal: Principal) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


class BudgetLimiter:
    """The one ``Limiter``: policy, waiting and fail-open around a ``BudgetStore``."""

    def __init__(
        self,
        store: BudgetStore,
        *,
        mode: str = "strict",
        failure_policy: str = "closed",
        wait_ms: int = 250,
        reservation_ttl_s: int = 900,
        clock: Callable[[], float] = time.time,
        reconcile_interval_s: float = 0.5,
        breaker_s: float = 0.5,
        journal: PendingJournal | None = None,
    ) -> None:
        if failure_policy not in ("closed", "open"):
            raise ValueError(f"budget_redis_failure must be 'closed' or 'open', not {failure_policy!r}")
        self.store = store
        self.mode = mode
        self.failure_policy = failure_policy
        self.wait_s = max(0, wait_ms) / 1000
        self.reservation_ttl_s = reservation_ttl_s
        self.grace_s = reservation_ttl_s + STATE_TTL_MARGIN_S
        self.clock = clock
        self.reconcile_interval_s = reconcile_interval_s
        self.breaker_s = breaker_s
        self.ledger = LocalLedger(journal)
        self._down_until = 0.0
        self._reconciler: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._instance = os.urandom(4).hex()
        self._attempts = itertools.count()

    # ---- admission ----------------------------------------------------------------------------

    async def admit(
        self,
        principal: Principal,
        *,
        tokens: int,
        usd: Decimal,
        request_id: str,
        output_tokens: int = 0,
        output_usd: Decimal = Decimal(0),
    ) -> Admission:
        """Reserve the worst case (``tokens``, ``usd``) in every limited window, or raise
        ``BudgetExceeded`` / ``BudgetBackendUnavailable``.

        ``output_tokens`` / ``output_usd``: the output part of the worst case. When the team's policy
        has ``cap_output_to_budget`` and the worst case does not fit, the output is capped to what
        the budget has left (``Admission.output_cap``) instead of refusing.
        """
        now = self.clock()
        admission = Admission(
            team_id=principal.team_id,
            key_id=principal.key_id,
            request_id=request_id,
            reservation_id="",
            tokens=tokens,
            usd=usd,
            admitted_at=now,
            expires_at=now + self.reservation_ttl_s,
            windows=None,
            team_limits=limits_vector(principal.team_limits),
            key_limits=limits_vector(principal.key_limits),
            output_tokens=max(0, min(output_tokens, tokens)),
            output_usd=max(Decimal(0), min(output_usd, usd)),
            may_cap_output=principal.policy.cap_output_to_budget,
        )
        if admission.team_limits == NO_LIMITS and admission.key_limits == NO_LIMITS:
            return admission
        # The request id plus this process' attempt number: unique even if a client reuses an id.
        admission.reservation_id = f"{request_id}~{self._instance}{next(self._attempts):x}"
        return await self._reserve(admission, replace=False)

    async def readmit(
        self,
        admission: Admission,
        *,
        tokens: int,
        usd: Decimal,
        output_tokens: int = 0,
        output_usd: Decimal = Decimal(0),
    ) -> Admission:
        """Swap the reservation for a new worst case (e.g. a fallback to a pricier model), atomically.

        Idempotent: the reservation keeps its id, so a repeated readmit replaces rather than adds, and
        a readmit reaching Redis after the id was settled changes nothing. On ``BudgetExceeded`` the
        original reservation still stands and must still be settled.
        """
        if admission.settled:
            raise RuntimeError("cannot readmit a settled admission")
        now = self.clock()
        updated = Admission(
            team_id=admission.team_id,
            key_id=admission.key_id,
            request_id=admission.request_id,
            reservation_id=admission.reservation_id,
            tokens=tokens,
            usd=usd,
            admitted_at=now,
            expires_at=now + self.reservation_ttl_s,
            windows=admission.windows,
            team_limits=admission.team_limits,
            key_limits=admission.key_limits,
            reserved_in_store=admission.reserved_in_store,
            degraded=admission.degraded,
            output_tokens=max(0, min(output_tokens, tokens)),
            output_usd=max(Decimal(0), min(output_usd, usd)),
            may_cap_output=admission.may_cap_output,
        )
        if admission.unlimited or admission.degraded:
            return updated
        held = amounts_vector(admission.tokens, usd_to_micros(admission.usd))
        result = await self._reserve(updated, replace=True, held=held)
        admission.settled = True  # the old handle is spent: settle the new one
        return result

    async def _reserve(
        self, admission: Admission, *, replace: bool, held: tuple[int, ...] | None = None
    ) -> Admission:
        amounts = amounts_vector(admission.tokens, usd_to_micros(admission.usd))
        deadline = time.monotonic() + self.wait_s
        delay = FIRST_POLL_S
        while True:
            outcome = await self._try_reserve(admission, amounts, replace=replace)
            if outcome is None:  # the store is unavailable (fail-open: admitted degraded)
                return admission
            if outcome.ok:
                return admission
            left = deadline - time.monotonic()
            if outcome.hard or left <= 0:
                if admission.may_cap_output:
                    capped = await self._reserve_capped(admission, amounts, replace=replace, held=held)
                    if capped is not None:
                        return capped
                assert admission.windows is not None
                raise self._exceeded(outcome, admission.windows, admission.admitted_at, amounts)
            await self.store.wait_for_release(min(delay, left))
            delay = min(delay * 2, MAX_POLL_S)

    async def _try_reserve(
        self, admission: Admission, amounts: tuple[int, ...], *, replace: bool
    ) -> ReserveOutcome | None:
        """One store step. Updates ``admission`` on success; None when degraded under fail-open."""
        now = self.clock()
        ws = windows_at(admission.team_id, admission.key_id, now)
        admission.admitted_at = now
        admission.expires_at = now + self.reservation_ttl_s
        admission.windows = ws
        if self._breaker_open():
            self._unavailable(admission, None, replace=replace, attempted=False)
            return None
        try:
            outcome = await self.store.reserve(
                ws,
                admission.reservation_id,
                amounts,
                admission.team_limits,
                admission.key_limits,
                now=now,
                expires_at=admission.expires_at,
                state_ttl_s=self.grace_s,
                replace=replace,
            )
        except StoreUnavailable as exc:
            self._trip(exc)
            # A refusal for lateness changed nothing; any other failure may have reserved.
            self._unavailable(admission, exc, replace=replace, attempted=not isinstance(exc, AdmitTooLate))
            return None
        except asyncio.CancelledError:
            # The script may have run before the cancellation (the client went away): free whatever
            # it reserved now rather than when the reservation expires. A readmit's caller still
            # holds the admission and settles it, by the same id.
            if not replace:
                self._release(admission, ws)
            raise
        if outcome.ok:
            admission.states = outcome.states
            admission.reserved_in_store = True
        return outcome

    async def _reserve_capped(
        self, admission: Admission, amounts: tuple[int, ...], *, replace: bool, held: tuple[int, ...] | None
    ) -> Admission | None:
        """Try the request again with its output capped to what the budget has left."""
        ws = admission.windows
        assert ws is not None
        try:
            states = await self.store.read(ws, admission.team_limits, admission.key_limits, now=admission.admitted_at)
        except StoreUnavailable as exc:
            self._trip(exc)
            return None
        capped = cap_output(
            states, amounts, admission.output_tokens, usd_to_micros(admission.output_usd), held if replace else None
        )
        if capped is None:
            return None
        output_micros = usd_to_micros(admission.output_usd)
        admission.tokens = capped.amounts[1]
        admission.usd = micros_to_usd(capped.amounts[4])
        admission.output_tokens = capped.output_tokens
        admission.output_usd = micros_to_usd(capped.amounts[4] - (amounts[4] - output_micros))
        outcome = await self._try_reserve(admission, capped.amounts, replace=replace)
        if outcome is None or not outcome.ok:
            return None if outcome is not None else admission
        admission.output_cap = capped.output_tokens
        return admission

    def _release(self, admission: Admission, ws: WindowSet) -> None:
        """Release ``admission``'s reservation by id, whether or not its admit ran (or will run)."""

        async def release() -> None:
            await self._settle_amounts(admission, ws, NOTHING)

        task = asyncio.get_running_loop().create_task(release())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _unavailable(self, admission: Admission, exc: Exception | None, *, replace: bool, attempted: bool) -> None:
        if isinstance(exc, AdmitTooLate) and exc.server_time is not None:
            skew = exc.server_time - time.time()
            if abs(skew) > 1:
                log.error("budget: Redis' clock is %.1f s off this host's: admits are refused as late", skew)
        if self.failure_policy == "closed":
            if attempted and not replace:
                assert admission.windows is not None
                self._release(admission, admission.windows)
            raise BudgetBackendUnavailable("budget store unreachable") from exc
        # Fail-open: served without a reservation. Its settle goes by the same id, so it also frees
        # whatever the failed attempt may have reserved.
        admission.degraded = True
        admission.reserved_in_store = admission.reserved_in_store or attempted
        admission.states = ()

    @staticmethod
    def _exceeded(outcome: ReserveOutcome, ws: WindowSet, now: float, amounts: tuple[int, ...]) -> BudgetExceeded:
        state = outcome.failed
        assert state is not None
        w = state.w
        reset = ws.end_of(w)
        retry_after = max(1, math.ceil(reset - now)) if outcome.hard else 1
        convert: Callable[[int], int | Decimal] = micros_to_usd if is_usd(w) else int
        return BudgetExceeded(
            window=window_name(w),
            scope=window_scope(w),
            used=convert(state.used),
            reserved=convert(state.reserved),
            limit=convert(state.limit),
            requested=convert(amounts[w % N_KINDS]),
            reset_at=datetime.fromtimestamp(reset, UTC),
            retry_after_s=retry_after,
        )

    # ---- settlement ---------------------------------------------------------------------------

    async def settle(self, admission: Admission, *, tokens: int, usd: Decimal) -> None:
        """Replace the reservation with actual usage, once. Never raises for store errors."""
        if admission.settled:
            log.warning("budget: admission %s settled twice; ignoring the second", admission.request_id)
            return
        admission.settled = True
        if admission.windows is None:
            return
        if tokens > admission.tokens and self.mode == "strict":
            log.warning(
                "budget: request %s used %d tokens, more than its strict reservation of %d",
                admission.request_id,
                tokens,
                admission.tokens,
            )
        now = self.clock()
        # Usage goes to the windows the reservation was made in; once the reservation has expired
        # (and was released) it goes to the windows current now.
        ws = admission.windows if now < admission.expires_at else windows_at(admission.team_id, admission.key_id, now)
        amounts = amounts_vector(max(0, tokens), usd_to_micros(max(usd, Decimal(0))))
        if admission.degraded:
            self._defer(admission, ws, amounts)
            return
        await self._settle_amounts(admission, ws, amounts)

    async def _settle_amounts(self, admission: Admission, ws: WindowSet, amounts: tuple[int, ...]) -> None:
        if self._breaker_open():
            self._defer(admission, ws, amounts)
            return
        try:
            await self.store.settle(ws, admission.reservation_id, amounts, now=self.clock(), grace_s=self.grace_s)
        except StoreUnavailable as exc:
            self._trip(exc)
            self._defer(admission, ws, amounts)
        except Exception:
            log.exception("budget: settle of %s failed; counting it locally", admission.request_id)
            self._defer(admission, ws, amounts)

    def _defer(self, admission: Admission, ws: WindowSet, amounts: tuple[int, ...]) -> None:
        """Keep the settle (by reservation id) for the reconciler: it applies once, whenever it runs."""
        pending = PendingSettle(
            reservation_id=admission.reservation_id,
            key_id=admission.key_id,
            period_keys=ws.period_keys,
            period_expiry=(
                ws.period_ends[0] + self.grace_s,
                ws.period_ends[1] + self.grace_s,
                ws.period_ends[2] + self.grace_s,
            ),
            amounts=amounts,
        )
        self.ledger.add_settle(admission.team_id, pending)
        self._ensure_reconciler()

    # ---- limits and status --------------------------------------------------------------------

    async def publish_limits(self, team_id: str, key_id: str | None, limits: Limits) -> None:
        """Make changed limits effective on every replica's next request.

        If Redis cannot be reached the (possibly stale) published record is deleted once it can,
        and until then its own TTL bounds how long it may be stale. Never raises for store errors:
        the database, already updated by the caller, is the source of truth.
        """
        try:
            await self.store.publish(team_id, key_id, limits_vector(limits), now=self.clock())
        except StoreUnavailable as exc:
            self._trip(exc)
            self.ledger.add_invalidation(team_id, team_keys(team_id).limits(key_id))
            self._ensure_reconciler()

    async def status(self, principal: Principal) -> dict[str, Any]:
        """Per scope and window: used, reserved, limit, remaining, reset_at. USD amounts are strings.

        ``used`` is settled usage (including usage counted locally and not yet in Redis);
        ``reserved`` what requests in flight hold; ``remaining`` = limit − used − reserved: what a
        new request could reserve now.
        """
        now = self.clock()
        ws = windows_at(principal.team_id, principal.key_id, now)
        try:
            states = await self.store.read(
                ws, limits_vector(principal.team_limits), limits_vector(principal.key_limits), now=now
            )
        except StoreUnavailable as exc:
            self._trip(exc)
            raise BudgetBackendUnavailable("budget store unreachable") from exc
        report: dict[str, Any] = {
            "team_id": principal.team_id,
            "key_id": principal.key_id,
            "team": {},
            "key": {},
        }
        for state in states:
            w = state.w
            used = state.used + self.ledger.pending_usage(ws, w)
            convert: Callable[[int], Any] = (lambda v: str(micros_to_usd(v))) if is_usd(w) else int
            limited = state.limit >= 0
            report[window_scope(w)][window_name(w)] = {
                "used": convert(used),
                "reserved": convert(state.reserved),
                "limit": convert(state.limit) if limited else None,
                "remaining": convert(remaining(WindowState(w, used, state.reserved, state.limit))) if limited else None,
                "reset_at": rfc3339(ws.end_of(w)),
            }
        return report

    # ---- failure handling ---------------------------------------------------------------------

    def _breaker_open(self) -> bool:
        return self._down_until > 0 and time.monotonic() < self._down_until

    def _trip(self, exc: Exception) -> None:
        if not self._breaker_open():
            log.warning("budget: store unreachable (%s); policy is fail-%s", exc, self.failure_policy)
        self._down_until = time.monotonic() + self.breaker_s

    def resume_pending(self) -> None:
        """Start writing work taken over from a previous process's journal (call inside the loop)."""
        if self.ledger:
            log.warning("budget: %d settle(s) pending from before a restart", self.ledger.pending_settles())
            self._ensure_reconciler()

    def _ensure_reconciler(self) -> None:
        if self._reconciler is None or self._reconciler.done():
            self._reconciler = asyncio.get_running_loop().create_task(self._reconcile_loop())

    async def _reconcile_loop(self) -> None:
        while self.ledger:
            await asyncio.sleep(self.reconcile_interval_s)
            await self.reconcile_now()

    async def reconcile_now(self) -> bool:
        """Try to write locally counted work into the store; True when nothing is left pending."""
        batches = self.ledger.take()
        if not batches:
            return True
        try:
            await self.store.apply(batches, now=self.clock())
        except StoreUnavailable as exc:
            self._trip(exc)
            return False
        except Exception:
            log.exception("budget: reconciling locally counted usage failed; will retry")
            return False
        self.ledger.confirm(batches)
        self._down_until = 0.0
        log.info("budget: reconciled %d batch(es) of locally counted usage", len(batches))
        return not self.ledger

    async def aclose(self) -> None:
        """Stop the reconciler after one last attempt to write pending usage."""
        if self._background:
            await asyncio.wait(self._background, timeout=2.0)
        task, self._reconciler = self._reconciler, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.ledger:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.reconcile_now(), timeout=2.0)
            if self.ledger:
                kept = "kept in its journal for the next process" if self.ledger.journal else "lost"
                log.error("budget: closing with locally counted usage that never reached Redis (%s)", kept)
        if self.ledger.journal is not None:
            self.ledger.journal.close()
        await self.store.aclose()


def create_limiter(
    settings: Settings,
    redis: redis.asyncio.Redis | redis.asyncio.RedisCluster | None,
    clock: Callable[[], float] = time.time,
) -> Limiter:
    """The limiter for this process: Redis-backed when a client is given, else in-process."""
    store: BudgetStore = RedisStore(redis) if redis is not None else MemoryStore()
    # Only a Redis store can be unreachable, so only it needs its pending work on disk.
    journal = PendingJournal(settings.spool_dir / "budget") if redis is not None else None
    return BudgetLimiter(
        store,
        mode=settings.budget_mode,
        failure_policy=settings.budget_redis_failure,
        wait_ms=settings.budget_wait_ms,
        reservation_ttl_s=settings.reservation_ttl_s,
        clock=clock,
        journal=journal,
    )

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
from app.budgets.headers import budget_headers, remaining, rfc3339
from app.budgets.limits import NO_LIMITS, limits_vector
from app.budgets.local_ledger import LocalLedger
from app.budgets.memory_store import MemoryStore
from app.budgets.redis_store import RedisStore
from app.budgets.store import BudgetStore, ReserveOutcome, StoreUnavailable, WindowState
from app.budgets.windows import (
    N_KINDS,
    N_WINDOWS,
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


class BudgetExceeded(Exception):
    """A request does not fit a budget window. The API answers 429 in the client's format.

    ``used`` is settled usage in the window; ``reserved`` what requests in flight hold (not counting
    this one). ``retry_after_s`` is the true wait: the window's reset when settled usage alone leaves
    no room, 1 s when only in-flight reservations were in the way. (openai-python 1.x honours
    ``retry-after`` only up to 60 s and 3.x up to 120 s — beyond that it does not retry at all, which
    is right for a day or month budget.)
    """

    def __init__(
        self,
        *,
        window: str,
        scope: str,
        used: int | Decimal,
        reserved: int | Decimal,
        limit: int | Decimal,
        requested: int | Decimal,
        reset_at: datetime,
        retry_after_s: int,
    ) -> None:
        self.window = window
        self.scope = scope
        self.used = used
        self.reserved = reserved
        self.limit = limit
        self.requested = requested
        self.reset_at = reset_at
        self.retry_after_s = retry_after_s
        super().__init__(self.message())

    @property
    def blocked_by_in_flight(self) -> bool:
        """Settled usage alone would have left room: other requests' reservations were in the way."""
        return self.used + self.requested <= self.limit

    @property
    def never_fits(self) -> bool:
        """The request alone is larger than the whole limit (retrying cannot help)."""
        return self.requested > self.limit

    def _amount(self, value: int | Decimal) -> str:
        if isinstance(value, Decimal):
            return f"${value:,.6f}".rstrip("0").rstrip(".")
        unit = "requests" if self.window == "requests_per_minute" else "tokens"
        return f"{value:,} {unit}"

    def message(self) -> str:
        owner = "Team" if self.scope == "team" else "API key"
        text = f"{owner} budget '{self.window}' exceeded: {self._amount(self.used)} used of {self._amount(self.limit)}"
        if self.reserved:
            text += f" ({self._amount(self.reserved)} more reserved by requests in flight)"
        text += f"; this request needs up to {self._amount(self.requested)}."
        if self.never_fits:
            text += " That is more than the whole limit: lower max_tokens or shorten the prompt."
        text += f" The window resets at {rfc3339(self.reset_at.timestamp())}."
        return text


class BudgetBackendUnavailable(Exception):
    """The budget store (Redis) is unreachable and the policy is fail-closed. The API answers 503."""

    def message(self) -> str:
        return "Budget enforcement is temporarily unavailable (its Redis cannot be reached); retry shortly."


@dataclass(slots=True, eq=False)
class Admission:
    """A request's reservation. Opaque to the pipeline except ``headers_for``."""

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
    reserved_in_store: bool = False  # a reservation exists in the store under reservation_id
    degraded: bool = False  # admitted under fail-open while the store was unreachable
    settled: bool = field(default=False)

    @property
    def unlimited(self) -> bool:
        return self.windows is None

    def headers_for(self, client_format: str) -> dict[str, str]:
        """Remaining-budget headers for the tightest token and request windows (none if unlimited)."""
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
    async def admit(self, principal: Principal, *, tokens: int, usd: Decimal, request_id: str) -> Admission: ...

    async def readmit(self, admission: Admission, *, tokens: int, usd: Decimal) -> Admission: ...

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
        self.ledger = LocalLedger()
        self._down_until = 0.0
        self._reconciler: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._instance = os.urandom(4).hex()
        self._counter = itertools.count()

    # ---- admission ----------------------------------------------------------------------------

    async def admit(self, principal: Principal, *, tokens: int, usd: Decimal, request_id: str) -> Admission:
        team_limits = limits_vector(principal.team_limits)
        key_limits = limits_vector(principal.key_limits)
        now = self.clock()
        if team_limits == NO_LIMITS and key_limits == NO_LIMITS:
            return Admission(
                team_id=principal.team_id,
                key_id=principal.key_id,
                request_id=request_id,
                reservation_id="",
                tokens=tokens,
                usd=usd,
                admitted_at=now,
                expires_at=now + self.reservation_ttl_s,
                windows=None,
            )
        admission = Admission(
            team_id=principal.team_id,
            key_id=principal.key_id,
            request_id=request_id,
            reservation_id=f"{request_id}~{self._instance}{next(self._counter):x}",
            tokens=tokens,
            usd=usd,
            admitted_at=now,
            expires_at=now,
            windows=None,
            team_limits=team_limits,
            key_limits=key_limits,
        )
        return await self._reserve(admission, replace=False)

    async def readmit(self, admission: Admission, *, tokens: int, usd: Decimal) -> Admission:
        """Swap the reservation for a new worst case (e.g. a fallback to a pricier model), atomically.

        On ``BudgetExceeded`` the original reservation still stands and must still be settled.
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
        )
        if admission.unlimited or admission.degraded:
            return updated
        result = await self._reserve(updated, replace=True)
        admission.settled = True  # the old handle is spent: settle the new one
        return result

    async def _reserve(self, admission: Admission, *, replace: bool) -> Admission:
        amounts = amounts_vector(admission.tokens, usd_to_micros(admission.usd))
        deadline = time.monotonic() + self.wait_s
        delay = FIRST_POLL_S
        while True:
            now = self.clock()
            ws = windows_at(admission.team_id, admission.key_id, now)
            admission.admitted_at = now
            admission.expires_at = now + self.reservation_ttl_s
            admission.windows = ws
            if self._breaker_open():
                return self._unavailable(admission, None)
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
                return self._unavailable(admission, exc)
            except asyncio.CancelledError:
                # The script may have run before the cancellation (the client went away): free
                # whatever it reserved now rather than when the reservation expires.
                self._release_soon(admission, ws)
                raise
            if outcome.ok:
                admission.states = outcome.states
                admission.reserved_in_store = True
                return admission
            left = deadline - time.monotonic()
            if outcome.hard or left <= 0:
                raise self._exceeded(outcome, ws, now, amounts)
            await self.store.wait_for_release(min(delay, left))
            delay = min(delay * 2, MAX_POLL_S)

    def _release_soon(self, admission: Admission, ws: WindowSet) -> None:
        async def release() -> None:
            with contextlib.suppress(Exception):
                await self.store.settle(ws, admission.reservation_id, NOTHING, now=self.clock(), grace_s=self.grace_s)

        task = asyncio.get_running_loop().create_task(release())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _unavailable(self, admission: Admission, exc: Exception | None) -> Admission:
        if self.failure_policy == "closed":
            raise BudgetBackendUnavailable("budget store unreachable") from exc
        admission.degraded = True
        admission.states = ()
        return admission

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
        """Replace the reservation with actual usage. Never raises for store errors."""
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
        if admission.degraded or self._breaker_open():
            self._defer(admission, ws, amounts)
            return
        try:
            await self.store.settle(ws, admission.reservation_id, amounts, now=now, grace_s=self.grace_s)
        except StoreUnavailable as exc:
            self._trip(exc)
            self._defer(admission, ws, amounts)
        except Exception:
            log.exception("budget: settle of %s failed; counting it locally", admission.request_id)
            self._defer(admission, ws, amounts)

    def _defer(self, admission: Admission, ws: WindowSet, amounts: tuple[int, ...]) -> None:
        for w in range(N_WINDOWS):
            amount = amounts[w % N_KINDS]
            if amount:
                self.ledger.add_usage(
                    admission.team_id, ws.period_key(w), ws.field(w), amount, ws.end_of(w) + self.grace_s
                )
        if admission.reserved_in_store:
            self.ledger.add_release(admission.team_id, admission.reservation_id)
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
        """Per scope and window: used, reserved, limit, remaining, reset_at. USD amounts are strings."""
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
            used = state.used + self.ledger.pending_usage(ws.period_key(w), ws.field(w))
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
                log.error("budget: closing with locally counted usage that never reached Redis")
        await self.store.aclose()


def create_limiter(
    settings: Settings,
    redis: redis.asyncio.Redis | redis.asyncio.RedisCluster | None,
    clock: Callable[[], float] = time.time,
) -> Limiter:
    """The limiter for this process: Redis-backed when a client is given, else in-process."""
    store: BudgetStore = RedisStore(redis) if redis is not None else MemoryStore()
    return BudgetLimiter(
        store,
        mode=settings.budget_mode,
        failure_policy=settings.budget_redis_failure,
        wait_ms=settings.budget_wait_ms,
        reservation_ttl_s=settings.reservation_ttl_s,
        clock=clock,
    )

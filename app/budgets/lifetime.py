"""A token budget over a credential's whole life: the browser token's own budget.

The windowed limiter (``limiter.py``) counts calendar windows — minute, UTC day, UTC month — per
team and key, in twelve fixed slots per Lua call. A browser token's budget is none of those: it
spans the token's life (at most an hour, straddling any window boundary), so it has its own small
counter with the limiter's semantics: ``reserve`` the request's worst case atomically (settled +
in flight + this request must fit), ``resize`` the reservation for a pricier fallback, ``settle``
with the actual usage. Reservations expire after ``reservation_ttl_s`` like the limiter's, so a
process killed mid-request does not hold the budget forever.

Storage: one Redis hash per token, under its team's hash tag (``tw:{T}:bt:<token id>``): ``used``
plus one ``r:<reservation id>`` field per request in flight (``<amount>:<expiry>``); each step is one
Lua script. Without Redis, the same algorithm in process memory. The hash expires once the token
can no longer be used (its expiry plus the reservation TTL).

When Redis is unreachable ``budget_redis_failure`` decides as for the team budgets: ``closed``
refuses the request (503); ``open`` admits it without counting it against the token's budget (the
team's budgets still count it) — the token's expiry still bounds what it can spend.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import NoScriptError, RedisError

from app.budgets.limiter import BudgetBackendUnavailable
from app.budgets.redis_store import redis_unavailable
from app.budgets.store import StoreUnavailable
from app.budgets.windows import team_keys

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Counted:
    """The budget as one step saw it: settled usage and what is in flight (this request included
    when it fit; excluded when it did not)."""

    ok: bool
    used: int
    reserved: int


class LifetimeStore(Protocol):
    async def reserve(
        self,
        key: str,
        reservation_id: str,
        amount: int,
        limit: int,
        *,
        now: float,
        hold_until: float,
        keep_until: float,
    ) -> Counted: ...

    async def settle(self, key: str, reservation_id: str, amount: int, *, keep_until: float) -> None: ...


class LifetimeBudgetExceeded(Exception):
    def __init__(self, *, used: int, reserved: int, limit: int, requested: int) -> None:
        self.used, self.reserved, self.limit, self.requested = used, reserved, limit, requested
        super().__init__(self.message())

    @property
    def blocked_by_in_flight(self) -> bool:
        return self.used + self.requested <= self.limit

    def message(self) -> str:
        if self.requested > self.limit:
            return (
                f"browser token budget too small: this request needs up to {self.requested:,} tokens, "
                f"the token's whole budget is {self.limit:,}. Lower max_tokens or mint a larger budget."
            )
        text = f"browser token budget exhausted: {self.used:,} of {self.limit:,} tokens used"
        if self.reserved:
            text += f" ({self.reserved:,} more reserved by requests in flight)"
        text += f"; this request needs up to {self.requested:,} tokens."
        if not self.blocked_by_in_flight:
            text += " Ask your backend for a new browser token."
        return text


@dataclass(slots=True, eq=False)
class Hold:
    """One request's reservation against a lifetime budget."""

    key: str
    reservation_id: str
    limit: int
    tokens: int
    keep_until: float
    used: int = 0
    reserved: int = 0
    counted: bool = True  # False: admitted unmetered while the store was unreachable (fail-open)
    settled: bool = False

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used - self.reserved)

    def headers(self) -> dict[str, str]:
        if not self.counted:
            return {}
        return {
            "x-tollway-browser-budget-limit": str(self.limit),
            "x-tollway-browser-budget-remaining": str(self.remaining),
        }


class LifetimeBudget:
    def __init__(
        self,
        store: LifetimeStore,
        *,
        failure_policy: str = "closed",
        reservation_ttl_s: int = 900,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.failure_policy = failure_policy
        self.reservation_ttl_s = reservation_ttl_s
        self.clock = clock

    async def reserve(
        self, *, team_id: str, budget_id: str, limit: int, tokens: int, request_id: str, lives_until: float
    ) -> Hold:
        """Reserve ``tokens`` of ``budget_id``'s ``limit``; ``LifetimeBudgetExceeded`` if they do not fit."""
        hold = Hold(
            key=f"{team_keys(team_id).prefix}bt:{budget_id}",
            reservation_id=request_id,
            limit=limit,
            tokens=tokens,
            keep_until=lives_until + self.reservation_ttl_s,
        )
        return await self._reserve(hold)

    async def resize(self, hold: Hold, *, tokens: int) -> Hold:
        """The same reservation for a new worst case (a fallback to another model), atomically.
        On ``LifetimeBudgetExceeded`` the old reservation still stands."""
        if not hold.counted:
            hold.tokens = tokens
            return hold
        resized = Hold(hold.key, hold.reservation_id, hold.limit, tokens, hold.keep_until)
        return await self._reserve(resized)

    async def _reserve(self, hold: Hold) -> Hold:
        now = self.clock()
        try:
            seen = await self.store.reserve(
                hold.key,
                hold.reservation_id,
                hold.tokens,
                hold.limit,
                now=now,
                hold_until=now + self.reservation_ttl_s,
                keep_until=hold.keep_until,
            )
        except StoreUnavailable as exc:
            if self.failure_policy == "closed":
                raise BudgetBackendUnavailable("budget store unreachable") from exc
            log.warning("browser token budget not counted: store unreachable (%s)", exc)
            hold.counted = False
            return hold
        if not seen.ok:
            raise LifetimeBudgetExceeded(
                used=seen.used, reserved=seen.reserved, limit=hold.limit, requested=hold.tokens
            )
        hold.used, hold.reserved = seen.used, seen.reserved
        return hold

    async def settle(self, hold: Hold, *, tokens: int) -> None:
        """Replace the reservation with the actual usage. Never raises for store errors."""
        if hold.settled:
            return
        hold.settled = True
        if not hold.counted:
            return
        try:
            await self.store.settle(hold.key, hold.reservation_id, max(0, tokens), keep_until=hold.keep_until)
        except Exception:
            log.exception("browser token budget: settle of %s failed; its usage is not counted", hold.reservation_id)


# ---- stores ----------------------------------------------------------------------------------------


class MemoryLifetimeStore:
    """The Redis scripts' algorithm in process memory (each step runs without awaiting: atomic)."""

    SWEEP_EVERY = 1024

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._budgets: dict[str, tuple[float, int, dict[str, tuple[int, float]]]] = {}
        self._calls = 0

    async def reserve(
        self,
        key: str,
        reservation_id: str,
        amount: int,
        limit: int,
        *,
        now: float,
        hold_until: float,
        keep_until: float,
    ) -> Counted:
        self._sweep(now)
        _, used, holds = self._budgets.get(key, (keep_until, 0, {}))
        for rid in [r for r, (_, until) in holds.items() if until <= now]:
            del holds[rid]
        inflight = sum(a for r, (a, _) in holds.items() if r != reservation_id)
        if used + inflight + amount > limit:
            return Counted(False, used, inflight)
        holds[reservation_id] = (amount, hold_until)
        self._budgets[key] = (keep_until, used, holds)
        return Counted(True, used, inflight + amount)

    async def settle(self, key: str, reservation_id: str, amount: int, *, keep_until: float) -> None:
        _, used, holds = self._budgets.get(key, (keep_until, 0, {}))
        holds.pop(reservation_id, None)
        self._budgets[key] = (keep_until, used + amount, holds)

    def _sweep(self, now: float) -> None:
        self._calls += 1
        if self._calls % self.SWEEP_EVERY:
            return
        for key in [k for k, (until, _, _) in self._budgets.items() if until <= now]:
            del self._budgets[key]


RESERVE_LUA = """
local key, rid = KEYS[1], 'r:' .. ARGV[1]
local amount, limit, now = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local used, inflight = 0, 0
local fields = redis.call('HGETALL', key)
for i = 1, #fields, 2 do
  local f, v = fields[i], fields[i + 1]
  if f == 'used' then
    used = tonumber(v)
  elseif f ~= rid then
    local sep = string.find(v, ':', 1, true)
    if tonumber(string.sub(v, sep + 1)) <= now then
      redis.call('HDEL', key, f)
    else
      inflight = inflight + tonumber(string.sub(v, 1, sep - 1))
    end
  end
end
if used + inflight + amount > limit then return {0, used, inflight} end
redis.call('HSET', key, rid, ARGV[2] .. ':' .. ARGV[5])
redis.call('EXPIREAT', key, ARGV[6])
return {1, used, inflight + amount}
"""

SETTLE_LUA = """
redis.call('HDEL', KEYS[1], 'r:' .. ARGV[1])
if tonumber(ARGV[2]) > 0 then redis.call('HINCRBY', KEYS[1], 'used', ARGV[2]) end
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return 1
"""


class RedisLifetimeStore:
    """Each step one Lua script on the budget's hash (one key: Cluster-safe)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._scripts = {
            name: (source, hashlib.sha1(source.encode()).hexdigest())
            for name, source in (("reserve", RESERVE_LUA), ("settle", SETTLE_LUA))
        }

    async def _run(self, name: str, key: str, *args: Any) -> Any:
        source, sha = self._scripts[name]
        try:
            try:
                return await self.redis.evalsha(sha, 1, key, *args)
            except NoScriptError:
                await self.redis.script_load(source)
                return await self.redis.evalsha(sha, 1, key, *args)
        except (TimeoutError, OSError) as exc:
            raise StoreUnavailable(f"Redis unavailable: {exc}") from exc
        except RedisError as exc:
            if redis_unavailable(exc):
                raise StoreUnavailable(f"Redis unavailable: {exc}") from exc
            raise

    async def reserve(
        self,
        key: str,
        reservation_id: str,
        amount: int,
        limit: int,
        *,
        now: float,
        hold_until: float,
        keep_until: float,
    ) -> Counted:
        ok, used, reserved = await self._run(
            "reserve", key, reservation_id, amount, limit, now, int(hold_until), int(keep_until) + 1
        )
        return Counted(bool(int(ok)), int(used), int(reserved))

    async def settle(self, key: str, reservation_id: str, amount: int, *, keep_until: float) -> None:
        await self._run("settle", key, reservation_id, amount, int(keep_until) + 1)


def create_lifetime_budget(settings: Any, redis: Any) -> LifetimeBudget:
    store: LifetimeStore = RedisLifetimeStore(redis) if redis is not None else MemoryLifetimeStore()
    return LifetimeBudget(
        store, failure_policy=settings.budget_redis_failure, reservation_ttl_s=settings.reservation_ttl_s
    )

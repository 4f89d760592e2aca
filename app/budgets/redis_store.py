"""The Redis budget store: every step is one Lua script, so one round trip and atomic.

Keys (all under the team's hash tag, so a team lives in one Redis Cluster slot):

``tw:{T}:lim:t`` / ``tw:{T}:lim:k:<key_id>``
    published limits (hash: ``v`` = valid until, by the caller's clock, + one field per kind,
    ``-1`` = unlimited); the key also carries a Redis TTL so abandoned records go away.
``tw:{T}:u:m:<minute start>`` / ``tw:{T}:u:d:<day start>`` / ``tw:{T}:u:mo:<month start>``
    settled usage of every window of that period, one field each (``t:tpd``, ``k:<key_id>:rpm``,
    USD in micro-dollars), expiring after the period ended (plus the reservation TTL and a minute).
``tw:{T}:inf``
    hash: slot (``<usage hash>|<field>``) → amount reserved by requests in flight.
``tw:{T}:res`` / ``tw:{T}:exp``
    reservations: id → JSON list of (slot, amount); and id → expiry (sorted set).
``tw:{T}:rc:<batch>``
    marker of an applied reconcile batch (makes a retried batch a no-op).

Scripts never call ``TIME``: the caller's clock is an argument, so tests can roll windows. Every key a
script touches is declared in ``KEYS`` (a reservation record names in-flight *fields* of the declared
``tw:{T}:inf`` hash, not keys), so the scripts are Cluster-safe. Numbers travel packed into a few
comma-separated arguments: redis-py's per-argument encoding was the largest cost per call.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.budgets.resp import RespClient
from app.budgets.store import ReconcileBatch, ReserveOutcome, StoreUnavailable, WindowState
from app.budgets.windows import N_KINDS, N_WINDOWS, WindowSet, team_keys

log = logging.getLogger(__name__)

LIMITS_TTL_S = 600  # published limits heal from the database within this long after a missed publish
RECONCILE_MARKER_TTL_S = 86_400

_COMMON_LUA = """
local KIND = {'rpm', 'tpm', 'tpd', 'tpmo', 'usdd', 'usdm'}

local function split(s)
  local out = {}
  for v in string.gmatch(s, '[^,]+') do out[#out + 1] = v end
  return out
end

-- Window w (1..12): team scope for 1..6, key scope for 7..12, kind (w - 1) % 6 + 1.
local function field(w, key_id)
  local kind = KIND[(w - 1) % 6 + 1]
  if w <= 6 then return 't:' .. kind end
  return 'k:' .. key_id .. ':' .. kind
end

local function release(res, exp, inf, id)
  local rec = redis.call('HGET', res, id)
  if rec then
    local list = cjson.decode(rec)
    for i = 1, #list, 2 do
      if redis.call('HINCRBY', inf, list[i], '-' .. list[i + 1]) <= 0 then
        redis.call('HDEL', inf, list[i])
      end
    end
    redis.call('HDEL', res, id)
  end
  redis.call('ZREM', exp, id)
end

local function purge(res, exp, inf, now)
  local expired = redis.call('ZRANGEBYSCORE', exp, '-inf', now, 'LIMIT', 0, 512)
  for _, id in ipairs(expired) do release(res, exp, inf, id) end
end

-- Published limits while the record is valid (field v: valid until, by the caller's clock, which
-- is always ARGV[1]), else the fallback limits fallback[base + 1 .. base + 6].
local function limits_of(key, fallback, base)
  local v = redis.call('HMGET', key, 'v', 'rpm', 'tpm', 'tpd', 'tpmo', 'usdd', 'usdm')
  local published = v[1] and tonumber(v[1]) > tonumber(ARGV[1])
  local out = {}
  for i = 1, 6 do
    if published then out[i] = tonumber(v[i + 1]) else out[i] = tonumber(fallback[base + i]) end
  end
  return out
end
"""

# KEYS: 1 team limits, 2 key limits, 3 reservations, 4 expiries, 5 in-flight,
#       6 minute usage hash, 7 day usage hash, 8 month usage hash
# ARGV: 1 now, 2 reservation id, 3 reservation expiry, 4 state ttl, 5 replace (0/1), 6 key id,
#       7 amounts per kind "a1,..,a6", 8 fallback limits "team1,..,team6,key1,..,key6"
ADMIT_LUA = (
    _COMMON_LUA
    + """
local PERIOD = {6, 6, 7, 8, 7, 8}
local rid = ARGV[2]
-- An id that already holds a reservation is replaced, never added twice: a retried admit (its reply
-- lost on a broken connection) must not leave a second, never-released amount in flight.
local replace = ARGV[5] == '1' or redis.call('HEXISTS', KEYS[3], rid) == 1
local amounts = split(ARGV[7])
local fallback = split(ARGV[8])
purge(KEYS[3], KEYS[4], KEYS[5], ARGV[1])
local limits = {limits_of(KEYS[1], fallback, 0), limits_of(KEYS[2], fallback, 6)}

local old = {}
if replace then
  local rec = redis.call('HGET', KEYS[3], rid)
  if rec then
    local list = cjson.decode(rec)
    for i = 1, #list, 2 do old[list[i]] = tonumber(list[i + 1]) end
  end
end

local active = {}
local soft, hard = nil, nil
for w = 1, 12 do
  local kind = (w - 1) % 6 + 1
  local limit = limits[(w <= 6) and 1 or 2][kind]
  if limit >= 0 then
    local hash = KEYS[PERIOD[kind]]
    local f = field(w, ARGV[6])
    local slot = hash .. '|' .. f
    local amount = tonumber(amounts[kind])
    local used = tonumber(redis.call('HGET', hash, f) or '0')
    local reserved = tonumber(redis.call('HGET', KEYS[5], slot) or '0') - (old[slot] or 0)
    if used + reserved + amount > limit then
      if used + amount > limit then
        if not hard then hard = {0, w, used, reserved, limit, 1} end
      elseif not soft then
        soft = {0, w, used, reserved, limit, 0}
      end
    end
    active[#active + 1] = {w, slot, kind, used, reserved, limit}
  end
end
if hard then return hard end
if soft then return soft end

if replace then release(KEYS[3], KEYS[4], KEYS[5], rid) end
local rec = {}
local out = {1}
for _, a in ipairs(active) do
  local amount = amounts[a[3]]
  if amount ~= '0' then
    redis.call('HINCRBY', KEYS[5], a[2], amount)
    rec[#rec + 1] = a[2]
    rec[#rec + 1] = amount
  end
  out[#out + 1] = a[1]
  out[#out + 1] = a[4]
  out[#out + 1] = a[5] + tonumber(amount)
  out[#out + 1] = a[6]
end
if #rec > 0 then
  redis.call('HSET', KEYS[3], rid, cjson.encode(rec))
  redis.call('ZADD', KEYS[4], ARGV[3], rid)
  redis.call('EXPIRE', KEYS[3], ARGV[4])
  redis.call('EXPIRE', KEYS[4], ARGV[4])
  redis.call('EXPIRE', KEYS[5], ARGV[4])
end
return out
"""
)

# KEYS: 1 reservations, 2 expiries, 3 in-flight, 4 minute usage hash, 5 day, 6 month
# ARGV: 1 reservation id, 2 key id, 3 amounts per kind "a1,..,a6", 4 ttl per hash "tm,td,tmo"
SETTLE_LUA = (
    _COMMON_LUA
    + """
local PERIOD = {4, 4, 5, 6, 5, 6}
release(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
local amounts = split(ARGV[3])
local ttls = split(ARGV[4])
local touched = {}
for w = 1, 12 do
  local kind = (w - 1) % 6 + 1
  if amounts[kind] ~= '0' then
    redis.call('HINCRBY', KEYS[PERIOD[kind]], field(w, ARGV[2]), amounts[kind])
    touched[PERIOD[kind]] = true
  end
end
for h = 4, 6 do
  if touched[h] then redis.call('EXPIRE', KEYS[h], ttls[h - 3]) end
end
return 1
"""
)

# KEYS as ADMIT. ARGV: 1 now, 2 key id, 3 fallback limits (as ADMIT's ARGV[8]).
STATUS_LUA = (
    _COMMON_LUA
    + """
local PERIOD = {6, 6, 7, 8, 7, 8}
purge(KEYS[3], KEYS[4], KEYS[5], ARGV[1])
local fallback = split(ARGV[3])
local limits = {limits_of(KEYS[1], fallback, 0), limits_of(KEYS[2], fallback, 6)}
local out = {}
for w = 1, 12 do
  local kind = (w - 1) % 6 + 1
  local hash = KEYS[PERIOD[kind]]
  local f = field(w, ARGV[2])
  out[#out + 1] = tonumber(redis.call('HGET', hash, f) or '0')
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[5], hash .. '|' .. f) or '0')
  out[#out + 1] = limits[(w <= 6) and 1 or 2][kind]
end
return out
"""
)

# KEYS: 1 marker, 2 reservations, 3 expiries, 4 in-flight, 5..4+n usage hashes, then m limit records
# ARGV: 1 marker ttl, 2 n, 3 m, 4 e, 5..4+n ttl per hash, then e x (hash index 1..n, field, amount),
#       then reservation ids to release
RECONCILE_LUA = (
    _COMMON_LUA
    + """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local n = tonumber(ARGV[2])
local m = tonumber(ARGV[3])
local e = tonumber(ARGV[4])
local base = 4 + n
for i = 0, e - 1 do
  local h = tonumber(ARGV[base + 3 * i + 1])
  redis.call('HINCRBY', KEYS[4 + h], ARGV[base + 3 * i + 2], ARGV[base + 3 * i + 3])
end
for h = 1, n do redis.call('EXPIRE', KEYS[4 + h], ARGV[4 + h]) end
for j = 1, m do redis.call('DEL', KEYS[4 + n + j]) end
for r = base + 3 * e + 1, #ARGV do release(KEYS[2], KEYS[3], KEYS[4], ARGV[r]) end
return 1
"""
)

# KEYS: 1 limits record. ARGV: 1 valid until (caller's clock), 2 redis ttl, 3..8 limit per kind.
PUBLISH_LUA = """
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'rpm', ARGV[3], 'tpm', ARGV[4], 'tpd', ARGV[5],
           'tpmo', ARGV[6], 'usdd', ARGV[7], 'usdm', ARGV[8])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# Server-side conditions that mean "cannot use Redis now", as opposed to a bug in a script.
_UNAVAILABLE_PREFIXES = ("OOM", "READONLY", "MASTERDOWN", "LOADING", "CLUSTERDOWN", "TRYAGAIN", "NOREPLICAS")


def _unavailable(exc: RedisError) -> bool:
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(_UNAVAILABLE_PREFIXES)


def connect_budget_redis(url: str, *, cluster: bool = False, **overrides: Any) -> aioredis.Redis | RedisCluster:
    """A Redis client suited to the budget path: fail fast instead of redis-py's default of ten
    retries with backoff (seconds of stall per request when Redis is down)."""
    options: dict[str, Any] = {
        "socket_connect_timeout": 0.5,
        "socket_timeout": 2.0,
        "retry": Retry(NoBackoff(), 1),
        "health_check_interval": 0,
    }
    options.update(overrides)
    if cluster:
        options.pop("health_check_interval", None)
        return RedisCluster.from_url(url, **options)
    return aioredis.Redis.from_url(url, **options)


def _pack(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values))


class _Script:
    """A Lua script known by its SHA1, loaded on first ``NOSCRIPT``."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class _Batcher:
    """Script calls for a single Redis server.

    Over the lean connection (``app.budgets.resp``, plain TCP: the usual case) each call is written
    at once and the connection pipelines them. Through redis-py (TLS, Unix sockets), the calls made
    while a round trip is being prepared are sent as one pipelined round trip:

    Each call is still a single atomic script execution and costs one round trip, but concurrent
    requests share the write and the read, and redis-py's per-command overhead (connection checkout,
    send, receive) is paid once per batch. At low load a batch holds one call and nothing waits: the
    flush runs on the next loop iteration. At most ``max_in_flight`` batches are on the wire at once
    (so budgets use at most that many connections); calls made meanwhile form the next batch.
    """

    def __init__(self, redis: aioredis.Redis, *, max_batch: int = 256, max_in_flight: int = 8) -> None:
        self.redis = redis
        self.fast = RespClient.for_redis(redis)  # None: redis-py does the round trips
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._queue: list[tuple[_Script, Sequence[Any], Sequence[Any], asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    async def call(self, script: _Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        if self.fast is not None:
            return await self._call_now(script, keys, args)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((script, keys, args, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        # A caller cancelled before its call left (client gone) needs no reservation made for it.
        self._queue = [call for call in self._queue if not call[3].done()]
        while self._queue and len(self._sending) < self.max_in_flight:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if self._queue and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _send(self, batch: list[tuple[_Script, Sequence[Any], Sequence[Any], asyncio.Future[Any]]]) -> None:
        try:
            results = await self._execute([(script, keys, args) for script, keys, args, _ in batch])
        except BaseException as exc:  # the whole round trip failed: every caller learns why
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():  # the caller was cancelled
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _call_now(self, script: _Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """On the lean connection every call is written at once: commands on one connection are
        pipelined by nature, so waiting a loop iteration to batch them would only add latency to
        every admission (the write it saves is a few microseconds)."""
        assert self.fast is not None
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        (result,) = await self.fast.execute((command,))
        if _is_noscript(result):  # first use on this server (or after a restart / SCRIPT FLUSH)
            await self._load(script)
            (result,) = await self.fast.execute((command,))
        if isinstance(result, Exception):
            raise result
        return result

    async def _execute(self, calls: list[tuple[_Script, Sequence[Any], Sequence[Any]]]) -> list[Any]:
        results = await self._round_trip([(script.sha, keys, args) for script, keys, args in calls])
        missing = [i for i, result in enumerate(results) if _is_noscript(result)]
        if missing:  # first use on this server (or after a restart / SCRIPT FLUSH)
            for script in {calls[i][0] for i in missing}:
                await self._load(script)
            retried = await self._round_trip([(calls[i][0].sha, calls[i][1], calls[i][2]) for i in missing])
            for i, result in zip(missing, retried, strict=True):
                results[i] = result
        return results

    async def _round_trip(self, calls: list[tuple[str, Sequence[Any], Sequence[Any]]]) -> list[Any]:
        if self.fast is not None:
            return await self.fast.execute([("EVALSHA", sha, len(keys), *keys, *args) for sha, keys, args in calls])
        async with self.redis.pipeline(transaction=False) as pipe:
            for sha, keys, args in calls:
                pipe.evalsha(sha, len(keys), *keys, *args)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    async def _load(self, script: _Script) -> None:
        if self.fast is None:
            await self.redis.script_load(script.source)
            return
        (reply,) = await self.fast.execute([("SCRIPT", "LOAD", script.source)])
        if isinstance(reply, Exception):
            raise reply

    async def aclose(self) -> None:
        if self.fast is not None:
            await self.fast.aclose()


def _is_noscript(result: Any) -> bool:
    return isinstance(result, NoScriptError) or (
        isinstance(result, ResponseError) and str(result).startswith("NOSCRIPT")
    )


class _Direct:
    """One EVALSHA per call, for Redis Cluster: redis-py's cluster pipeline refuses scripts, and the
    cluster client routes each call to its team's slot by the first key."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    async def call(self, script: _Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.redis.script_load(script.source)  # the cluster client loads it on every primary
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)


class RedisStore:
    """Budgets in Redis (a single server, Sentinel-managed or Cluster: ``redis.asyncio.Redis`` or
    ``redis.asyncio.cluster.RedisCluster``)."""

    def __init__(self, redis: aioredis.Redis | RedisCluster, *, limits_ttl_s: int = LIMITS_TTL_S) -> None:
        self.redis = redis
        self.limits_ttl_s = limits_ttl_s
        self._caller: _Batcher | _Direct = _Direct(redis) if isinstance(redis, RedisCluster) else _Batcher(redis)
        self._admit = _Script(ADMIT_LUA)
        self._settle = _Script(SETTLE_LUA)
        self._status = _Script(STATUS_LUA)
        self._publish = _Script(PUBLISH_LUA)
        self._reconcile = _Script(RECONCILE_LUA)

    async def _run(self, script: _Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await self._caller.call(script, keys, args)
        except RedisError as exc:
            if _unavailable(exc):
                raise StoreUnavailable(f"Redis unavailable: {exc}") from exc
            raise
        except OSError as exc:
            raise StoreUnavailable(f"Redis unavailable: {exc}") from exc

    @staticmethod
    def _state_keys(ws: WindowSet) -> list[str]:
        tk = team_keys(ws.team_id)
        return [
            tk.team_limits,
            tk.key_limits(ws.key_id),
            tk.reservations,
            tk.expiries,
            tk.inflight,
            *ws.period_keys,
        ]

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
        args = (
            repr(now),
            reservation_id,
            repr(expires_at),
            state_ttl_s,
            1 if replace else 0,
            ws.key_id,
            _pack(amounts),
            _pack(team_limits + key_limits),
        )
        reply = await self._run(self._admit, self._state_keys(ws), args)
        if reply[0] == 1:
            return ReserveOutcome(
                ok=True,
                states=tuple(
                    WindowState(w=reply[i] - 1, used=reply[i + 1], reserved=reply[i + 2], limit=reply[i + 3])
                    for i in range(1, len(reply), 4)
                ),
            )
        failed = WindowState(w=reply[1] - 1, used=reply[2], reserved=reply[3], limit=reply[4])
        return ReserveOutcome(ok=False, failed=failed, hard=reply[5] == 1)

    async def settle(
        self, ws: WindowSet, reservation_id: str, amounts: tuple[int, ...], *, now: float, grace_s: int
    ) -> None:
        tk = team_keys(ws.team_id)
        ttls = _pack(tuple(max(1, int(end + grace_s - now)) for end in ws.period_ends))
        await self._run(
            self._settle,
            (tk.reservations, tk.expiries, tk.inflight, *ws.period_keys),
            (reservation_id, ws.key_id, _pack(amounts), ttls),
        )

    async def read(
        self, ws: WindowSet, team_limits: tuple[int, ...], key_limits: tuple[int, ...], *, now: float
    ) -> tuple[WindowState, ...]:
        args = (repr(now), ws.key_id, _pack(team_limits + key_limits))
        reply = await self._run(self._status, self._state_keys(ws), args)
        return tuple(
            WindowState(w=w, used=reply[3 * w], reserved=reply[3 * w + 1], limit=reply[3 * w + 2])
            for w in range(N_WINDOWS)
        )

    async def publish(self, team_id: str, key_id: str | None, vector: tuple[int, ...], *, now: float) -> None:
        record = team_keys(team_id).limits(key_id)
        await self._run(self._publish, (record,), (repr(now + self.limits_ttl_s), self.limits_ttl_s, *vector))

    async def apply(self, batches: Sequence[ReconcileBatch], *, now: float) -> None:
        """Apply reconcile batches (each atomically and at most once), concurrently."""
        calls = [self._reconcile_call(batch, now) for batch in batches]
        await asyncio.gather(*(self._run(self._reconcile, keys, args) for keys, args in calls))

    @staticmethod
    def _reconcile_call(batch: ReconcileBatch, now: float) -> tuple[list[str], list[Any]]:
        tk = team_keys(batch.team_id)
        # Usage for a window that ended long ago (and whose hash has expired) no longer matters.
        hashes = [h for h in batch.usage if batch.expires.get(h, 0) > now]
        invalidate = sorted(batch.invalidate)
        entries: list[Any] = []
        for index, period_key in enumerate(hashes, start=1):
            for field, amount in batch.usage[period_key].items():
                entries.extend((index, field, amount))
        keys = [
            tk.reconcile_marker(batch.batch_id),
            tk.reservations,
            tk.expiries,
            tk.inflight,
            *hashes,
            *invalidate,
        ]
        args: list[Any] = [RECONCILE_MARKER_TTL_S, len(hashes), len(invalidate), len(entries) // 3]
        args.extend(max(1, int(batch.expires[h] - now)) for h in hashes)
        args.extend(entries)
        args.extend(sorted(batch.releases))
        return keys, args

    async def wait_for_release(self, timeout_s: float) -> None:
        # Polling: a pub/sub wake-up would need a dedicated connection per process and a publish on
        # every settle; the waits are short (budget_wait_ms) and rare (only near the limit).
        await asyncio.sleep(timeout_s)

    async def aclose(self) -> None:
        # The redis-py client belongs to whoever created it (it is shared with other components);
        # the batcher's own connection is this store's.
        if isinstance(self._caller, _Batcher):
            await self._caller.aclose()


assert N_KINDS == 6 and N_WINDOWS == 12  # the scripts hard-code this layout

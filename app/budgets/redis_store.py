"""The Redis budget store: every step is one Lua script (``app/budgets/lua/``), so one round trip and
atomic, run through redis-py's asyncio client (hiredis parser, connection pool, ``Script`` objects:
EVALSHA with a ``SCRIPT LOAD`` on ``NOSCRIPT``).

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
    reservation records: id → JSON list of (slot, amount) while live, then ``s`` (settled) or ``x``
    (released on expiry); and id → when the record expires (sorted set).
``tw:{T}:rc:<batch>``
    marker of an applied reconcile batch (makes a retried batch a no-op).

Scripts read the caller's clock from an argument, so tests can roll windows; only the admit's
deadline is checked against Redis' own ``TIME`` (it must be real time). Every key a script touches is
declared in ``KEYS`` (a reservation record names in-flight *fields* of the declared ``tw:{T}:inf``
hash, not keys), so the scripts are Cluster-safe. Numbers travel packed into a few comma-separated
arguments: redis-py encodes every argument separately.

Every script is idempotent for its reservation id, so redis-py may safely resend a call whose
connection broke (or whose reply was garbled) on a fresh connection: the client retries once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from importlib.resources import files
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import HIREDIS_AVAILABLE

from app.budgets.store import (
    AdmitTooLate,
    AlreadySettled,
    PendingSettle,
    ReconcileBatch,
    ReserveOutcome,
    StoreUnavailable,
    WindowState,
)
from app.budgets.windows import N_KINDS, N_WINDOWS, WindowSet, team_keys

log = logging.getLogger(__name__)

LIMITS_TTL_S = 600  # published limits heal from the database within this long after a missed publish
RECONCILE_MARKER_TTL_S = 86_400
# How long a settled reservation id is remembered: a repeated or reconciled settle of it within this
# time is a no-op. Deferred settles are normally reconciled within a second of Redis answering again.
RECORD_TTL_S = 3_600
# A refused connection fails at once whatever these say; they bound a Redis that is up but slow (a
# loaded host, a failover). Tighter values turned a busy machine's scheduling delay into 503s.
CONNECT_TIMEOUT_S = 2.0
REPLY_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 64


def _lua(name: str) -> str:
    return (files("app.budgets") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


_COMMON = _lua("common")
ADMIT_LUA = _COMMON + _lua("admit")
SETTLE_LUA = _COMMON + _lua("settle")
STATUS_LUA = _COMMON + _lua("status")
RECONCILE_LUA = _COMMON + _lua("reconcile")
PUBLISH_LUA = _lua("publish")

# Server-side conditions that mean "cannot use Redis now", as opposed to a bug in a script.
_UNAVAILABLE_PREFIXES = ("OOM", "READONLY", "MASTERDOWN", "LOADING", "CLUSTERDOWN", "TRYAGAIN", "NOREPLICAS", "BUSY")


def redis_unavailable(exc: RedisError) -> bool:
    """Whether a redis-py error means "cannot use Redis now" (so: fail open or closed), not a bug."""
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, InvalidResponse)):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(_UNAVAILABLE_PREFIXES)


def connect_budget_redis(url: str, *, cluster: bool = False, **overrides: Any) -> aioredis.Redis | RedisCluster:
    """A redis-py client suited to the budget path (``redis://``, ``rediss://``, ``unix://``; Cluster).

    Short timeouts (connect 0.5 s, reply 1 s) instead of blocking requests on a stalled Redis; one
    retry, at once, on a fresh connection when a connection breaks or a reply is garbled (safe: every
    budget script is idempotent per reservation id) but not on a timeout (the wait is already spent);
    a bounded pool (64 connections; a call waits up to the reply timeout for one); commands packed by
    hiredis (``with_hiredis_packing``; Cluster clients keep redis-py's packer).
    """
    retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError, InvalidResponse))
    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": REPLY_TIMEOUT_S,
        "socket_keepalive": True,
        "retry": retry,
        "health_check_interval": 0,
    }
    options.update(overrides)
    if cluster:
        options.pop("health_check_interval", None)
        return RedisCluster.from_url(url, **options)
    pool_options = {"max_connections": MAX_CONNECTIONS, "timeout": options["socket_timeout"]}
    pool_options.update({k: options.pop(k) for k in ("max_connections", "timeout") if k in options})
    pool = aioredis.BlockingConnectionPool.from_url(url, **options, **pool_options)
    return aioredis.Redis.from_pool(with_hiredis_packing(pool))


_HIREDIS = HiredisRespSerializer()


class _HiredisPacking:
    """Commands packed by hiredis, as redis-py's sync client does when hiredis is installed.

    redis-py's asyncio connection packs every command in Python, argument by argument: ~30 µs for
    an admit's 21 arguments, against ~2.5 µs in hiredis (the same bytes; a bad argument raises the
    same ``DataError``). Measured: ``python -m bench.redis_client_cost`` (docs/budgets.md).
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        return _HIREDIS.pack(*args)


class HiredisConnection(_HiredisPacking, Connection):
    pass


class HiredisSSLConnection(_HiredisPacking, SSLConnection):
    pass


class HiredisUnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    pass


_HIREDIS_CLASSES: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: HiredisConnection,
    SSLConnection: HiredisSSLConnection,
    UnixDomainSocketConnection: HiredisUnixConnection,
}


def with_hiredis_packing(pool: aioredis.ConnectionPool) -> aioredis.ConnectionPool:
    """The pool's connections pack with hiredis (a connection class we do not know stays as it is)."""
    if not HIREDIS_AVAILABLE:
        return pool
    pool.connection_class = _HIREDIS_CLASSES.get(pool.connection_class, pool.connection_class)
    return pool


def _pack(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values))


def reply_timeout_of(redis: aioredis.Redis | RedisCluster) -> float:
    """The client's reply timeout: how long a caller waits for a script's answer."""
    if isinstance(redis, RedisCluster):
        timeout = redis.get_connection_kwargs().get("socket_timeout")
    else:
        timeout = redis.connection_pool.connection_kwargs.get("socket_timeout")
    return float(timeout) if timeout else REPLY_TIMEOUT_S


class RedisStore:
    """Budgets in Redis (a single server, Sentinel-managed or Cluster: ``redis.asyncio.Redis`` or
    ``redis.asyncio.cluster.RedisCluster``).

    ``wall`` is the real clock the admit deadline is measured on (Redis compares it with its own
    ``TIME``); ``deadline_s`` is how long after sending an admit its caller still waits for it,
    by default the client's reply timeout.
    """

    def __init__(
        self,
        redis: aioredis.Redis | RedisCluster,
        *,
        limits_ttl_s: int = LIMITS_TTL_S,
        record_ttl_s: int = RECORD_TTL_S,
        deadline_s: float | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.limits_ttl_s = limits_ttl_s
        self.record_ttl_s = record_ttl_s
        self.deadline_s = deadline_s if deadline_s is not None else reply_timeout_of(redis)
        self.wall = wall
        self.cluster = isinstance(redis, RedisCluster)
        self._admit = redis.register_script(ADMIT_LUA)
        self._settle = redis.register_script(SETTLE_LUA)
        self._status = redis.register_script(STATUS_LUA)
        self._publish = redis.register_script(PUBLISH_LUA)
        self._reconcile = redis.register_script(RECONCILE_LUA)

    async def _run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except RedisError as exc:
            if redis_unavailable(exc):
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

    def _state_ttl(self, grace_s: int) -> int:
        return max(grace_s, self.record_ttl_s + 60)

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
        deadline = self.wall() + self.deadline_s
        args = (
            repr(now),
            reservation_id,
            repr(expires_at),
            self._state_ttl(state_ttl_s),
            1 if replace else 0,
            ws.key_id,
            _pack(amounts),
            _pack(team_limits + key_limits),
            repr(deadline),
            self.record_ttl_s,
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
        if reply[0] == 2:
            raise AdmitTooLate(f"admit {reservation_id} reached Redis after its deadline", server_time=reply[1])
        if reply[0] == 3:
            raise AlreadySettled(f"reservation {reservation_id} was already settled")
        failed = WindowState(w=reply[1] - 1, used=reply[2], reserved=reply[3], limit=reply[4])
        return ReserveOutcome(ok=False, failed=failed, hard=reply[5] == 1)

    async def settle(
        self, ws: WindowSet, reservation_id: str, amounts: tuple[int, ...], *, now: float, grace_s: int
    ) -> bool:
        tk = team_keys(ws.team_id)
        ttls = _pack(tuple(max(1, int(end + grace_s - now)) for end in ws.period_ends))
        applied = await self._run(
            self._settle,
            (tk.reservations, tk.expiries, tk.inflight, *ws.period_keys),
            (reservation_id, ws.key_id, _pack(amounts), ttls, repr(now + self.record_ttl_s), self._state_ttl(grace_s)),
        )
        return bool(applied)

    async def read(
        self, ws: WindowSet, team_limits: tuple[int, ...], key_limits: tuple[int, ...], *, now: float
    ) -> tuple[WindowState, ...]:
        args = (repr(now), ws.key_id, _pack(team_limits + key_limits), self.record_ttl_s)
        reply = await self._run(self._status, self._state_keys(ws), args)
        return tuple(
            WindowState(w=w, used=reply[3 * w], reserved=reply[3 * w + 1], limit=reply[3 * w + 2])
            for w in range(N_WINDOWS)
        )

    async def publish(self, team_id: str, key_id: str | None, vector: tuple[int, ...], *, now: float) -> None:
        record = team_keys(team_id).limits(key_id)
        await self._run(self._publish, (record,), (repr(now + self.limits_ttl_s), self.limits_ttl_s, *vector))

    async def apply(self, batches: Sequence[ReconcileBatch], *, now: float) -> None:
        """Apply reconcile batches, each atomically and at most once (one pipelined round trip)."""
        calls = [self._reconcile_call(batch, now) for batch in batches]
        if self.cluster or len(calls) == 1:  # redis-py's cluster pipeline refuses scripts
            await asyncio.gather(*(self._run(self._reconcile, keys, args) for keys, args in calls))
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    await self._reconcile(keys=keys, args=args, client=pipe)  # type: ignore[arg-type]
                await pipe.execute()
        except RedisError as exc:
            if redis_unavailable(exc):
                raise StoreUnavailable(f"Redis unavailable: {exc}") from exc
            raise
        except OSError as exc:
            raise StoreUnavailable(f"Redis unavailable: {exc}") from exc

    def _reconcile_call(self, batch: ReconcileBatch, now: float) -> tuple[list[str], list[Any]]:
        tk = team_keys(batch.team_id)
        expiry: dict[str, int] = {}
        for pending in batch.settles:
            for key, until in zip(pending.period_keys, pending.period_expiry, strict=True):
                expiry[key] = max(expiry.get(key, 0), until)
        hashes = list(expiry)
        index = {key: i for i, key in enumerate(hashes, start=1)}
        invalidate = sorted(batch.invalidate)
        keys = [tk.reconcile_marker(batch.batch_id), tk.reservations, tk.expiries, tk.inflight, *hashes, *invalidate]
        args: list[Any] = [
            RECONCILE_MARKER_TTL_S,
            len(hashes),
            len(invalidate),
            repr(now + self.record_ttl_s),
            self.record_ttl_s + 60,
        ]
        args.extend(max(1, int(expiry[h] - now)) for h in hashes)
        for pending in batch.settles:
            args.extend(_settle_args(pending, index))
        return keys, args

    async def wait_for_release(self, timeout_s: float) -> None:
        # Polling: a pub/sub wake-up would need a dedicated connection per process and a publish on
        # every settle; the waits are short (budget_wait_ms) and rare (only near the limit).
        await asyncio.sleep(timeout_s)

    async def aclose(self) -> None:
        # The redis-py client belongs to whoever created it (it is shared with other components).
        return None


def _settle_args(pending: PendingSettle, index: dict[str, int]) -> tuple[str, str, str, str]:
    hashes = ",".join(str(index[key]) for key in pending.period_keys)
    return (pending.reservation_id, pending.key_id, hashes, _pack(pending.amounts))


assert N_KINDS == 6 and N_WINDOWS == 12  # the scripts hard-code this layout

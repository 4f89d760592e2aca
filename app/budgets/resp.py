"""A lean pipelined Redis connection for the budget scripts: RESP out, hiredis in.

Admission and settlement are two Redis round trips on every request. Through redis-py's asyncio
client each costs ~90–110 µs of the gateway's CPU (connection checkout from the pool, command
packing with per-argument encoders, a StreamReader read loop, response callbacks) — measured with
``bench/budget_bench.py`` and py-spy, a fifth of a request's CPU. The budget store only ever sends
``EVALSHA`` (and ``SCRIPT LOAD`` once), so this module does just that: one TCP connection per
process, commands packed as RESP in one buffer per batch, replies parsed by hiredis' C reader in
``data_received``, one future per batch. Redis answers a connection's commands in order, so a FIFO
of batches is the whole bookkeeping.

Failure behaviour matches the redis-py client it stands in for (``connect_budget_redis``): connect
timeout, reply timeout (the connection is then dropped: later replies could no longer be matched),
``redis.exceptions`` error types, so the store's fail-closed / fail-open handling is unchanged. A
batch is never re-sent after it was written (a script may have run): a dropped connection fails the
batches on it, and the next batch reconnects.

Only plain TCP connections are handled here; TLS, Unix sockets and Redis Cluster keep redis-py
(``RespClient.for_redis`` returns None for them).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def pack(args: Sequence[Any]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            data = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Batch:
    __slots__ = ("future", "remaining", "results", "timer")

    def __init__(self, future: asyncio.Future[list[Any]], size: int) -> None:
        self.future = future
        self.remaining = size
        self.results: list[Any] = []
        self.timer: asyncio.TimerHandle | None = None


class _RespProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.batches: collections.deque[_Batch] = collections.deque()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        batches = self.batches
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail_all(RedisConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not batches:
                continue  # a reply to a batch that timed out: the connection is being dropped anyway
            batch = batches[0]
            batch.results.append(reply)
            batch.remaining -= 1
            if batch.remaining == 0:
                batches.popleft()
                if batch.timer is not None:
                    batch.timer.cancel()
                if not batch.future.done():
                    batch.future.set_result(batch.results)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_all(RedisConnectionError(f"Connection to Redis lost: {exc or 'closed by the server'}"))

    def timed_out(self, batch: _Batch, timeout_s: float) -> None:
        if not batch.future.done():
            batch.future.set_exception(RedisTimeoutError(f"no reply from Redis within {timeout_s} s"))
        self.close()  # the replies still owed would be matched to the wrong batches

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self._fail_all(RedisConnectionError("Connection to Redis closed"))

    def _fail_all(self, exc: Exception) -> None:
        while self.batches:
            batch = self.batches.popleft()
            if batch.timer is not None:
                batch.timer.cancel()
            if not batch.future.done():
                batch.future.set_exception(exc)


class RespClient:
    """One pipelined connection; ``execute`` sends a batch of commands and returns their replies
    (error replies as ``ResponseError`` instances, in place, like ``pipeline.execute(raise_on_error=False)``)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        connect_timeout_s: float = 0.5,
        timeout_s: float = 2.0,
    ) -> None:
        self.host, self.port, self.db = host, port, db
        self.username, self.password = username, password
        self.connect_timeout_s = connect_timeout_s
        self.timeout_s = timeout_s
        self._protocol: _RespProtocol | None = None
        self._connecting: asyncio.Future[_RespProtocol] | None = None

    @classmethod
    def for_redis(cls, redis: Any) -> RespClient | None:
        """The same server and credentials as a redis-py client, or None where this client does not
        apply (Cluster, TLS, Unix socket)."""
        if not isinstance(redis, aioredis.Redis):
            return None
        pool = redis.connection_pool
        if pool.connection_class is not Connection:
            return None
        kw = pool.connection_kwargs
        return cls(
            kw.get("host", "localhost"),
            int(kw.get("port", 6379)),
            db=int(kw.get("db", 0) or 0),
            username=kw.get("username"),
            password=kw.get("password"),
            connect_timeout_s=kw.get("socket_connect_timeout") or 0.5,
            timeout_s=kw.get("socket_timeout") or 2.0,
        )

    async def execute(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        protocol = await self._connection()
        return await self._send(protocol, commands)

    def _send(self, protocol: _RespProtocol, commands: Sequence[Sequence[Any]]) -> asyncio.Future[list[Any]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        batch = _Batch(future, len(commands))
        batch.timer = loop.call_later(self.timeout_s, protocol.timed_out, batch, self.timeout_s)
        protocol.batches.append(batch)
        assert protocol.transport is not None
        protocol.transport.write(b"".join(pack(command) for command in commands))
        return future

    async def _connection(self) -> _RespProtocol:
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            return protocol
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
        # Every caller waiting for the connection shares one attempt; shield it from their
        # cancellation (a caller leaving must not abort the others' connect).
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> _RespProtocol:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(_RespProtocol, self.host, self.port), self.connect_timeout_s
            )
        except (TimeoutError, OSError) as exc:
            raise RedisConnectionError(f"Error connecting to Redis at {self.host}:{self.port}: {exc}") from exc
        setup: list[list[Any]] = []
        if self.password:
            setup.append(["AUTH", self.username, self.password] if self.username else ["AUTH", self.password])
        if self.db:
            setup.append(["SELECT", self.db])
        if setup:
            replies = await self._send(protocol, setup)
            failed = next((r for r in replies if isinstance(r, Exception)), None)
            if failed is not None:
                protocol.close()
                raise RedisConnectionError(f"Redis refused the connection setup: {failed}")
        self._protocol = protocol
        return protocol

    async def aclose(self) -> None:
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None

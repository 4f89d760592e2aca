"""The budget client recovers from a garbled reply and a connection cut mid-reply (issue 14).

A proxy on a raw socket sits between redis-py and a real Redis and, when armed, replaces the next reply
with bytes that are not RESP, or sends half a reply and closes. redis-py drops that connection and
resends the call once on a fresh one — safe because every budget script is idempotent per
reservation id — and a fault that lasts is a 503 (fail-closed) only while it lasts.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from app.auth.principal import Limits
from app.budgets.limiter import BudgetBackendUnavailable, BudgetLimiter
from app.budgets.redis_store import RedisStore, connect_budget_redis
from tests.integration.test_budget_support import FakeClock, principal

ZERO = Decimal(0)


class FaultyProxy:
    """Forwards to Redis; ``fault`` = "garbage" or "cut" spoils the next reply; ``stuck`` every reply."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.fault: str | None = None
        self.stuck = False
        self.faults = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)

        async def upstream() -> None:
            while data := await reader.read(1 << 16):
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        task = asyncio.get_running_loop().create_task(upstream())
        self._tasks.add(task)
        try:
            while data := await up_reader.read(1 << 16):
                fault, self.fault = self.fault, None
                if self.stuck or fault == "garbage":
                    self.faults += 1
                    writer.write(b"?this is not RESP\r\n")  # the real reply is swallowed
                elif fault == "cut":
                    self.faults += 1
                    writer.write(data[: len(data) // 2])
                    await writer.drain()
                    break
                else:
                    writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            task.cancel()
            writer.close()
            up_writer.close()

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[tuple[FaultyProxy, str]]:
    host_port, db = redis_url.split("//", 1)[1].rsplit("/", 1)
    host, port = host_port.rsplit(":", 1)
    faulty = FaultyProxy(host, int(port))
    listen = await faulty.start()
    yield faulty, f"redis://127.0.0.1:{listen}/{db}"
    await faulty.aclose()


def limiter_on(url: str) -> BudgetLimiter:
    store = RedisStore(connect_budget_redis(url, socket_timeout=0.5))
    return BudgetLimiter(store, clock=FakeClock(), wait_ms=0, breaker_s=0.05, reconcile_interval_s=0.05)


async def reserved_and_used(limiter: BudgetLimiter, who: object) -> tuple[int, int]:
    window = (await limiter.status(who))["team"]["tokens_per_day"]  # type: ignore[arg-type]
    return window["reserved"], window["used"]


@pytest.mark.parametrize("fault", ["garbage", "cut"])
async def test_a_spoiled_reply_is_retried_on_a_fresh_connection_and_counts_once(
    proxy: tuple[FaultyProxy, str], fault: str
) -> None:
    faulty, url = proxy
    limiter = limiter_on(url)
    assert isinstance(limiter.store, RedisStore)
    who = principal(uuid.uuid4().hex, team=Limits(tokens_per_day=10_000))
    warm = await limiter.admit(who, tokens=100, usd=ZERO, request_id="warm")  # the connection is set up
    await limiter.settle(warm, tokens=10, usd=ZERO)

    faulty.fault = fault
    admission = await limiter.admit(who, tokens=300, usd=ZERO, request_id="spoiled-admit")
    assert faulty.faults == 1 and not admission.degraded
    assert await reserved_and_used(limiter, who) == (300, 10)  # the script ran twice, reserved once

    faulty.fault = fault
    await limiter.settle(admission, tokens=250, usd=ZERO)
    assert faulty.faults == 2 and not limiter.ledger
    assert await reserved_and_used(limiter, who) == (0, 260)  # settled twice in Redis, counted once
    await limiter.aclose()
    await limiter.store.redis.aclose()


async def test_a_lasting_protocol_fault_is_503_only_while_it_lasts(proxy: tuple[FaultyProxy, str]) -> None:
    faulty, url = proxy
    limiter = limiter_on(url)
    assert isinstance(limiter.store, RedisStore)
    who = principal(uuid.uuid4().hex, team=Limits(tokens_per_day=10_000))
    await limiter.settle(await limiter.admit(who, tokens=100, usd=ZERO, request_id="warm"), tokens=1, usd=ZERO)

    faulty.stuck = True  # every reply garbled, though Redis runs every command it is sent
    for i in range(3):
        with pytest.raises(BudgetBackendUnavailable):
            await limiter.admit(who, tokens=500, usd=ZERO, request_id=f"during-{i}")
        await asyncio.sleep(0.06)  # past the breaker: each attempt reaches Redis
    assert faulty.faults >= 6  # each admit was sent twice (one retry on a fresh connection)

    faulty.stuck = False
    await asyncio.sleep(0.06)
    admission = await limiter.admit(who, tokens=200, usd=ZERO, request_id="after")
    assert not admission.degraded
    for _ in range(100):  # the refused admits that did run in Redis are released by id
        if not limiter.ledger:
            break
        await asyncio.sleep(0.05)
    assert not limiter.ledger
    assert await reserved_and_used(limiter, who) == (200, 1)
    await limiter.settle(admission, tokens=150, usd=ZERO)
    assert await reserved_and_used(limiter, who) == (0, 151)
    await limiter.aclose()
    await limiter.store.redis.aclose()

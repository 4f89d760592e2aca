"""The ledger when the database and Redis fail together: the local spool file, draining it into
Redis or the database (whichever returns), a shutdown that never outwaits its grace period, and a
SIGKILL that loses at most the last batch — with real PostgreSQL and Redis, cut through TCP proxies
the test controls, and the recorder in its own OS process where it is killed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
from sqlalchemy import select

from app.budgets.redis_store import connect_budget_redis
from app.db.engine import create_engine
from app.db.migrate import upgrade
from app.db.tables import usage_events
from app.ledger.dead_letters import DEAD_LETTER_FILE, DeadLetters
from app.ledger.events import UsageEvent
from app.ledger.recorder import Recorder
from app.ledger.spool import DiskSpool, RedisSpool
from app.ledger.tiered_spool import TieredSpool
from tests.integration.test_ledger_recorder import make_event, wait_for
from tests.procs import ROOT, BackgroundProxy, TcpProxy, base_env, fresh_database, through


async def count_rows(url: str, prefix: str) -> list[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            query = select(usage_events.c.request_id).where(usage_events.c.request_id.like(f"{prefix}-%"))
            return [r.request_id for r in await conn.execute(query)]
    finally:
        await engine.dispose()


@pytest.fixture
def stream_key(redis_url: str) -> Iterator[str]:
    key = f"tw:test:ledger-spool:{uuid.uuid4().hex[:10]}"
    yield key
    client = sync_redis.Redis.from_url(redis_url)
    client.delete(key)
    client.close()


def xlen(redis_url: str, key: str) -> int:
    client = sync_redis.Redis.from_url(redis_url)
    try:
        return int(client.xlen(key))
    finally:
        client.close()


# ---- in process: the spool follows whichever store is up ----------------------------------------


@contextlib.asynccontextmanager
async def proxied(target_url: str, default_port: int) -> AsyncIterator[tuple[TcpProxy, str]]:
    from sqlalchemy.engine import make_url

    parsed = make_url(target_url)
    proxy = TcpProxy(parsed.host or "127.0.0.1", parsed.port or default_port)
    await proxy.start()
    try:
        yield proxy, through(target_url, proxy.port)
    finally:
        await proxy.aclose()


async def test_double_outage_spools_to_the_local_file_then_redis_then_the_database(
    postgres_url: str, redis_url: str, stream_key: str, tmp_path: Path
) -> None:
    await asyncio.to_thread(upgrade, postgres_url)
    async with proxied(postgres_url, 5432) as (pg, pg_url), proxied(redis_url, 6379) as (rd, rd_url):
        engine = create_engine(pg_url)
        redis = connect_budget_redis(rd_url)
        disk = DiskSpool(tmp_path / "spool")
        spool = TieredSpool(RedisSpool(redis, stream_key), disk, retry_s=0.05, retry_max_s=0.2)
        recorder = Recorder(
            engine,
            spool=spool,
            flush_interval_s=0.02,
            write_timeout_s=2.0,
            replay_backoff_s=0.05,
            replay_backoff_max_s=0.2,
        )
        recorder.start()
        prefix = f"dbl{uuid.uuid4().hex[:6]}"
        try:
            for i in range(10):
                recorder.record(make_event(f"{prefix}-{i}"))
            await wait_for(lambda: recorder.stats.written == 10, what="direct writes")

            await pg.cut()
            await rd.cut()
            for i in range(10, 60):
                recorder.record(make_event(f"{prefix}-{i}"))
            await wait_for(lambda: disk.pending == 50, what="events in the local file")
            assert xlen(redis_url, stream_key) == 0

            await rd.restore()  # Redis back, the database still away: the file moves to Redis
            await wait_for(lambda: disk.pending == 0 and xlen(redis_url, stream_key) == 50, what="promotion")
            assert not list((tmp_path / "spool").glob("segment-*.jsonl"))

            await pg.restore()
            await wait_for(lambda: recorder.database_healthy and xlen(redis_url, stream_key) == 0, what="drain")
            await recorder.flush()
        finally:
            await recorder.aclose()
            await redis.aclose()
            await engine.dispose()
    ids = await count_rows(postgres_url, prefix)
    assert sorted(ids) == sorted(f"{prefix}-{i}" for i in range(60))  # each exactly once


async def test_database_back_before_redis_drains_the_local_file(
    postgres_url: str, redis_url: str, stream_key: str, tmp_path: Path
) -> None:
    await asyncio.to_thread(upgrade, postgres_url)
    async with proxied(postgres_url, 5432) as (pg, pg_url), proxied(redis_url, 6379) as (rd, rd_url):
        engine = create_engine(pg_url)
        redis = connect_budget_redis(rd_url)
        disk = DiskSpool(tmp_path / "spool")
        spool = TieredSpool(RedisSpool(redis, stream_key), disk, retry_s=0.05, retry_max_s=0.2)
        recorder = Recorder(
            engine, spool=spool, flush_interval_s=0.02, replay_backoff_s=0.05, replay_backoff_max_s=0.2
        )
        recorder.start()
        prefix = f"dbf{uuid.uuid4().hex[:6]}"
        try:
            await pg.cut()
            await rd.cut()
            for i in range(40):
                recorder.record(make_event(f"{prefix}-{i}"))
            await wait_for(lambda: disk.pending == 40, what="events in the local file")
            await pg.restore()  # Redis stays down
            await wait_for(lambda: disk.pending == 0 and recorder.database_healthy, what="drain")
        finally:
            await recorder.aclose()
            await redis.aclose()
            await engine.dispose()
    assert sorted(await count_rows(postgres_url, prefix)) == sorted(f"{prefix}-{i}" for i in range(40))


async def test_shutdown_with_both_stalled_is_bounded_and_keeps_every_event(
    postgres_url: str, redis_url: str, stream_key: str, tmp_path: Path
) -> None:
    """The database and Redis stop answering (connections open, no replies): shutdown gives up
    after its grace period and writes what it holds to the local file; a new recorder writes it."""
    await asyncio.to_thread(upgrade, postgres_url)
    prefix = f"grc{uuid.uuid4().hex[:6]}"
    async with proxied(postgres_url, 5432) as (pg, pg_url), proxied(redis_url, 6379) as (rd, rd_url):
        engine = create_engine(pg_url)
        redis = connect_budget_redis(rd_url, socket_timeout=60)  # only the spool's own timeout helps
        spool = TieredSpool(RedisSpool(redis, stream_key), DiskSpool(tmp_path / "spool"))
        recorder = Recorder(engine, spool=spool, write_timeout_s=30.0, shutdown_grace_s=0.5)
        recorder.start()
        await recorder.flush()  # connections made while everything answers
        pg.stall()
        rd.stall()
        for i in range(25):
            recorder.record(make_event(f"{prefix}-{i}"))
        await asyncio.sleep(0.3)  # the writer is now stuck inside an insert
        async with asyncio.timeout(20):  # a hang guard, not a timing assertion
            await recorder.aclose()
        pg.resume()
        rd.resume()
        await redis.aclose()
        await engine.dispose()
    assert await DiskSpool(tmp_path / "spool").size() >= 25
    engine = create_engine(postgres_url)
    recorder = Recorder(engine, spool=DiskSpool(tmp_path / "spool"))
    recorder.start()
    try:
        written = await recorder.replay_spool()
        assert written >= 25
    finally:
        await recorder.aclose()
        await engine.dispose()
    assert sorted(await count_rows(postgres_url, prefix)) == sorted(f"{prefix}-{i}" for i in range(25))


async def test_record_never_raises_and_keeps_the_event(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url)
    recorder = Recorder(engine, spool=DiskSpool(tmp_path / "spool"))
    recorder.start()

    def broken_wakeup() -> None:
        raise RuntimeError("the loop is closing")

    try:
        recorder._has_events.set = broken_wakeup  # type: ignore[method-assign]
        recorder.record(make_event("req_broken_wakeup"))  # must not raise
        await recorder.flush()
    finally:
        await recorder.aclose()
    recorder.record(make_event("req_after_close"))  # no writer left: straight to the local file
    assert await DiskSpool(tmp_path / "spool").size() == 1
    second = Recorder(engine, spool=DiskSpool(tmp_path / "spool"))
    assert await second.replay_spool() == 1
    async with engine.connect() as conn:
        ids = set((await conn.execute(select(usage_events.c.request_id))).scalars())
    assert {"req_broken_wakeup", "req_after_close"} <= ids
    await engine.dispose()


async def test_dead_letters_go_to_a_file_when_the_table_is_unreachable(tmp_path: Path) -> None:
    closed_port = create_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    kept: list[int] = []
    letters = DeadLetters(closed_port, tmp_path / "spool", on_kept=kept.append, timeout_s=2.0)
    event = make_event("req_dead\x00letter", stop_reason="end\udc80")
    assert await letters.keep(event, "DataError: invalid byte sequence") == "file"
    await closed_port.dispose()
    lines = (tmp_path / "spool" / DEAD_LETTER_FILE).read_text().splitlines()
    assert len(lines) == 1 and "req_dead\\\\x00letter" in lines[0] and "invalid byte sequence" in lines[0]
    assert kept == [1]


# ---- a real process, killed ---------------------------------------------------------------------------


def spawn_recorder(
    tmp_path: Path, name: str, *, database_url: str, redis_url: str, stream_key: str, extra: list[str], **env: str
) -> tuple[subprocess.Popen[bytes], Path]:
    out = tmp_path / f"{name}.out"
    argv = [
        sys.executable, "-m", "tests.ledger_proc",
        "--database-url", database_url, "--redis-url", redis_url,
        "--spool-dir", str(tmp_path / "spool"), "--stream-key", stream_key, *extra,
    ]  # fmt: skip
    with out.open("wb") as sink:
        popen = subprocess.Popen(
            argv, cwd=ROOT, env={**base_env(), **env}, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    return popen, out


def recorded(out: Path) -> int:
    """How many events the process had recorded (``record`` returned) when its output stopped."""
    last = -1
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith("recorded "):
            with contextlib.suppress(ValueError):
                last = int(line.split()[1])
    return last + 1


def wait_until(condition: Callable[[], bool], popen: subprocess.Popen[bytes], out: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if popen.poll() is not None:
            raise AssertionError(f"the recorder exited with {popen.returncode}:\n{out.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; output:\n{out.read_text()[-3000:]}")
        time.sleep(0.02)


def drain(tmp_path: Path, database_url: str, redis_url: str, stream_key: str) -> None:
    popen, out = spawn_recorder(
        tmp_path, "drain", database_url=database_url, redis_url=redis_url, stream_key=stream_key, extra=["--drain"]
    )
    try:
        assert popen.wait(120) == 0, out.read_text()[-3000:]
    finally:
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGKILL)
    assert "drained" in out.read_text()


BATCH_SIZE = 500  # the default TOLLWAY_LEDGER_BATCH_SIZE; the flush interval is the default 0.2 s


def local_spool_lines(tmp_path: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in (tmp_path / "spool").glob("segment-*.jsonl"))


async def test_sigkill_in_a_double_outage_loses_at_most_one_batch(
    postgres_server_url: str, redis_url: str, stream_key: str, tmp_path: Path, capsys: Any
) -> None:
    prefix = f"kill{uuid.uuid4().hex[:6]}"
    async with fresh_database(postgres_server_url) as database_url:
        with BackgroundProxy(database_url) as pg, BackgroundProxy(redis_url) as rd:
            rd_url = rd.url
            popen, out = spawn_recorder(
                tmp_path, "victim", database_url=pg.url, redis_url=rd_url, stream_key=stream_key,
                extra=["--prefix", prefix, "--count", "100000", "--rate", "500"],
            )  # fmt: skip
            try:
                wait_until(lambda: recorded(out) >= 300, popen, out)  # straight into the database
                pg.cut()
                wait_until(lambda: recorded(out) >= 900, popen, out)  # into the Redis stream
                rd.cut()
                wait_until(lambda: recorded(out) >= 2500, popen, out)  # into the local file
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(10)
        sent = recorded(out)
        in_redis, in_file = xlen(redis_url, stream_key), local_spool_lines(tmp_path)
        assert in_redis > 0 and in_file > 0  # both spools really were used
        drain(tmp_path, database_url, redis_url, stream_key)  # both back: the next start replays
        ids = await count_rows(database_url, prefix)
    assert len(ids) == len(set(ids))
    assert set(ids) <= {f"{prefix}-{i}" for i in range(sent)}
    lost = sent - len(ids)
    with capsys.disabled():
        print(f"\nSIGKILL in a double outage: recorded {sent}, rows {len(ids)}, lost {lost} "
              f"(spooled: {in_redis} in Redis, {in_file} in the local file)")  # fmt: skip
    assert 0 <= lost <= BATCH_SIZE
    assert xlen(redis_url, stream_key) == 0 and local_spool_lines(tmp_path) == 0


async def test_sigterm_in_a_double_outage_is_bounded_and_loses_nothing(
    postgres_server_url: str, redis_url: str, stream_key: str, tmp_path: Path
) -> None:
    prefix = f"term{uuid.uuid4().hex[:6]}"
    async with fresh_database(postgres_server_url) as database_url:
        with BackgroundProxy(database_url) as pg, BackgroundProxy(redis_url) as rd:
            rd_url = rd.url
            popen, out = spawn_recorder(
                tmp_path, "victim", database_url=pg.url, redis_url=rd_url, stream_key=stream_key,
                extra=["--prefix", prefix, "--count", "100000", "--rate", "500", "--write-timeout-s", "30"],
                TOLLWAY_LEDGER_SHUTDOWN_GRACE_S="2",
            )  # fmt: skip
            try:
                wait_until(lambda: recorded(out) >= 200, popen, out)
                # Stalled, not refused: every call waits for a reply that never comes.
                pg._call(_stall(pg.proxy))
                rd._call(_stall(rd.proxy))
                wait_until(lambda: recorded(out) >= 600, popen, out)
                popen.send_signal(signal.SIGTERM)
                code = popen.wait(60)  # a hang guard: the grace period is 2 s
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
                pg._call(_resume(pg.proxy))
                rd._call(_resume(rd.proxy))
        assert code == 0, out.read_text()[-3000:]
        assert "closed" in out.read_text()
        sent = recorded(out)
        drain(tmp_path, database_url, redis_url, stream_key)
        ids = await count_rows(database_url, prefix)
    assert sorted(ids) == sorted(f"{prefix}-{i}" for i in range(sent))  # nothing lost, nothing twice


async def _stall(proxy: TcpProxy) -> None:
    proxy.stall()


async def _resume(proxy: TcpProxy) -> None:
    proxy.resume()


def test_usage_event_fields_survive_the_spool() -> None:
    event = UsageEvent(
        request_id="r", team_id=None, key_id=None, client_format="openai", requested_model="m",
        end_user="user-42", usage_flag="over_reservation",
    )  # fmt: skip
    back = UsageEvent.from_json_dict({**event.to_json_dict(), "field_from_a_newer_release": 1})
    assert back == event

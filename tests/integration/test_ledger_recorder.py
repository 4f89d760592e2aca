"""The recorder: batching, idempotency, queue overflow, rejected rows, and exactly one row per request
when the database connection is cut mid-load (through a TCP proxy the test controls) with the spool
on disk or in a Redis stream, including across a recorder restart."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.event import listen
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_engine
from app.db.migrate import upgrade
from app.db.tables import USAGE_COLUMNS, ledger_dead_letters, usage_events
from app.ledger.events import UsageEvent
from app.ledger.recorder import Recorder
from app.ledger.spool import DiskSpool, RedisSpool, Spool
from tests.conftest import _create_database, _drop_database
from tests.procs import TcpProxy, through


def make_event(request_id: str | None = None, **overrides: Any) -> UsageEvent:
    values: dict[str, Any] = {
        "request_id": request_id or f"req_{uuid.uuid4().hex}",
        "team_id": "team-1",
        "key_id": "key-1",
        "client_format": "anthropic",
        "requested_model": "auto",
        "served_model": "claude-haiku-5-5",
        "provider": "anthropic",
        "input_tokens": 120,
        "output_tokens": 30,
        "cache_read_tokens": 2048,
        "cost_usd": Decimal("0.0000470480"),
        "uncached_cost_usd": Decimal("0.0002318"),
        "latency_ms": 812.5,
        "ttft_ms": 95.0,
    }
    values.update(overrides)
    return UsageEvent(**values)


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
        await asyncio.to_thread(upgrade, url)
        yield url
        return
    server = request.getfixturevalue("postgres_server_url")
    name = f"tollway_test_{uuid.uuid4().hex[:12]}"
    await _create_database(server, name)
    try:
        url = f"{server.rsplit('/', 1)[0]}/{name}"
        await asyncio.to_thread(upgrade, url)
        yield url
    finally:
        await _drop_database(server, name)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


async def rows(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(usage_events).order_by(usage_events.c.request_id))).all())


async def wait_for(condition: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_every_event_field_has_a_column() -> None:
    assert set(USAGE_COLUMNS) == {f.name for f in fields(UsageEvent)}


async def test_rows_round_trip_every_field(engine: AsyncEngine, tmp_path: Path) -> None:
    recorder = Recorder(engine, spool=DiskSpool(tmp_path / "spool"))
    created = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    event = make_event(
        "req_roundtrip",
        cache_write_5m_tokens=11,
        cache_write_1h_tokens=22,
        route_reason="cheapest adequate: small tier",
        attempts=2,
        status=499,
        error_type="client_closed",
        stop_reason="end_turn",
        streamed=True,
        aborted=True,
        response_cache_hit=True,
        created_at=created,
    )
    recorder.record(event)
    await recorder.flush()
    (row,) = await rows(engine)
    stored = dict(row._mapping)
    assert stored == {name: getattr(event, name) for name in USAGE_COLUMNS}
    assert isinstance(stored["cost_usd"], Decimal)
    await recorder.aclose()


async def test_batches_and_flush_interval(engine: AsyncEngine, tmp_path: Path) -> None:
    recorder = Recorder(engine, batch_size=100, flush_interval_s=0.05, spool=DiskSpool(tmp_path / "spool"))
    recorder.start()
    try:
        for _ in range(250):  # no await in between: all queued before the writer runs
            recorder.record(make_event())
        assert recorder.queue_depth == 250
        await recorder.flush()
        assert recorder.queue_depth == 0
        assert sum(recorder.stats.batch_sizes) == 250
        assert max(recorder.stats.batch_sizes) == 100 and len(recorder.stats.batch_sizes) == 3
        assert len(await rows(engine)) == 250

        # A partial batch is written by the writer task on its own after flush_interval_s.
        for _ in range(3):
            recorder.record(make_event())
        await wait_for(lambda: recorder.stats.written == 253, what="the interval flush")
        assert list(recorder.stats.batch_sizes)[-1] == 3
    finally:
        await recorder.aclose()
    assert len(await rows(engine)) == 253


async def test_same_request_id_is_one_row(engine: AsyncEngine, tmp_path: Path) -> None:
    recorder = Recorder(engine, spool=DiskSpool(tmp_path / "spool"))
    event = make_event("req_twice")
    recorder.record(event)
    recorder.record(event)
    await recorder.flush()
    recorder.record(make_event("req_twice", created_at=event.created_at))  # a replay: same id and time
    await recorder.flush()
    assert [r.request_id for r in await rows(engine)] == ["req_twice"]
    assert recorder.stats.written == 1 and recorder.stats.duplicates == 2
    await recorder.aclose()


async def test_full_queue_spills_to_spool_not_dropped(engine: AsyncEngine, tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path / "spool")
    recorder = Recorder(engine, batch_size=20, queue_max=50, spool=spool, replay_backoff_s=0.01)
    recorder.start()
    try:
        ids = [f"req_{i:04d}" for i in range(500)]
        for request_id in ids:
            recorder.record(make_event(request_id))
        assert recorder.queue_depth == 500  # 50 in the queue, 450 waiting for the spool
        await wait_for(lambda: recorder.stats.spooled == 450, what="overflow spooled")
        await recorder.flush()
        await wait_for(lambda: recorder.spool_size == 0, what="spool replayed")
        assert [r.request_id for r in await rows(engine)] == ids
        assert recorder.stats.replayed == 450
        assert await spool.size() == 0
    finally:
        await recorder.aclose()


async def test_a_row_the_database_rejects_does_not_block_the_batch(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await asyncio.to_thread(upgrade, postgres_url)
    engine = create_engine(postgres_url)
    recorder = Recorder(engine, spool=DiskSpool(tmp_path / "spool"))
    try:
        good = [make_event(f"req_{i}") for i in range(9)]
        # NUMERIC(20,10) holds less than 10^10 USD: PostgreSQL refuses this row (numeric overflow).
        bad = make_event("req_bad", cost_usd=Decimal("1e12"))
        # Not even encodable: a pipeline bug must cost one row, not the ledger.
        worse = make_event("req_worse", output_tokens="many")
        for event in [*good[:4], bad, *good[4:7], worse, *good[7:]]:
            recorder.record(event)
        await recorder.flush()
        assert sorted(r.request_id for r in await rows(engine)) == sorted(e.request_id for e in good)
        assert recorder.stats.rejected == 2
        assert "req_bad" in caplog.text and "req_worse" in caplog.text  # logged with their ids
        assert recorder.spool_size == 0
        # Kept, not dropped: in the dead-letter table with their JSON and the error.
        async with engine.connect() as conn:
            dead = (await conn.execute(select(ledger_dead_letters))).all()
        assert sorted(d.request_id for d in dead) == ["req_bad", "req_worse"]
        assert all(UsageEvent.from_json_dict(orjson.loads(d.event_json)).request_id == d.request_id for d in dead)
        assert all(d.error for d in dead)
    finally:
        await recorder.aclose()
        await engine.dispose()


async def test_oversized_strings_are_clipped_not_rejected(engine: AsyncEngine, tmp_path: Path) -> None:
    recorder = Recorder(engine, spool=DiskSpool(tmp_path / "spool"))
    recorder.record(make_event("req_long", requested_model="m" * 5000, error_type="e" * 500))
    await recorder.flush()
    (row,) = await rows(engine)
    assert row.requested_model == "m" * 200 and row.error_type == "e" * 100
    await recorder.aclose()


async def test_sqlite_sends_one_insert_text_whatever_the_batch_size(tmp_path: Path) -> None:
    """Python's sqlite3 keeps up to 128 prepared statements per connection, keyed by their SQL
    text, in SQLite's native memory (invisible to tracemalloc). A multi-row VALUES insert has a new
    text for every batch size, batch sizes vary with load, and each pooled connection ended up
    holding ~75 MB of statements used once: the bare gateway's RSS grew ~1 KB per request. One text
    for every size, including the halves a rejected row splits its batch into, with exact counts."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url)
    insert_texts: set[str] = set()

    def note_insert(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("INSERT INTO usage_events"):
            insert_texts.add(statement)

    listen(engine.sync_engine, "before_cursor_execute", note_insert)
    recorder = Recorder(engine, batch_size=100, spool=DiskSpool(tmp_path / "spool"))
    try:
        sizes = [1, 2, 3, 17, 64, 99, 100, 250]
        for size in sizes:
            for _ in range(size):
                recorder.record(make_event())
            await recorder.flush()
        good = [make_event() for _ in range(12)]
        bad = make_event(client_format=None)  # NOT NULL: SQLite refuses the row
        for usage in [*good[:5], bad, *good[5:], good[0]]:  # and good[0] twice
            recorder.record(usage)
        await recorder.flush()
        assert len(insert_texts) == 1
        assert len(await rows(engine)) == sum(sizes) + len(good)
        assert recorder.stats.written == sum(sizes) + len(good)
        assert recorder.stats.rejected == 1 and recorder.stats.duplicates == 1
    finally:
        await recorder.aclose()
        await engine.dispose()


# ---- the database goes away -------------------------------------------------------------------------


@pytest.fixture
async def migrated_postgres(postgres_url: str) -> str:
    await asyncio.to_thread(upgrade, postgres_url)
    return postgres_url


@pytest.fixture
async def proxy(migrated_postgres: str) -> AsyncIterator[TcpProxy]:
    parsed = make_url(migrated_postgres)
    proxy = TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
    await proxy.start()
    yield proxy
    await proxy.aclose()


@pytest.fixture(params=["disk", "redis"])
async def spool_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[[], Spool]]:
    """Makes spools over the same storage (so a second one sees what the first left)."""
    if request.param == "disk":
        yield lambda: DiskSpool(tmp_path / "spool")
        return
    client = redis.asyncio.Redis.from_url(request.getfixturevalue("redis_url"))
    stream = f"tollway:test:spool:{uuid.uuid4().hex}"
    yield lambda: RedisSpool(client, stream)
    await client.delete(stream)
    await client.aclose()


def fault_recorder(url: str, spool: Spool, write_timeout_s: float = 2.0) -> tuple[Recorder, AsyncEngine]:
    engine = create_engine(url, connect_args={"timeout": 2, "command_timeout": 2})
    recorder = Recorder(
        engine,
        batch_size=25,
        flush_interval_s=0.01,
        spool=spool,
        write_timeout_s=write_timeout_s,
        replay_backoff_s=0.02,
        replay_backoff_max_s=0.2,
        maintain_partitions=False,
    )
    return recorder, engine


async def count_rows(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            total = await conn.scalar(select(func.count()).select_from(usage_events))
            distinct = await conn.scalar(select(func.count(usage_events.c.request_id.distinct())))
        return int(total or 0), int(distinct or 0)
    finally:
        await engine.dispose()


async def test_connection_cut_mid_load_gives_exactly_one_row_per_request(
    migrated_postgres: str, proxy: TcpProxy, spool_factory: Callable[[], Spool]
) -> None:
    spool = spool_factory()
    recorder, engine = fault_recorder(through(migrated_postgres, proxy.port), spool)
    recorder.start()
    made: list[str] = []

    async def load(count: int) -> None:
        for i in range(count):
            event = make_event()
            made.append(event.request_id)
            recorder.record(event)
            if i % 10 == 0:
                await asyncio.sleep(0.002)  # requests arrive over time, not all at once

    try:
        await load(200)  # healthy
        await proxy.cut()
        await load(300)  # the database is unreachable
        await wait_for(lambda: recorder.spool_size > 0, what="events spooled while cut")
        assert not recorder.database_healthy
        await proxy.restore()
        await load(200)  # recovery
        await wait_for(
            lambda: recorder.spool_size == 0 and recorder.queue_depth == 0 and recorder.database_healthy,
            what="spool drained after restore",
        )
        await recorder.flush()
    finally:
        await recorder.aclose()
        await engine.dispose()

    assert await count_rows(migrated_postgres) == (700, 700)
    direct = create_engine(migrated_postgres)
    try:
        stored = {r.request_id for r in await rows(direct)}
    finally:
        await direct.dispose()
    assert stored == set(made)
    assert recorder.stats.spooled > 0 and recorder.stats.replayed == recorder.stats.spooled
    assert await spool.size() == 0


async def test_database_that_stops_answering_times_out_into_the_spool(
    migrated_postgres: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    spool = DiskSpool(tmp_path / "spool")
    recorder, engine = fault_recorder(through(migrated_postgres, proxy.port), spool, write_timeout_s=0.3)
    recorder.start()
    made = [make_event() for _ in range(150)]
    try:
        for event in made[:50]:
            recorder.record(event)
        await recorder.flush()
        proxy.stall()  # connections stay open; nothing comes back
        for event in made[50:]:
            recorder.record(event)
            await asyncio.sleep(0.001)
        await wait_for(lambda: recorder.spool_size > 0, what="a timed-out batch spooled")
        assert recorder.queue_depth < 100  # the writer kept draining the queue, into the spool
        proxy.resume()
        await wait_for(
            lambda: recorder.spool_size == 0 and recorder.queue_depth == 0 and recorder.database_healthy,
            what="recovery",
        )
    finally:
        proxy.resume()
        await recorder.aclose()
        await engine.dispose()
    assert await count_rows(migrated_postgres) == (150, 150)


async def test_spool_survives_a_recorder_restart(
    migrated_postgres: str, proxy: TcpProxy, spool_factory: Callable[[], Spool]
) -> None:
    url = through(migrated_postgres, proxy.port)
    await proxy.cut()
    first, engine = fault_recorder(url, spool_factory())
    first.start()
    made = [make_event() for _ in range(120)]
    for event in made:
        first.record(event)
    await first.aclose()  # the database is down: shutdown drains the queue into the spool
    await engine.dispose()
    assert first.stats.spooled == 120 and first.stats.written == 0
    assert await count_rows(migrated_postgres) == (0, 0)

    await proxy.restore()
    second_spool = spool_factory()
    second, engine = fault_recorder(url, second_spool)
    second.start()
    try:
        await wait_for(lambda: second.stats.replayed == 120, what="the new recorder to replay the spool")
        await wait_for(lambda: second.spool_size == 0, what="spool empty")
    finally:
        await second.aclose()
        await engine.dispose()
    assert await count_rows(migrated_postgres) == (120, 120)
    assert await second_spool.size() == 0


async def test_replay_after_lost_acknowledgement_does_not_double_count(engine: AsyncEngine, tmp_path: Path) -> None:
    """The crash window: rows committed, spool not yet acknowledged. The replay must add nothing."""
    spool = DiskSpool(tmp_path / "spool")
    events = [make_event() for _ in range(40)]
    recorder = Recorder(engine, spool=spool)
    for event in events:
        recorder.record(event)
    await recorder.flush()  # committed
    await spool.append(events)  # ...and also still spooled, as if the ack never happened
    assert await recorder.replay_spool() == 40
    assert recorder.stats.duplicates == 40
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM usage_events")) == 40
    assert await spool.size() == 0
    await recorder.aclose()


async def test_disk_spool_skips_a_torn_last_line(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path / "spool")
    await spool.append([make_event("a"), make_event("b")])
    segment = next((tmp_path / "spool").glob("segment-*.jsonl"))
    with segment.open("ab") as f:
        f.write(b'{"request_id": "c", "team_')  # a crash mid-append
    await spool.aclose()  # the crashed process's file lock goes with it
    reopened = DiskSpool(tmp_path / "spool")
    await reopened.open()
    assert reopened.pending == 2
    batch = await reopened.read(100)
    assert batch is not None and [e.request_id for e in batch.events] == ["a", "b"]
    await reopened.ack(batch)
    assert await reopened.size() == 0 and reopened.pending == 0
    assert await reopened.read(100) is None


async def test_disk_spool_shared_by_two_workers(tmp_path: Path) -> None:
    """Two worker processes on one spool directory never take each other's active segment, and a
    dead worker's segments are replayed by the survivor."""
    worker_a, worker_b = DiskSpool(tmp_path / "spool"), DiskSpool(tmp_path / "spool")
    await worker_a.append([make_event("a1"), make_event("a2")])
    await worker_b.append([make_event("b1")])
    batch = await worker_b.read(100)  # A's older segment is locked while A writes to it
    assert batch is not None and [e.request_id for e in batch.events] == ["b1"]
    await worker_b.ack(batch)
    assert await worker_b.read(100) is None
    await worker_a.append([make_event("a3")])  # A keeps appending to its segment meanwhile
    await worker_a.aclose()  # A exits (or dies): its lock is released
    batch = await worker_b.read(100)
    assert batch is not None and [e.request_id for e in batch.events] == ["a1", "a2", "a3"]
    await worker_b.ack(batch)
    assert await worker_b.size() == 0
    await worker_b.aclose()


async def test_redis_spool_round_trip(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    spool = RedisSpool(client, f"tollway:test:spool:{uuid.uuid4().hex}")
    try:
        await spool.open()
        events = [make_event(created_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=i)) for i in range(7)]
        await spool.append(events)
        assert spool.pending == 7 and await spool.size() == 7
        first = await spool.read(5)
        assert first is not None and [e.request_id for e in first.events] == [e.request_id for e in events[:5]]
        assert first.events[0] == events[0]  # every field, Decimal and datetime included
        await spool.ack(first)
        rest = await spool.read(5)
        assert rest is not None and len(rest.events) == 2
        await spool.ack(rest)
        assert await spool.read(5) is None and spool.pending == 0
    finally:
        await client.delete(spool.stream_key)
        await client.aclose()


async def test_strings_postgres_refuses_are_escaped_not_dropped(engine: AsyncEngine, tmp_path: Path) -> None:
    """NUL (PostgreSQL text refuses it) and lone surrogates (invalid UTF-8: no store encodes them) in
    every client- or provider-supplied string; a number where a string belongs. All stored escaped."""
    recorder = Recorder(engine, spool=DiskSpool(tmp_path / "spool"))
    nasty = {
        "requested_model": "claude\x00-evil",
        "stop_reason": "end\x00turn",
        "error_type": "upstream\udcff_error",
        "route_reason": "r\ud800\x00",
        "end_user": "user\x00\udc80@example",
        "usage_flag": "over_reservation",
    }
    recorder.record(make_event("req_nasty", **nasty))
    recorder.record(make_event("req_number", stop_reason=5))
    recorder.record(make_event("req_clean", end_user="alice"))
    await recorder.flush()
    by_id = {r.request_id: r for r in await rows(engine)}
    assert set(by_id) == {"req_nasty", "req_number", "req_clean"}
    row = by_id["req_nasty"]
    assert row.requested_model == "claude\\x00-evil"
    assert row.stop_reason == "end\\x00turn"
    assert row.error_type == "upstream\\udcff_error"
    assert row.route_reason == "r\\ud800\\x00"
    assert row.end_user == "user\\x00\\udc80@example"
    assert row.usage_flag == "over_reservation"
    assert by_id["req_number"].stop_reason == "5"
    assert by_id["req_clean"].end_user == "alice" and by_id["req_clean"].usage_flag is None
    assert recorder.stats.rejected == 0
    await recorder.aclose()


async def test_nasty_strings_survive_the_spool(engine: AsyncEngine, tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path / "spool")
    await spool.append([make_event("req_spooled", stop_reason="a\x00b\udc80", end_user="\x00")])
    recorder = Recorder(engine, spool=spool)
    assert await recorder.replay_spool() == 1
    (row,) = await rows(engine)
    assert (row.stop_reason, row.end_user) == ("a\\x00b\\udc80", "\\x00")
    await recorder.aclose()

"""Migrations on empty PostgreSQL and SQLite databases, the start-up schema check, and the monthly
partitions of the usage table (creation ahead, rows moved out of the default partition, retention)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from app.db.engine import create_engine
from app.db.migrate import SchemaNotMigrated, check_schema, head_revisions, prepare_database, upgrade
from app.db.partitions import ensure_usage_partitions, list_usage_partitions, prune_usage
from app.ledger.events import UsageEvent
from app.ledger.recorder import Recorder
from app.ledger.spool import DiskSpool
from tests.conftest import _create_database, _drop_database
from tests.procs import migrate

TABLES = {"teams", "api_keys", "usage_events", "ledger_dead_letters", "alembic_version"}


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'tollway.db'}"


async def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def test_migrations_apply_to_empty_postgres(postgres_url: str) -> None:
    await asyncio.to_thread(upgrade, postgres_url)
    assert TABLES <= await table_names(postgres_url)
    engine = create_engine(postgres_url)
    try:
        await check_schema(engine)  # at head: no error
        async with engine.connect() as conn:
            kind = await conn.scalar(text("SELECT relkind::text FROM pg_class WHERE relname = 'usage_events'"))
        assert kind == "p"  # partitioned
        partitions = await list_usage_partitions(engine)
        this_month = datetime.now(UTC).strftime("usage_events_p%Y%m")
        assert this_month in partitions and "usage_events_default" in partitions
        assert len(partitions) == 5  # this month, 3 ahead, default
    finally:
        await engine.dispose()
    # Upgrading again is a no-op.
    await asyncio.to_thread(upgrade, postgres_url)


async def test_migrations_apply_to_empty_sqlite(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    await asyncio.to_thread(upgrade, url)
    assert TABLES <= await table_names(url)
    engine = create_engine(url)
    try:
        await check_schema(engine)
        async with engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
    finally:
        await engine.dispose()


async def test_unmigrated_postgres_stops_startup_naming_the_command(postgres_url: str) -> None:
    with pytest.raises(SchemaNotMigrated, match="tollway db upgrade"):
        await prepare_database(postgres_url, auto_migrate=False)  # a worker: checks, never migrates
    assert "usage_events" not in await table_names(postgres_url)


async def migrate_concurrently(url: str) -> None:
    """Four `tollway db upgrade` processes at once on a fresh database: one migrates, the others
    wait on the lock and find it done (each would fail on "already exists" otherwise)."""
    await asyncio.gather(*(asyncio.to_thread(migrate, url) for _ in range(4)))
    assert TABLES <= await table_names(url)
    engine = create_engine(url)
    try:
        await check_schema(engine)
    finally:
        await engine.dispose()


async def test_concurrent_migrations_wait_for_each_other_on_sqlite(tmp_path: Path) -> None:
    await migrate_concurrently(sqlite_url(tmp_path))


async def test_concurrent_migrations_wait_for_each_other_on_postgres(postgres_url: str) -> None:
    await migrate_concurrently(postgres_url)


async def test_outdated_schema_is_reported(postgres_url: str) -> None:
    await asyncio.to_thread(upgrade, postgres_url)
    engine = create_engine(postgres_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
        with pytest.raises(SchemaNotMigrated, match=r"revision 0000.*tollway db upgrade") as info:
            await check_schema(engine)
        assert ", ".join(sorted(head_revisions())) in str(info.value)
    finally:
        await engine.dispose()


async def test_embedded_sqlite_migrates_itself(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    engine = await prepare_database(url, auto_migrate=True)
    try:
        await check_schema(engine)
    finally:
        await engine.dispose()
    with pytest.raises(SchemaNotMigrated):
        await prepare_database(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}", auto_migrate=False)
    # A database in a directory that does not exist yet: the directory is created.
    engine = await prepare_database(f"sqlite+aiosqlite:///{tmp_path / 'new' / 'dir' / 't.db'}", auto_migrate=True)
    await engine.dispose()


def event(request_id: str, created_at: datetime) -> UsageEvent:
    return UsageEvent(
        request_id=request_id,
        team_id="t",
        key_id="k",
        client_format="openai",
        requested_model="m",
        created_at=created_at,
    )


async def test_partition_created_later_takes_over_rows_from_default(postgres_url: str, tmp_path: Path) -> None:
    await asyncio.to_thread(upgrade, postgres_url)
    engine = create_engine(postgres_url)
    month_start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    far = (month_start + timedelta(days=32 * 5)).replace(day=1)  # beyond the 3 months created ahead
    recorder = Recorder(engine, spool=DiskSpool(tmp_path / "spool"), maintain_partitions=False)
    try:
        recorder.record(event("in-default", far + timedelta(days=2)))
        recorder.record(event("this-month", month_start + timedelta(hours=1)))
        await recorder.flush()
        async with engine.connect() as conn:
            where = await conn.scalar(
                text("SELECT tableoid::regclass::text FROM usage_events WHERE request_id = 'in-default'")
            )
        assert where == "usage_events_default"

        assert await ensure_usage_partitions(engine, months_ahead=6) >= 1
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT request_id, tableoid::regclass::text FROM usage_events"))).all()
        placed: dict[str, str] = {r[0]: r[1] for r in rows}
        assert placed["in-default"] == far.strftime("usage_events_p%Y%m")
        assert placed["this-month"] == month_start.strftime("usage_events_p%Y%m")
        # The same event replayed lands on the same row in its new partition.
        recorder.record(event("in-default", far + timedelta(days=2)))
        await recorder.flush()
        assert recorder.stats.duplicates == 1
    finally:
        await recorder.aclose()
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of each kind (PostgreSQL: a throwaway database, like ``postgres_url``)."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    server = request.getfixturevalue("postgres_server_url")
    name = f"tollway_test_{uuid.uuid4().hex[:12]}"
    await _create_database(server, name)
    try:
        yield f"{server.rsplit('/', 1)[0]}/{name}"
    finally:
        await _drop_database(server, name)


async def test_prune_usage_drops_old_months(database_url: str, tmp_path: Path) -> None:
    url = database_url
    backend = "sqlite" if url.startswith("sqlite") else "postgres"
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url)
    month_start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    recorder = Recorder(engine, spool=DiskSpool(tmp_path / "spool"), maintain_partitions=False)
    try:
        recorder.record(event("old", datetime(2020, 1, 15, tzinfo=UTC)))
        recorder.record(event("current", month_start + timedelta(hours=3)))
        await recorder.flush()
        result = await prune_usage(engine, before=month_start)
        async with engine.connect() as conn:
            left = (await conn.execute(text("SELECT request_id FROM usage_events"))).scalars().all()
        assert left == ["current"]
        assert result.deleted_rows == 1  # the old row sat in the default partition / the SQLite table
        if backend == "postgres":
            assert result.dropped_partitions == []  # this month's partition is kept
            old_partition = (month_start - timedelta(days=1)).strftime("usage_events_p%Y%m")
            async with engine.begin() as conn:
                await conn.execute(
                    text(
                        f"CREATE TABLE {old_partition} PARTITION OF usage_events FOR VALUES FROM "
                        f"('{(month_start - timedelta(days=1)).replace(day=1).isoformat()}') "
                        f"TO ('{month_start.isoformat()}')"
                    )
                )
            result = await prune_usage(engine, before=month_start)
            assert result.dropped_partitions == [old_partition]
            assert old_partition not in await list_usage_partitions(engine)
    finally:
        await recorder.aclose()
        await engine.dispose()

"""Reports over the ledger on both backends: the Decimal cost of the rows equals every report's
total exactly, whatever the grouping, and day/hour buckets are UTC."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import load_catalog
from app.db.engine import create_engine
from app.db.migrate import upgrade
from app.db.tables import usage_events
from app.domain import Usage
from app.ledger.events import UsageEvent
from app.ledger.pricing import cost_of
from app.ledger.recorder import Recorder
from app.ledger.reports import BadRange, parse_range, usage_report, usage_totals
from app.ledger.spool import DiskSpool
from app.teams.store import TeamStore
from tests.conftest import _create_database, _drop_database

START = datetime(2026, 5, 30, 22, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A migrated database of each kind."""
    server = None
    name = f"tollway_test_{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'reports.db'}"
    else:
        server = request.getfixturevalue("postgres_server_url")
        await _create_database(server, name)
        url = f"{server.rsplit('/', 1)[0]}/{name}"
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url)
    yield engine
    await engine.dispose()
    if server is not None:
        await _drop_database(server, name)


async def fill(engine: AsyncEngine, tmp_path: Path, count: int = 400) -> list[UsageEvent]:
    """Priced events over three teams, two keys each, four models and ~3 days across a month end."""
    catalog = load_catalog(None)
    store = TeamStore(engine)
    keys: dict[str, list[str]] = {}
    for name in ("ads", "search", "support"):
        team = await store.create_team(name)
        keys[team.id] = [(await store.create_key(team.id, name=f"k{i}")).record.id for i in range(2)]
    models = ["claude-haiku-5-5", "claude-sonnet-5-5", "gpt-5-mini", "gpt-5"]
    rng = random.Random(7)
    events = []
    for i in range(count):
        team_id = rng.choice(sorted(keys))
        model = rng.choice(models)
        usage = Usage(
            input_tokens=rng.randint(0, 50_000),
            output_tokens=rng.randint(0, 4_000),
            cache_write_5m_tokens=rng.choice([0, 0, rng.randint(1024, 20_000)]),
            cache_write_1h_tokens=rng.choice([0, 0, 0, rng.randint(1024, 20_000)]),
            cache_read_tokens=rng.choice([0, rng.randint(1024, 150_000)]),
        )
        cost = cost_of(catalog.models[model], usage)
        events.append(
            UsageEvent(
                request_id=f"req_{i:05d}",
                team_id=team_id,
                key_id=rng.choice(keys[team_id]),
                client_format=rng.choice(["anthropic", "openai"]),
                requested_model="auto",
                served_model=None if i % 50 == 0 else model,  # some budget rejections: never served
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_write_5m_tokens=usage.cache_write_5m_tokens,
                cache_write_1h_tokens=usage.cache_write_1h_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                cost_usd=cost.total,
                uncached_cost_usd=cost.uncached,
                status=429 if i % 50 == 0 else 200,
                created_at=START + timedelta(seconds=rng.randint(0, 3 * 86_400)),
            )
        )
    recorder = Recorder(engine, spool=DiskSpool(tmp_path / "spool"), batch_size=128)
    for event in events:
        recorder.record(event)
    await recorder.aclose()
    return events


@pytest.mark.parametrize("group_by", ["team", "key", "model", "day", "hour"])
async def test_report_totals_equal_the_rows_exactly(engine: AsyncEngine, tmp_path: Path, group_by: str) -> None:
    events = await fill(engine, tmp_path)
    end = START + timedelta(days=4)
    report = await usage_report(engine, start=START, end=end, group_by=group_by)  # type: ignore[arg-type]
    expected_cost = sum((e.cost_usd for e in events), Decimal(0))
    expected_uncached = sum((e.uncached_cost_usd for e in events), Decimal(0))

    assert report.total.cost_usd == expected_cost
    assert report.total.uncached_cost_usd == expected_uncached
    assert sum((r.cost_usd for r in report.rows), Decimal(0)) == report.total.cost_usd
    assert report.total.savings_usd == expected_uncached - expected_cost
    assert report.total.requests == len(events)
    assert report.total.errors == sum(1 for e in events if e.status >= 400)
    assert report.total.cache_read_tokens == sum(e.cache_read_tokens for e in events)
    assert report.total.cache_write_tokens == sum(e.cache_write_5m_tokens + e.cache_write_1h_tokens for e in events)
    assert isinstance(report.total.cost_usd, Decimal)

    async with engine.connect() as conn:
        stored = await conn.scalar(select(func.sum(usage_events.c.cost_usd, type_=usage_events.c.cost_usd.type)))
    assert stored == expected_cost

    # The CSV says the same, to the last digit.
    total_line = report.to_csv().strip().splitlines()[-1].split(",")
    assert Decimal(total_line[9]) == expected_cost and int(total_line[2]) == len(events)


async def test_groups_match_a_recount_in_python(engine: AsyncEngine, tmp_path: Path) -> None:
    events = await fill(engine, tmp_path, count=250)
    end = START + timedelta(days=4)
    expected: dict[str, dict[str, Decimal]] = {
        "model": defaultdict(Decimal),
        "day": defaultdict(Decimal),
        "hour": defaultdict(Decimal),
    }
    for e in events:
        expected["model"][e.served_model or "(not served)"] += e.cost_usd
        expected["day"][e.created_at.strftime("%Y-%m-%d")] += e.cost_usd
        expected["hour"][e.created_at.strftime("%Y-%m-%dT%H:00:00Z")] += e.cost_usd
    for group_by, sums in expected.items():
        report = await usage_report(engine, start=START, end=end, group_by=group_by)  # type: ignore[arg-type]
        assert {r.label: r.cost_usd for r in report.rows} == dict(sums), group_by
        groups = [r.group for r in report.rows]
        named = [g for g in groups if g]
        assert groups == named + [""] * (len(groups) - len(named))  # the "no group" row comes last
        assert named == sorted(named)

    teams = await usage_report(engine, start=START, end=end, group_by="team")
    assert {r.label for r in teams.rows} == {"ads", "search", "support"}
    keys = await usage_report(engine, start=START, end=end, group_by="key")
    assert len(keys.rows) == 6 and all(r.label.startswith("tw-") for r in keys.rows)


async def test_ranges_and_filters(engine: AsyncEngine, tmp_path: Path) -> None:
    events = await fill(engine, tmp_path, count=150)
    cut = START + timedelta(days=1, hours=5)
    first = await usage_report(engine, start=START, end=cut, group_by="team")
    second = await usage_report(engine, start=cut, end=START + timedelta(days=4), group_by="team")
    assert first.total.requests == sum(1 for e in events if e.created_at < cut)
    assert first.total.cost_usd + second.total.cost_usd == sum((e.cost_usd for e in events), Decimal(0))

    team_id = events[0].team_id
    assert team_id is not None
    one = await usage_totals(engine, start=START, end=START + timedelta(days=4), team_id=team_id)
    assert one.cost_usd == sum((e.cost_usd for e in events if e.team_id == team_id), Decimal(0))
    empty = await usage_totals(engine, start=datetime(2020, 1, 1, tzinfo=UTC), end=datetime(2020, 2, 1, tzinfo=UTC))
    assert (empty.requests, empty.cost_usd) == (0, Decimal(0))


def test_parse_range() -> None:
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    assert parse_range(None, None, now=now) == (now - timedelta(days=30), now)
    assert parse_range("2026-05-01", "2026-05-02T06:00:00+02:00") == (
        datetime(2026, 5, 1, tzinfo=UTC),
        datetime(2026, 5, 2, 4, tzinfo=UTC),
    )
    with pytest.raises(BadRange, match="start must be a date"):
        parse_range("last week", None)
    with pytest.raises(BadRange, match="before end") as info:
        parse_range("2026-05-02", "2026-05-01")
    assert info.value.param == "end"


async def test_group_by_end_user(engine: AsyncEngine, tmp_path: Path) -> None:
    recorder = Recorder(engine, spool=DiskSpool(tmp_path / "spool"))
    now = datetime.now(UTC)
    for i, user in enumerate(["alice", "bob", "alice", None]):
        recorder.record(
            UsageEvent(
                request_id=f"req_eu_{i}", team_id="t", key_id="k", client_format="openai",
                requested_model="m", served_model="m", cost_usd=Decimal("0.5"), uncached_cost_usd=Decimal("0.5"),
                created_at=now, end_user=user,
            )
        )  # fmt: skip
    await recorder.flush()
    await recorder.aclose()
    hour = timedelta(hours=1)
    report = await usage_report(engine, start=now - hour, end=now + hour, group_by="end_user")
    assert [(r.group, r.label, r.requests, r.cost_usd) for r in report.rows] == [
        ("alice", "alice", 2, Decimal("1.0000000000")),
        ("bob", "bob", 1, Decimal("0.5000000000")),
        ("", "(none)", 1, Decimal("0.5000000000")),
    ]

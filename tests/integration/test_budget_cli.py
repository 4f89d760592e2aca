"""``tollway budgets set|show`` against a real (SQLite) database and the real Redis."""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from pathlib import Path

import pytest
import redis

from app.auth.principal import Limits
from app.budgets.cli import register
from app.budgets.windows import team_keys
from app.db.migrate import prepare_database
from app.teams.store import TeamStore


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="tollway")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def make_team(url: str, name: str) -> tuple[str, str]:
    async def work() -> tuple[str, str]:
        engine = await prepare_database(url, auto_migrate=True)
        try:
            store = TeamStore(engine)
            team = await store.create_team(name, limits=Limits(tokens_per_month=9_000_000))
            key = await store.create_key(team.id, name="ci")
            return team.id, key.record.id
        finally:
            await engine.dispose()

    return asyncio.run(work())


def stored_limits(url: str, team: str, key_id: str | None = None) -> Limits:
    async def work() -> Limits:
        engine = await prepare_database(url, auto_migrate=True)
        try:
            store = TeamStore(engine)
            return (await store.get_key(key_id)).limits if key_id else (await store.get_team(team)).limits
        finally:
            await engine.dispose()

    return asyncio.run(work())


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'tollway.db'}"


def test_set_updates_the_database_and_publishes_to_redis(
    database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOLLWAY_REDIS_URL", redis_url)
    name = f"search-{uuid.uuid4().hex[:6]}"
    team_id, key_id = make_team(database_url, name)

    code = run_cli(
        "budgets", "set", "--team", name, "--tokens-per-day", "5000000", "--usd-per-month", "250.5",
        "--database-url", database_url,
    )  # fmt: skip
    assert code == 0
    assert "tokens_per_day=5000000" in capsys.readouterr().out
    # Only the windows given change; the month budget set at creation stays.
    assert stored_limits(database_url, name) == Limits(
        tokens_per_day=5_000_000, tokens_per_month=9_000_000, usd_per_month="250.5"
    )
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    published = client.hgetall(team_keys(team_id).team_limits)
    assert (published["tpd"], published["tpmo"], published["usdm"], published["rpm"]) == (
        "5000000", "9000000", "250500000", "-1",
    )  # fmt: skip

    code = run_cli(
        "budgets", "set", "--team", name, "--key", key_id, "--requests-per-minute", "60",
        "--database-url", database_url,
    )  # fmt: skip
    assert code == 0
    assert stored_limits(database_url, name, key_id) == Limits(requests_per_minute=60)
    assert client.hget(team_keys(team_id).key_limits(key_id), "rpm") == "60"

    code = run_cli(
        "budgets", "set", "--team", name, "--tokens-per-month", "none", "--database-url", database_url
    )
    assert code == 0
    assert stored_limits(database_url, name).tokens_per_month is None
    assert client.hget(team_keys(team_id).team_limits, "tpmo") == "-1"
    capsys.readouterr()

    assert run_cli("budgets", "show", "--team", name, "--json", "--database-url", database_url) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["limits"]["tokens_per_day"] == 5_000_000
    assert shown["usage"]["tokens_per_day"] == {
        "used": 0,
        "reserved": 0,
        "limit": 5_000_000,
        "remaining": 5_000_000,
        "reset_at": shown["usage"]["tokens_per_day"]["reset_at"],
    }
    assert shown["keys"][key_id]["limits"]["requests_per_minute"] == 60
    assert shown["keys"][key_id]["usage"]["requests_per_minute"]["limit"] == 60
    client.close()


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (("--tokens-per-day", "-5"), "must not be negative"),
        (("--usd-per-day", "1e12"), "absurd"),
        (("--tokens-per-minute", "fast"), "whole number"),
        ((), "give at least one window"),
    ],
)
def test_set_refuses_bad_limits(
    database_url: str,
    flags: tuple[str, ...],
    complaint: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("TOLLWAY_REDIS_URL", raising=False)
    name = f"t-{uuid.uuid4().hex[:6]}"
    make_team(database_url, name)
    assert run_cli("budgets", "set", "--team", name, *flags, "--database-url", database_url) == 2
    assert complaint in capsys.readouterr().err
    assert stored_limits(database_url, name) == Limits(tokens_per_month=9_000_000)


def test_a_key_of_another_team_is_refused(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TOLLWAY_REDIS_URL", raising=False)
    make_team(database_url, "one")
    _, other_key = make_team(database_url, "two")
    code = run_cli(
        "budgets", "set", "--team", "one", "--key", other_key, "--tokens-per-day", "5",
        "--database-url", database_url,
    )  # fmt: skip
    assert code == 1
    assert "does not belong to team 'one'" in capsys.readouterr().err
    assert run_cli("budgets", "show", "--team", "one", "--database-url", database_url) == 0
    assert "counted per gateway process" in capsys.readouterr().out

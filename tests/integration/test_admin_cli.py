"""The ``tollway`` CLI against a temporary SQLite database, in-process: db upgrade, teams, keys,
usage."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from app.auth.keystore import KeyStore
from app.cli import main
from app.db.engine import create_engine
from app.ledger.events import UsageEvent
from app.ledger.recorder import Recorder
from app.ledger.spool import DiskSpool


@pytest.fixture
def database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("TOLLWAY_DATABASE_URL", url)
    return url


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def lookup(url: str, secret: str) -> str | None:
    engine = create_engine(url)
    try:
        principal = await KeyStore(engine).lookup(secret)
        return principal.team_name if principal else None
    finally:
        await engine.dispose()


def test_teams_keys_and_usage(database_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys, "db", "upgrade")[0] == 0
    assert run(capsys, "db", "check")[0] == 0

    code, out, err = run(capsys, "teams", "create", "search", "--tokens-per-day", "100000", "--json")
    assert code == 0, err
    team = json.loads(out)
    assert team["name"] == "search" and team["limits"]["tokens_per_day"] == 100000

    code, out, err = run(capsys, "teams", "create", "search")
    assert code == 1 and "already exists" in err

    code, out, err = run(capsys, "keys", "create", "--team", "search", "--name", "indexer")
    assert code == 0, err
    secret = out.strip()
    assert secret.startswith("tw-") and "\n" not in secret  # the key alone on stdout, for $(...)
    assert "only time" in err
    assert asyncio.run(lookup(database_url, secret)) == "search"

    code, out, _ = run(capsys, "keys", "list", "--team", "search", "--json")
    (listed,) = json.loads(out)
    assert listed["name"] == "indexer" and listed["status"] == "active" and "key" not in listed
    assert secret not in out

    code, out, _ = run(capsys, "teams", "show", "search")
    assert code == 0 and listed["prefix"] in out and secret not in out

    code, out, err = run(capsys, "keys", "revoke", listed["id"])
    assert code == 0 and "revoked" in out
    assert asyncio.run(lookup(database_url, secret)) is None

    code, _, err = run(capsys, "keys", "create", "--team", "nobody")
    assert code == 1 and "no team" in err
    code, _, err = run(capsys, "keys", "create", "--team", "search", "--tokens-per-day", "-3")
    assert code == 2 and "tokens_per_day" in err

    # Usage, from events recorded the way the gateway records them.
    async def record() -> None:
        engine = create_engine(database_url)
        recorder = Recorder(engine, spool=DiskSpool(tmp_path / "spool"))
        now = datetime.now(UTC)
        for i, cost in enumerate(["0.10", "0.20", "0.30"]):
            recorder.record(
                UsageEvent(
                    request_id=f"r{i}",
                    team_id=team["id"],
                    key_id=listed["id"],
                    client_format="openai",
                    requested_model="auto",
                    served_model="gpt-5-mini",
                    input_tokens=1000,
                    output_tokens=100,
                    cost_usd=Decimal(cost),
                    uncached_cost_usd=Decimal(cost) * 2,
                    created_at=now - timedelta(hours=i),
                )
            )
        await recorder.aclose()
        await engine.dispose()

    asyncio.run(record())
    code, out, err = run(capsys, "usage", "--group-by", "team", "--csv")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[1].startswith(f"{team['id']},search,3,")
    assert lines[-1].split(",")[9] == "0.6000000000" and lines[-1].split(",")[11] == "0.6000000000"

    code, out, _ = run(capsys, "usage", "--group-by", "model")
    assert code == 0 and "gpt-5-mini" in out and "0.600000" in out

    code, _, err = run(capsys, "usage", "--from", "not-a-date")
    assert code == 2 and "start must be a date" in err

    code, out, err = run(capsys, "teams", "delete", "search", "--yes")
    assert code == 0 and "deleted" in out
    code, out, _ = run(capsys, "teams", "list", "--json")
    assert json.loads(out) == []


def test_key_rotate(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "teams", "create", "ops")
    old = run(capsys, "keys", "create", "--team", "ops")[1].strip()
    key_id = json.loads(run(capsys, "keys", "list", "--team", "ops", "--json")[1])[0]["id"]
    code, out, err = run(capsys, "keys", "rotate", key_id)
    assert code == 0, err
    new = out.strip()
    assert new != old and new.startswith("tw-")
    assert asyncio.run(lookup(database_url, old)) is None
    assert asyncio.run(lookup(database_url, new)) == "ops"


def test_db_check_reports_an_unmigrated_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "db", "check", "--database-url", f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    assert code == 1 and "tollway db upgrade" in err

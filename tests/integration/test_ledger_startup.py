"""`tollway serve --workers 2` on a fresh database: the supervisor migrates once, before the
workers start, and both workers come up (they used to race on the migration and one failed with
"table alembic_version already exists")."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.procs import ROOT, Stack, base_env


def serve_two_workers(tmp_path: Path, database_url: str) -> None:
    with Stack(tmp_path, database_url=database_url, redis_url=None) as stack:
        gateway = stack.spawn_gateway(workers=2)
        stack.wait_ready(gateway, timeout=90)
        # Both workers report a finished start-up (uvicorn logs one line per worker).
        deadline = time.monotonic() + 30
        while (log := gateway.proc.log()).count("Application startup complete") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "startup failed" not in log.lower(), log[-3000:]
        assert log.count("Application startup complete") == 2, log[-3000:]
        assert len(gateway.proc.children()) >= 2
        for _ in range(20):
            assert httpx.get(gateway.url + "/healthz", timeout=10).status_code == 200
        assert not re.search(r"already exists", log), log[-3000:]


def test_two_workers_start_on_a_fresh_sqlite_database(tmp_path: Path) -> None:
    serve_two_workers(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'fresh' / 'tollway.db'}")


def test_two_workers_start_on_a_fresh_postgres_database(tmp_path: Path, postgres_url: str) -> None:
    serve_two_workers(tmp_path, postgres_url)


def test_a_database_that_cannot_be_migrated_is_one_clear_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", "1"],
        cwd=ROOT,
        env={**base_env(), "TOLLWAY_SIMULATOR": "on", "TOLLWAY_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:1/none"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "could not migrate the database postgresql+asyncpg://postgres@127.0.0.1:1/none" in done.stderr
    assert "Traceback" not in done.stderr


"""The system under test: the simulator, the gateway in its two configurations, and their databases.

**everything-on**: a team key created in PostgreSQL with ``tollway teams create`` / ``keys create``,
strict Redis budgets with generous limits (``tollway budgets set``), the PostgreSQL ledger, metrics,
the JSON request log at INFO, automatic prompt caching (the team's default policy), and ``model:
"auto"`` on every request.

**bare**: the leanest configuration Tollway supports. No Redis (the team has no limits, so the
limiter touches no store at all), the embedded SQLite ledger (the ledger cannot be switched off),
the team seeded from ``TOLLWAY_DEV_KEY`` with prompt caching turned off in its policy (admin API), a
concrete model (no routing), log level WARNING (no per-request log line). Metrics cannot be switched
off and stay on.

Both reach the simulator over HTTP at ``TOLLWAY_SIMULATOR_URL`` with ``TOLLWAY_SIMULATOR=always``, so
no provider credential in the environment can send traffic anywhere but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

from bench.procs import ROOT, Child, ProcessGroup, free_port, wait_http

ConfigName = Literal["everything-on", "bare"]
CONFIGS: tuple[ConfigName, ...] = ("everything-on", "bare")
ADMIN_KEY = "bench-admin-key"
BARE_KEY = "bench-bare-key"
GENEROUS = {
    "--tokens-per-day": "1000000000000",
    "--tokens-per-month": "10000000000000",
    "--tokens-per-minute": "100000000000",
    "--requests-per-minute": "10000000",
    "--usd-per-day": "10000000",
    "--usd-per-month": "100000000",
}
_PROVIDER_SECRETS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY")


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_") and k not in _PROVIDER_SECRETS}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli(args: list[str], env: dict[str, str]) -> str:
    """Run ``tollway ...`` (as ``python -m app.cli``) and return its stdout; raise with its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"tollway {' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


# ---- databases --------------------------------------------------------------------------------------


@dataclass
class Postgres:
    """A throwaway database next to ``admin_url``'s, created, migrated, and dropped at the end."""

    server: str  # e.g. postgresql://postgres@127.0.0.1:5432
    name: str = field(default_factory=lambda: f"tollway_bench_{uuid.uuid4().hex[:10]}")

    @property
    def url(self) -> str:
        return f"{self.server.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{self.name}"

    async def _admin(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(f"{self.server}/postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def create(self, env: dict[str, str]) -> None:
        asyncio.run(self._admin(f'CREATE DATABASE "{self.name}"'))
        cli(["db", "upgrade", "--database-url", self.url], env)

    def drop(self) -> None:
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))


def redis_cleanup(redis_url: str, team_ids: list[str]) -> int:
    """Delete the budget keys of the benchmark's teams (and nothing else)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    deleted = 0
    try:
        for team_id in team_ids:
            keys = list(client.scan_iter(match=f"tw:{{{team_id}}}*", count=1000))
            if keys:
                deleted += int(client.delete(*keys))
    finally:
        client.close()
    return deleted


# ---- processes ----------------------------------------------------------------------------------------


def start_simulator(group: ProcessGroup, cores: list[int] | None) -> tuple[Child, int]:
    port = free_port()
    env = base_env()
    child = group.start(
        "simulator",
        [sys.executable, "-m", "app.simulator", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cores=cores,
    )
    wait_http(port, "/_sim/stats", child)
    return child, port


@dataclass
class Gateway:
    config: ConfigName
    workers: int
    port: int
    api_key: str
    child: Child
    team_id: str
    team_name: str


@dataclass
class GatewaySetup:
    """What a configuration needs before its gateway starts: database, team, key."""

    config: ConfigName
    env: dict[str, str]
    api_key: str
    team_name: str
    team_id: str = ""


def prepare_everything_on(sim_port: int, postgres: Postgres, redis_url: str, work_dir: Path) -> GatewaySetup:
    env = base_env()
    env.update(
        {
            "TOLLWAY_DATABASE_URL": postgres.url,
            "TOLLWAY_REDIS_URL": redis_url,
            "TOLLWAY_SIMULATOR": "always",
            "TOLLWAY_SIMULATOR_URL": f"http://127.0.0.1:{sim_port}",
            "TOLLWAY_SPOOL_DIR": str(work_dir / "spool-on"),
            "TOLLWAY_ADMIN_KEY": ADMIN_KEY,
            "TOLLWAY_BUDGET_MODE": "strict",
            "TOLLWAY_LOG_LEVEL": "INFO",
        }
    )
    postgres.create(env)
    team = "bench-everything-on"
    cli(["teams", "create", team], env)
    key = cli(["keys", "create", "--team", team, "--name", "bench"], env)
    limits: list[str] = [arg for pair in GENEROUS.items() for arg in pair]
    cli(["budgets", "set", "--team", team, *limits], env)
    team_id = str(json.loads(cli(["teams", "show", team, "--json"], env))["id"])
    return GatewaySetup("everything-on", env, key, team, team_id)


def prepare_bare(sim_port: int, work_dir: Path) -> GatewaySetup:
    env = base_env()
    env.update(
        {
            "TOLLWAY_DATABASE_URL": f"sqlite+aiosqlite:///{work_dir / 'bare.db'}",
            "TOLLWAY_SIMULATOR": "always",
            "TOLLWAY_SIMULATOR_URL": f"http://127.0.0.1:{sim_port}",
            "TOLLWAY_SPOOL_DIR": str(work_dir / "spool-bare"),
            "TOLLWAY_DEV_KEY": BARE_KEY,
            "TOLLWAY_ADMIN_KEY": ADMIN_KEY,
            "TOLLWAY_LOG_LEVEL": "WARNING",
        }
    )
    return GatewaySetup("bare", env, BARE_KEY, "dev")


def start_gateway(
    group: ProcessGroup,
    setup: GatewaySetup,
    workers: int,
    cores: list[int] | None,
    *,
    prelude: str | None = None,
) -> Gateway:
    """``tollway serve``; ``prelude`` (experiments only) is Python run first, in the same process."""
    port = free_port()
    env = dict(setup.env)
    env["TOLLWAY_PORT"] = str(port)
    env["TOLLWAY_HOST"] = "127.0.0.1"
    serve = ["serve", "--workers", str(workers)]
    argv = [sys.executable, "-m", "app.cli", *serve]
    if prelude:
        argv = [
            sys.executable,
            "-c",
            f"{prelude}\nimport sys\nfrom app.cli import main\nsys.exit(main({serve!r}))",
        ]
    child = group.start(f"gateway-{setup.config}-{workers}w", argv, env=env, cores=cores)
    wait_http(port, "/healthz", child, timeout=60)
    if workers > 1:  # every worker must be up, not only the first to bind
        deadline = time.monotonic() + 30
        while len(child.tree()) < workers + 1 and time.monotonic() < deadline:
            time.sleep(0.2)
    gateway = Gateway(setup.config, workers, port, setup.api_key, child, setup.team_id, setup.team_name)
    if setup.config == "bare":
        team = _admin(port, "PATCH", f"/admin/teams/{setup.team_name}", {"policy": {"prompt_cache": "off"}})
        gateway.team_id = setup.team_id = str(team["id"])
        # Other workers' key caches learn of the policy within the key-cache TTL.
        time.sleep(2.5 if workers > 1 else 0)
    return gateway


def _admin(port: int, method: str, path: str, payload: dict[str, object]) -> dict[str, object]:
    response = httpx.request(
        method,
        f"http://127.0.0.1:{port}{path}",
        json=payload,
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    response.raise_for_status()
    data: dict[str, object] = response.json()
    return data


def stop_gateway(group: ProcessGroup, gateway: Gateway) -> None:
    group.stop(gateway.child)
    with contextlib.suppress(OSError):
        gateway.child.log_file.close()

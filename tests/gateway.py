"""Start a whole Tollway gateway on a real loopback socket for end-to-end tests.

The gateway runs with the built-in simulator mounted in-process (every provider simulated), a
throwaway SQLite database, in-process budget and cache stores unless a Redis URL is given, a team
key and an admin key.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.config import Catalog, Settings, load_catalog
from app.main import create_app
from tests.servers import free_port, serve

TEAM_KEY = "tw-test-team-key-0001"
ADMIN_KEY = "tw-test-admin-key"


@dataclass
class Gateway:
    url: str
    team_key: str
    admin_key: str
    app: Any

    @property
    def services(self) -> Any:
        return self.app.state.services

    def sim(self, path: str) -> str:
        return f"{self.url}/simulator{path}"

    def sim_requests(self) -> list[dict[str, Any]]:
        return list(httpx.get(self.sim("/_sim/requests")).json())

    def sim_stats(self) -> dict[str, int]:
        return dict(httpx.get(self.sim("/_sim/stats")).json())

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {self.admin_key}"}, timeout=30)


@contextmanager
def run_gateway(tmp_path: Path, *, catalog: Catalog | None = None, **overrides: Any) -> Iterator[Gateway]:
    port = free_port()
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "database_url": f"sqlite+aiosqlite:///{tmp_path}/tollway.db",
        "spool_dir": tmp_path / "spool",
        "simulator": "always",
        "dev_key": TEAM_KEY,
        "admin_key": ADMIN_KEY,
        "retry_base_delay_s": 0.01,
        "retry_max_delay_s": 0.2,
        "ledger_flush_interval_s": 0.05,
    }
    values.update(overrides)
    settings = Settings(**values)
    app = create_app(settings, catalog or load_catalog(settings.config))
    with serve(app, port=port) as url:
        yield Gateway(url=url, team_key=TEAM_KEY, admin_key=ADMIN_KEY, app=app)

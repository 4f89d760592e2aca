"""Schema migrations: ``tollway db upgrade``, the migration at start-up, and the schema check.

``tollway serve`` migrates once, in the supervisor process, before any worker starts
(``migrate_on_start``; ``TOLLWAY_AUTO_MIGRATE=false`` turns it off for operators who migrate as a
separate step). Every migration runs under a lock, so processes that start together never race:
PostgreSQL takes a transaction-level advisory lock (``migrations/env.py``), SQLite an exclusive
``flock`` on ``<database>.migrate.lock`` (``upgrade`` below). The one that gets the lock migrates;
the others then find the schema at head and do nothing. A worker checks the schema when it starts
and stops with ``SchemaNotMigrated`` (whose message names the command to run) when it is not
current; only the embedded SQLite database is also migrated there (a process started without
``tollway serve``, e.g. the in-process test harness).

Alembic is configured in code (no ``alembic.ini`` needed), from the ``migrations`` directory that
sits next to the ``app`` package in a checkout and in an installed distribution alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_engine, is_sqlite

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent.parent / "migrations"


class SchemaNotMigrated(RuntimeError):
    """The database schema is not at the revision this code expects."""


def alembic_config(url: str | None = None) -> Config:
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise RuntimeError(f"Tollway's migrations are missing (looked in {MIGRATIONS_DIR})")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision``, under the migration lock. Blocking: it runs
    its own event loop, so call it from synchronous code or through ``asyncio.to_thread``."""
    with _sqlite_migration_lock(url):
        command.upgrade(alembic_config(url), revision)


def migrate_on_start(url: str) -> None:
    """Bring the database to head before the server's workers start (blocking; see the module
    docstring). An in-memory SQLite database belongs to each process: nothing to do."""
    if is_sqlite(url) and _sqlite_file(url) is None:
        return
    upgrade(url)


def _sqlite_file(url: str) -> Path | None:
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


@contextlib.contextmanager
def _sqlite_migration_lock(url: str) -> Iterator[None]:
    path = _sqlite_file(url) if is_sqlite(url) else None
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.migrate.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor closes, or the process dies
        yield
    finally:
        os.close(fd)


def head_revisions() -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def _current_revisions(connection: Connection) -> set[str]:
    return set(MigrationContext.configure(connection).get_current_heads())


async def check_schema(engine: AsyncEngine) -> None:
    """Raise ``SchemaNotMigrated`` unless the database is at the latest revision."""
    expected = head_revisions()
    async with engine.connect() as connection:
        current = await connection.run_sync(_current_revisions)
    if current == expected:
        return
    where = engine.url.render_as_string(hide_password=True)
    if not current:
        state = "has no Tollway schema"
    else:
        state = f"is at revision {', '.join(sorted(current))}, this Tollway expects {', '.join(sorted(expected))}"
    raise SchemaNotMigrated(
        f"the database {where} {state}: run `tollway db upgrade` "
        "(with TOLLWAY_DATABASE_URL set to this database) and start again"
    )


async def prepare_database(url: str, *, auto_migrate: bool) -> AsyncEngine:
    """The engine the server runs on, with its schema checked.

    With ``auto_migrate`` a database that is not at the latest revision is migrated first, under
    the migration lock; without it, ``SchemaNotMigrated``.
    """
    sqlite = is_sqlite(url)
    database = _sqlite_file(url) if sqlite else None
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    try:
        try:
            await check_schema(engine)
        except SchemaNotMigrated:
            if not auto_migrate:
                raise
            await asyncio.to_thread(upgrade, url)
            await check_schema(engine)
    except BaseException:
        await engine.dispose()
        raise
    return engine

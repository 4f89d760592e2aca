"""Schema migrations: ``tollway db upgrade`` and the start-up check.

The embedded SQLite database migrates itself when the server starts. PostgreSQL is never migrated
by the server: several replicas starting at once would race, and a production schema change is an
operator's decision. A server pointed at an un-migrated PostgreSQL stops with ``SchemaNotMigrated``,
whose message names the command to run.

Alembic is configured in code (no ``alembic.ini`` needed), from the ``migrations`` directory that
sits next to the ``app`` package in a checkout and in an installed distribution alike.
"""

from __future__ import annotations

import asyncio
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
    """Migrate the database at ``url`` to ``revision``. Blocking: it runs its own event loop, so
    call it from synchronous code or through ``asyncio.to_thread``."""
    command.upgrade(alembic_config(url), revision)


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

    With ``auto_migrate`` an embedded SQLite database that is not at the latest revision is migrated
    first; PostgreSQL must already be migrated whatever ``auto_migrate`` says (see the module
    docstring).
    """
    sqlite = is_sqlite(url)
    if sqlite:
        database = make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    try:
        try:
            await check_schema(engine)
        except SchemaNotMigrated:
            if not (sqlite and auto_migrate):
                raise
            await asyncio.to_thread(upgrade, url)
            await check_schema(engine)
    except BaseException:
        await engine.dispose()
        raise
    return engine

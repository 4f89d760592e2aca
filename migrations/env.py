"""Alembic environment: runs migrations over an async engine (asyncpg or aiosqlite).

The URL comes from, in order: ``config.attributes["url"]`` (set by ``app.db.migrate.upgrade``),
``-x url=...`` on the alembic command line, then ``TOLLWAY_DATABASE_URL`` / the Tollway default.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from app.db.engine import create_engine
from app.db.tables import metadata

config = context.config
target_metadata = metadata


def _database_url() -> str:
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    if url:
        return str(url)
    from app.config import load_settings

    return load_settings().database_url


# Replicas or workers starting together against one PostgreSQL: one migrates, the others wait on
# this lock and then find the schema at head (Alembic reads the version only after it is taken).
# Taken before ``configure``, so Alembic sees an outer transaction and the lock is held until
# ``_run_online`` commits. SQLite migrations are serialised by a file lock in app.db.migrate.
MIGRATION_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('tollway_migrations'))"


def _run(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text(MIGRATION_LOCK_SQL))
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_engine(_database_url(), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def _run_offline() -> None:
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
else:
    asyncio.run(_run_online())

"""One place that knows how to open an ``AsyncEngine`` for SQLite or PostgreSQL.

SQLite is the embedded default: WAL so readers (reports, the admin API) never block the ledger
writer, a busy timeout so concurrent writers wait instead of failing, and foreign keys switched on
(SQLite leaves them off per connection). PostgreSQL goes through asyncpg with a bounded pool whose
connections are pinged before use, so a restarted database is noticed on the next checkout rather
than on the next failed statement.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as _create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 5_000
POSTGRES_CONNECT_TIMEOUT_S = 5.0
POSTGRES_COMMAND_TIMEOUT_S = 30.0


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, **overrides: Any) -> AsyncEngine:
    """An async engine for ``url`` (``sqlite+aiosqlite://…`` or ``postgresql+asyncpg://…``)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.drivername == "sqlite":
            parsed = parsed.set(drivername="sqlite+aiosqlite")
        engine = _create_async_engine(parsed, **overrides)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    if backend == "postgresql":
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+asyncpg")
        options: dict[str, Any] = {
            "pool_size": 10,
            "max_overflow": 10,
            "pool_timeout": 10,
            "pool_pre_ping": True,
            "pool_recycle": 1800,
            "connect_args": {
                "timeout": POSTGRES_CONNECT_TIMEOUT_S,
                "command_timeout": POSTGRES_COMMAND_TIMEOUT_S,
                "server_settings": {"application_name": "tollway", "timezone": "UTC"},
            },
        }
        if "poolclass" in overrides:  # e.g. NullPool for one-shot migrations: no pool sizing
            for key in ("pool_size", "max_overflow", "pool_timeout", "pool_recycle"):
                options.pop(key)
        options.update(overrides)
        return _create_async_engine(parsed, **options)
    raise ValueError(f"unsupported database URL scheme '{parsed.drivername}' (use sqlite or postgresql)")


# SQLSTATE classes meaning "the database is not there right now": connection exception,
# insufficient resources, operator intervention (shutdown, cannot connect now), and object not in
# prerequisite state (a database not accepting connections).
_UNAVAILABLE_SQLSTATE_CLASSES = frozenset({"08", "53", "57", "55"})


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` says the database cannot be reached or cannot serve right now (as opposed
    to rejecting the statement): the caller should answer 503 or retry later, not report a bug."""
    if isinstance(exc, OSError | TimeoutError | DisconnectionError | OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        origin = exc.orig
        sqlstate = getattr(origin, "sqlstate", None) or getattr(origin, "pgcode", None)
        if sqlstate is None:
            return isinstance(getattr(origin, "__cause__", None), OSError | TimeoutError)
        return str(sqlstate)[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
    return False


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # WAL with synchronous=NORMAL is durable across process crashes (not power loss), and
        # the ledger has the spool for the rest.
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()

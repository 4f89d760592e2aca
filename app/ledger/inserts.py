"""The idempotent batch insert of usage events, one strategy per backend.

Both insert many rows per statement with ``ON CONFLICT DO NOTHING``, so a replayed event (same
request id and created_at) is skipped, and both report how many rows were new.

* PostgreSQL: one prepared statement, ``INSERT … SELECT * FROM unnest($1::text[], $2::timestamptz[],
  …)``, sent straight through asyncpg with one array per column. asyncpg encodes the arrays in C, so
  a 500-row batch costs the shared event loop a few milliseconds of CPU instead of the ~15 ms that
  per-row bind processing in SQLAlchemy takes — the writer shares the loop with requests in flight,
  so this is request latency. The statement is a single autocommit statement: atomic by itself.
* SQLite: one single-row ``INSERT … ON CONFLICT DO NOTHING`` run with ``executemany``: the same
  SQL text for every batch, so each connection prepares it once (see ``SqliteInserter`` for why a
  statement whose text depends on the batch size costs native memory).
* Anything else: SQLAlchemy Core, ``insert().on_conflict_do_nothing().returning(...)`` executed
  with many parameter sets, which SQLAlchemy sends as multi-row ``VALUES`` statements.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC
from typing import Any, Protocol

from sqlalchemy import BigInteger, Boolean, Float, Integer, String
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DataError, IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.tables import USAGE_COLUMNS, Money, UTCDateTime, quantize_money, usage_events
from app.ledger.events import UsageEvent
from app.ledger.safe_text import escape_text

# Bind parameters per statement stay well under both drivers' limit (32,767).
ROWS_PER_STATEMENT = 1000
_MAX_BIGINT = 2**63 - 1
_MAX_INT = 2**31 - 1
_STRING_LIMITS: dict[str, int] = {
    str(c.name): c.type.length for c in usage_events.columns if isinstance(c.type, String) and c.type.length
}
_BIGINT_COLUMNS = frozenset(str(c.name) for c in usage_events.columns if isinstance(c.type, BigInteger))
_INT_COLUMNS = frozenset(
    str(c.name) for c in usage_events.columns if isinstance(c.type, Integer) and not isinstance(c.type, BigInteger)
)


class UsageInserter(Protocol):
    async def insert(self, events: Sequence[UsageEvent]) -> int:
        """Insert what is new; return how many rows were inserted (the rest already existed)."""
        ...


def inserter_for(engine: AsyncEngine) -> UsageInserter:
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "asyncpg":
        return PostgresInserter(engine)
    if engine.dialect.name == "sqlite":
        return SqliteInserter(engine)
    return CoreInserter(engine)


def is_rejection(exc: BaseException) -> bool:
    """True when the database refused the data itself (retrying the same rows cannot succeed);
    False for everything that looks like the database being away, slow or restarting."""
    if isinstance(exc, DataError | IntegrityError):
        return True
    origin: Any = exc.orig if isinstance(exc, StatementError) else exc
    # SQLSTATE class 22 is "data exception" (overflow, bad value), 23 "integrity constraint
    # violation". asyncpg errors carry it as ``sqlstate``; SQLAlchemy's wrappers as ``pgcode``.
    sqlstate = str(getattr(origin, "sqlstate", None) or getattr(origin, "pgcode", None) or "")
    if sqlstate[:2] in ("22", "23"):
        return True
    # A value that cannot even be encoded (asyncpg's client-side DataError is a ValueError).
    return isinstance(origin, ValueError | TypeError | ArithmeticError)


# ---- values ----------------------------------------------------------------------------------------


def _clip(name: str, value: Any) -> Any:
    """A value the column can hold: a field the database would reject must not turn a whole batch
    into a poison pill."""
    if value is None:
        return None
    limit = _STRING_LIMITS.get(name)
    if limit is not None:
        value = escape_text(value)  # NUL and lone surrogates: see app/ledger/safe_text.py
        return value[:limit] if len(value) > limit else value
    if name in _BIGINT_COLUMNS:
        return min(max(int(value), 0), _MAX_BIGINT)
    if name in _INT_COLUMNS:
        return min(max(int(value), 0), _MAX_INT)
    if name in ("cost_usd", "uncached_cost_usd"):
        return quantize_money(value)
    if name == "created_at":
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, float) and not math.isfinite(value):
        return None if name == "ttft_ms" else 0.0
    return value


def event_row(event: UsageEvent) -> dict[str, Any]:
    """An event as a table row (column name → value): strings escaped (``safe_text``) and
    clipped, numbers clamped, to what the columns hold."""
    return {name: _clip(name, getattr(event, name)) for name in USAGE_COLUMNS}


def event_columns(events: Sequence[UsageEvent]) -> list[list[Any]]:
    """The events as one list per column, in ``USAGE_COLUMNS`` order, clipped like ``event_row``.

    Column by column with a comprehension each: this runs on the event loop for every batch, and
    it is several times cheaper than clipping value by value through ``_clip``.
    """
    columns: list[list[Any]] = []
    for name in USAGE_COLUMNS:
        values = [getattr(e, name) for e in events]
        limit = _STRING_LIMITS.get(name)
        if limit is not None:
            # Inline for speed: anything not a plain short ASCII string without NUL is escaped
            # and clipped value by value (non-ASCII only to look for lone surrogates).
            if any(
                v is not None and (type(v) is not str or len(v) > limit or not v.isascii() or "\x00" in v)
                for v in values
            ):
                values = [_clip(name, v) for v in values]
        elif name in _BIGINT_COLUMNS or name in _INT_COLUMNS:
            ceiling = _MAX_BIGINT if name in _BIGINT_COLUMNS else _MAX_INT
            if any(type(v) is not int or v < 0 or v > ceiling for v in values):
                values = [_clip(name, v) for v in values]
        elif name in ("cost_usd", "uncached_cost_usd", "created_at", "latency_ms", "ttft_ms"):
            values = [_clip(name, v) for v in values]
        columns.append(values)
    return columns


# ---- PostgreSQL --------------------------------------------------------------------------------------


def _array_type(column: Any) -> str:
    kind = column.type
    if isinstance(kind, UTCDateTime):
        return "timestamptz[]"
    if isinstance(kind, Money):
        return "numeric[]"
    if isinstance(kind, BigInteger):
        return "int8[]"
    if isinstance(kind, Integer):
        return "int4[]"
    if isinstance(kind, Float):
        return "float8[]"
    if isinstance(kind, Boolean):
        return "bool[]"
    return "text[]"


UNNEST_INSERT = (
    f"INSERT INTO {usage_events.name} ({', '.join(USAGE_COLUMNS)}) "
    f"SELECT * FROM unnest("
    + ", ".join(f"${i}::{_array_type(usage_events.c[name])}" for i, name in enumerate(USAGE_COLUMNS, 1))
    + ") ON CONFLICT DO NOTHING"
)


class PostgresInserter:
    """``rows_per_statement`` bounds how long one statement's encoding holds the event loop (about
    1.3 ms per 100 rows on the benchmark machine); the loop runs other work between statements."""

    def __init__(self, engine: AsyncEngine, *, rows_per_statement: int = 200) -> None:
        self.engine = engine
        self.rows_per_statement = rows_per_statement

    async def insert(self, events: Sequence[UsageEvent]) -> int:
        inserted = 0
        async with self.engine.connect() as conn:  # checkout pings: a dead connection is replaced
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            # Each statement commits on its own (autocommit): a batch cut short by a failure is
            # retried whole, and the rows that made it are skipped as conflicts.
            for start in range(0, len(events), self.rows_per_statement):
                columns = event_columns(events[start : start + self.rows_per_statement])
                status: str = await driver.execute(UNNEST_INSERT, *columns)
                inserted += int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <rows inserted>"
        return inserted


# ---- SQLite ------------------------------------------------------------------------------------------


class SqliteInserter:
    """One single-row statement, executed once per row inside one transaction.

    Not multi-row ``VALUES``: its SQL text changes with the number of rows, and Python's sqlite3
    keeps the last 128 prepared statements of each connection (``cached_statements``) keyed by that
    text. A cached statement for a 200-row batch of this table holds about half a megabyte of
    SQLite's memory (outside the Python heap: tracemalloc does not see it), and batch sizes vary
    with load, so every pooled connection the writer used filled its cache with ~75 MB of
    statements used once. Here the text never changes and each connection prepares it once;
    stepping it per row costs no more CPU than one big statement (a little less, measured).

    The count of new rows stays exact without RETURNING: sqlite3 sums ``sqlite3_changes()`` over
    the rows of an ``executemany``, and a row skipped by ``ON CONFLICT DO NOTHING`` changes nothing.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.statement = sqlite_insert(usage_events).on_conflict_do_nothing()

    async def insert(self, events: Sequence[UsageEvent]) -> int:
        rows = [event_row(e) for e in events]
        async with self.engine.begin() as conn:
            result = await conn.execute(self.statement, rows)
        return result.rowcount


# ---- anything else -----------------------------------------------------------------------------------


class CoreInserter:
    """Multi-row ``VALUES`` through SQLAlchemy, for a backend without a dedicated strategy (and the
    ledger benchmark's comparison). Its SQL text varies with the batch size: a driver that caches
    prepared statements by text holds one per size seen (see ``SqliteInserter``)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        insert = postgres_insert if engine.dialect.name == "postgresql" else sqlite_insert
        # RETURNING makes SQLAlchemy send multi-row VALUES statements (its "insertmanyvalues"
        # mode) and tells which rows were new: conflicting rows return nothing.
        self.statement = insert(usage_events).on_conflict_do_nothing().returning(usage_events.c.request_id)

    async def insert(self, events: Sequence[UsageEvent]) -> int:
        rows = [event_row(e) for e in events]
        inserted = 0
        async with self.engine.begin() as conn:
            for start in range(0, len(rows), ROWS_PER_STATEMENT):
                result = await conn.execute(self.statement, rows[start : start + ROWS_PER_STATEMENT])
                inserted += len(result.all())
        return inserted

"""Monthly partitions of the usage ledger on PostgreSQL, and retention on both backends.

Partitions are created ahead by ``tollway_ensure_usage_partitions`` (a SQL function from migration
0001): the recorder calls it when it starts and once a day, and ``tollway db partitions`` does it by
hand. Rows that arrive for a month without a partition land in ``usage_events_default`` and are moved
into their month's partition when it is created, so an insert never fails for want of a partition.

Retention is dropping whole partitions (``DROP TABLE`` is instant, ``DELETE`` of millions of rows is
not). SQLite has no partitions; there retention is a ``DELETE``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.tables import usage_events

PARTITION_NAME = re.compile(r"^usage_events_p(\d{4})(\d{2})$")


def _is_postgres(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"


async def ensure_usage_partitions(engine: AsyncEngine, months_ahead: int = 3) -> int:
    """Create the partitions for this month and ``months_ahead`` more; return how many were new."""
    if not _is_postgres(engine):
        return 0
    async with engine.begin() as conn:
        result = await conn.execute(text("SELECT tollway_ensure_usage_partitions(:months)"), {"months": months_ahead})
        return int(result.scalar_one())


async def list_usage_partitions(engine: AsyncEngine) -> list[str]:
    if not _is_postgres(engine):
        return []
    query = text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'usage_events' ORDER BY c.relname"
    )
    async with engine.connect() as conn:
        return [str(name) for name in (await conn.execute(query)).scalars()]


@dataclass(frozen=True, slots=True)
class PruneResult:
    dropped_partitions: list[str]
    deleted_rows: int


def _month_end(year: int, month: int) -> datetime:
    return datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)


async def prune_usage(engine: AsyncEngine, before: datetime) -> PruneResult:
    """Delete usage older than ``before``: whole monthly partitions that end on or before it
    (PostgreSQL), plus older rows in the default partition or the SQLite table."""
    before = before.astimezone(UTC) if before.tzinfo else before.replace(tzinfo=UTC)
    dropped: list[str] = []
    if _is_postgres(engine):
        for name in await list_usage_partitions(engine):
            match = PARTITION_NAME.match(name)
            if match and _month_end(int(match[1]), int(match[2])) <= before:
                async with engine.begin() as conn:
                    await conn.execute(text(f'ALTER TABLE usage_events DETACH PARTITION "{name}"'))
                    await conn.execute(text(f'DROP TABLE "{name}"'))
                dropped.append(name)
        target = text("DELETE FROM usage_events_default WHERE created_at < :before")
        async with engine.begin() as conn:
            deleted = (await conn.execute(target, {"before": before})).rowcount
    else:
        async with engine.begin() as conn:
            deleted = (await conn.execute(delete(usage_events).where(usage_events.c.created_at < before))).rowcount
    return PruneResult(dropped_partitions=dropped, deleted_rows=int(deleted or 0))

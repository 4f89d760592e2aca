"""The dashboard's time ranges: whole UTC hours or days ending with the current one, and how the
database labels a row's bucket (the same text on PostgreSQL and SQLite)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from app.db.tables import usage_events

Unit = Literal["hour", "day"]
RANGES: dict[str, tuple[Unit, int]] = {"24h": ("hour", 24), "7d": ("day", 7), "30d": ("day", 30)}
DEFAULT_RANGE = "7d"

_BUCKET_FORMATS = {"hour": "%Y-%m-%dT%H:00:00Z", "day": "%Y-%m-%d"}


@dataclass(frozen=True, slots=True)
class Window:
    name: str
    unit: Unit
    start: datetime
    end: datetime
    buckets: tuple[str, ...]  # bucket labels, oldest first, as the database formats them


def window_for(range_name: str, now: datetime) -> Window:
    """The [start, end) of a named range at ``now``, aligned to whole UTC hours or days."""
    unit, count = RANGES[range_name]
    now = now.astimezone(UTC)
    if unit == "hour":
        current, step = now.replace(minute=0, second=0, microsecond=0), timedelta(hours=1)
    else:
        current, step = now.replace(hour=0, minute=0, second=0, microsecond=0), timedelta(days=1)
    start = current - step * (count - 1)
    labels = tuple((start + step * i).strftime(_BUCKET_FORMATS[unit]) for i in range(count))
    return Window(name=range_name, unit=unit, start=start, end=current + step, buckets=labels)


def bucket_expression(engine: AsyncEngine, unit: Unit) -> ColumnElement[Any]:
    """A row's bucket label; formats match ``_BUCKET_FORMATS`` (and the ledger reports' labels)."""
    created = usage_events.c.created_at
    if engine.dialect.name == "postgresql":
        fmt = 'YYYY-MM-DD"T"HH24:00:00"Z"' if unit == "hour" else "YYYY-MM-DD"
        return func.to_char(func.date_trunc(unit, func.timezone("UTC", created)), fmt)
    return func.strftime(_BUCKET_FORMATS[unit], created)  # SQLite stores naive UTC text


def in_window(window: Window) -> list[ColumnElement[bool]]:
    created = usage_events.c.created_at
    return [created >= window.start, created < window.end]

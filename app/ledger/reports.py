"""Usage reports: requests, tokens by type, cost and cache savings over a time range, grouped by
team, key, model, end user, day or hour.

Sums happen in the database (``SUM`` over NUMERIC on PostgreSQL, over integer 1e-10 USD units on
SQLite — both exact), and the total is the sum of the rows in ``Decimal``, so a report's total always
equals the sum of its rows to the last digit, and the sum of the ledger rows it covers.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, get_args

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from app.db.tables import api_keys, teams, usage_events

GroupBy = Literal["team", "key", "model", "end_user", "day", "hour"]
GROUP_BY_CHOICES: tuple[str, ...] = get_args(GroupBy)
DEFAULT_RANGE = timedelta(days=30)
NOT_SERVED = "(not served)"
UNKNOWN = "(none)"


class BadRange(ValueError):
    """A report's time range is malformed; the message says how, ``param`` which bound."""

    def __init__(self, message: str, param: str = "start") -> None:
        super().__init__(message)
        self.param = param


@dataclass(slots=True)
class ReportRow:
    group: str  # team id, key id, model name, or the bucket start (ISO 8601, UTC)
    label: str  # what a person reads: team name, key prefix and name, model, bucket
    requests: int = 0
    errors: int = 0  # HTTP status >= 400 (upstream errors, budget rejections ...)
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    uncached_cost_usd: Decimal = Decimal(0)

    @property
    def cache_write_tokens(self) -> int:
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens

    @property
    def savings_usd(self) -> Decimal:
        return self.uncached_cost_usd - self.cost_usd

    def add(self, other: ReportRow) -> None:
        for name in _SUMMED:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "label": self.label,
            "requests": self.requests,
            "errors": self.errors,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cache_write_5m_tokens": self.cache_write_5m_tokens,
            "cache_write_1h_tokens": self.cache_write_1h_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            # Strings: a JSON number would go through a float in most clients.
            "cost_usd": str(self.cost_usd),
            "uncached_cost_usd": str(self.uncached_cost_usd),
            "savings_usd": str(self.savings_usd),
        }


_SUMMED = tuple(f.name for f in fields(ReportRow) if f.name not in ("group", "label"))
CSV_COLUMNS = (
    "group",
    "label",
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cache_read_tokens",
    "cost_usd",
    "uncached_cost_usd",
    "savings_usd",
)


@dataclass(slots=True)
class UsageReport:
    start: datetime
    end: datetime
    group_by: GroupBy
    rows: list[ReportRow] = field(default_factory=list)

    @property
    def total(self) -> ReportRow:
        total = ReportRow(group="total", label="total")
        for row in self.rows:
            total.add(row)
        return total

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "group_by": self.group_by,
            "rows": [r.to_json() for r in self.rows],
            "total": self.total.to_json(),
        }

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in [*self.rows, self.total]:
            data = row.to_json()
            writer.writerow([data[c] for c in CSV_COLUMNS])
        return out.getvalue()


# ---- time ranges -----------------------------------------------------------------------------------


def parse_time(value: str, what: str) -> datetime:
    """``YYYY-MM-DD`` (midnight UTC) or an ISO 8601 date-time (no offset means UTC)."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadRange(
            f"{what} must be a date (2026-01-31) or an ISO 8601 date-time (2026-01-31T12:00:00Z), not {value!r}",
            what,
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_range(start: str | None, end: str | None, *, now: datetime | None = None) -> tuple[datetime, datetime]:
    """A [start, end) range; ``end`` defaults to now and ``start`` to 30 days before ``end``."""
    end_at = parse_time(end, "end") if end else (now or datetime.now(UTC))
    start_at = parse_time(start, "start") if start else end_at - DEFAULT_RANGE
    if start_at >= end_at:
        raise BadRange(f"start ({start_at.isoformat()}) must be before end ({end_at.isoformat()})", "end")
    return start_at, end_at


# ---- queries ---------------------------------------------------------------------------------------


def _bucket(engine: AsyncEngine, unit: Literal["day", "hour"]) -> ColumnElement[Any]:
    created = usage_events.c.created_at
    if engine.dialect.name == "postgresql":
        utc = func.timezone("UTC", created)
        fmt = 'YYYY-MM-DD"T"HH24:00:00"Z"' if unit == "hour" else "YYYY-MM-DD"
        return func.to_char(func.date_trunc(unit, utc), fmt)
    # SQLite stores naive UTC text, which strftime reads as UTC.
    return func.strftime("%Y-%m-%dT%H:00:00Z" if unit == "hour" else "%Y-%m-%d", created)


def _group_expression(engine: AsyncEngine, group_by: GroupBy) -> ColumnElement[Any]:
    if group_by == "team":
        return usage_events.c.team_id
    if group_by == "key":
        return usage_events.c.key_id
    if group_by == "model":
        return usage_events.c.served_model
    if group_by == "end_user":
        return usage_events.c.end_user
    return _bucket(engine, group_by)


def _sums() -> list[ColumnElement[Any]]:
    c = usage_events.c
    return [
        func.count().label("requests"),
        func.coalesce(func.sum(case((c.status >= 400, 1), else_=0)), 0).label("errors"),
        func.coalesce(func.sum(c.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(c.output_tokens), 0).label("output_tokens"),
        func.coalesce(func.sum(c.cache_write_5m_tokens), 0).label("cache_write_5m_tokens"),
        func.coalesce(func.sum(c.cache_write_1h_tokens), 0).label("cache_write_1h_tokens"),
        func.coalesce(func.sum(c.cache_read_tokens), 0).label("cache_read_tokens"),
        func.sum(c.cost_usd, type_=c.cost_usd.type).label("cost_usd"),
        func.sum(c.uncached_cost_usd, type_=c.uncached_cost_usd.type).label("uncached_cost_usd"),
    ]


def _row(group: str, label: str, data: Any) -> ReportRow:
    return ReportRow(
        group=group,
        label=label,
        requests=int(data.requests),
        errors=int(data.errors),
        input_tokens=int(data.input_tokens),
        output_tokens=int(data.output_tokens),
        cache_write_5m_tokens=int(data.cache_write_5m_tokens),
        cache_write_1h_tokens=int(data.cache_write_1h_tokens),
        cache_read_tokens=int(data.cache_read_tokens),
        cost_usd=data.cost_usd if data.cost_usd is not None else Decimal(0),
        uncached_cost_usd=data.uncached_cost_usd if data.uncached_cost_usd is not None else Decimal(0),
    )


def _filters(start: datetime, end: datetime, team_id: str | None, key_id: str | None) -> list[Any]:
    c = usage_events.c
    conditions: list[Any] = [c.created_at >= start, c.created_at < end]
    if team_id is not None:
        conditions.append(c.team_id == team_id)
    if key_id is not None:
        conditions.append(c.key_id == key_id)
    return conditions


async def usage_report(
    engine: AsyncEngine,
    *,
    start: datetime,
    end: datetime,
    group_by: GroupBy = "team",
    team_id: str | None = None,
) -> UsageReport:
    """Usage in [start, end), one row per group, ordered by group (rows without one last)."""
    if group_by not in GROUP_BY_CHOICES:
        raise ValueError(f"group_by must be one of {', '.join(GROUP_BY_CHOICES)}")
    group = _group_expression(engine, group_by).label("g")
    query = (
        select(group, *_sums())
        .where(*_filters(start, end, team_id, None))
        .group_by(group)
        .order_by(group.is_(None), group)  # NULL last on both backends (they disagree by default)
    )
    async with engine.connect() as conn:
        results = (await conn.execute(query)).all()
        labels = await _labels(conn, group_by, [r.g for r in results if r.g is not None])
    rows = []
    for r in results:
        key = str(r.g) if r.g is not None else ""
        if r.g is None:
            label = NOT_SERVED if group_by == "model" else UNKNOWN
        else:
            label = labels.get(key, key)
        rows.append(_row(key, label, r))
    return UsageReport(start=start, end=end, group_by=group_by, rows=rows)


async def usage_totals(
    engine: AsyncEngine,
    *,
    start: datetime,
    end: datetime,
    team_id: str | None = None,
    key_id: str | None = None,
) -> ReportRow:
    """One row: everything in [start, end), optionally for one team or key."""
    query = select(*_sums()).where(*_filters(start, end, team_id, key_id))
    async with engine.connect() as conn:
        data = (await conn.execute(query)).one()
    return _row("total", "total", data)


async def _labels(conn: Any, group_by: GroupBy, ids: list[Any]) -> dict[str, str]:
    if not ids:
        return {}
    if group_by == "team":
        result = await conn.execute(select(teams.c.id, teams.c.name).where(teams.c.id.in_(ids)))
        return {row.id: row.name for row in result}
    if group_by == "key":
        result = await conn.execute(
            select(api_keys.c.id, api_keys.c.prefix, api_keys.c.name).where(api_keys.c.id.in_(ids))
        )
        return {row.id: f"{row.prefix}… ({row.name})" if row.name else f"{row.prefix}…" for row in result}
    return {str(i): str(i) for i in ids}

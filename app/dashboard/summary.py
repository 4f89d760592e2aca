"""What the dashboard shows, assembled server-side from the usage ledger and the team store.

Totals, per-team and per-model rows come from the ledger's report functions
(``app/ledger/reports.py``); the few things those do not answer — spend per bucket *and* team or
model, requests by HTTP status, latency percentiles — are queried here, portably for PostgreSQL and
SQLite. Every sum happens in the database over the exact ``Money`` type, so each figure on the page
equals the sum of the ledger rows it covers, to the last digit.

A range is a whole number of UTC buckets ending with the current one: ``24h`` is the last 24 hours
by the hour (this hour included), ``7d`` and ``30d`` the last 7 or 30 UTC days by the day (today
included). So the bars of a chart always add up to the totals above it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, TypeVar

from sqlalchemy import case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth.records import TeamRecord
from app.dashboard.breakdowns import (
    error_rows,
    errors_json,
    latency_json,
    latency_rows,
    reason_rows,
    routing_json,
    routing_rows,
)
from app.dashboard.window import (
    DEFAULT_RANGE,
    RANGES,
    Window,
    bucket_expression,
    in_window,
    window_for,
)
from app.db.tables import usage_events
from app.ledger.reports import NOT_SERVED, ReportRow, UsageReport, usage_report

__all__ = ["DEFAULT_RANGE", "RANGES", "Window", "build_summary", "window_for"]

SERIES_LIMIT = 8  # stacked series per chart; the rest are summed into one "other" series
OTHER = "(other)"
WARNING_SHARE = Decimal("0.8")
PERCENTILES = (50, 99)
QUERY_CONCURRENCY = 4  # database connections one summary may hold at once
TOP_PRINCIPALS = 20  # keys and end users listed, by spend
T = TypeVar("T")


# ---- queries the report functions do not cover ----------------------------------------------------


async def spend_series(engine: AsyncEngine, window: Window, by: Literal["team", "model"]) -> list[Any]:
    """Rows of (bucket, group, requests, cost_usd): spend per bucket and team id or served model."""
    c = usage_events.c
    group = c.team_id if by == "team" else c.served_model
    bucket = bucket_expression(engine, window.unit).label("bucket")
    query = (
        select(
            bucket,
            group.label("g"),
            func.count().label("requests"),
            func.sum(c.cost_usd, type_=c.cost_usd.type).label("cost_usd"),
        )
        .where(*in_window(window))
        .group_by(bucket, group)
    )
    async with engine.connect() as conn:
        return list((await conn.execute(query)).all())


async def status_counts(engine: AsyncEngine, window: Window) -> list[Any]:
    """Rows of (status, rejected, requests); ``rejected`` marks requests Tollway refused before any
    upstream call (no attempt was made), such as budget rejections."""
    c = usage_events.c
    rejected = case((c.attempts == 0, 1), else_=0).label("rejected")
    query = (
        select(c.status, rejected, func.count().label("requests"))
        .where(*in_window(window))
        .group_by(c.status, rejected)
    )
    async with engine.connect() as conn:
        return list((await conn.execute(query)).all())


async def latency_percentiles(engine: AsyncEngine, window: Window) -> dict[str, Any]:
    """p50 and p99 of total latency over answered requests (status < 400), in milliseconds.

    Nearest rank (``percentile_disc``): the first value whose cumulative share reaches the percentile,
    i.e. the value at 1-based rank ``ceil(p * n / 100)``. PostgreSQL has the aggregate; SQLite gets
    the same ranks from one sorted pass with ``row_number()``.
    """
    c = usage_events.c
    answered = [*in_window(window), c.status < 400]
    result: dict[str, Any] = {"count": 0, **{f"p{p}_ms": None for p in PERCENTILES}}
    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            values = [func.percentile_disc(p / 100).within_group(c.latency_ms) for p in PERCENTILES]
            row = (await conn.execute(select(func.count(), *values).where(*answered))).one()
            result["count"] = int(row[0])
            if result["count"]:
                for p, value in zip(PERCENTILES, row[1:], strict=True):
                    result[f"p{p}_ms"] = float(value)
            return result
        ranked = (
            select(
                c.latency_ms.label("latency_ms"),
                func.row_number().over(order_by=c.latency_ms).label("rank"),
                func.count().over().label("n"),
            )
            .where(*answered)
            .subquery()
        )
        # ceil(p * n / 100) in integer arithmetic: (p * n + 99) / 100.
        wanted = [ranked.c.rank == (p * ranked.c.n + 99) // 100 for p in PERCENTILES]
        rows = (
            await conn.execute(select(ranked.c.latency_ms, ranked.c.rank, ranked.c.n).where(or_(*wanted)))
        ).all()
    for row in rows:
        result["count"] = int(row.n)
        for p in PERCENTILES:
            if int(row.rank) == (p * int(row.n) + 99) // 100:
                result[f"p{p}_ms"] = float(row.latency_ms)
    return result


# ---- assembling the summary -------------------------------------------------------------------------


def _tokens(row: ReportRow) -> int:
    # What the budgets count: every token the model read or wrote, cached or not.
    return row.input_tokens + row.output_tokens + row.cache_write_tokens + row.cache_read_tokens


def _savings_pct(row: ReportRow) -> str | None:
    if row.uncached_cost_usd <= 0:
        return None
    return str((row.savings_usd * 100 / row.uncached_cost_usd).quantize(Decimal("0.1")))


def usd(value: Decimal) -> str:
    """Plain notation, always: ``str(Decimal)`` writes a zero with 10 places as ``0E-10``."""
    return format(value, "f")


_MONEY_FIELDS = ("cost_usd", "uncached_cost_usd", "savings_usd")


def _row_json(row: ReportRow) -> dict[str, Any]:
    data = row.to_json()
    for name in _MONEY_FIELDS:
        data[name] = usd(getattr(row, name))
    data["tokens"] = _tokens(row)
    data["savings_pct"] = _savings_pct(row)
    return data


def _series_json(window: Window, rows: list[Any], labels: dict[str, str]) -> dict[str, Any]:
    """Stacked series: the top groups by spend, the rest summed into one "other" series."""
    index = {b: i for i, b in enumerate(window.buckets)}
    per_group: dict[str, list[Decimal]] = {}
    for row in rows:
        if row.bucket not in index:  # cannot happen unless a clock runs backwards; never crash on it
            continue
        key = row.g if row.g is not None else ""
        values = per_group.setdefault(key, [Decimal(0)] * len(window.buckets))
        values[index[row.bucket]] += row.cost_usd if row.cost_usd is not None else Decimal(0)
    ranked = sorted(per_group, key=lambda k: (-sum(per_group[k]), labels.get(k, k)))
    shown, rest = ranked[:SERIES_LIMIT], ranked[SERIES_LIMIT:]
    if len(rest) == 1:  # an "other" of one is just that group
        shown, rest = ranked, []
    series = [(k, labels.get(k, k), per_group[k]) for k in shown]
    if rest:
        other = [sum((per_group[k][i] for k in rest), Decimal(0)) for i in range(len(window.buckets))]
        series.append((OTHER, f"{OTHER}: {len(rest)} more", other))
    return {
        "buckets": list(window.buckets),
        "series": [
            {
                "key": key,
                "label": label,
                "values": [usd(v) for v in values],
                "total_usd": usd(sum(values, Decimal(0))),
            }
            for key, label, values in series
        ],
    }


def _statuses_json(rows: list[Any]) -> dict[str, Any]:
    classes: dict[str, int] = {}
    rejected = 0
    for row in rows:
        name = f"{int(row.status) // 100}xx"
        classes[name] = classes.get(name, 0) + int(row.requests)
        if row.rejected and int(row.status) == 429:
            rejected += int(row.requests)
    return {"classes": dict(sorted(classes.items())), "budget_rejections": rejected}


def _budget_json(team: TeamRecord | None, today: ReportRow | None, month: ReportRow | None) -> dict[str, Any]:
    """Each limited daily/monthly window: used (from the ledger), limit, share; and the worst status."""
    limits = team.limits if team is not None else None
    used: dict[str, Decimal] = {
        "tokens_per_day": Decimal(_tokens(today) if today else 0),
        "tokens_per_month": Decimal(_tokens(month) if month else 0),
        "usd_per_day": today.cost_usd if today else Decimal(0),
        "usd_per_month": month.cost_usd if month else Decimal(0),
    }
    windows = []
    worst = Decimal(-1)
    for name, value in used.items():
        limit = getattr(limits, name, None) if limits is not None else None
        if limit is None:
            continue
        limit_value = Decimal(str(limit))
        share = value / limit_value if limit_value > 0 else Decimal(1)
        worst = max(worst, share)
        windows.append(
            {
                "window": name,
                "used": usd(value),
                "limit": usd(limit_value),
                "remaining": usd(max(limit_value - value, Decimal(0))),
                "share": str(share.quantize(Decimal("0.0001"))),
            }
        )
    if worst < 0:
        status = "unlimited"
    elif worst >= 1:
        status = "exceeded"
    elif worst >= WARNING_SHARE:
        status = "warning"
    else:
        status = "ok"
    rates = {}
    if limits is not None:
        rates = {
            "requests_per_minute": limits.requests_per_minute,
            "tokens_per_minute": limits.tokens_per_minute,
        }
    return {"status": status, "windows": windows, "rate_limits": rates}


def _principals_json(report: UsageReport) -> dict[str, Any]:
    """The top keys or end users by spend (then requests), and how many had traffic in all.
    Labels come from the report: a key's prefix and name, an end user's own id."""
    rows = [r for r in report.rows if r.group]
    rows.sort(key=lambda r: (-r.cost_usd, -r.requests, r.label))
    return {"rows": [_row_json(r) for r in rows[:TOP_PRINCIPALS]], "count": len(rows)}


async def build_summary(
    engine: AsyncEngine,
    teams: list[TeamRecord],
    range_name: str,
    now: datetime,
    *,
    tiers: Mapping[str, str] | None = None,
    escalations: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything the dashboard page draws for one range, as JSON-ready data (USD as strings).

    ``tiers`` maps catalogue model names to their tier (for the served-tier mix); ``escalations``
    is what the process's metrics counted (the ledger has no escalation column), shown as given.
    """
    window = window_for(range_name, now)
    now = now.astimezone(UTC)
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month_start = day_start.replace(day=1)
    next_month = (month_start + timedelta(days=32)).replace(day=1)

    # Independent queries, a few at a time: faster pages without taking the whole connection pool.
    gate = asyncio.Semaphore(QUERY_CONCURRENCY)

    async def gated(query: Awaitable[T]) -> T:
        async with gate:
            return await query

    reports = asyncio.gather(
        gated(usage_report(engine, start=window.start, end=window.end, group_by="team")),
        gated(usage_report(engine, start=window.start, end=window.end, group_by="model")),
        # Budget windows are UTC calendar days and months, as in the budgets pillar.
        gated(usage_report(engine, start=day_start, end=day_start + timedelta(days=1), group_by="team")),
        gated(usage_report(engine, start=month_start, end=next_month, group_by="team")),
    )
    extras = asyncio.gather(
        gated(spend_series(engine, window, "team")),
        gated(spend_series(engine, window, "model")),
        gated(status_counts(engine, window)),
        gated(latency_percentiles(engine, window)),
    )
    ops = asyncio.gather(
        gated(usage_report(engine, start=window.start, end=window.end, group_by="key")),
        gated(usage_report(engine, start=window.start, end=window.end, group_by="end_user")),
        gated(routing_rows(engine, window)),
        gated(reason_rows(engine, window)),
        gated(latency_rows(engine, window)),
        gated(error_rows(engine, window)),
    )
    (
        (by_team, by_model, today, month),
        (team_series, model_series, statuses, latency),
        (by_key, by_end_user, routing, reasons, latency_by_model, errors),
    ) = await asyncio.gather(reports, extras, ops)

    names = {t.id: t.name for t in teams}
    for row in by_team.rows:  # teams deleted since: their ledger rows keep the id as label
        names.setdefault(row.group, row.label)
    records = {t.id: t for t in teams}
    usage = {r.group: r for r in by_team.rows}
    today_rows = {r.group: r for r in today.rows}
    month_rows = {r.group: r for r in month.rows}

    team_rows = []
    for team_id in records.keys() | usage.keys():
        row = usage.get(team_id) or ReportRow(group=team_id, label=names.get(team_id, team_id))
        data = _row_json(row)
        data["name"] = names.get(team_id, row.label)
        data["exists"] = team_id in records
        data["budget"] = _budget_json(records.get(team_id), today_rows.get(team_id), month_rows.get(team_id))
        team_rows.append(data)
    team_rows.sort(key=lambda r: (-Decimal(r["cost_usd"]), r["name"]))

    model_rows = [_row_json(r) for r in by_model.rows]
    model_rows.sort(key=lambda r: (-Decimal(r["cost_usd"]), r["label"]))
    model_labels = {r.group: r.label for r in by_model.rows}
    model_labels.setdefault("", NOT_SERVED)

    return {
        "range": window.name,
        "unit": window.unit,
        "start": window.start.isoformat(),
        "end": window.end.isoformat(),
        "generated_at": now.isoformat(),
        "totals": _row_json(by_team.total),
        "teams": team_rows,
        "models": model_rows,
        "spend_by_team": _series_json(window, team_series, names),
        "spend_by_model": _series_json(window, model_series, model_labels),
        "statuses": _statuses_json(statuses),
        "latency": latency,
        "routing": routing_json(routing, reasons, tiers or {}, escalations or {}),
        "keys": _principals_json(by_key),
        "end_users": _principals_json(by_end_user),
        "latency_by_model": latency_json(window, latency_by_model),
        "errors": errors_json(errors),
    }

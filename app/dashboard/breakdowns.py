"""The dashboard's operational breakdowns: routing mix, latency and TTFT by model over time, error types.

Each is one grouped query over the usage ledger (portable between PostgreSQL and SQLite) and a
function that turns its rows into the JSON the page draws. Per-key and per-end-user views come from
the ledger's report functions instead (``usage_report(group_by="key" | "end_user")``), the same ones
``tollway usage`` prints.

A request is *routed* when its route reason starts with ``route=`` (the client asked for a route),
*named* when the reason is ``explicit`` (the client named a model), and *unrouted* when it has no
reason (refused before routing: a bad key, a budget, a malformed body).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import case, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.dashboard.window import Window, bucket_expression, in_window
from app.db.tables import usage_events
from app.observability.route_reason import route_reason_key

TOP_REASONS = 10
MS = Decimal("0.001")  # latency sums and means are kept to the microsecond
LATENCY_SERIES_LIMIT = 8
NOT_SERVED = "(not served)"
UNKNOWN_TIER = "(not in catalogue)"


async def routing_rows(engine: AsyncEngine, window: Window) -> list[Any]:
    """Rows of (kind, requested_model, served_model, requests); kind is route, model or none."""
    c = usage_events.c
    kind = case(
        (c.route_reason.like("route=%"), literal("route")),
        (c.route_reason.is_(None), literal("none")),
        else_=literal("model"),
    ).label("kind")
    query = (
        select(kind, c.requested_model, c.served_model, func.count().label("requests"))
        .where(*in_window(window))
        .group_by(kind, c.requested_model, c.served_model)
    )
    async with engine.connect() as conn:
        return list((await conn.execute(query)).all())


async def reason_rows(engine: AsyncEngine, window: Window) -> list[Any]:
    """Rows of (route_reason, requests) for routed requests; reduced to decisions in Python."""
    c = usage_events.c
    query = (
        select(c.route_reason, func.count().label("requests"))
        .where(*in_window(window), c.route_reason.like("route=%"))
        .group_by(c.route_reason)
    )
    async with engine.connect() as conn:
        return list((await conn.execute(query)).all())


async def latency_rows(engine: AsyncEngine, window: Window) -> list[Any]:
    """Rows of (bucket, served_model, requests, latency_ms_sum, ttft_count, ttft_ms_sum) over
    answered requests (status < 400); TTFT exists for streams only."""
    c = usage_events.c
    bucket = bucket_expression(engine, window.unit).label("bucket")
    query = (
        select(
            bucket,
            c.served_model,
            func.count().label("requests"),
            func.sum(c.latency_ms).label("latency_ms_sum"),
            func.count(c.ttft_ms).label("ttft_count"),
            func.sum(c.ttft_ms).label("ttft_ms_sum"),
        )
        .where(*in_window(window), c.status < 400, c.served_model.is_not(None))
        .group_by(bucket, c.served_model)
    )
    async with engine.connect() as conn:
        return list((await conn.execute(query)).all())


async def error_rows(engine: AsyncEngine, window: Window) -> list[Any]:
    """Rows of (error_type, status, requests) for requests that failed or were refused."""
    c = usage_events.c
    query = (
        select(c.error_type, c.status, func.count().label("requests"))
        .where(*in_window(window), or_(c.status >= 400, c.error_type.is_not(None)))
        .group_by(c.error_type, c.status)
    )
    async with engine.connect() as conn:
        return list((await conn.execute(query)).all())


# ---- JSON for the page ------------------------------------------------------------------------------


def _ranked(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def routing_json(
    rows: list[Any], reasons: list[Any], tiers: Mapping[str, str], escalations: Mapping[str, Any]
) -> dict[str, Any]:
    """Named model vs route, requests per route, per served tier, the top route decisions."""
    kinds = {"model": 0, "route": 0, "none": 0}
    by_route: dict[str, int] = {}
    by_tier: dict[str, int] = {}
    for row in rows:
        n = int(row.requests)
        kinds[row.kind] += n
        if row.kind == "route":
            by_route[row.requested_model] = by_route.get(row.requested_model, 0) + n
        tier = NOT_SERVED if row.served_model is None else tiers.get(row.served_model, UNKNOWN_TIER)
        by_tier[tier] = by_tier.get(tier, 0) + n
    decisions: dict[str, int] = {}
    for row in reasons:
        key = route_reason_key(row.route_reason)
        decisions[key] = decisions.get(key, 0) + int(row.requests)
    ranked = _ranked(decisions)
    return {
        "named": kinds["model"],
        "routed": kinds["route"],
        "unrouted": kinds["none"],
        "by_route": [{"route": r, "requests": n} for r, n in _ranked(by_route)],
        "by_tier": [{"tier": t, "requests": n} for t, n in _ranked(by_tier)],
        "reasons": [{"reason": r, "requests": n} for r, n in ranked[:TOP_REASONS]],
        "other_reasons": sum(n for _, n in ranked[TOP_REASONS:]),
        "escalations": dict(escalations),
    }


def _ms(value: Any) -> Decimal:
    # A float sum's last bits depend on the order the database added the rows in; rounded to the
    # microsecond, PostgreSQL and SQLite agree, and so do the means computed from it.
    return Decimal(repr(float(value or 0))).quantize(MS)


def _mean(total: Decimal, n: Decimal) -> float | None:
    return float((total / n).quantize(MS, rounding=ROUND_HALF_EVEN)) if n else None


def latency_json(window: Window, rows: list[Any]) -> dict[str, Any]:
    """Mean latency and mean TTFT per bucket for the busiest models (None where a bucket is empty),
    and each model's overall means over the range."""
    index = {b: i for i, b in enumerate(window.buckets)}
    size = len(window.buckets)
    per_model: dict[str, dict[str, list[Decimal]]] = {}
    for row in rows:
        if row.bucket not in index:
            continue
        sums = per_model.setdefault(
            row.served_model, {k: [Decimal(0)] * size for k in ("n", "latency", "ttft_n", "ttft")}
        )
        i = index[row.bucket]
        sums["n"][i] += int(row.requests)
        sums["latency"][i] += _ms(row.latency_ms_sum)
        sums["ttft_n"][i] += int(row.ttft_count)
        sums["ttft"][i] += _ms(row.ttft_ms_sum)
    busiest = sorted(per_model, key=lambda m: (-sum(per_model[m]["n"]), m))[:LATENCY_SERIES_LIMIT]

    models = []
    for model in busiest:
        s = per_model[model]
        models.append(
            {
                "model": model,
                "requests": int(sum(s["n"], Decimal(0))),
                "streams": int(sum(s["ttft_n"], Decimal(0))),
                "latency_ms": [_mean(s["latency"][i], s["n"][i]) for i in range(size)],
                "ttft_ms": [_mean(s["ttft"][i], s["ttft_n"][i]) for i in range(size)],
                "mean_latency_ms": _mean(sum(s["latency"], Decimal(0)), sum(s["n"], Decimal(0))),
                "mean_ttft_ms": _mean(sum(s["ttft"], Decimal(0)), sum(s["ttft_n"], Decimal(0))),
            }
        )
    return {"buckets": list(window.buckets), "models": models, "more_models": len(per_model) - len(busiest)}


def errors_json(rows: list[Any]) -> list[dict[str, Any]]:
    """Error types with their count and HTTP statuses, most frequent first."""
    by_type: dict[str, dict[str, Any]] = {}
    for row in rows:
        name = row.error_type or f"http_{int(row.status)}"
        entry = by_type.setdefault(name, {"error_type": name, "requests": 0, "statuses": {}})
        entry["requests"] += int(row.requests)
        status = str(int(row.status))
        entry["statuses"][status] = entry["statuses"].get(status, 0) + int(row.requests)
    return sorted(by_type.values(), key=lambda e: (-e["requests"], e["error_type"]))

"""Percentiles and summaries of latency samples (seconds in, milliseconds out)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

PERCENTILES = (50, 90, 99)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on pre-sorted values."""
    if not sorted_values:
        return math.nan
    position = (len(sorted_values) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    weight = position - low
    return sorted_values[low] * (1 - weight) + sorted_values[high] * weight


def summary_ms(values: Sequence[float]) -> dict[str, float | int]:
    ordered = sorted(values)
    out: dict[str, float | int] = {"n": len(ordered)}
    if not ordered:
        return out
    for q in PERCENTILES:
        out[f"p{q}"] = round(percentile(ordered, q) * 1000, 4)
    out["mean"] = round(sum(ordered) / len(ordered) * 1000, 4)
    out["max"] = round(ordered[-1] * 1000, 4)
    return out


def difference(gateway: dict[str, Any], direct: dict[str, Any]) -> dict[str, float]:
    """Added = gateway percentile − direct percentile, for each percentile both have."""
    out: dict[str, float] = {}
    for key in (*(f"p{q}" for q in PERCENTILES), "mean"):
        if key in gateway and key in direct:
            out[key] = round(float(gateway[key]) - float(direct[key]), 4)
    return out


def linear_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs (0 when there are fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mean_x = sum(xs) / n
    mean_y = sum(ys) / n
    var = sum((x - mean_x) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var

"""Window math: spans, calendar roll-over, keys and micro-dollar rounding."""

from __future__ import annotations

import calendar
from decimal import Decimal

from app.budgets.windows import (
    KINDS,
    limit_usd_to_micros,
    spans_at,
    team_keys,
    usd_to_micros,
    windows_at,
)


def ts(*parts: int) -> int:
    return calendar.timegm((*parts, 0, 0, 0)[:6])


def test_spans_are_utc_minute_day_and_calendar_month() -> None:
    now = ts(2031, 3, 15, 13, 47, 21) + 0.75
    starts, ends = spans_at(now)
    by_kind = dict(zip(KINDS, zip(starts, ends, strict=True), strict=True))
    assert by_kind["rpm"] == by_kind["tpm"] == (ts(2031, 3, 15, 13, 47, 0), ts(2031, 3, 15, 13, 48, 0))
    assert by_kind["tpd"] == by_kind["usdd"] == (ts(2031, 3, 15, 0, 0, 0), ts(2031, 3, 16, 0, 0, 0))
    assert by_kind["tpmo"] == by_kind["usdm"] == (ts(2031, 3, 1, 0, 0, 0), ts(2031, 4, 1, 0, 0, 0))


def test_month_ends_handle_december_and_leap_february() -> None:
    _, ends = spans_at(ts(2031, 12, 31, 23, 59, 59))
    assert ends[3] == ts(2032, 1, 1, 0, 0, 0)
    starts, ends = spans_at(ts(2032, 2, 29, 12, 0, 0))  # 2032 is a leap year
    assert (starts[3], ends[3]) == (ts(2032, 2, 1, 0, 0, 0), ts(2032, 3, 1, 0, 0, 0))
    assert ends[2] == ts(2032, 3, 1, 0, 0, 0)


def test_the_last_second_of_a_window_and_the_first_of_the_next() -> None:
    midnight = ts(2031, 6, 1, 0, 0, 0)
    before, _ = spans_at(midnight - 0.001)
    after, _ = spans_at(midnight)
    assert before[2] == ts(2031, 5, 31, 0, 0, 0) and after[2] == midnight
    assert before[3] == ts(2031, 5, 1, 0, 0, 0) and after[3] == midnight


def test_usage_lives_in_one_hash_per_team_and_period_one_field_per_window() -> None:
    ws = windows_at("t1", "k9", ts(2031, 3, 15, 13, 47, 21))
    assert ws.period_keys == (
        f"tw:{{t1}}:u:m:{ts(2031, 3, 15, 13, 47, 0)}",
        f"tw:{{t1}}:u:d:{ts(2031, 3, 15, 0, 0, 0)}",
        f"tw:{{t1}}:u:mo:{ts(2031, 3, 1, 0, 0, 0)}",
    )
    assert (ws.period_key(2), ws.field(2)) == (ws.period_keys[1], "t:tpd")
    assert (ws.period_key(6), ws.field(6)) == (ws.period_keys[0], "k:k9:rpm")
    assert (ws.period_key(11), ws.field(11)) == (ws.period_keys[2], "k:k9:usdm")
    assert len({ws.slot(w) for w in range(12)}) == 12
    assert team_keys("t1").key_limits("k9") == "tw:{t1}:lim:k:k9"


def test_money_rounds_against_the_team() -> None:
    assert usd_to_micros(Decimal("0.0000001")) == 1  # usage and reservations round up
    assert usd_to_micros(Decimal("1.5")) == 1_500_000
    assert limit_usd_to_micros(Decimal("0.0000019")) == 1  # limits round down

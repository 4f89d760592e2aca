"""Budget windows: which ones exist, when each starts and resets, and the store keys they live under.

There are six window kinds, each applying to a team and, separately, to each of its keys:

=====  ======================  =======================================  ==========
kind   limit field             span                                     counts
=====  ======================  =======================================  ==========
rpm    requests_per_minute     fixed minute (``floor(t / 60) * 60``)    requests
tpm    tokens_per_minute       fixed minute                             tokens
tpd    tokens_per_day          UTC calendar day                         tokens
tpmo   tokens_per_month        UTC calendar month                       tokens
usdd   usd_per_day             UTC calendar day                         micro-USD
usdm   usd_per_month           UTC calendar month                       micro-USD
=====  ======================  =======================================  ==========

A window is identified by its kind and its start, so a new day simply uses a new key: windows reset
without any cron job, and old keys expire on their own after the window has ended.

Every key of a team carries the team id as a Redis Cluster hash tag (``tw:{<team_id>}:...``), so all
of a team's windows, its per-key windows, reservations and published limits live in one slot and
one Lua script can touch them atomically. Settled usage lives in one hash per team and period
(``tw:{T}:u:m:<minute>``, ``tw:{T}:u:d:<day>``, ``tw:{T}:u:mo:<month>``), one field per window of
that period (``t:tpd``, ``k:<key_id>:tpd`` ...): a request touches three keys, not twelve.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from functools import lru_cache

KINDS: tuple[str, ...] = ("rpm", "tpm", "tpd", "tpmo", "usdd", "usdm")
WINDOW_NAMES: tuple[str, ...] = (
    "requests_per_minute",
    "tokens_per_minute",
    "tokens_per_day",
    "tokens_per_month",
    "usd_per_day",
    "usd_per_month",
)
SCOPES: tuple[str, str] = ("team", "key")
N_KINDS = len(KINDS)
N_WINDOWS = 2 * N_KINDS  # index w: scope = SCOPES[w // 6], kind = KINDS[w % 6]

TOKEN_KINDS = frozenset({1, 2, 3})  # indexes into KINDS
USD_KINDS = frozenset({4, 5})
REQUEST_KINDS = frozenset({0})

MICROS_PER_USD = Decimal(1_000_000)
DAY_S = 86_400
MINUTE_S = 60


def usd_to_micros(usd: Decimal) -> int:
    """USD → whole micro-dollars, rounded up: usage and reservations are never under-counted."""
    return int((usd * MICROS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def limit_usd_to_micros(usd: Decimal) -> int:
    """A USD *limit* → micro-dollars, rounded down: a limit is never rounded in the team's favour."""
    return int((usd * MICROS_PER_USD).to_integral_value(rounding=ROUND_FLOOR))


def micros_to_usd(micros: int) -> Decimal:
    return Decimal(micros) / MICROS_PER_USD


def window_name(w: int) -> str:
    return WINDOW_NAMES[w % N_KINDS]


def window_scope(w: int) -> str:
    return SCOPES[w // N_KINDS]


def is_usd(w: int) -> bool:
    return w % N_KINDS in USD_KINDS


@lru_cache(maxsize=64)
def _month_span(day_start: int) -> tuple[int, int]:
    day = datetime.fromtimestamp(day_start, UTC)
    start = calendar.timegm((day.year, day.month, 1, 0, 0, 0))
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    return start, calendar.timegm((year, month, 1, 0, 0, 0))


def spans_at(now: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(starts, ends) of the six window kinds containing ``now`` (unix seconds, UTC)."""
    t = int(now // 1)
    minute = t - t % MINUTE_S
    day = t - t % DAY_S  # unix time has no leap seconds: every UTC day is 86,400 s
    month_start, month_end = _month_span(day)
    starts = (minute, minute, day, month_start, day, month_start)
    ends = (
        minute + MINUTE_S,
        minute + MINUTE_S,
        day + DAY_S,
        month_end,
        day + DAY_S,
        month_end,
    )
    return starts, ends


class TeamKeys:
    """The store keys of one team (all under the team's hash tag)."""

    __slots__ = ("expiries", "inflight", "prefix", "reservations", "team_limits")

    def __init__(self, team_id: str) -> None:
        self.prefix = f"tw:{{{team_id}}}:"
        self.team_limits = self.prefix + "lim:t"
        self.reservations = self.prefix + "res"  # hash: reservation id → its slots and amounts
        self.expiries = self.prefix + "exp"  # sorted set: reservation id → expiry (unix s)
        self.inflight = self.prefix + "inf"  # hash: slot → amount reserved in flight

    def key_limits(self, key_id: str) -> str:
        return f"{self.prefix}lim:k:{key_id}"

    def limits(self, key_id: str | None) -> str:
        return self.team_limits if key_id is None else self.key_limits(key_id)

    def reconcile_marker(self, batch_id: str) -> str:
        return f"{self.prefix}rc:{batch_id}"


@lru_cache(maxsize=8192)
def team_keys(team_id: str) -> TeamKeys:
    return TeamKeys(team_id)


# Windows are grouped by period: one usage hash per team and period (minute, day, month) holds the
# settled usage of every window of that period, team and key scope alike, as fields.
PERIODS: tuple[str, ...] = ("m", "d", "mo")
KIND_PERIOD: tuple[int, ...] = (0, 0, 1, 2, 1, 2)  # per kind: index into PERIODS


def usage_field(w: int, key_id: str) -> str:
    """The field of window ``w`` in its period hash: ``t:<kind>`` or ``k:<key_id>:<kind>``."""
    kind = KINDS[w % N_KINDS]
    return f"t:{kind}" if w < N_KINDS else f"k:{key_id}:{kind}"


@dataclass(frozen=True, slots=True)
class WindowSet:
    """The twelve windows (6 kinds x team/key scope) containing one instant, and where they live."""

    team_id: str
    key_id: str
    starts: tuple[int, ...]  # per kind
    ends: tuple[int, ...]  # per kind
    period_keys: tuple[str, str, str]  # usage hashes of the minute, day and month containing it
    period_ends: tuple[int, int, int]

    def end_of(self, w: int) -> int:
        return self.ends[w % N_KINDS]

    def period_key(self, w: int) -> str:
        return self.period_keys[KIND_PERIOD[w % N_KINDS]]

    def field(self, w: int) -> str:
        return usage_field(w, self.key_id)

    def slot(self, w: int) -> str:
        """One name for window ``w``: ``<period hash>|<field>`` (in-flight field, memory-store key)."""
        return f"{self.period_key(w)}|{self.field(w)}"


def windows_at(team_id: str, key_id: str, now: float) -> WindowSet:
    starts, ends = spans_at(now)
    prefix = team_keys(team_id).prefix
    return WindowSet(
        team_id=team_id,
        key_id=key_id,
        starts=starts,
        ends=ends,
        period_keys=(f"{prefix}u:m:{starts[0]}", f"{prefix}u:d:{starts[2]}", f"{prefix}u:mo:{starts[3]}"),
        period_ends=(ends[0], ends[2], ends[3]),
    )


def amounts_vector(tokens: int, usd_micros: int, requests: int = 1) -> tuple[int, ...]:
    """What one request adds to each window kind."""
    return (requests, tokens, tokens, tokens, usd_micros, usd_micros)

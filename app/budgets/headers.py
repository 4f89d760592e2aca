"""Remaining-budget response headers, in each client format's own names and value styles.

Anthropic (``/v1/messages``): ``anthropic-ratelimit-{tokens,requests}-{limit,remaining,reset}``, the
reset as an RFC 3339 time. OpenAI (``/v1/chat/completions``):
``x-ratelimit-{limit,remaining,reset}-{tokens,requests}``, the reset as a Go-style duration
(``12ms``, ``1s``, ``6m0s``, ``20h3m7s``). The tokens triplet describes the token window with the
least room left (minute, day or month; team or key); the requests triplet the tightest
requests-per-minute window. Windows without a limit produce no headers.

``remaining`` is the limit minus *settled* usage, as the providers' own headers mean it. What
requests in flight have reserved in the same window (this one included) is in its own header,
``x-tollway-budget-reserved-tokens`` / ``-requests``: ``remaining - reserved`` is what a new
request could reserve right now.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

from app.budgets.store import WindowState
from app.budgets.windows import N_KINDS, REQUEST_KINDS, TOKEN_KINDS


def rfc3339(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def go_duration(seconds: float) -> str:
    """``12ms`` below a second, else whole seconds rounded up: ``1s``, ``6m0s``, ``2h0m5s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    total = math.ceil(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def remaining(state: WindowState) -> int:
    """What a new request could reserve now: the limit less settled usage and reservations."""
    return max(0, state.limit - state.used - state.reserved)


def settled_remaining(state: WindowState) -> int:
    """The limit less settled usage (what the ``*-remaining`` headers report)."""
    return max(0, state.limit - state.used)


RESERVED_HEADER = "x-tollway-budget-reserved-{label}"


def _tightest(
    states: Sequence[WindowState], kinds: frozenset[int], ends: Sequence[int]
) -> WindowState | None:
    candidates = [s for s in states if s.w % N_KINDS in kinds and s.limit >= 0]
    if not candidates:
        return None
    return min(candidates, key=lambda s: (remaining(s), ends[s.w % N_KINDS]))


def budget_headers(
    states: Sequence[WindowState], ends: Sequence[int], now: float, client_format: str
) -> dict[str, str]:
    headers: dict[str, str] = {}
    for label, kinds in (("tokens", TOKEN_KINDS), ("requests", REQUEST_KINDS)):
        state = _tightest(states, kinds, ends)
        if state is None:
            continue
        reset = ends[state.w % N_KINDS]
        if client_format == "anthropic":
            headers[f"anthropic-ratelimit-{label}-limit"] = str(state.limit)
            headers[f"anthropic-ratelimit-{label}-remaining"] = str(settled_remaining(state))
            headers[f"anthropic-ratelimit-{label}-reset"] = rfc3339(reset)
        else:
            headers[f"x-ratelimit-limit-{label}"] = str(state.limit)
            headers[f"x-ratelimit-remaining-{label}"] = str(settled_remaining(state))
            headers[f"x-ratelimit-reset-{label}"] = go_duration(reset - now)
        headers[RESERVED_HEADER.format(label=label)] = str(state.reserved)
    return headers

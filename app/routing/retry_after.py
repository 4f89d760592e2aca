"""The one reader of an upstream's ``Retry-After``: what it says, made safe to act on.

An upstream (or anything pretending to be one) controls this header, and the answer feeds sleeps,
breaker cooldowns and the client's own ``retry-after``. So the reader never raises and never returns
anything but ``None`` or a finite number in ``[0, RETRY_AFTER_CAP_S]``:

* ``retry-after-ms`` (OpenAI) wins over ``retry-after`` when it is usable;
* ``retry-after`` is seconds (``"7"``, ``"1.5"``) or an HTTP date (RFC 9110 §10.2.3);
* garbage, ``nan``, ``inf``, ``1e309`` (which is ``inf``) and negative values are treated as absent;
* a finite value above the cap (``99999999999``, a date next year) is clamped to the cap, so no
  upstream can park a deployment for longer than ``RETRY_AFTER_CAP_S``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime

RETRY_AFTER_CAP_S = 300.0  # the longest wait an upstream may impose (breaker cooldown cap, too)


def clamp_retry_after(seconds: float | None, cap: float = RETRY_AFTER_CAP_S) -> float | None:
    """``seconds`` made safe: None when absent, negative or not finite; otherwise at most ``cap``."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, cap)


def _seconds(text: str) -> float | None:
    try:
        return float(text)
    except (ValueError, OverflowError):
        return None


def _http_date(text: str, now: float) -> float | None:
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" parses as naive; HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    try:
        return max(when.timestamp() - now, 0.0)
    except (OverflowError, OSError, ValueError):
        return None


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (lower-case or case-insensitive
    ``headers``), or None; see the module docstring. ``now`` (Unix time) is for the date form."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        ms = _seconds(raw_ms.strip())
        value = clamp_retry_after(ms / 1000.0 if ms is not None else None)
        if value is not None:
            return value
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    seconds = _seconds(raw)
    if seconds is None:
        seconds = _http_date(raw, time.time() if now is None else now)
    return clamp_retry_after(seconds)

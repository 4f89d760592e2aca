"""Which upstream failures are worth retrying, and how long to wait before the next attempt.

Policy (``docs/routing.md`` has the whole attempt loop):

* Retryable: connection errors and timeouts (``status=None``), 408, 429, 529 and every 5xx except
  501 (Not Implemented will not change on a second try). Every other 4xx is the request's fault and
  goes straight back to the client.
* Delay without ``retry-after``: exponential backoff with *full jitter*,
  ``uniform(0, min(cap, base * 2**attempt))`` — spreads synchronized retries best (AWS
  architecture blog, "Exponential Backoff And Jitter").
* With ``retry-after``: wait exactly that long when it is within ``cap``. When the upstream asks for
  more than ``cap`` the gateway does not wait — holding the client's connection for minutes is worse
  than serving from another deployment or model — so ``backoff_delay`` returns ``FALL_BACK`` (a
  negative number): skip the remaining retries on this deployment, mark it cooling down for the
  ``retry-after`` (``DeploymentHealth.finished(..., retry_after_s=...)``) and fall back. Negative
  rather than infinite on purpose: a caller that forgets the check sleeps 0 s, not forever.

``retry-after`` itself is read by ``app.routing.retry_after`` (the only parser), which never
returns more than ``RETRY_AFTER_CAP_S``.
"""

from __future__ import annotations

import random

from app.routing.retry_after import clamp_retry_after

FALL_BACK = -1.0  # backoff_delay's answer when retry-after exceeds the cap: do not wait, fall back

_RETRYABLE_4XX = frozenset({408, 429})


def is_retryable(status: int | None) -> bool:
    """Should a failed upstream attempt with this HTTP status be retried (here or elsewhere)?"""
    if status is None:  # connection error or timeout: nothing reached the model or it never answered
        return True
    if status in _RETRYABLE_4XX or status == 529:
        return True
    return 500 <= status <= 599 and status != 501


def backoff_delay(
    attempt: int, *, base: float, cap: float, retry_after_s: float | None, rng: random.Random
) -> float:
    """Seconds to wait before retry number ``attempt + 1`` (``attempt`` = retries already made).

    Returns ``FALL_BACK`` (negative) when the upstream's ``retry-after`` is longer than ``cap``.
    A ``retry_after_s`` that is negative or not finite counts as absent (``clamp_retry_after``).
    """
    retry_after_s = clamp_retry_after(retry_after_s)
    if retry_after_s is not None:
        if retry_after_s > cap:
            return FALL_BACK
        return retry_after_s
    ceiling = min(cap, base * (2 ** max(attempt, 0)))
    return rng.uniform(0.0, ceiling)

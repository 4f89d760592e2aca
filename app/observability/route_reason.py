"""A route reason reduced to the parts that name a decision, for grouping and labels.

The router writes reasons like ``route=auto task=code src=classifier tier>=mid p=0.41/0.93 q=0.8
sticky=gpt-5``. The probabilities and the order (``cheapest``, ``sticky=…``) differ per request; what
an operator groups by is the route, the task class, where the task came from, the minimum tier and
whether the budget downgraded it. ``explicit`` (a named model) stays as it is.
"""

from __future__ import annotations

_KEPT = ("route=", "task=", "src=", "tier>=", "downgraded=")
MAX_LENGTH = 120


def route_reason_key(reason: str | None) -> str:
    """``route=auto task=code src=classifier tier>=mid`` from a full reason; "none" for no reason."""
    if not reason:
        return "none"
    parts = [p for p in reason.split() if p.startswith(_KEPT)]
    key = " ".join(parts) if parts else reason.split()[0]
    return key[:MAX_LENGTH]

"""Fault injection by request header, for the gateway's retry, fallback and stream-error tests.

``x-sim-error: <status>`` fails the request with that status in the wire's error format, unless
``x-sim-error-match`` is set and none of its comma-separated values is the request's model id or its
path tag. ``x-sim-error-times: N`` (with ``x-sim-error-key: K``) fails only the first N matching
requests carrying key K, so a test can make an upstream flaky and then recover.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.simulator.http import SimRequest
from app.simulator.state import SimulatorState

DEFAULT_RETRY_AFTER = "1"


@dataclass(slots=True)
class Fault:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def injected_fault(request: SimRequest, model: str | None, state: SimulatorState) -> Fault | None:
    raw_status = request.headers.get("x-sim-error")
    if not raw_status:
        return None
    try:
        status = int(raw_status)
    except ValueError:
        return None
    if not 400 <= status <= 599:
        return None
    match = request.header_list("x-sim-error-match")
    if match:
        targets = request.tag_segments()
        if model:
            targets.add(model)
        if not targets.intersection(match):
            return None
    times = request.header_int("x-sim-error-times")
    if times is not None:
        key = request.headers.get("x-sim-error-key", "")
        seen = state.error_counts.get(key, 0) + 1
        state.error_counts[key] = seen
        if seen > times:
            return None
    headers: list[tuple[bytes, bytes]] = []
    retry_after = request.headers.get("x-sim-retry-after")
    if status == 429 or retry_after is not None:
        headers.append((b"retry-after", (retry_after or DEFAULT_RETRY_AFTER).encode()))
    should_retry = request.headers.get("x-sim-should-retry")
    if should_retry is not None:
        headers.append((b"x-should-retry", should_retry.strip().lower().encode()))
    return Fault(status, headers)

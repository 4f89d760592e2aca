"""A private Redis stalled (SIGSTOP) or killed mid-load, with admits, readmits and settles in flight
from worker processes (one fail-closed, one fail-open): afterwards nothing is reserved (0 orphaned
reservations) and the usage Redis counted equals exactly what the workers settled (0 double counts).

What makes it hold: an admit that reaches Redis after its deadline is refused by the script; an admit
that failed or was cancelled is released by its reservation id; a settle applies once per id, whether
it arrives late, twice, or through the local reconcile.
"""

from __future__ import annotations

import time
import uuid

from tests.integration.test_budget_support import (
    ChurnProcesses,
    ChurnReport,
    ChurnWorkload,
    RedisServer,
    redis_budget_state,
)


def assert_consistent(redis_url: str, team_id: str, reports: list[ChurnReport]) -> None:
    state = redis_budget_state(redis_url, team_id)
    assert all(r.pending_after_close == 0 for r in reports), reports
    assert state["inflight"] == {}, f"orphaned in-flight amounts: {state['inflight']}"
    assert state["live"] == [], f"{len(state['live'])} orphaned reservations"
    assert state["expired"] == []  # the clock is frozen: nothing expired, everything was released
    settles = sum(r.settles for r in reports)
    assert state["day"]["t:tpd"] == sum(r.settled_tokens for r in reports), "usage counted != usage settled"
    assert state["minute"]["t:rpm"] == settles
    for r in reports:
        assert state["day"][f"k:{r.key_id}:tpd"] == r.settled_tokens, r
        assert state["minute"][f"k:{r.key_id}:tpm"] == r.settled_tokens, r


def test_a_stalled_redis_leaves_no_orphaned_reservations_and_no_double_counts() -> None:
    with RedisServer() as server:
        team = uuid.uuid4().hex
        workers = ChurnProcesses(ChurnWorkload(server.url, team, seconds=6.0), ("closed", "open"))
        workers.start()
        time.sleep(1.5)
        server.pause()
        try:
            time.sleep(3.0)
        finally:
            server.resume()
        reports = workers.join()
        closed, opened = sorted(reports, key=lambda r: r.policy)
        # The stall really hit requests in flight: refusals (fail-closed) and degraded admissions.
        assert closed.policy == "closed" and closed.unavailable > 0 and closed.settles > 100
        assert opened.policy == "open" and opened.degraded > 0 and opened.settles > 100
        assert sum(r.readmits for r in reports) > 0
        assert_consistent(server.url, team, reports)


def test_a_killed_and_restarted_redis_leaves_consistent_state() -> None:
    """SIGKILL mid-load, restart on the same port from its append-only file (fsync'd per write)."""
    with RedisServer(durable=True) as server:
        team = uuid.uuid4().hex
        workers = ChurnProcesses(ChurnWorkload(server.url, team, seconds=5.0), ("closed", "open"))
        workers.start()
        time.sleep(1.5)
        server.stop()  # SIGKILL
        time.sleep(1.0)
        server.start()
        reports = workers.join()
        closed, opened = sorted(reports, key=lambda r: r.policy)
        assert closed.unavailable > 0 and opened.degraded > 0
        assert_consistent(server.url, team, reports)

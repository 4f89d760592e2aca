"""Deployment health: the circuit breaker's states on an injected clock, and load balancing."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from app.config import Deployment
from app.routing.health import DeploymentHealth, deployment_key


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def health(clock: Clock) -> DeploymentHealth:
    return DeploymentHealth(failures_to_trip=3, cooldown_s=30.0, clock=clock, rng=random.Random(1))


EAST = Deployment(provider="east", upstream_model="m-east")
WEST = Deployment(provider="west", upstream_model="m-west")


def fail(health: DeploymentHealth, key: str, times: int = 1, **kw: float) -> None:
    for _ in range(times):
        health.started(key)
        health.finished(key, ok=False, **kw)


def test_deployment_key_is_provider_and_upstream_model() -> None:
    assert deployment_key("m", EAST) == "east/m-east"
    assert deployment_key("claude-x", Deployment(provider="anthropic")) == "anthropic/claude-x"


def test_trips_after_n_consecutive_failures(health: DeploymentHealth) -> None:
    health.register("m", [EAST])
    fail(health, "east/m-east", 2)
    assert health.is_available("m")
    assert health.order("m", [EAST]) == [EAST]
    fail(health, "east/m-east")
    assert not health.is_available("m")
    assert health.order("m", [EAST]) == []
    assert health.snapshot()[0]["state"] == "open"


def test_a_success_resets_the_failure_count(health: DeploymentHealth) -> None:
    health.register("m", [EAST])
    fail(health, "east/m-east", 2)
    health.started("east/m-east")
    health.finished("east/m-east", ok=True)
    fail(health, "east/m-east", 2)
    assert health.is_available("m")


def test_open_deployment_is_left_out_and_the_other_takes_traffic(health: DeploymentHealth) -> None:
    health.register("m", [EAST, WEST])
    fail(health, "east/m-east", 3)
    assert health.is_available("m")
    assert health.order("m", [EAST, WEST]) == [WEST]


def test_cooldown_then_half_open_probe_recovers(health: DeploymentHealth, clock: Clock) -> None:
    health.register("m", [EAST])
    fail(health, "east/m-east", 3)
    clock.now += 29.9
    assert not health.is_available("m")
    clock.now += 0.2
    assert health.is_available("m")
    assert health.snapshot()[0]["state"] == "half_open"
    # The probe goes out; while it is in flight nobody else is sent there.
    assert health.order("m", [EAST]) == [EAST]
    health.started("east/m-east")
    assert health.order("m", [EAST]) == []
    assert not health.is_available("m")
    health.finished("east/m-east", ok=True)
    snap = health.snapshot()[0]
    assert snap["state"] == "closed" and snap["failures"] == 0
    assert health.order("m", [EAST]) == [EAST]


def test_failed_probe_reopens_for_a_full_cooldown(health: DeploymentHealth, clock: Clock) -> None:
    health.register("m", [EAST])
    fail(health, "east/m-east", 3)
    clock.now += 31
    fail(health, "east/m-east")  # the probe fails: one failure is enough in half-open
    assert not health.is_available("m")
    snap = health.snapshot()[0]
    assert snap["state"] == "open" and snap["cooldown_remaining_s"] == pytest.approx(30.0)
    clock.now += 30.1
    assert health.is_available("m")


def test_a_lost_probe_does_not_block_the_deployment_forever(health: DeploymentHealth, clock: Clock) -> None:
    health.register("m", [EAST])
    fail(health, "east/m-east", 3)
    clock.now += 31
    health.started("east/m-east")  # never finishes
    assert not health.is_available("m")
    clock.now += 31
    assert health.is_available("m")


def test_retry_after_opens_the_breaker_at_once_for_that_long(health: DeploymentHealth, clock: Clock) -> None:
    health.register("m", [EAST, WEST])
    fail(health, "west/m-west", retry_after_s=90.0)
    assert health.order("m", [EAST, WEST]) == [EAST]
    assert health.retry_after_s("m") is None  # east is usable
    clock.now += 60
    assert health.order("m", [EAST, WEST]) == [EAST]
    clock.now += 31
    assert set(health.order("m", [EAST, WEST])) == {EAST, WEST}


def test_retry_after_s_reports_the_soonest_recovery(health: DeploymentHealth, clock: Clock) -> None:
    health.register("m", [EAST, WEST])
    fail(health, "east/m-east", 3)
    clock.now += 10
    fail(health, "west/m-west", 3)
    assert health.retry_after_s("m") == pytest.approx(20.0)


def test_unregistered_model_is_available(health: DeploymentHealth) -> None:
    assert health.is_available("never-seen")


def test_weighted_random_spreads_first_picks_by_weight(clock: Clock) -> None:
    health = DeploymentHealth(clock=clock, rng=random.Random(42))
    heavy = Deployment(provider="east", upstream_model="m", weight=3)
    light = Deployment(provider="west", upstream_model="m", weight=1)
    first = Counter(health.order("m", [heavy, light])[0].provider for _ in range(8000))
    assert first["east"] / 8000 == pytest.approx(0.75, abs=0.02)


def test_least_in_flight_relative_to_weight_goes_first(health: DeploymentHealth) -> None:
    health.register("m", [EAST, WEST])
    health.started("east/m-east")
    health.started("east/m-east")
    for _ in range(50):
        assert health.order("m", [EAST, WEST])[0] == WEST
    health.started("west/m-west")
    health.started("west/m-west")
    health.started("west/m-west")
    assert health.order("m", [EAST, WEST])[0] == EAST


def test_snapshot_lists_each_deployment_with_its_state(health: DeploymentHealth) -> None:
    health.register("m", [EAST, WEST])
    health.started("east/m-east")
    fail(health, "west/m-west", 3)
    snap = {s["deployment"]: s for s in health.snapshot()}
    assert snap["east/m-east"]["state"] == "closed" and snap["east/m-east"]["in_flight"] == 1
    west = snap["west/m-west"]
    assert west["state"] == "open" and west["failures"] == 3 and west["models"] == ["m"]
    assert west["provider"] == "west" and west["upstream_model"] == "m-west"
    assert west["cooldown_until"] is not None and west["total_failures"] == 3


@pytest.mark.parametrize("retry_after", [99999999999.0, 1e308])
def test_a_hostile_retry_after_never_keeps_the_breaker_open_past_its_cap(
    health: DeploymentHealth, clock: Clock, retry_after: float
) -> None:
    health.register("m", [WEST])
    fail(health, "west/m-west", retry_after_s=retry_after)
    assert not health.deployment_usable("west/m-west")
    assert health.retry_after_s("m") == pytest.approx(health.max_cooldown_s)
    clock.now += health.max_cooldown_s + 0.001
    assert health.deployment_usable("west/m-west")  # half-open: a probe may go


@pytest.mark.parametrize("retry_after", [float("inf"), float("nan"), -1.0, float("-inf")])
def test_an_unusable_retry_after_is_ignored(health: DeploymentHealth, retry_after: float) -> None:
    health.register("m", [WEST])
    fail(health, "west/m-west", retry_after_s=retry_after)  # one failure: below failures_to_trip
    assert health.deployment_usable("west/m-west")
    assert health.snapshot()[0]["cooldown_remaining_s"] == 0.0

"""Per-deployment health (a circuit breaker) and load balancing, in process.

A *deployment* is one place a model is served: a provider plus the upstream model id. Each has a
breaker with three states:

* **closed** — healthy; traffic flows. Consecutive failures are counted; a success resets the count.
* **open** — ``failures_to_trip`` consecutive failures (or an upstream ``retry-after``) opened it: it
  gets no traffic until ``cooldown_until``.
* **half_open** — the cooldown has passed; the next request through it is a probe. The probe's
  success closes the breaker; its failure re-opens it for another cooldown. While the probe is in
  flight the deployment takes no other traffic.

``order`` *excludes* open deployments (and half-open ones whose probe is in flight): the breaker's
point is to fail fast instead of queueing requests behind an upstream that is down. When it returns
an empty list the caller falls back to another model or answers 503.

Balancing among usable deployments is weighted least-in-flight: deployments are ordered by
``in_flight / weight``, and ties (the usual case when the gateway is not saturated) are broken by a
weighted random draw, so idle traffic spreads by weight and busy traffic goes where there is room.

The pipeline reports outcomes: ``started`` before sending, ``finished(ok=...)`` after. Only failures
that say something about the deployment count (``retry.is_retryable`` statuses, timeouts, connection
errors); a 400 for a bad request is ``ok=True`` as far as health goes.

Everything runs on one event loop, so there is no locking; each worker process has its own view.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.config import Deployment
from app.routing.retry_after import RETRY_AFTER_CAP_S, clamp_retry_after

Clock = Callable[[], float]


def deployment_key(model_name: str, dep: Deployment) -> str:
    """``provider/upstream-model``: the identity of one upstream (the model name is the default id)."""
    return f"{dep.provider}/{dep.upstream_model or model_name}"


@dataclass(slots=True)
class _Breaker:
    key: str
    failures: int = 0
    open_until: float | None = None  # None: closed
    probing: bool = False  # half-open and a probe is in flight
    probe_started: float = 0.0
    in_flight: int = 0
    total_failures: int = 0
    total_successes: int = 0

    def state(self, now: float) -> str:
        if self.open_until is None:
            return "closed"
        return "open" if now < self.open_until else "half_open"

    def usable(self, now: float, probe_timeout_s: float) -> bool:
        state = self.state(now)
        if state == "closed":
            return True
        # A probe that never reported back (a lost task) must not block the deployment forever.
        return state == "half_open" and (not self.probing or now - self.probe_started > probe_timeout_s)


class DeploymentHealth:
    """Circuit breakers and in-flight counters for every deployment this process has seen."""

    def __init__(
        self,
        *,
        failures_to_trip: int = 3,
        cooldown_s: float = 30.0,
        max_cooldown_s: float = RETRY_AFTER_CAP_S,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if failures_to_trip < 1:
            raise ValueError("failures_to_trip must be at least 1")
        self.failures_to_trip = failures_to_trip
        self.cooldown_s = cooldown_s
        # No upstream retry-after keeps a breaker open longer than this (nor than cooldown_s, if larger).
        self.max_cooldown_s = max(max_cooldown_s, cooldown_s)
        self._clock = clock
        self._rng = rng or random.Random()
        self._breakers: dict[str, _Breaker] = {}
        self._models: dict[str, tuple[str, ...]] = {}  # model name → its deployment keys

    # ---- registration and queries -------------------------------------------------------------

    def register(self, model_name: str, deployments: list[Deployment]) -> list[str]:
        """Make the model's deployments known (the router registers the whole catalog at start-up)."""
        keys = self._models.get(model_name)
        if keys is None or len(keys) != len(deployments):
            keys = tuple(deployment_key(model_name, d) for d in deployments)
            self._models[model_name] = keys
            for key in keys:
                if key not in self._breakers:
                    self._breakers[key] = _Breaker(key)
        return list(keys)

    def _breaker(self, key: str) -> _Breaker:
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._breakers[key] = _Breaker(key)
        return breaker

    def is_available(self, model_name: str) -> bool:
        """True when at least one of the model's deployments may take a request now.

        A model this instance has never registered is assumed available (nothing has failed yet).
        """
        keys = self._models.get(model_name)
        if not keys:
            return True
        now = self._clock()
        return any(self._breakers[k].usable(now, self.cooldown_s) for k in keys)

    def deployment_usable(self, dep_key: str) -> bool:
        """True unless this deployment's breaker is open (a retry should then go elsewhere)."""
        breaker = self._breakers.get(dep_key)
        return breaker is None or breaker.usable(self._clock(), self.cooldown_s)

    def retry_after_s(self, model_name: str) -> float | None:
        """Seconds until the model's first deployment leaves cooldown (None if one is usable now)."""
        keys = self._models.get(model_name)
        if not keys:
            return None
        now = self._clock()
        waits = []
        for key in keys:
            breaker = self._breakers[key]
            if breaker.usable(now, self.cooldown_s):
                return None
            if breaker.open_until is not None:
                waits.append(max(breaker.open_until - now, 0.0))
        return min(waits) if waits else None

    def order(self, model_name: str, deployments: list[Deployment]) -> list[Deployment]:
        """The model's usable deployments in the order to try them (open ones are left out)."""
        keys = self.register(model_name, deployments)
        if len(deployments) == 1:
            return list(deployments) if self._breakers[keys[0]].usable(self._clock(), self.cooldown_s) else []
        now = self._clock()
        ranked: list[tuple[float, float, Deployment]] = []
        for key, dep in zip(keys, deployments, strict=True):
            breaker = self._breakers[key]
            if not breaker.usable(now, self.cooldown_s):
                continue
            load = breaker.in_flight / dep.weight
            # Efraimidis–Spirakis: sorting by u^(1/w) descending is a weighted random permutation.
            draw = self._rng.random() ** (1.0 / dep.weight)
            ranked.append((load, -draw, dep))
        ranked.sort(key=lambda item: (item[0], item[1]))
        return [dep for _, _, dep in ranked]

    # ---- outcomes -------------------------------------------------------------------------------

    def started(self, dep_key: str) -> None:
        breaker = self._breaker(dep_key)
        breaker.in_flight += 1
        now = self._clock()
        if breaker.state(now) == "half_open":
            breaker.probing = True
            breaker.probe_started = now

    def finished(self, dep_key: str, *, ok: bool, retry_after_s: float | None = None) -> None:
        """Record an attempt's outcome.

        ``retry_after_s`` (from an upstream 429/529 ``retry-after``) opens the breaker for at least
        that long straight away: the upstream said when to come back, so no request should go
        there sooner, whatever the failure count — but never longer than ``max_cooldown_s``: a
        hostile or broken ``retry-after`` (``inf``, ``99999999999``) cannot park a deployment for good.
        """
        breaker = self._breaker(dep_key)
        now = self._clock()
        breaker.in_flight = max(breaker.in_flight - 1, 0)
        if ok:
            breaker.total_successes += 1
            breaker.failures = 0
            breaker.open_until = None
            breaker.probing = False
            return
        breaker.total_failures += 1
        breaker.failures += 1
        was_half_open = breaker.state(now) == "half_open"
        if was_half_open or breaker.failures >= self.failures_to_trip:
            breaker.open_until = max(breaker.open_until or 0.0, now + self.cooldown_s)
            breaker.probing = False
        wait = clamp_retry_after(retry_after_s, self.max_cooldown_s)
        if wait:
            breaker.open_until = max(breaker.open_until or 0.0, now + wait)
            breaker.probing = False

    # ---- admin view -----------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        """One entry per deployment, for ``GET /admin/health``.

        ``cooldown_remaining_s`` is relative to now; ``cooldown_until`` is the same instant as a Unix
        timestamp (the breaker itself runs on a monotonic clock).
        """
        now = self._clock()
        wall_now = time.time()
        owners: dict[str, list[str]] = {}
        for model, keys in self._models.items():
            for key in keys:
                owners.setdefault(key, []).append(model)
        out: list[dict[str, Any]] = []
        for key in sorted(self._breakers):
            breaker = self._breakers[key]
            state = breaker.state(now)
            remaining = max(breaker.open_until - now, 0.0) if state == "open" and breaker.open_until else 0.0
            provider, _, upstream = key.partition("/")
            out.append(
                {
                    "deployment": key,
                    "provider": provider,
                    "upstream_model": upstream,
                    "models": sorted(owners.get(key, [])),
                    "state": state,
                    "failures": breaker.failures,
                    "cooldown_remaining_s": round(remaining, 3),
                    "cooldown_until": round(wall_now + remaining, 3) if remaining else None,
                    "in_flight": breaker.in_flight,
                    "probe_in_flight": breaker.probing,
                    "total_failures": breaker.total_failures,
                    "total_successes": breaker.total_successes,
                }
            )
        return out

"""Prometheus metrics: what the gateway counts, and how it renders them for a scrape.

Most numbers derive from the ``UsageEvent`` of a finished request (``Metrics.observe``); a few are
pushed by the stage that knows them (retries, fallbacks, breaker state) and a few are pull-style
gauges refreshed right before a scrape (remaining budget, ledger backlog).

**Several worker processes.** ``tollway serve --workers N`` runs N uvicorn workers, each with its own
``Metrics``. When ``PROMETHEUS_MULTIPROC_DIR`` is set (``prepare_multiprocess_dir`` does it before the
workers start), prometheus-client writes every value to a memory-mapped file in that directory and a
scrape served by *any* worker merges all files: counters and histograms sum across workers, and each
gauge declares how its per-worker values combine (in-flight requests add up, a breaker's state is the
worst any worker sees, a remaining budget is the most recently refreshed value).

**Units.** One unit per metric name: tokens, requests and USD never share a name split by a label
(``tollway_budget_remaining_tokens``, ``..._requests``, ``..._usd``), and a state is a labelled 1/0
gauge, not a number to decode. ``promtool check metrics`` passes on a real scrape
(tests/unit/test_metrics_promtool.py).

**Cardinality.** Labels never carry request ids, key secrets, prompts or other free text. Teams are labels
while fewer than ``team_label_cap`` distinct teams have been seen by the process; later teams are
counted as ``other``. Key ids (the ledger's ``key_id``, never the key itself) and end-user ids are
capped the same way (``key_label_cap``, ``end_user_label_cap``); end-user ids are also cut to 64
characters. Error types are reduced to ``[a-z0-9_]`` and capped; route reasons are reduced to their
decision (``route_reason_key``) and capped.

**Process metrics.** ``process_*`` (CPU, memory, open files) and ``python_info`` are on the exposition
registry. In multiprocess mode they describe the worker that served the scrape, not the sum.

**Cost.** ``observe`` runs once per request and ``observe_inter_event`` once per write to a stream, so both
look up labelled children in plain dicts (prometheus-client's ``labels()`` validates and locks on
every call) and do nothing else. Money is ``Decimal`` in the ledger; Prometheus samples are floats.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from app.ledger.events import UsageEvent
from app.observability.route_reason import route_reason_key

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OTHER = "other"
NONE = "none"

# Request and upstream latency: from a cached answer (milliseconds) to a long generation (minutes).
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Time to first token: what a user waits before anything appears.
TTFT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
# Gaps between stream events: tokens arrive every few ms; long gaps are stalls.
INTER_EVENT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

BREAKER_STATES = ("closed", "half_open", "open")
# Budget windows by the unit they count (``app/budgets/windows.py`` names them).
BUDGET_UNITS = {
    "requests_per_minute": "requests",
    "tokens_per_minute": "tokens",
    "tokens_per_day": "tokens",
    "tokens_per_month": "tokens",
    "usd_per_day": "usd",
    "usd_per_month": "usd",
}

# ``*_created`` series (one timestamp per labelled child) would double the series count for nothing
# a dashboard uses; multiprocess mode never exports them anyway.
disable_created_metrics()

_ERROR_TYPE_UNSAFE = re.compile(r"[^a-z0-9_]+")
_ERROR_TYPE_CAP = 50
_ROUTE_REASON_CAP = 50
_END_USER_MAX_LENGTH = 64


def status_class(status: int) -> str:
    """200 → "2xx"; anything outside 100..599 (a connection that never got a status) → "none"."""
    return f"{status // 100}xx" if 100 <= status <= 599 else NONE


class _Family:
    """A labelled metric with its children cached by label values (a dict hit, no lock)."""

    __slots__ = ("_children", "metric")

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def child(self, *label_values: str) -> Any:
        child = self._children.get(label_values)
        if child is None:
            child = self._children[label_values] = self.metric.labels(*label_values)
        return child


class _CappedNames:
    """Passes names through until ``cap`` distinct ones were seen, then maps new ones to "other"."""

    __slots__ = ("_cap", "_seen")

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._seen: set[str] = set()

    def __call__(self, name: str) -> str:
        if name in self._seen:
            return name
        if len(self._seen) < self._cap:
            self._seen.add(name)
            return name
        return OTHER


class Metrics:
    """Every metric Tollway exports, with one method per thing that happens."""

    def __init__(
        self,
        *,
        team_label_cap: int = 100,
        key_label_cap: int = 100,
        end_user_label_cap: int = 100,
        model_tiers: Mapping[str, str] | None = None,
        registry: CollectorRegistry | None = None,
        multiprocess_dir: str | None = None,
    ) -> None:
        """``model_tiers`` maps catalogue model names to their tier (the ``served_tier`` label);
        a served model missing from it is labelled "none"."""
        # Multiprocess mode is the environment's choice: prometheus-client picks its value storage
        # (memory or mmap files) when it is first imported, from the same variable.
        self.multiprocess_dir = multiprocess_dir or os.environ.get(MULTIPROC_ENV) or None
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._team = _CappedNames(team_label_cap)
        self._error_type = _CappedNames(_ERROR_TYPE_CAP)
        self._route_reason = _CappedNames(_ROUTE_REASON_CAP)
        self._key = _CappedNames(key_label_cap)
        self._end_user = _CappedNames(end_user_label_cap)
        self._tiers = dict(model_tiers or {})
        r = self.registry

        request_labels = ["team", "client_api", "route", "served_model", "served_tier", "status_class"]
        self.requests = _Family(
            Counter(
                "tollway_requests",
                'Finished requests. route="none" for a named model; served_tier is the catalogue tier.',
                request_labels,
                registry=r,
            )
        )
        self.route_reasons = _Family(
            Counter(
                "tollway_route_reasons",
                "Finished requests by routing decision (route, task, its source, minimum tier).",
                ["route", "reason"],
                registry=r,
            )
        )
        self.key_requests = _Family(
            Counter("tollway_key_requests", "Finished requests per API key id.", ["key_id"], registry=r)
        )
        self.key_tokens = _Family(
            Counter("tollway_key_tokens", "Tokens billed (all types) per API key id.", ["key_id"], registry=r)
        )
        self.end_user_requests = _Family(
            Counter(
                "tollway_end_user_requests", "Finished requests per end-user id.", ["end_user"], registry=r
            )
        )
        self.end_user_tokens = _Family(
            Counter(
                "tollway_end_user_tokens", "Tokens billed (all types) per end-user id.", ["end_user"], registry=r
            )
        )
        self.tokens = _Family(
            Counter(
                "tollway_tokens",
                "Tokens billed, by type: input (uncached), output, cache_write, cache_read.",
                ["team", "served_model", "type"],
                registry=r,
            )
        )
        self.cost = _Family(
            Counter(
                "tollway_cost_usd", "Cost of served requests in USD.", ["team", "served_model"], registry=r
            )
        )
        self.cache_savings = _Family(
            Counter(
                "tollway_cache_savings_usd",
                "USD saved by prompt caching (uncached cost minus cost) on requests that cost less "
                "than uncached.",
                ["team", "served_model"],
                registry=r,
            )
        )
        self.cache_extra_cost = _Family(
            Counter(
                "tollway_cache_extra_cost_usd",
                "USD paid above the uncached cost (cache-write premium) on requests that cost more "
                "than uncached. Net savings = savings - extra cost.",
                ["team", "served_model"],
                registry=r,
            )
        )
        self.errors = _Family(
            Counter(
                "tollway_errors",
                "Requests that ended in an error, by error type.",
                ["client_api", "error_type"],
                registry=r,
            )
        )
        self.latency = _Family(
            Histogram(
                "tollway_request_duration_seconds",
                "Total request duration, from arrival to the last byte sent.",
                ["client_api", "served_model"],
                buckets=LATENCY_BUCKETS,
                registry=r,
            )
        )
        self.upstream_latency = _Family(
            Histogram(
                "tollway_upstream_duration_seconds",
                "Duration of the upstream (provider) call that produced the answer.",
                ["served_model"],
                buckets=LATENCY_BUCKETS,
                registry=r,
            )
        )
        self.ttft = _Family(
            Histogram(
                "tollway_time_to_first_token_seconds",
                "Time from arrival to the first content token sent to the client (streams).",
                ["served_model"],
                buckets=TTFT_BUCKETS,
                registry=r,
            )
        )
        self.inter_event = _Family(
            Histogram(
                "tollway_stream_inter_event_seconds",
                "Time between consecutive writes of stream events to the client.",
                ["client_api"],
                buckets=INTER_EVENT_BUCKETS,
                registry=r,
            )
        )
        self.in_flight = _Family(
            Gauge(
                "tollway_requests_in_flight",
                "Requests being served right now.",
                ["client_api"],
                registry=r,
                multiprocess_mode="livesum",
            )
        )
        self.budget_rejections = _Family(
            Counter(
                "tollway_budget_rejections",
                "Requests rejected because a budget window had no room.",
                ["team", "window"],
                registry=r,
            )
        )
        self.budget_remaining = {
            unit: _Family(
                Gauge(
                    f"tollway_budget_remaining_{unit}",
                    f"Budget left in the current window, in {unit}.",
                    ["team", "window"],
                    registry=r,
                    multiprocess_mode="mostrecent",
                )
            )
            for unit in sorted(set(BUDGET_UNITS.values()))
        }
        self.budget_limit = {
            unit: _Family(
                Gauge(
                    f"tollway_budget_limit_{unit}",
                    f"The budget of the window, in {unit}.",
                    ["team", "window"],
                    registry=r,
                    multiprocess_mode="mostrecent",
                )
            )
            for unit in sorted(set(BUDGET_UNITS.values()))
        }
        self.response_cache_lookups = _Family(
            Counter(
                "tollway_response_cache_lookups",
                "Response-cache lookups, by result (hit or miss).",
                ["result"],
                registry=r,
            )
        )
        self.retries = _Family(
            Counter("tollway_retries", "Upstream retries.", ["provider", "model"], registry=r)
        )
        self.fallbacks = _Family(
            Counter(
                "tollway_fallbacks",
                "Requests that fell back to another model after upstream failures.",
                ["from_model", "to_model"],
                registry=r,
            )
        )
        self.escalations = _Family(
            Counter(
                "tollway_escalations",
                "Answers escalated to a larger model after failing verification.",
                ["from_model", "to_model"],
                registry=r,
            )
        )
        self.breaker_state = _Family(
            Gauge(
                "tollway_deployment_breaker_state",
                "Circuit-breaker state per deployment: 1 for its current state, 0 for the others "
                "(with several workers, 1 where any worker is in that state).",
                ["deployment", "state"],
                registry=r,
                multiprocess_mode="livemax",
            )
        )
        self.ledger_queue_depth = Gauge(
            "tollway_ledger_queue_depth",
            "Usage events waiting in memory to be written to the ledger.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.ledger_spool_events = Gauge(
            "tollway_ledger_spool_events",
            "Usage events waiting in the durable spool (the database was down or slow).",
            registry=r,
            # The spool is shared by the workers of one machine: each sees the same backlog.
            multiprocess_mode="livemax",
        )
        # Provider usage Tollway recorded as billed but distrusts (over_reservation: more output than
        # was reserved for; the ledger row carries the same flag). Bounded: a handful of flag names.
        self.usage_flags = _Family(
            Counter(
                "tollway_usage_flags",
                "Requests whose provider usage was recorded as billed but flagged, by flag.",
                ["model", "flag"],
                registry=r,
            )
        )
        self.event_loop_lag_max = Gauge(
            "tollway_event_loop_lag_max_seconds",
            "Largest event-loop lag seen since start-up (opt-in probe: TOLLWAY_LOOP_LAG_PROBE_S).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.ledger_dead_letter_rows = Counter(
            "tollway_ledger_dead_letter_rows",
            "Usage events the database refused even after escaping, kept in the dead letters "
            "(table ledger_dead_letters, else dead-letters.jsonl in the spool directory).",
            registry=r,
        )

        if self.multiprocess_dir:
            self._exposition = CollectorRegistry()
            _WorkersCollector(self._exposition, path=self.multiprocess_dir)
        else:
            self._exposition = self.registry
        ProcessCollector(registry=self._exposition)
        PlatformCollector(registry=self._exposition)

    # ---- per request ---------------------------------------------------------------------------------

    def request_started(self, client_format: str) -> None:
        self.in_flight.child(client_format).inc()

    def request_finished(self, client_format: str) -> None:
        self.in_flight.child(client_format).dec()

    def observe(
        self,
        event: UsageEvent,
        *,
        team_name: str | None,
        route: str | None,
        upstream_s: float | None,
        ttft_s: float | None,
    ) -> None:
        """Count one finished request (called once, with the event the ledger records)."""
        team = self._team(team_name) if team_name else NONE
        model = event.served_model or NONE
        api = event.client_format
        tier = self._tiers.get(model, NONE)
        self.requests.child(team, api, route or NONE, model, tier, status_class(event.status)).inc()
        if event.route_reason:
            reason = self._route_reason(route_reason_key(event.route_reason))
            self.route_reasons.child(route or NONE, reason).inc()
        self._observe_principal(event)
        if event.usage_flag:
            self.usage_flags.child(model, event.usage_flag).inc()

        tokens = self.tokens
        if event.input_tokens:
            tokens.child(team, model, "input").inc(event.input_tokens)
        if event.output_tokens:
            tokens.child(team, model, "output").inc(event.output_tokens)
        cache_write = event.cache_write_5m_tokens + event.cache_write_1h_tokens
        if cache_write:
            tokens.child(team, model, "cache_write").inc(cache_write)
        if event.cache_read_tokens:
            tokens.child(team, model, "cache_read").inc(event.cache_read_tokens)

        if event.cost_usd:
            self.cost.child(team, model).inc(float(event.cost_usd))
        saved = event.uncached_cost_usd - event.cost_usd
        if saved > 0:
            self.cache_savings.child(team, model).inc(float(saved))
        elif saved < 0 and event.uncached_cost_usd:
            self.cache_extra_cost.child(team, model).inc(float(-saved))

        if event.error_type is not None or event.status >= 400:
            self.errors.child(api, self._error_label(event.error_type, event.status)).inc()

        self.latency.child(api, model).observe(event.latency_ms / 1000.0)
        if upstream_s is not None:
            self.upstream_latency.child(model).observe(upstream_s)
        if ttft_s is None and event.ttft_ms is not None:
            ttft_s = event.ttft_ms / 1000.0
        if ttft_s is not None:
            self.ttft.child(model).observe(ttft_s)

    def _observe_principal(self, event: UsageEvent) -> None:
        total = (
            event.input_tokens
            + event.output_tokens
            + event.cache_write_5m_tokens
            + event.cache_write_1h_tokens
            + event.cache_read_tokens
        )
        if event.key_id:
            key = self._key(event.key_id)
            self.key_requests.child(key).inc()
            if total:
                self.key_tokens.child(key).inc(total)
        if event.end_user:
            user = self._end_user(event.end_user[:_END_USER_MAX_LENGTH])
            self.end_user_requests.child(user).inc()
            if total:
                self.end_user_tokens.child(user).inc(total)

    def observe_inter_event(self, seconds: float, client_format: str) -> None:
        self.inter_event.child(client_format).observe(seconds)

    def _error_label(self, error_type: str | None, status: int) -> str:
        if not error_type:
            return f"http_{status}"
        cleaned = _ERROR_TYPE_UNSAFE.sub("_", error_type.lower())[:64].strip("_") or "unknown"
        return self._error_type(cleaned)

    # ---- budgets, caches, upstream health --------------------------------------------------------------

    def budget_rejected(self, team_name: str | None, window: str) -> None:
        team = self._team(team_name) if team_name else NONE
        self.budget_rejections.child(team, window).inc()

    def set_budget_remaining(
        self, team_name: str, window: str, remaining: float, *, limit: float | None = None
    ) -> None:
        """Set a team's remaining budget (and, when known, the window's limit, for "% used").

        A team past the label cap is not exported: one "other" gauge shared by many teams would
        show whichever was set last, which is worse than nothing.
        """
        unit = BUDGET_UNITS.get(window)
        if unit is None:
            raise ValueError(f"unknown budget window {window!r}; expected one of {sorted(BUDGET_UNITS)}")
        team = self._team(team_name)
        if team == OTHER:
            return
        self.budget_remaining[unit].child(team, window).set(remaining)
        if limit is not None:
            self.budget_limit[unit].child(team, window).set(limit)

    def response_cache(self, hit: bool) -> None:
        self.response_cache_lookups.child("hit" if hit else "miss").inc()

    def retry(self, provider: str, model: str) -> None:
        self.retries.child(provider, model).inc()

    def fallback(self, from_model: str, to_model: str) -> None:
        self.fallbacks.child(from_model, to_model).inc()

    def escalation(self, from_model: str, to_model: str) -> None:
        self.escalations.child(from_model, to_model).inc()

    def set_breaker_state(self, deployment: str, state: str) -> None:
        """``state`` is "closed", "half_open" or "open": that state's gauge is 1, the others 0."""
        if state not in BREAKER_STATES:
            raise ValueError(f"unknown breaker state {state!r}; expected one of {BREAKER_STATES}")
        for name in BREAKER_STATES:
            self.breaker_state.child(deployment, name).set(1 if name == state else 0)

    def ledger_dead_letters(self, count: int) -> None:
        self.ledger_dead_letter_rows.inc(count)

    def set_ledger(self, queue_depth: int, spool_size: int) -> None:
        """``spool_size`` counts usage events (not bytes) waiting in the spool."""
        self.ledger_queue_depth.set(queue_depth)
        self.ledger_spool_events.set(spool_size)

    def escalation_counts(self) -> dict[str, Any]:
        """Escalations counted since the process (or, in multiprocess mode, the server) started:
        the total and each (from, to) pair. Reads the workers' files in multiprocess mode: call it
        off the event loop."""
        counts: dict[tuple[str, str], int] = {}
        for family in self._exposition.collect():
            if family.name != "tollway_escalations":
                continue
            for sample in family.samples:
                if sample.name == "tollway_escalations_total":
                    pair = (sample.labels["from_model"], sample.labels["to_model"])
                    counts[pair] = counts.get(pair, 0) + int(sample.value)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return {
            "total": sum(counts.values()),
            "pairs": [{"from": f, "to": t, "count": n} for (f, t), n in ranked],
        }

    # ---- exposition ----------------------------------------------------------------------------------

    @property
    def exposition_registry(self) -> CollectorRegistry:
        """What a scrape reads: this process's registry, or every worker's files merged."""
        return self._exposition

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type. Reads files in multiprocess mode: call it off
        the event loop."""
        return generate_latest(self._exposition), CONTENT_TYPE_LATEST


# ---- multiprocess housekeeping ----------------------------------------------------------------------


def multiprocess_enabled() -> bool:
    """Whether this process stores metric values in PROMETHEUS_MULTIPROC_DIR files."""
    return values.ValueClass is not values.MutexValue


def prepare_multiprocess_dir(workers: int) -> str | None:
    """Set up PROMETHEUS_MULTIPROC_DIR for ``workers`` processes; call it before they start.

    With one worker, nothing (unless the operator set the variable). With several, the operator's
    directory is emptied (files of a previous run would be summed in), or a fresh temporary one is
    made. Returns the directory in use, or None for single-process mode.
    """
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        os.makedirs(directory, exist_ok=True)
        for path in glob.glob(os.path.join(directory, "*.db")):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        return directory
    if workers <= 1:
        return None
    directory = tempfile.mkdtemp(prefix="tollway-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    return directory


def remove_multiprocess_dir(directory: str | None) -> None:
    """Remove a directory ``prepare_multiprocess_dir`` created (on server exit)."""
    if directory and os.path.basename(directory).startswith("tollway-metrics-"):
        shutil.rmtree(directory, ignore_errors=True)


_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")


def _pids_with_live_gauges(directory: str) -> Iterable[int]:
    pids: set[int] = set()
    for name in os.listdir(directory):
        match = _LIVE_GAUGE_FILE.match(name)
        if match:
            pids.add(int(match.group(1)))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_workers(directory: str) -> list[int]:
    """Drop the live gauges (in flight, breaker, ledger) of workers that died.

    A worker that crashed mid-request would otherwise keep counting as in flight forever; its
    counters and histograms stay, as they should.
    """
    dead = [pid for pid in _pids_with_live_gauges(directory) if not _alive(pid)]
    for pid in dead:
        mark_process_dead(pid, directory)
    return dead


class _WorkersCollector(MultiProcessCollector):
    """Every worker's files merged, after dropping the live gauges of workers that died."""

    def collect(self) -> Any:
        reap_dead_workers(self._path)
        return super().collect()

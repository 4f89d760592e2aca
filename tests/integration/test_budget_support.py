"""Helpers for the budget tests, reusable by gateway-level tests (no tests in this module).

* ``FakeClock`` — an injectable clock the tests move by hand.
* ``RedisServer`` — a throwaway ``redis-server`` subprocess on a free port, to kill and restart.
* ``BudgetWorkload`` / ``run_workload_processes`` — N OS processes (spawn) each running M concurrent
  admit → "upstream" → settle requests against one Redis, with early aborts and abandoned
  reservations, reporting what each request did. ``check_strict_invariants`` asserts the budget
  promise over the combined outcome.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import random
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from app.auth.principal import Limits, Principal

# A fixed instant in the future of any test run (2031-01-31 23:59:00 UTC): usage keys expire
# relative to the injected clock, and a day/month boundary is one minute away.
START = 1927670340.0


class FakeClock:
    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def principal(
    team_id: str,
    key_id: str = "key-a",
    *,
    team: Limits | None = None,
    key: Limits | None = None,
    default_max_tokens: int | None = None,
    cap_output_to_budget: bool = False,
) -> Principal:
    from app.auth.principal import TeamPolicy

    return Principal(
        team_id=team_id,
        team_name=f"team-{team_id[:8]}",
        key_id=key_id,
        key_prefix="tw-test",
        policy=TeamPolicy(default_max_tokens=default_max_tokens, cap_output_to_budget=cap_output_to_budget),
        team_limits=team or Limits(),
        key_limits=key or Limits(),
    )


def free_port(below: int = 65536) -> int:
    """A free loopback port; ``below`` bounds it (a cluster node also uses port + 10000)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < below:
            return port


class RedisServer:
    """A private ``redis-server`` (no persistence) that a test may kill and restart on its port.

    With ``cluster=True`` it is a one-node Redis Cluster owning all 16384 slots: commands whose keys
    span slots fail with CROSSSLOT exactly as on a real cluster.
    """

    def __init__(self, port: int | None = None, *, cluster: bool = False, durable: bool = False) -> None:
        self.port = port or free_port(below=55535 if cluster else 65536)
        self.cluster = cluster
        self.durable = durable  # append-only file fsync'd on every write: a restart keeps the data
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="tollway-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}" + ("" if self.cluster else "/0")

    def start(self, timeout_s: float = 10.0) -> None:
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.durable else "no",
        ]
        if self.durable:
            argv += ["--appendfsync", "always"]
        argv += ["--dir", self._dir.name]
        if self.cluster:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self.port}.conf"]
        argv += ["--logfile", self._log]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not self._command(b"PING").startswith(b"+PONG"):
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"redis-server exited with {code} on port {self.port}: {self._log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.02)
        if self.cluster:
            self._command(b"CLUSTER ADDSLOTSRANGE 0 16383")
            while b"cluster_state:ok" not in self._command(b"CLUSTER INFO"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the one-node cluster did not become ready")
                time.sleep(0.05)

    @property
    def _log(self) -> str:
        return os.path.join(self._dir.name, f"redis-{self.port}.log")

    def _log_tail(self) -> str:
        try:
            with open(self._log, encoding="utf-8", errors="replace") as log:
                return " | ".join(log.read().strip().splitlines()[-3:])
        except OSError:
            return "(no log)"

    def _command(self, line: bytes) -> bytes:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(line + b"\r\n")
                return conn.recv(4096)
        except OSError:
            return b""

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections (and the kernel keeps accepting) but answers nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._dir.cleanup()


# ---- the multi-process strict workload ---------------------------------------------------------


@dataclass(frozen=True)
class BudgetWorkload:
    redis_url: str
    team_id: str
    budget_tokens: int  # tokens_per_day of the team
    worst_case_tokens: int  # what every request reserves
    requests_per_process: int = 50
    wait_ms: int = 200
    reservation_ttl_s: int = 1
    abandon_share: float = 0.1  # never settle: their reservations must expire
    abort_share: float = 0.2  # settle early with a small partial usage
    upstream_s: tuple[float, float] = (0.005, 0.03)
    max_attempts: int = 400


@dataclass
class WorkerReport:
    outcomes: Counter[str] = field(default_factory=Counter)
    settled_tokens: int = 0
    max_actual: int = 0
    retries: int = 0
    over_reservation: int = 0


async def _run_worker(workload: BudgetWorkload, seed: int) -> WorkerReport:
    from app.budgets.limiter import BudgetExceeded, BudgetLimiter
    from app.budgets.redis_store import RedisStore, connect_budget_redis

    rng = random.Random(seed)
    redis = connect_budget_redis(workload.redis_url)
    limiter = BudgetLimiter(
        RedisStore(redis),
        mode="strict",
        wait_ms=workload.wait_ms,
        reservation_ttl_s=workload.reservation_ttl_s,
    )
    who = principal(workload.team_id, f"key-{seed}", team=Limits(tokens_per_day=workload.budget_tokens))
    report = WorkerReport()
    worst = workload.worst_case_tokens

    async def one(i: int) -> None:
        for _attempt in range(workload.max_attempts):
            try:
                admission = await limiter.admit(who, tokens=worst, usd=Decimal(0), request_id=f"p{seed}-{i}")
            except BudgetExceeded as exc:
                if exc.blocked_by_in_flight:  # a client retrying after retry-after
                    report.retries += 1
                    await asyncio.sleep(rng.uniform(0.005, 0.02))
                    continue
                report.outcomes["rejected"] += 1
                return
            await asyncio.sleep(rng.uniform(*workload.upstream_s))
            roll = rng.random()
            if roll < workload.abandon_share:
                report.outcomes["abandoned"] += 1
                return
            if roll < workload.abandon_share + workload.abort_share:
                actual = rng.randint(1, max(1, worst // 4))
                report.outcomes["aborted"] += 1
            else:
                actual = rng.randint(worst // 2, worst)
                report.outcomes["completed"] += 1
            await limiter.settle(admission, tokens=actual, usd=Decimal(0))
            report.settled_tokens += actual
            report.max_actual = max(report.max_actual, actual)
            return
        report.outcomes["gave_up"] += 1

    await asyncio.gather(*(one(i) for i in range(workload.requests_per_process)))
    await limiter.aclose()
    await redis.aclose()
    return report


def _worker_main(workload: BudgetWorkload, seed: int, barrier: Any, results: Any) -> None:
    barrier.wait(timeout=60)  # every process starts its burst at the same moment
    report = asyncio.run(_run_worker(workload, seed))
    results.put((seed, report))


def run_workload_processes(workload: BudgetWorkload, processes: int = 4, seed: int = 0) -> list[WorkerReport]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_worker_main, args=(workload, seed * 1000 + n, barrier, results))
        for n in range(processes)
    ]
    for proc in procs:
        proc.start()
    reports: list[WorkerReport] = []
    deadline = time.monotonic() + 120
    try:
        while len(reports) < processes:
            try:
                reports.append(results.get(timeout=0.2)[1])
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"workload workers failed (exit codes {dead})") from None
        for proc in procs:
            proc.join(timeout=30)
            assert proc.exitcode == 0, f"worker exited with {proc.exitcode}"
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
    return reports


def combine(reports: list[WorkerReport]) -> WorkerReport:
    total = WorkerReport()
    for report in reports:
        total.outcomes.update(report.outcomes)
        total.settled_tokens += report.settled_tokens
        total.max_actual = max(total.max_actual, report.max_actual)
        total.retries += report.retries
    return total


# ---- churn across a stalled or killed Redis -------------------------------------------------------


@dataclass(frozen=True)
class ChurnWorkload:
    """Admit → (readmit) → settle loops against one team, for ``seconds`` after every worker is ready.

    The clock the limiter sees is frozen (no reservation or record ever expires), so whatever is
    still reserved at the end was orphaned, and the usage in Redis must equal what was settled.
    """

    redis_url: str
    team_id: str
    seconds: float = 6.0
    concurrency: int = 40
    reply_timeout_s: float = 0.3
    worst_case_tokens: int = 100
    readmit_share: float = 0.25


@dataclass
class ChurnReport:
    policy: str = ""
    key_id: str = ""
    admitted: int = 0
    degraded: int = 0  # admitted under fail-open while Redis was unavailable
    unavailable: int = 0  # refused with 503 (fail-closed)
    readmits: int = 0
    settles: int = 0
    settled_tokens: int = 0
    pending_after_close: int = 0


async def _churn(workload: ChurnWorkload, policy: str, seed: int, ready: Any, go: Any) -> ChurnReport:
    from app.budgets.limiter import BudgetBackendUnavailable, BudgetLimiter
    from app.budgets.redis_store import RedisStore, connect_budget_redis

    rng = random.Random(seed)
    redis = connect_budget_redis(workload.redis_url, socket_timeout=workload.reply_timeout_s)
    limiter = BudgetLimiter(
        RedisStore(redis),
        failure_policy=policy,
        wait_ms=0,
        clock=lambda: START,
        breaker_s=0.2,
        reconcile_interval_s=0.1,
    )
    report = ChurnReport(policy=policy, key_id=f"key-{seed}")
    who = principal(
        workload.team_id,
        report.key_id,
        team=Limits(tokens_per_day=10**12, requests_per_minute=10**9),
        key=Limits(tokens_per_minute=10**12),
    )
    worst = workload.worst_case_tokens
    ready.set()
    await asyncio.get_running_loop().run_in_executor(None, go.wait, 60)
    stop = time.monotonic() + workload.seconds

    async def loop(c: int) -> None:
        n = 0
        while time.monotonic() < stop:
            n += 1
            try:
                admission = await limiter.admit(who, tokens=worst, usd=Decimal(0), request_id=f"w{seed}-{c}-{n}")
            except BudgetBackendUnavailable:
                report.unavailable += 1
                await asyncio.sleep(0.02)
                continue
            report.admitted += 1
            report.degraded += admission.degraded
            await asyncio.sleep(rng.uniform(0.001, 0.02))
            if rng.random() < workload.readmit_share:
                try:  # a fallback to a pricier model
                    admission = await limiter.readmit(admission, tokens=worst * 3 // 2, usd=Decimal(0))
                    report.readmits += 1
                except BudgetBackendUnavailable:
                    pass  # the original reservation stands and is settled below
            actual = rng.randint(1, worst)
            await limiter.settle(admission, tokens=actual, usd=Decimal(0))
            report.settles += 1
            report.settled_tokens += actual

    await asyncio.gather(*(loop(c) for c in range(workload.concurrency)))
    drain_until = time.monotonic() + 15
    while (limiter.ledger or limiter._background) and time.monotonic() < drain_until:
        await limiter.reconcile_now()
        await asyncio.sleep(0.1)
    report.pending_after_close = limiter.ledger.pending_settles()
    await limiter.aclose()
    await redis.aclose()
    return report


def _churn_main(workload: ChurnWorkload, policy: str, seed: int, ready: Any, go: Any, results: Any) -> None:
    results.put(asyncio.run(_churn(workload, policy, seed, ready, go)))


class ChurnProcesses:
    """One worker process per policy; ``start`` returns once every worker is about to send."""

    def __init__(self, workload: ChurnWorkload, policies: tuple[str, ...]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.ready = [ctx.Event() for _ in policies]
        self.go = ctx.Event()
        self.results = ctx.Queue()
        self.procs = [
            ctx.Process(target=_churn_main, args=(workload, policy, n, self.ready[n], self.go, self.results))
            for n, policy in enumerate(policies)
        ]

    def start(self) -> None:
        for proc in self.procs:
            proc.start()
        for event in self.ready:
            if not event.wait(60):
                raise RuntimeError("a churn worker did not start")
        self.go.set()

    def join(self, timeout_s: float = 120) -> list[ChurnReport]:
        reports: list[ChurnReport] = []
        deadline = time.monotonic() + timeout_s
        try:
            while len(reports) < len(self.procs):
                try:
                    reports.append(self.results.get(timeout=0.2))
                except queue.Empty:
                    dead = [p.exitcode for p in self.procs if p.exitcode not in (None, 0)]
                    if dead or time.monotonic() > deadline:
                        raise RuntimeError(f"churn workers failed (exit codes {dead})") from None
            for proc in self.procs:
                proc.join(timeout=30)
        finally:
            for proc in self.procs:
                if proc.is_alive():
                    proc.kill()
        return reports


def redis_budget_state(redis_url: str, team_id: str) -> dict[str, Any]:
    """The team's raw budget state in Redis: in-flight amounts, reservation records by state, usage."""
    import redis as sync_redis

    from app.budgets.windows import team_keys, windows_at

    client = sync_redis.Redis.from_url(redis_url)
    try:
        keys = team_keys(team_id)
        records = client.hgetall(keys.reservations)
        ws = windows_at(team_id, "", START)
        return {
            "inflight": {k.decode(): int(v) for k, v in client.hgetall(keys.inflight).items()},
            "live": [rid for rid, rec in records.items() if rec not in (b"s", b"x")],
            "expired": [rid for rid, rec in records.items() if rec == b"x"],
            "settled_records": sum(1 for rec in records.values() if rec == b"s"),
            "minute": {k.decode(): int(v) for k, v in client.hgetall(ws.period_keys[0]).items()},
            "day": {k.decode(): int(v) for k, v in client.hgetall(ws.period_keys[1]).items()},
        }
    finally:
        client.close()

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
) -> Principal:
    from app.auth.principal import TeamPolicy

    return Principal(
        team_id=team_id,
        team_name=f"team-{team_id[:8]}",
        key_id=key_id,
        key_prefix="tw-test",
        policy=TeamPolicy(default_max_tokens=default_max_tokens),
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

    def __init__(self, port: int | None = None, *, cluster: bool = False) -> None:
        self.port = port or free_port(below=55535 if cluster else 65536)
        self.cluster = cluster
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
            "no",
        ]
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

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
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

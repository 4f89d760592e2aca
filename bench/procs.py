"""Child processes for the benchmark: start them pinned, account their CPU and memory, stop them all.

Every process is started in its own session (process group), so stopping it also stops what it
forked (uvicorn's workers). ``ProcessGroup`` remembers each one and stops them in reverse order on
exit, on an exception, and on SIGINT/SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

import psutil

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def usable_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pin_self(cores: Iterable[int] | None) -> None:
    if cores:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, set(cores))


def _raise_fd_limit() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    cores: list[int] | None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tree(self) -> list[psutil.Process]:
        """The process and everything it forked (uvicorn's supervisor and workers)."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                t = proc.cpu_times()
                total += t.user + t.system
        return total

    def rss_bytes(self) -> int:
        total = 0
        for proc in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += proc.memory_info().rss
        return total

    def peak_rss_bytes(self) -> int:
        """Sum over the tree of each process's high-water mark (VmHWM): an upper bound of the peak."""
        total = 0
        for proc in self.tree():
            with contextlib.suppress(OSError, psutil.NoSuchProcess):
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) * 1024
        return total

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


class ProcessGroup:
    """Starts children and guarantees they are stopped (context manager + signal handlers)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []
        self._old_handlers: dict[int, Any] = {}

    def __enter__(self) -> ProcessGroup:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: Mapping[str, str],
        cores: list[int] | None,
    ) -> Child:
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("ab")

        def prepare() -> None:
            if cores:
                os.sched_setaffinity(0, set(cores))
            _raise_fd_limit()

        popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=prepare,
        )
        child = Child(name, popen, log_path, log_file, cores)
        self.children.append(child)
        return child

    def stop(self, child: Child, timeout: float = 15.0) -> None:
        if child.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGTERM)
            try:
                child.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.popen.wait(5)
        # Workers that outlived their supervisor are still in the group: make sure they are gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        child.log_file.close()
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child)


def wait_http(port: int, path: str, child: Child, timeout: float = 30.0, headers: dict[str, str] | None = None) -> None:
    """Wait until ``GET path`` answers (any status below 500), or fail with the child's log."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited with {child.popen.returncode}:\n{child.log_tail()}")
        try:
            response = httpx.get(f"http://127.0.0.1:{port}{path}", headers=headers, timeout=1.0)
            if response.status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} did not answer on port {port} within {timeout} s:\n{child.log_tail()}")


def python_argv(*args: str) -> list[str]:
    return [sys.executable, *args]


def busy_cpu_seconds() -> float:
    """Machine-wide busy CPU time (every core, every process): to see what else ran during a cell."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq

"""Whole Tollway processes for gateway-level tests (no tests in this module).

The in-process harness (``tests/gateway.py``) runs one app in the test's own process. The proofs the
issues ask for need more: several gateways as separate OS processes sharing one Redis and one
PostgreSQL database, a process to kill with SIGKILL mid-stream, a worker pool whose metrics are
merged from files. This module starts them and guarantees they are stopped.

* ``Stack`` — a context manager owning every process it starts: the provider simulator (its own
  process, on a free port), and gateways (``python -m app.cli serve``, one or ``--workers N``
  processes each) configured with ``TOLLWAY_SIMULATOR=always`` and ``TOLLWAY_SIMULATOR_URL`` pointing
  at that simulator, the given PostgreSQL database and Redis, and an admin key. Each process runs in
  its own session (process group), so stopping one also stops what it forked (uvicorn's workers);
  ``close()`` stops them all, also when the test failed.
* ``fresh_database`` — a throwaway PostgreSQL database migrated with ``tollway db upgrade``.
* ``flush_redis_db`` — the scratch Redis database (12) the gateway tests use, emptied.
* ``TcpProxy`` / ``BackgroundProxy`` — a 127.0.0.1 TCP proxy that a test can cut (close every
  connection, refuse new ones) and restore, or stall and resume: PostgreSQL going away mid-load.
  ``TcpProxy`` runs on the caller's event loop; ``BackgroundProxy`` runs one on a thread of its own,
  so it keeps forwarding while the test blocks (waiting for a process, say).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlparse, urlunparse

import httpx
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "tw-procs-admin-key-for-gateway-tests"
REDIS_DB = 12  # the gateway tests' scratch database: flushed by each stack
_PROVIDER_SECRETS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY")
T = TypeVar("T")

# Every process a Stack started and has not stopped yet: killed at interpreter exit as a last resort
# (a test run interrupted before its fixtures' teardown), since each lives in a session of its own.
_RUNNING: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for popen in list(_RUNNING):
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env() -> dict[str, str]:
    """The test runner's environment without any Tollway setting or provider credential, so that
    nothing a developer exported changes the processes or sends traffic off the machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_") and k not in _PROVIDER_SECRETS}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ---- databases -------------------------------------------------------------------------------------


def redis_db_url(redis_url: str, db: int = REDIS_DB) -> str:
    """``redis_url`` with its database number replaced by ``db``."""
    parts = urlparse(redis_url)
    return urlunparse(parts._replace(path=f"/{db}"))


def flush_redis_db(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()


def migrate(database_url: str) -> None:
    """``tollway db upgrade`` with ``TOLLWAY_DATABASE_URL`` set, as an operator would run it."""
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "db", "upgrade"],
        cwd=ROOT,
        env={**base_env(), "TOLLWAY_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"tollway db upgrade failed ({done.returncode}):\n{done.stderr}")


@contextlib.asynccontextmanager
async def fresh_database(server_url: str) -> AsyncIterator[str]:
    """A new PostgreSQL database next to ``server_url``'s, migrated, dropped at the end (asyncpg URL)."""
    from tests.conftest import _create_database, _drop_database

    name = f"tollway_gw_{uuid.uuid4().hex[:12]}"
    await _create_database(server_url, name)
    try:
        url = f"{server_url.rsplit('/', 1)[0]}/{name}"
        await asyncio.to_thread(migrate, url)
        yield url
    finally:
        await _drop_database(server_url, name)


# ---- processes -------------------------------------------------------------------------------------


@dataclass
class Proc:
    """One child process (and, through its process group, everything it forked)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process alone (uvicorn's supervisor forwards SIGTERM to workers)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def kill_group(self) -> None:
        """SIGKILL the process and everything in its group: a crash, no cleanup of any kind.

        Only while the process is not yet reaped: until then its pid, which is the group's id,
        cannot belong to anyone else."""
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def descendants(self) -> list[Any]:
        """``psutil.Process`` handles of what it forked (uvicorn's workers); a handle knows its
        process's start time, so it never signals a stranger that reused the pid."""
        import psutil

        try:
            return list(psutil.Process(self.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            return []

    def children(self) -> list[int]:
        """Pids of the processes it forked (uvicorn's workers)."""
        return [p.pid for p in self.descendants()]

    def log(self) -> str:
        if not self.log_file.closed:
            self.log_file.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


@dataclass
class Gateway:
    """A running gateway: ``tollway serve`` on its own port."""

    name: str
    port: int
    proc: Proc
    env: dict[str, str]
    workers: int = 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def async_client(self, key: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30, **kwargs)


def wait_http(url: str, proc: Proc, *, timeout: float = 60.0, ok: Callable[[httpx.Response], bool]) -> None:
    """Poll ``url`` until ``ok(response)``; fail early, with the log, if the process exits."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            response = httpx.get(url, timeout=2.0)
            if ok(response):
                return
            last = f"{response.status_code} {response.text[:300]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} not ready at {url} within {timeout} s ({last}):\n{proc.log_tail()}")


class Stack:
    """The simulator and any number of gateways sharing one database and one Redis.

    ``database_url`` must already be migrated (``fresh_database``); ``redis_url`` is flushed when
    the stack starts (pass a scratch database, e.g. ``redis_db_url(url)``) or None to run the
    gateways without Redis (in-process budgets, disk spool).
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        database_url: str,
        redis_url: str | None,
        admin_key: str = ADMIN_KEY,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.work_dir = work_dir
        self.database_url = database_url
        self.redis_url = redis_url
        self.admin_key = admin_key
        self.extra_env = dict(env or {})
        self.procs: list[Proc] = []
        self.gateways: list[Gateway] = []
        self.sim_port = 0
        self._counter = 0

    # -- lifecycle

    def __enter__(self) -> Stack:
        try:
            if self.redis_url:
                flush_redis_db(self.redis_url)
            self.start_simulator()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc, timeout=10)

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> Proc:
        log_path = self.work_dir / f"{name}.log"
        log_file = log_path.open("ab")
        popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _RUNNING.add(popen)
        proc = Proc(name, popen, log_path, log_file)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, *, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Stop ``proc`` with ``sig`` (SIGKILL to its whole group after ``timeout``); its exit code."""
        code: int | None = proc.popen.poll()
        forked = proc.descendants()
        if code is None:
            proc.signal(sig)
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill_group()
                code = proc.wait(10)
        for straggler in forked:  # workers that outlived their supervisor
            with contextlib.suppress(Exception):
                straggler.kill()
        _RUNNING.discard(proc.popen)
        proc.log_file.close()
        if proc in self.procs:
            self.procs.remove(proc)
        self.gateways = [g for g in self.gateways if g.proc is not proc]
        return code

    def kill(self, gateway: Gateway) -> None:
        """SIGKILL a gateway and its workers: nothing gets to settle, flush or close."""
        gateway.proc.kill_group()
        self.stop(gateway.proc)

    # -- the simulator

    def start_simulator(self) -> Proc:
        self.sim_port = free_port()
        argv = [sys.executable, "-m", "app.simulator", "--host", "127.0.0.1", "--port", str(self.sim_port)]
        proc = self._spawn("simulator", argv, base_env())
        wait_http(self.sim_url + "/_sim/stats", proc, ok=lambda r: r.status_code == 200)
        return proc

    @property
    def sim_url(self) -> str:
        return f"http://127.0.0.1:{self.sim_port}"

    def sim_stats(self) -> dict[str, int]:
        return dict(httpx.get(self.sim_url + "/_sim/stats", timeout=10).json())

    # -- gateways

    def gateway_env(self, **settings: Any) -> dict[str, str]:
        """The environment of a gateway: shared stores, the simulator, the admin key, then
        ``settings`` (``reservation_ttl_s=2`` → ``TOLLWAY_RESERVATION_TTL_S=2``; None removes)."""
        env = base_env()
        env.update(
            {
                "TOLLWAY_DATABASE_URL": self.database_url,
                "TOLLWAY_SIMULATOR": "always",
                "TOLLWAY_SIMULATOR_URL": self.sim_url,
                "TOLLWAY_ADMIN_KEY": self.admin_key,
                "TOLLWAY_SPOOL_DIR": str(self.work_dir / "spool"),
                "TOLLWAY_LEDGER_FLUSH_INTERVAL_S": "0.05",
                "TOLLWAY_RETRY_BASE_DELAY_S": "0.01",
                "TOLLWAY_RETRY_MAX_DELAY_S": "0.05",
                "TOLLWAY_LOG_LEVEL": "INFO",
            }
        )
        if self.redis_url:
            env["TOLLWAY_REDIS_URL"] = self.redis_url
        env.update(self.extra_env)
        for name, value in settings.items():
            key = name if name.isupper() else f"TOLLWAY_{name.upper()}"
            if value is None:
                env.pop(key, None)
            else:
                env[key] = str(value)
        return env

    def spawn_gateway(self, *, workers: int = 1, **settings: Any) -> Gateway:
        """Start a gateway process without waiting for it (see ``wait_ready``)."""
        self._counter += 1
        name = f"gateway-{self._counter}"
        port = free_port()
        env = self.gateway_env(**settings)
        argv = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
        if workers != 1:
            argv += ["--workers", str(workers)]
        gateway = Gateway(name, port, self._spawn(name, argv, env), env, workers)
        self.gateways.append(gateway)
        return gateway

    def wait_ready(self, gateway: Gateway, timeout: float = 60.0) -> Gateway:
        wait_http(gateway.url + "/readyz", gateway.proc, timeout=timeout, ok=lambda r: r.status_code == 200)
        return gateway

    def start_gateways(self, count: int, *, workers: int = 1, **settings: Any) -> list[Gateway]:
        """Start ``count`` gateways side by side (they boot in parallel) and wait until all are ready."""
        started = [self.spawn_gateway(workers=workers, **settings) for _ in range(count)]
        return [self.wait_ready(g) for g in started]

    def start_gateway(self, *, workers: int = 1, **settings: Any) -> Gateway:
        return self.start_gateways(1, workers=workers, **settings)[0]

    # -- the admin API (through the first gateway unless told otherwise)

    def admin(self, gateway: Gateway | None = None) -> httpx.Client:
        target = gateway or self.gateways[0]
        return target.client(self.admin_key)

    def create_team(
        self,
        name: str | None = None,
        *,
        limits: Mapping[str, Any] | None = None,
        policy: Mapping[str, Any] | None = None,
        gateway: Gateway | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name or f"team-{uuid.uuid4().hex[:10]}"}
        if limits:
            body["limits"] = dict(limits)
        if policy:
            body["policy"] = dict(policy)
        with self.admin(gateway) as admin:
            response = admin.post("/admin/teams", json=body)
        if response.status_code != 201:
            raise AssertionError(f"creating team {body} failed: {response.status_code} {response.text}")
        return dict(response.json())

    def create_key(self, team: str, *, gateway: Gateway | None = None, **body: Any) -> tuple[str, dict[str, Any]]:
        """A new key of ``team`` (id or name): (the secret, the key's record)."""
        with self.admin(gateway) as admin:
            response = admin.post(f"/admin/teams/{team}/keys", json=body)
        if response.status_code != 201:
            raise AssertionError(f"creating a key for {team} failed: {response.status_code} {response.text}")
        record = dict(response.json())
        return str(record.pop("key")), record


# ---- cutting the database connection ---------------------------------------------------------------


class TcpProxy:
    """127.0.0.1 TCP proxy to PostgreSQL that the test can cut (close every connection, refuse new
    ones: the listening socket closes) and restore (listen again on the same port), or stall (hold
    every byte in both directions: a database that has stopped answering) and resume."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()
        self._server = None

    async def restore(self) -> None:
        await self.start()

    async def aclose(self) -> None:
        if self._server is not None:
            await self.cut()
        for task in list(self._tasks):
            task.cancel()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update((client_writer, upstream_writer))
        for reader, writer in ((client_reader, upstream_writer), (upstream_reader, client_writer)):
            task = asyncio.create_task(self._pipe(reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


def through(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


class BackgroundProxy:
    """A ``TcpProxy`` on an event loop of its own thread, driven by plain (blocking) calls.

    The gateways reach the database through it while the test waits on processes or runs its own
    event loop, neither of which may stop the forwarding.
    """

    def __init__(self, database_url: str) -> None:
        parsed = make_url(database_url)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._thread.start()
        self.proxy = TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
        self._call(self.proxy.start())
        self.url = through(database_url, self.proxy.port)
        self.down = False

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def cut(self) -> None:
        self._call(self.proxy.cut())
        self.down = True

    def restore(self) -> None:
        self._call(self.proxy.restore())
        self.down = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self.proxy.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> BackgroundProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- clients: one request through an official SDK, as its client saw it ------------------------------


@dataclass
class Call:
    """One request as its client saw it: enough to find its ledger row and check its usage."""

    api: str  # "anthropic" | "openai": the client's format
    status: int
    request_id: str
    headers: dict[str, str]
    stream: bool = False
    aborted: bool = False  # the client closed the stream after ``deltas`` content deltas
    input_tokens: int = 0  # input side of the usage the response reported (cache reads/writes included)
    output_tokens: int = 0
    deltas: int = 0  # content deltas read (streams)
    error: dict[str, Any] | None = None  # the error body, for a non-2xx answer
    label: str = ""  # the test's own name for the kind of request

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def error_message(self) -> str:
        if not self.error:
            return ""
        return str((self.error.get("error") or {}).get("message", ""))


def _error_call(api: str, exc: Any, *, stream: bool) -> Call:
    response: httpx.Response = exc.response
    try:
        body = response.json()
    except ValueError:
        body = {"raw": response.text}
    return Call(
        api,
        response.status_code,
        response.headers.get("request-id", ""),
        dict(response.headers),
        stream=stream,
        error=body,
    )


async def anthropic_call(
    client: Any,
    *,
    model: str,
    prompt: str,
    max_tokens: int,
    stream: bool = False,
    abort_after: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> Call:
    """``messages.create`` (or ``.stream``) with an ``anthropic.AsyncAnthropic`` client; with
    ``abort_after`` the client leaves the stream after that many content deltas."""
    import anthropic

    messages = [{"role": "user", "content": prompt}]
    extra = dict(headers or {})
    try:
        if not stream:
            raw = await client.messages.with_raw_response.create(
                model=model, max_tokens=max_tokens, messages=messages, extra_headers=extra
            )
            message = await raw.parse()
            call = Call("anthropic", raw.status_code, raw.headers.get("request-id", ""), dict(raw.headers))
            _anthropic_usage(call, message.usage)
            return call
        async with client.messages.stream(
            model=model, max_tokens=max_tokens, messages=messages, extra_headers=extra
        ) as events:
            response = events.response
            call = Call(
                "anthropic",
                response.status_code,
                response.headers.get("request-id", ""),
                dict(response.headers),
                stream=True,
            )
            async for event in events:
                if event.type == "content_block_delta":
                    call.deltas += 1
                    if abort_after is not None and call.deltas >= abort_after:
                        call.aborted = True
                        return call  # leaving the block closes the connection mid-stream
            _anthropic_usage(call, (await events.get_final_message()).usage)
            return call
    except anthropic.APIStatusError as exc:
        return _error_call("anthropic", exc, stream=stream)


def _anthropic_usage(call: Call, usage: Any) -> None:
    call.input_tokens = (
        usage.input_tokens + (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)
    )
    call.output_tokens = usage.output_tokens


async def openai_call(
    client: Any,
    *,
    model: str,
    prompt: str,
    max_tokens: int,
    stream: bool = False,
    abort_after: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> Call:
    """``chat.completions.create`` with an ``openai.AsyncOpenAI`` client; streams ask for the usage
    chunk; with ``abort_after`` the client closes the stream after that many content chunks."""
    import openai

    messages = [{"role": "user", "content": prompt}]
    extra = dict(headers or {})
    try:
        if not stream:
            raw = await client.chat.completions.with_raw_response.create(
                model=model, max_completion_tokens=max_tokens, messages=messages, extra_headers=extra
            )
            completion = raw.parse()  # openai: the legacy raw response parses synchronously
            call = Call("openai", raw.status_code, raw.headers.get("request-id", ""), dict(raw.headers))
            call.input_tokens = completion.usage.prompt_tokens
            call.output_tokens = completion.usage.completion_tokens
            return call
        chunks = await client.chat.completions.create(
            model=model,
            max_completion_tokens=max_tokens,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=extra,
        )
        response = chunks.response
        call = Call(
            "openai",
            response.status_code,
            response.headers.get("request-id", ""),
            dict(response.headers),
            stream=True,
        )
        try:
            async for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    call.deltas += 1
                    if abort_after is not None and call.deltas >= abort_after:
                        call.aborted = True
                        break
                if chunk.usage is not None:
                    call.input_tokens = chunk.usage.prompt_tokens
                    call.output_tokens = chunk.usage.completion_tokens
        finally:
            await chunks.close()
        return call
    except openai.APIStatusError as exc:
        return _error_call("openai", exc, stream=stream)

"""Savings benchmark for automatic prompt caching.

50 multi-turn conversations of 10 turns each share one ~3,000-token system prompt; every turn resends
the whole history with the assistant's replies appended, as chat clients do. The same workload runs
with automatic caching off and on, on ``claude-sonnet-5-5``. It reports the input cost of each
(uncached input + cache writes + cache reads, priced with ``app.ledger.pricing.cost_of``), the saving,
and what breakpoint insertion costs (``apply_breakpoints`` timed directly, µs p50/p99).

    python -m bench.caching_savings                          # an embedded gateway (simulator upstream)
    python -m bench.caching_savings --base-url URL --api-key K   # a running gateway
    python -m bench.caching_savings --direct                 # the simulator alone, breakpoints applied here

Through a gateway, caching is toggled per request with ``x-tollway-prompt-cache: off``. ``--direct``
skips the gateway: it builds the canonical request, calls ``apply_breakpoints`` itself and sends the
Anthropic JSON straight to the simulator. Results go to ``bench/results/caching.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson

from app.caching.prompt_cache import apply_breakpoints
from app.config import ModelConfig, load_catalog
from app.domain import ChatRequest, Message, Usage
from app.ledger.pricing import cost_of
from app.wire.anthropic import build_request, parse_usage

MODEL = "claude-sonnet-5-5"
RESULTS = Path(__file__).with_name("results") / "caching.json"
BYTES_PER_TOKEN = 4  # English prose; the simulator counts ceil(bytes / 4)


# ---- The workload: deterministic, realistic text ----------------------------------------------------

_PRODUCTS = ["Starter", "Team", "Business", "Enterprise", "Archive", "Edge"]
_FEATURES = [
    "versioned backups",
    "single sign-on",
    "audit logs",
    "regional replication",
    "object locking",
    "lifecycle rules",
    "bandwidth pooling",
    "private networking",
    "customer-managed keys",
    "file sharing",
    "legal hold",
    "usage alerts",
    "priority support",
    "cold-tier storage",
    "API access",
]
_PROBLEMS = [
    "my uploads stall at 99 percent",
    "the sync client keeps asking me to sign in again",
    "a shared link stopped working for our customers",
    "the invoice shows more storage than we use",
    "restoring a folder from last week fails halfway",
    "the desktop app uses all of my CPU overnight",
    "a teammate cannot see the project folder",
    "our API calls return 429 errors since Monday",
    "the mobile app shows an empty library",
    "replication to the second region is hours behind",
]
_ASKS = [
    "walk me through fixing it",
    "tell me what to check first",
    "explain why this happens",
    "suggest a workaround for today",
    "tell me whether an upgrade would help",
    "summarise what I should send to our admin",
]
_CLAUSES = [
    "before you answer, confirm which plan the customer is on",
    "when a question involves billing, quote the exact line from the invoice policy",
    "never promise a refund; explain the review process and its timeline instead",
    "prefer the shortest fix that the customer can apply without an administrator",
    "if the customer reports data loss, escalate to the incident desk immediately",
    "offer the web dashboard path before the command-line path",
    "state clearly when a feature is not included in the customer's plan",
    "ask for the client version and operating system when a sync problem is reported",
    "link the status page whenever an outage might explain the symptom",
    "keep answers under two hundred words unless the customer asks for detail",
    "use numbered steps for any procedure longer than two actions",
    "do not ask for passwords, recovery codes or full card numbers",
    "mention the retention period whenever deletion or restoration comes up",
    "explain rate limits with the concrete numbers of the customer's plan",
]
_FILLER = [
    "The customer has been with us for {n} months and usually contacts support by chat.",
    "Their workspace holds about {n} gigabytes across {m} folders shared with {k} people.",
    "They mentioned that the problem started after the update to version 4.{n}.",
    "Earlier today they tried restarting the client, which did not change anything.",
    "Their administrator is on leave until next week, so they cannot change settings.",
    "They need the files for a presentation in {n} hours and are understandably worried.",
    "The account uses single sign-on through their company directory.",
    "They have {k} devices connected and the issue appears on all of them.",
]


def _fill(rng: random.Random, template: str) -> str:
    return template.format(n=rng.randint(2, 60), m=rng.randint(3, 400), k=rng.randint(2, 40))


def system_prompt(tokens: int, run_id: str) -> str:
    """A support assistant's system prompt of about ``tokens`` tokens (same text for every run but
    its first line, which keeps one run's cache entries from serving the next run)."""
    rng = random.Random(3000)
    parts = [
        f"Session {run_id}.",
        "You are Nova, the support assistant of Northwind Cloud Storage. You help customers of every plan "
        "solve problems with uploads, sync, sharing, restores, billing and the API. Be precise and kind.",
        "## Rules",
    ]
    target = tokens * BYTES_PER_TOKEN
    rule = 1
    while sum(len(p) + 1 for p in parts) < target * 0.45:
        parts.append(f"{rule}. {rng.choice(_CLAUSES).capitalize()}; {rng.choice(_CLAUSES)}.")
        rule += 1
    parts.append("## Plans")
    while sum(len(p) + 1 for p in parts) < target * 0.8:
        plan = rng.choice(_PRODUCTS)
        features = ", ".join(rng.sample(_FEATURES, 4))
        parts.append(
            f"- {plan} ({rng.randint(2, 90)} USD per user per month, {rng.randint(1, 50)} TB pooled): "
            f"includes {features}; API limit {rng.randint(5, 200) * 10} requests per minute."
        )
    parts.append("## Known issues")
    while sum(len(p) + 1 for p in parts) < target:
        parts.append(
            f"- When {rng.choice(_PROBLEMS)}, {rng.choice(_CLAUSES)}. {_fill(rng, rng.choice(_FILLER))}"
        )
    return "\n".join(parts)


def user_turn(rng: random.Random) -> str:
    sentences = [f"Hi, I'm on the {rng.choice(_PRODUCTS)} plan and {rng.choice(_PROBLEMS)}."]
    sentences += [_fill(rng, rng.choice(_FILLER)) for _ in range(rng.randint(1, 8))]
    sentences.append(f"Could you {rng.choice(_ASKS)}?")
    return " ".join(sentences)


# ---- Upstreams --------------------------------------------------------------------------------------


@dataclass
class Turn:
    reply: str
    usage: Usage
    seconds: float


class Upstream(Protocol):
    async def send(self, system: str, messages: list[dict[str, Any]], caching: bool) -> Turn: ...


def canonical(system: str, messages: list[dict[str, Any]], max_tokens: int) -> ChatRequest:
    """The canonical request the gateway's Anthropic parser builds from this body."""
    return ChatRequest(
        model=MODEL,
        messages=[Message(m["role"], [{"type": "text", "text": m["content"]}]) for m in messages],
        max_tokens=max_tokens,
        client_format="anthropic",
        system=[{"type": "text", "text": system}],
    )


def _reply_text(data: dict[str, Any]) -> str:
    return "".join(b.get("text", "") for b in data["content"] if b.get("type") == "text")


class GatewayUpstream:
    """A running Tollway gateway, called like any Anthropic client would."""

    def __init__(self, client: httpx.AsyncClient, api_key: str, output_tokens: int) -> None:
        self.client = client
        self.api_key = api_key
        self.output_tokens = output_tokens

    async def send(self, system: str, messages: list[dict[str, Any]], caching: bool) -> Turn:
        headers = {
            "x-api-key": self.api_key,
            "anthropic-version": "2023-06-01",
            "x-sim-output-tokens": str(self.output_tokens),
        }
        if not caching:
            headers["x-tollway-prompt-cache"] = "off"
        body = {"model": MODEL, "max_tokens": 1024, "system": system, "messages": messages}
        started = time.perf_counter()
        response = await self.client.post("/v1/messages", content=orjson.dumps(body), headers=headers)
        seconds = time.perf_counter() - started
        response.raise_for_status()
        served = response.headers.get("x-tollway-served-model")
        if served not in (None, MODEL):
            raise RuntimeError(f"the gateway served {served}, not {MODEL}")
        data = response.json()
        return Turn(_reply_text(data), parse_usage(data["usage"]), seconds)


class DirectUpstream:
    """The simulator without a gateway: breakpoints are applied here, as the gateway would."""

    def __init__(self, client: httpx.AsyncClient, model: ModelConfig, output_tokens: int) -> None:
        self.client = client
        self.model = model
        self.output_tokens = output_tokens

    async def send(self, system: str, messages: list[dict[str, Any]], caching: bool) -> Turn:
        req = canonical(system, messages, 1024)
        if caching:
            apply_breakpoints(req, self.model, ttl="5m")
        body = build_request(req, MODEL, stream=False)
        headers = {
            "x-api-key": "sim",
            "anthropic-version": "2023-06-01",
            "x-sim-output-tokens": str(self.output_tokens),
        }
        started = time.perf_counter()
        response = await self.client.post("/v1/messages", content=orjson.dumps(body), headers=headers)
        seconds = time.perf_counter() - started
        response.raise_for_status()
        data = response.json()
        return Turn(_reply_text(data), parse_usage(data["usage"]), seconds)


# ---- Running the workload ---------------------------------------------------------------------------


@dataclass
class Totals:
    usages: list[Usage] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    requests: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)

    def add(self, system: str, messages: list[dict[str, Any]], turn: Turn) -> None:
        self.usages.append(turn.usage)
        self.seconds.append(turn.seconds)
        self.requests.append((system, [dict(m) for m in messages]))

    def summary(self, model: ModelConfig) -> dict[str, Any]:
        """Input side only: output is the same with and without caching."""
        cost = Decimal(0)
        uncached = Decimal(0)
        for u in self.usages:
            priced = cost_of(
                model,
                Usage(
                    u.input_tokens, 0, u.cache_write_5m_tokens, u.cache_write_1h_tokens, u.cache_read_tokens
                ),
            )
            cost += priced.total
            uncached += priced.uncached
        return {
            "requests": len(self.usages),
            "prompt_tokens": sum(u.prompt_tokens for u in self.usages),
            "uncached_input_tokens": sum(u.input_tokens for u in self.usages),
            "cache_write_5m_tokens": sum(u.cache_write_5m_tokens for u in self.usages),
            "cache_write_1h_tokens": sum(u.cache_write_1h_tokens for u in self.usages),
            "cache_read_tokens": sum(u.cache_read_tokens for u in self.usages),
            "input_cost_usd": str(cost),
            "input_cost_if_uncached_usd": str(uncached),
            "latency_ms_p50": round(statistics.median(self.seconds) * 1000, 2),
        }


async def run_workload(
    upstream: Upstream, *, caching: bool, system: str, conversations: int, turns: int, concurrency: int
) -> Totals:
    totals = Totals()
    gate = asyncio.Semaphore(concurrency)

    async def conversation(index: int) -> None:
        rng = random.Random(index)
        messages: list[dict[str, Any]] = []
        async with gate:
            for _ in range(turns):
                messages.append({"role": "user", "content": user_turn(rng)})
                turn = await upstream.send(system, messages, caching)
                totals.add(system, messages, turn)
                messages.append({"role": "assistant", "content": turn.reply or "(no text)"})

    await asyncio.gather(*(conversation(i) for i in range(conversations)))
    return totals


def time_breakpoints(
    requests: list[tuple[str, list[dict[str, Any]]]], model: ModelConfig, repeat: int
) -> dict[str, Any]:
    """``apply_breakpoints`` on the benchmark's own requests, each timed alone on a fresh copy."""
    samples: list[float] = []
    for system, messages in requests:
        template = canonical(system, messages, 1024)
        for _ in range(repeat):
            req = copy.deepcopy(template)
            started = time.perf_counter_ns()
            apply_breakpoints(req, model, ttl="5m")
            samples.append((time.perf_counter_ns() - started) / 1000)
    samples.sort()
    return {
        "samples": len(samples),
        "p50_us": round(samples[len(samples) // 2], 2),
        "p99_us": round(samples[int(len(samples) * 0.99)], 2),
        "max_us": round(samples[-1], 2),
    }


def long_history_breakpoints(system: str, model: ModelConfig) -> dict[str, Any]:
    """The same timing on a 200-message conversation: sizing stops at the minimum, so it stays flat."""
    rng = random.Random(7)
    messages: list[dict[str, Any]] = []
    for _ in range(100):
        messages.append({"role": "user", "content": user_turn(rng)})
        messages.append({"role": "assistant", "content": user_turn(rng)})
    messages.append({"role": "user", "content": user_turn(rng)})
    return time_breakpoints([(system, messages)], model, repeat=500)


# ---- Gateway / simulator plumbing -------------------------------------------------------------------


@contextmanager
def serve(app: Any) -> Any:
    """Serve an ASGI app on a free loopback port in a background thread; yield its base URL."""
    import socket

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    class Server(uvicorn.Server):
        def install_signal_handlers(self) -> None:
            pass

    server = Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server failed to start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def embedded_gateway(stack: ExitStack) -> tuple[str, str]:
    """Start Tollway in-process on embedded defaults (SQLite, no Redis, simulator upstream)."""
    from app.config import Settings
    from app.main import create_app

    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tollway-bench-")))
    key = "tw-bench-" + uuid.uuid4().hex
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{workdir / 'tollway.db'}",
        redis_url=None,
        simulator="always",
        simulator_url=embedded_simulator(stack),
        dev_key=key,
        spool_dir=workdir / "spool",
        log_level="WARNING",
    )
    return stack.enter_context(serve(create_app(settings))), key


def embedded_simulator(stack: ExitStack) -> str:
    from app.simulator import SimulatorConfig, create_simulator_app

    catalog = load_catalog(None)
    config = SimulatorConfig()

    def min_cache_tokens(model_id: str) -> int:
        name = catalog.resolve_model(model_id)
        return catalog.models[name].min_cache_tokens if name else 1024

    config.min_cache_tokens = min_cache_tokens
    return str(stack.enter_context(serve(create_simulator_app(config))))


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def start_target(args: argparse.Namespace, stack: ExitStack) -> tuple[str, str, str]:
    """(mode, base URL, API key) of what the benchmark talks to, starting it in-process if needed."""
    if args.direct:
        return "direct", args.base_url or embedded_simulator(stack), ""
    if args.base_url:
        return "gateway", args.base_url, args.api_key
    try:
        base_url, api_key = embedded_gateway(stack)
    except Exception as exc:
        raise SystemExit(
            f"could not start an embedded gateway ({exc!r}); pass --base-url/--api-key of a running "
            "one, or --direct to measure against the simulator alone"
        ) from exc
    return "gateway (embedded)", base_url, api_key


async def run_both(args: argparse.Namespace, mode: str, base_url: str, api_key: str) -> dict[str, Any]:
    model = load_catalog(None).models[MODEL]
    system = system_prompt(args.system_tokens, run_id=uuid.uuid4().hex[:12])
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        upstream: Upstream = (
            DirectUpstream(client, model, args.output_tokens)
            if args.direct
            else GatewayUpstream(client, api_key, args.output_tokens)
        )
        workload = {"conversations": args.conversations, "turns": args.turns, "concurrency": args.concurrency}
        off = await run_workload(upstream, caching=False, system=system, **workload)
        on = await run_workload(upstream, caching=True, system=system, **workload)

    off_summary, on_summary = off.summary(model), on.summary(model)
    saving = 1 - Decimal(on_summary["input_cost_usd"]) / Decimal(off_summary["input_cost_usd"])
    return {
        "benchmark": "caching_savings",
        "command": "python -m bench.caching_savings " + " ".join(sys.argv[1:]),
        "mode": mode,
        "machine": machine(),
        "model": MODEL,
        "prices_usd_per_mtok": {k: str(v) for k, v in model.prices.model_dump(exclude={"bands"}).items()},
        "conversations": args.conversations,
        "turns": args.turns,
        # As the simulator counts tokens (bytes / 4, about what Claude's tokenizer gives for English).
        "system_prompt_tokens": (len(system.encode()) + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN,
        "caching_off": off_summary,
        "caching_on": on_summary,
        "input_cost_saving_pct": round(float(saving) * 100, 2),
        "apply_breakpoints_us": time_breakpoints(on.requests, model, repeat=args.repeat),
        "apply_breakpoints_us_200_messages": long_history_breakpoints(system, model),
    }


def report(result: dict[str, Any]) -> str:
    off, on = result["caching_off"], result["caching_on"]
    bp, long = result["apply_breakpoints_us"], result["apply_breakpoints_us_200_messages"]
    off_cost, on_cost = Decimal(off["input_cost_usd"]), Decimal(on["input_cost_usd"])
    return "\n".join(
        [
            f"{result['conversations']} conversations x {result['turns']} turns on {result['model']} "
            f"({result['mode']}), system prompt ~{result['system_prompt_tokens']} tokens",
            f"{'':22}{'caching off':>14}{'caching on':>14}",
            f"{'prompt tokens':22}{off['prompt_tokens']:>14,}{on['prompt_tokens']:>14,}",
            f"{'  uncached input':22}{off['uncached_input_tokens']:>14,}{on['uncached_input_tokens']:>14,}",
            f"{'  cache writes':22}{off['cache_write_5m_tokens'] + off['cache_write_1h_tokens']:>14,}"
            f"{on['cache_write_5m_tokens'] + on['cache_write_1h_tokens']:>14,}",
            f"{'  cache reads':22}{off['cache_read_tokens']:>14,}{on['cache_read_tokens']:>14,}",
            f"{'input cost (USD)':22}{off_cost:>14.4f}{on_cost:>14.4f}",
            f"{'latency p50 (ms)':22}{off['latency_ms_p50']:>14}{on['latency_ms_p50']:>14}",
            f"input cost saving: {result['input_cost_saving_pct']}%",
            f"apply_breakpoints: p50 {bp['p50_us']} us, p99 {bp['p99_us']} us ({bp['samples']} samples); "
            f"200-message history: p50 {long['p50_us']} us, p99 {long['p99_us']} us",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-url", help="a running gateway (or, with --direct, a running simulator)")
    parser.add_argument("--api-key", help="a Tollway key for --base-url")
    parser.add_argument("--direct", action="store_true", help="call the simulator directly, no gateway")
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--system-tokens", type=int, default=3000)
    parser.add_argument("--output-tokens", type=int, default=150, help="reply length asked of the simulator")
    parser.add_argument("--concurrency", type=int, default=8, help="conversations in flight at once")
    parser.add_argument("--repeat", type=int, default=20, help="timings of apply_breakpoints per request")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.base_url and not args.direct and not args.api_key:
        parser.error("--base-url needs --api-key (a Tollway key)")

    with ExitStack() as stack:
        mode, base_url, api_key = start_target(args, stack)
        result = asyncio.run(run_both(args, mode, base_url, api_key))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(report(result))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()

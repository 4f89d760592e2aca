"""Cost of a mixed workload routed by ``auto`` vs always the large model vs always the medium model.

The workload (``bench/routing_workload.jsonl``, 46 requests, written separately from the evaluation
set the classifier was tuned on) models the traffic an internal LLM gateway sees from back-office
services and internal tools:

    classification 35%  ticket triage (few-shot prompt), comment moderation, sentiment, lead scoring
    extraction     26%  invoices, CRM records, logs, a lease clause, calendar events
    chat           17%  internal assistants and customer-facing support bots
    code           13%  developer help: write, review, debug
    reasoning       9%  analysis questions: queueing, probability, metric interpretation

Automated pipelines (triage, moderation, tagging, document extraction) issue most requests because they
run on every ticket, comment or document; people chatting with an assistant or asking for code are
fewer; genuinely hard multi-step reasoning is a small minority. Per-class costs are reported too, so
the comparison can be re-weighted for another mix.

Each request is sent once per strategy — ``auto``, ``claude-opus-5-5``, ``claude-sonnet-5-5`` — and
costed with ``app.ledger.pricing.cost_of`` on the usage of the model that served it
(``x-tollway-served-model``). Output length is deterministic: the labelled task's expected length
(``app.routing.router.EXPECTED_OUTPUT``, capped by ``max_tokens``), requested from the simulator with
``x-sim-output-tokens``.

    python -m bench.routing_cost                               # embedded gateway, simulator upstream
    python -m bench.routing_cost --base-url URL --api-key KEY  # a running gateway
    python -m bench.routing_cost --offline                     # Router.plan + simulator counting

``--offline`` routes with ``Router.plan`` in-process and counts input tokens with the simulator's rules
(``app.simulator.prompt_cache.analyse_anthropic_prompt``); it cannot observe escalations. Results go to
the ``cost`` (``cost_offline``) section of ``bench/results/routing.json``. Target: auto ≤ 30% of
always-large, with no request routed below its labelled tier.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from app.config import TIER_ORDER, Catalog, load_catalog
from app.domain import Usage
from app.ledger.pricing import cost_of
from app.routing.router import EXPECTED_OUTPUT
from app.simulator.prompt_cache import analyse_anthropic_prompt
from bench.routing_eval import (
    PRINCIPAL,
    load_items,
    machine,
    make_router,
    to_chat_request,
    update_results,
)

WORKLOAD_FILE = Path(__file__).with_name("routing_workload.jsonl")
LARGE, MEDIUM = "claude-opus-5-5", "claude-sonnet-5-5"
ORACLE = "auto+label"  # auto told the labelled task class (x-tollway-task): a perfect classifier
STRATEGIES = ("auto", ORACLE, LARGE, MEDIUM)
TARGET_RATIO = Decimal("0.30")
# Other mixes to re-weight the per-class average costs by (classification, extraction, chat, code,
# reasoning): how the auto/large ratio depends on the workload.
MIXES: dict[str, dict[str, float]] = {
    "pipelines-heavy": {
        "classification": 0.50,
        "extraction": 0.30,
        "chat": 0.10,
        "code": 0.07,
        "reasoning": 0.03,
    },
    "no-reasoning": {
        "classification": 0.38,
        "extraction": 0.27,
        "chat": 0.20,
        "code": 0.15,
        "reasoning": 0.0,
    },
    "assistant-heavy": {
        "classification": 0.15,
        "extraction": 0.10,
        "chat": 0.35,
        "code": 0.30,
        "reasoning": 0.10,
    },
}


@dataclass
class Tally:
    total: Decimal = Decimal(0)
    by_task: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    models: Counter[str] = field(default_factory=Counter)
    escalations: int = 0
    below_label: list[str] = field(default_factory=list)
    above_label: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, item: dict[str, Any], model: str, cost: Decimal, catalog: Catalog) -> None:
        self.total += cost
        self.by_task[item["task"]] += cost
        self.models[model] += 1
        tier = TIER_ORDER[catalog.models[model].tier]
        if tier < TIER_ORDER[item["tier"]]:
            self.below_label.append(item["id"])
        elif tier > TIER_ORDER[item["tier"]]:
            self.above_label += 1

    def summary(self, requests: int) -> dict[str, Any]:
        return {
            "total_cost_usd": str(self.total),
            "cost_by_task_usd": {task: str(cost) for task, cost in sorted(self.by_task.items())},
            "share_by_model": {m: round(n / requests, 3) for m, n in self.models.most_common()},
            "escalations": self.escalations,
            "below_label": self.below_label,
            "above_label": self.above_label,
            "errors": self.errors,
        }


def output_tokens(item: dict[str, Any]) -> int:
    return min(EXPECTED_OUTPUT[item["task"]], item["request"].get("max_tokens") or 4096)


def anthropic_body(request: dict[str, Any], model: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, **{k: v for k, v in request.items() if k != "response_format"}}
    fmt = request.get("response_format")
    if fmt and fmt.get("type") == "json_schema":
        body["output_config"] = {"format": {"type": "json_schema", "schema": fmt["schema"]}}
    return body


# ---- offline ----------------------------------------------------------------------------------------


def run_offline(items: list[dict[str, Any]], catalog: Catalog) -> dict[str, Tally]:
    router = make_router(catalog)
    tallies = {strategy: Tally() for strategy in STRATEGIES}
    for item in items:
        input_tokens = analyse_anthropic_prompt(anthropic_body(item["request"], "auto")).total_tokens
        usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens(item))
        for strategy in STRATEGIES:
            if strategy == "auto":
                model = router.plan(to_chat_request(item["request"]), PRINCIPAL).chosen.name
            elif strategy == ORACLE:
                model = router.plan(to_chat_request(item["request"]), PRINCIPAL, task_hint=item["task"]).chosen.name
            else:
                model = strategy
            tallies[strategy].add(item, model, cost_of(catalog.models[model], usage).total, catalog)
    return tallies


# ---- through a gateway -------------------------------------------------------------------------------


def _usage(body: dict[str, Any]) -> Usage:
    u = body.get("usage") or {}
    creation = u.get("cache_creation") or {}
    write_1h = int(creation.get("ephemeral_1h_input_tokens") or 0)
    writes = int(u.get("cache_creation_input_tokens") or 0)
    return Usage(
        input_tokens=int(u.get("input_tokens") or 0),
        output_tokens=int(u.get("output_tokens") or 0),
        cache_write_5m_tokens=max(writes - write_1h, 0),
        cache_write_1h_tokens=write_1h,
        cache_read_tokens=int(u.get("cache_read_input_tokens") or 0),
    )


async def run_gateway(
    items: list[dict[str, Any]], catalog: Catalog, base_url: str, api_key: str, concurrency: int
) -> dict[str, Tally]:
    tallies = {strategy: Tally() for strategy in STRATEGIES}
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        probe = await client.post(
            "/v1/messages",
            json={"model": MEDIUM, "max_tokens": 5, "messages": [{"role": "user", "content": "ping"}]},
            headers={"x-api-key": api_key, "anthropic-version": "2023-06-01"},
        )
        if probe.status_code != 200:
            raise SystemExit(
                f"the gateway at {base_url} cannot serve a request (HTTP {probe.status_code}: "
                f"{probe.text[:300]}); fix it, or run with --offline"
            )

        async def one(item: dict[str, Any], strategy: str) -> None:
            headers = {
                "x-api-key": api_key,
                "anthropic-version": "2023-06-01",
                "x-sim-output-tokens": str(output_tokens(item)),
            }
            model = strategy
            if strategy == ORACLE:
                model, headers["x-tollway-task"] = "auto", item["task"]
            async with limit:
                response = await client.post(
                    "/v1/messages", json=anthropic_body(item["request"], model), headers=headers
                )
            tally = tallies[strategy]
            if response.status_code != 200:
                tally.errors.append(f"{item['id']}: HTTP {response.status_code} {response.text[:200]}")
                return
            body = response.json()
            served = response.headers.get("x-tollway-served-model") or body.get("model", strategy)
            name = catalog.resolve_model(served) or served
            if name not in catalog.models:
                tally.errors.append(f"{item['id']}: unknown served model {served!r}")
                return
            tally.escalations += int(response.headers.get("x-tollway-escalations") or 0)
            tally.add(item, name, cost_of(catalog.models[name], _usage(body)).total, catalog)

        await asyncio.gather(*(one(item, s) for item in items for s in STRATEGIES))
    return tallies


def embedded_gateway(stack: ExitStack) -> tuple[str, str]:
    """Tollway in-process on embedded defaults (SQLite, no Redis) with a simulator on its own port.

    The simulator gets its own server (and ``simulator_url``) because the gateway's default simulator
    address is derived from ``TOLLWAY_PORT``, which is not the free port the bench serves on.
    """
    import tempfile
    import uuid

    from app.config import Settings
    from app.main import create_app
    from bench.caching_savings import embedded_simulator, serve

    simulator_url = embedded_simulator(stack)
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tollway-routing-")))
    key = "tw-bench-" + uuid.uuid4().hex
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{workdir / 'tollway.db'}",
        redis_url=None,
        simulator="always",
        simulator_url=simulator_url,
        dev_key=key,
        spool_dir=workdir / "spool",
        log_level="WARNING",
    )
    return stack.enter_context(serve(create_app(settings))), key


# ---- report -----------------------------------------------------------------------------------------


def reweighted(items: list[dict[str, Any]], tallies: dict[str, Tally]) -> dict[str, Any]:
    """The auto/large ratio under other mixes, from this run's average cost per request and class."""
    counts = Counter(item["task"] for item in items)
    out: dict[str, Any] = {}
    for name, mix in MIXES.items():
        totals = {}
        for strategy in ("auto", LARGE):
            by_task = tallies[strategy].by_task
            totals[strategy] = sum(
                (by_task[task] / counts[task] * Decimal(str(share)) for task, share in mix.items() if counts[task]),
                Decimal(0),
            )
        ratio = totals["auto"] / totals[LARGE] if totals[LARGE] else Decimal(0)
        out[name] = {"mix": mix, "auto_vs_large": round(float(ratio), 4)}
    return out


def summarize(items: list[dict[str, Any]], tallies: dict[str, Tally], mode: str) -> dict[str, Any]:
    n = len(items)
    auto, oracle, large, medium = (tallies[s] for s in STRATEGIES)
    ratio_large = auto.total / large.total if large.total else Decimal(0)
    ratio_oracle = oracle.total / large.total if large.total else Decimal(0)
    large_share = {
        task: round(float(cost / large.total), 4) if large.total else 0.0 for task, cost in large.by_task.items()
    }
    ratio_medium = auto.total / medium.total if medium.total else Decimal(0)
    mix = Counter(item["task"] for item in items)
    return {
        "benchmark": "routing_cost",
        "mode": mode,
        "command": "python -m bench.routing_cost " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "workload": {
            "file": WORKLOAD_FILE.name,
            "requests": n,
            "mix": {task: round(count / n, 3) for task, count in mix.most_common()},
        },
        "strategies": {s: tallies[s].summary(n) for s in STRATEGIES},
        "auto_vs_large": round(float(ratio_large), 4),
        "auto_vs_medium": round(float(ratio_medium), 4),
        # The same routing with the labelled task class given: what a perfect classifier would cost.
        # No router that keeps every request at or above its labelled tier goes much below this.
        "labelled_vs_large": round(float(ratio_oracle), 4),
        "large_spend_share_by_task": large_share,
        "target": f"auto <= {TARGET_RATIO:.0%} of always-{LARGE}, 0 requests below their labelled tier",
        "target_met": ratio_large <= TARGET_RATIO and not auto.below_label and not auto.errors,
        "other_mixes": reweighted(items, tallies),
        "note": (
            "offline: routed with Router.plan, input tokens by the simulator's counting rules, output = the "
            "labelled task's expected length; escalations are not simulated"
            if mode == "offline"
            else "cost of the answer returned (served model's usage); attempts abandoned by an escalation "
            "are not included — see the escalations count"
        ),
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"routing cost benchmark ({result['mode']}): {result['workload']['requests']} requests, "
        f"mix {result['workload']['mix']}"
    ]
    for strategy, s in result["strategies"].items():
        lines.append(
            f"  {strategy:<18} total ${Decimal(s['total_cost_usd']):.6f}  escalations {s['escalations']}  "
            f"below label {len(s['below_label'])}  above label {s['above_label']}"
            + (f"  ERRORS {len(s['errors'])}" if s["errors"] else "")
        )
        lines.append(f"  {'':<18} models {s['share_by_model']}")
    lines.append(
        f"auto / always-{LARGE}: {result['auto_vs_large']:.1%}   auto / always-{MEDIUM}: {result['auto_vs_medium']:.1%}"
    )
    lines.append(
        f"auto told the labelled task ({ORACLE}, a perfect classifier) / always-{LARGE}: "
        f"{result['labelled_vs_large']:.1%}"
    )
    lines.append(
        f"share of always-{LARGE} spend by task: "
        + ", ".join(f"{task} {share:.1%}" for task, share in sorted(result["large_spend_share_by_task"].items()))
    )
    lines.append(f"target ({result['target']}): {'met' if result['target_met'] else 'NOT met'}")
    for name, other in result["other_mixes"].items():
        lines.append(f"  re-weighted to {name} {other['mix']}: auto / always-{LARGE} {other['auto_vs_large']:.1%}")
    lines.append(f"note: {result['note']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--offline", action="store_true", help="no gateway: Router.plan + simulator counting")
    parser.add_argument("--base-url", help="a running gateway (default: start one in-process)")
    parser.add_argument("--api-key", default="", help="a team key of that gateway")
    parser.add_argument("--file", type=Path, default=WORKLOAD_FILE)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()

    catalog = load_catalog(None)
    items = load_items(args.file)
    if args.offline:
        mode, tallies = "offline", run_offline(items, catalog)
    else:
        with ExitStack() as stack:
            if args.base_url:
                mode, base_url, api_key = "gateway", args.base_url, args.api_key
            else:
                mode = "gateway (embedded, simulator upstream)"
                base_url, api_key = embedded_gateway(stack)
            tallies = asyncio.run(run_gateway(items, catalog, base_url, api_key, args.concurrency))
    result = summarize(items, tallies, mode)
    print(report(result))
    if not args.no_save and args.file == WORKLOAD_FILE:
        update_results("cost_offline" if args.offline else "cost", result)
    sys.exit(0 if result["target_met"] else 1)


if __name__ == "__main__":
    main()

"""Tollway's benchmark, one command: ``python -m bench.run`` (full) or ``python -m bench.run --smoke``.

The gateway benchmark (``bench/gateway_bench.py``) starts the provider simulator, the gateway (one
worker, then two) with real Redis and PostgreSQL, and a load generator, each in its own process,
pinned where the machine allows; it calls the simulator directly and through the gateway in
interleaved rounds, and reports what the gateway adds: latency, time to first token, time between
stream events, CPU per request, memory, and scaling to two workers.

* ``--smoke``: a short variant (about 1.5 minutes) that CI runs to keep the benchmark working. It
  reports and never asserts timings; it fails only when requests fail or a process breaks.
* ``--all``: also run the pillar benchmarks (ledger, budgets, routing, caching) and collect their
  JSON results.
* ``--litellm``: also run the same cells against LiteLLM proxy in a throwaway virtualenv (off by
  default; see docs/benchmarks.md).

Results: ``bench/results/gateway-<timestamp>.json`` and ``gateway-latest.json`` (smoke:
``gateway-smoke-latest.json``); a full run also rewrites the generated part of
``docs/benchmarks.md`` and ``docs/benchmark-chart.png``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.gateway_bench import Plan, run
from bench.procs import ROOT

RESULTS_DIR = Path(__file__).with_name("results")

# name → (module, full-run arguments, smoke arguments, result file)
PILLARS: dict[str, tuple[str, list[str], list[str], str]] = {
    "ledger": (
        "bench.ledger_bench",
        [],
        ["--events", "5000", "--batch-sizes", "500", "--seconds", "2", "--record-calls", "20000"],
        "ledger.json",
    ),
    "budgets": ("bench.budget_bench", [], ["--seconds", "1", "--rounds", "1"], "budgets.json"),
    "routing": ("bench.routing_bench", [], ["--rounds", "20", "--no-save"], "routing.json"),
    "caching": ("bench.caching_savings", [], ["--conversations", "5", "--turns", "3"], "caching.json"),
}


def run_pillars(smoke: bool, out_dir: Path) -> dict[str, Any]:
    """Run the pillar benchmarks; in smoke mode their results go to a temporary directory, so the
    committed results of full runs stay as they are."""
    import tempfile

    collected: dict[str, Any] = {}
    if smoke:
        out_dir = Path(tempfile.mkdtemp(prefix="tollway-pillars-"))
    for name, (module, full_args, smoke_args, result_file) in PILLARS.items():
        args = smoke_args if smoke else full_args
        if smoke:  # keep the committed results of a full run: write the smoke ones elsewhere
            if "--no-save" not in args:
                flag = "--out" if name == "caching" else "--output"
                args = [*args, flag, str(out_dir / f"smoke-{result_file}")]
        print(f"== pillar benchmark: python -m {module} {' '.join(args)}", flush=True)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=1800
        )
        entry: dict[str, Any] = {
            "command": f"python -m {module} {' '.join(args)}",
            "exit_code": done.returncode,
            "seconds": round(time.perf_counter() - started, 1),
        }
        if done.returncode != 0:
            entry["stderr_tail"] = done.stderr.strip().splitlines()[-10:]
            print(f"   failed ({done.returncode}): {entry['stderr_tail'][-1:]}", flush=True)
        path = out_dir / (f"smoke-{result_file}" if smoke else result_file)
        if path.exists() and done.returncode == 0:
            try:
                entry["results"] = json.loads(path.read_text())
            except ValueError:
                entry["results_file"] = str(path)
        collected[name] = entry
    return collected


def build_plan(args: argparse.Namespace) -> Plan:
    plan = Plan.smoke_plan() if args.smoke else Plan()
    if args.soak is not None:
        plan.soak_s = args.soak
    if args.configs:
        plan.configs = args.configs
    if args.rounds:
        plan.rounds = args.rounds
    if args.no_profile:
        plan.profile = False
    if args.profile:
        plan.profile = True
    if args.profile_seconds:
        plan.profile_s = args.profile_seconds
    if args.no_scaling:
        plan.scaling = False
    if args.slow_streams is not None:
        plan.slow_streams = args.slow_streams
    if args.concurrencies:
        plan.concurrencies = args.concurrencies
        plan.counts = {c: plan.counts.get(c, 1500 if c > 8 else 300) for c in args.concurrencies}
        plan.scaling_concurrencies = [c for c in plan.scaling_concurrencies if c in plan.counts] or [max(plan.counts)]
    plan.long_streams = not args.no_long_streams
    plan.below_saturation = not args.no_below_saturation
    plan.gateway_prelude = args.gateway_prelude
    plan.litellm = args.litellm or args.litellm_only
    if args.litellm_only:
        plan.configs = []
    plan.redis_url = args.redis_url
    plan.postgres_server = args.postgres_server.rstrip("/")
    return plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="short variant for CI (reports, asserts no timing)")
    parser.add_argument("--all", action="store_true", help="also run the pillar benchmarks")
    parser.add_argument(
        "--soak",
        type=float,
        default=None,
        metavar="SECONDS",
        help="soak length (default 600; smoke 30; 0 = skip)",
    )
    parser.add_argument(
        "--slow-streams",
        type=int,
        default=None,
        metavar="N",
        help="concurrent slow streams (default 1000; smoke 200; 0 = skip)",
    )
    parser.add_argument("--configs", nargs="+", choices=["everything-on", "bare"], default=None)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per cell (default 3)")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument("--profile", action="store_true", help="profile even in --smoke")
    parser.add_argument("--profile-seconds", type=float, default=None, help="py-spy duration per load (default 20)")
    parser.add_argument("--no-scaling", action="store_true", help="skip one worker vs two")
    parser.add_argument("--litellm", action="store_true", help="also benchmark LiteLLM proxy (throwaway venv)")
    parser.add_argument(
        "--litellm-only",
        action="store_true",
        help="only the LiteLLM cells, added to the existing gateway-latest.json",
    )
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md and the chart")
    parser.add_argument("--concurrencies", type=int, nargs="+", default=None, help="override (default 1 8 32 128)")
    parser.add_argument("--no-long-streams", action="store_true", help="skip the 1,000-token streams")
    parser.add_argument("--no-below-saturation", action="store_true", help="skip the paced concurrency-32 cells")
    parser.add_argument(
        "--gateway-prelude",
        default=None,
        metavar="PYTHON",
        help="experiments: Python code run in the gateway process before `tollway serve`",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument(
        "--postgres-server",
        default="postgresql://postgres@127.0.0.1:5432",
        help="server for the throwaway database (created and dropped)",
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    plan = build_plan(args)
    pillars = run_pillars(args.smoke, args.out_dir) if args.all else None
    results = run(plan, args.out_dir, log=lambda line: print(line, flush=True))
    if pillars is not None:
        results["pillars"] = pillars

    from bench import report

    latest = args.out_dir / "gateway-latest.json"
    if args.litellm_only and latest.exists():
        lite = results["litellm"]
        results = json.loads(latest.read_text())
        results["litellm"] = lite
    data = json.dumps(results, indent=1, default=str) + "\n"
    if args.litellm_only:
        written = [latest]
    elif args.smoke:
        written = [args.out_dir / "gateway-smoke-latest.json"]
    else:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        written = [args.out_dir / f"gateway-{stamp}.json", args.out_dir / "gateway-latest.json"]
    for path in written:
        path.write_text(data)
    print("\n" + report.summary_markdown(results))
    if not args.smoke and not args.no_docs:
        for path in report.write_docs(results, ROOT / "docs"):
            print(f"wrote {path}")
    print("results: " + ", ".join(str(p) for p in written))

    failures = report.failures(results)
    for line in failures:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Routing evaluation: how well the ``auto`` route's task classifier and tier choice match labels.

``bench/routing_eval.jsonl`` holds requests, each labelled with the task class and the model tier a
careful engineer would pick for it. This runs every request through ``Router.plan`` on the shipped
catalog (``auto`` route, a team with no policy) and prints:

* task-class accuracy and the task confusion table (rows: label, columns: classifier);
* tier accuracy, the tier confusion table, and — the number that matters for honest cost savings —
  how many requests were routed **below** their labelled tier (must be 0) and how many above.

    python -m bench.routing_eval                 # the committed set
    python -m bench.routing_eval --file F.jsonl  # another set in the same format
    python -m bench.routing_eval --show-misses   # also list every mismatch with the classifier's scores

Each line: ``{"id", "task", "tier", "request": {"system"?, "messages", "tools"?, "tool_choice"?,
"response_format"?, "max_tokens"}}``; message ``content`` is a string or Anthropic content blocks.
Exit status 1 when any request is routed below its labelled tier.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from app.auth.principal import Principal
from app.config import TIER_ORDER, Catalog, load_catalog
from app.routing.classifier import TASK_CLASSES
from app.routing.corpus import to_chat_request
from app.routing.health import DeploymentHealth
from app.routing.router import Router

EVAL_FILE = Path(__file__).with_name("routing_eval.jsonl")
RESULTS_FILE = Path(__file__).parent / "results" / "routing.json"
TIERS = ("small", "medium", "large")
PRINCIPAL = Principal(team_id="bench", team_name="bench", key_id="bench", key_prefix="tw-bench")


def load_items(path: Path) -> list[dict[str, Any]]:
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                items.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise SystemExit(f"{path}:{number}: not JSON: {exc}") from exc
    return items


def update_results(section: str, data: dict[str, Any], path: Path = RESULTS_FILE) -> None:
    """Write one section (eval, latency, cost) of ``bench/results/routing.json``, keeping the others."""
    results: dict[str, Any] = {}
    if path.exists():
        try:
            results = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError:
            results = {}
    results[section] = data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")


def machine() -> dict[str, Any]:
    cpu = platform.machine()
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
    }


def make_router(catalog: Catalog | None = None) -> Router:
    return Router(catalog or load_catalog(None), DeploymentHealth())


def evaluate(items: list[dict[str, Any]], router: Router, route: str = "auto") -> dict[str, Any]:
    task_confusion: Counter[tuple[str, str]] = Counter()
    tier_confusion: Counter[tuple[str, str]] = Counter()
    misses: list[dict[str, Any]] = []
    below: list[str] = []
    above: list[str] = []
    for item in items:
        req = to_chat_request(item["request"], route)
        plan = router.plan(req, PRINCIPAL)
        task = plan.task or "?"
        tier = plan.chosen.tier
        task_confusion[(item["task"], task)] += 1
        tier_confusion[(item["tier"], tier)] += 1
        if TIER_ORDER[tier] < TIER_ORDER[item["tier"]]:
            below.append(item["id"])
        elif TIER_ORDER[tier] > TIER_ORDER[item["tier"]]:
            above.append(item["id"])
        if task != item["task"] or tier != item["tier"]:
            features = plan.classification.features if plan.classification else {}
            misses.append(
                {
                    "id": item["id"],
                    "label": f"{item['task']}/{item['tier']}",
                    "routed": f"{task}/{tier}",
                    "model": plan.chosen.name,
                    "scores": features.get("scores"),
                    "upward_from": features.get("upward_from"),
                }
            )
    total = len(items)
    task_correct = sum(n for (label, got), n in task_confusion.items() if label == got)
    tier_correct = sum(n for (label, got), n in tier_confusion.items() if label == got)
    return {
        "requests": total,
        "task_accuracy": task_correct / total if total else 0.0,
        "tier_accuracy": tier_correct / total if total else 0.0,
        "below_label": below,
        "above_label": above,
        "task_confusion": {f"{a}->{b}": n for (a, b), n in sorted(task_confusion.items())},
        "tier_confusion": {f"{a}->{b}": n for (a, b), n in sorted(tier_confusion.items())},
        "labels": dict(Counter(item["task"] for item in items)),
        "misses": misses,
    }


def _table(confusion: dict[str, int], names: tuple[str, ...], title: str) -> str:
    short = {name: name[:5] for name in names}
    width = max(len(n) for n in names) + 2
    lines = [
        f"{title} (rows: label, columns: routed)",
        " " * width + "".join(f"{short[n]:>7}" for n in names),
    ]
    for label in names:
        row = [confusion.get(f"{label}->{got}", 0) for got in names]
        if sum(row):
            lines.append(f"{label:<{width}}" + "".join(f"{n or '.':>7}" for n in row))
    return "\n".join(lines)


def report(result: dict[str, Any], *, show_misses: bool) -> str:
    n = result["requests"]
    tier_names = TIERS
    lines = [
        f"routing eval: {n} requests",
        f"task accuracy: {result['task_accuracy']:.1%}    tier accuracy: {result['tier_accuracy']:.1%}",
        f"routed BELOW labelled tier: {len(result['below_label'])}"
        + (f"  {result['below_label']}" if result["below_label"] else ""),
        f"routed above labelled tier: {len(result['above_label'])}",
        "",
        _table(result["task_confusion"], TASK_CLASSES, "task classes"),
        "",
        _table(result["tier_confusion"], tier_names, "tiers"),
    ]
    if show_misses and result["misses"]:
        lines += ["", "mismatches:"]
        for miss in result["misses"]:
            lines.append(
                f"  {miss['id']:<10} label={miss['label']:<22} routed={miss['routed']:<22} "
                f"upward_from={miss['upward_from']} scores={miss['scores']}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--file", type=Path, default=EVAL_FILE)
    parser.add_argument("--route", default="auto")
    parser.add_argument("--show-misses", action="store_true")
    parser.add_argument("--no-save", action="store_true", help="do not update bench/results/routing.json")
    args = parser.parse_args()
    result = evaluate(load_items(args.file), make_router(), args.route)
    print(report(result, show_misses=args.show_misses))
    if not args.no_save and args.file == EVAL_FILE:
        update_results(
            "eval",
            {k: v for k, v in result.items() if k != "misses"}
            | {
                "mismatches": [f"{m['id']}: {m['label']} -> {m['routed']}" for m in result["misses"]],
                "command": "python -m bench.routing_eval",
            },
        )
    sys.exit(1 if result["below_label"] else 0)


if __name__ == "__main__":
    main()

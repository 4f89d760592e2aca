"""``tollway routing train|report|split``: build the tier model and measure it on the corpus."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from app.routing.corpus import CORPUS_DIR, load_items, split_of


def register(subparsers: Any) -> None:
    routing = subparsers.add_parser("routing", help="train and evaluate the learned tier model")
    sub = routing.add_subparsers(dest="routing_command", required=True)

    train = sub.add_parser("train", help="build app/routing/model/tier-model-v1.{json,npz} (train + validation)")
    _corpus_option(train)
    train.add_argument("--out", type=Path, default=None, help="directory for the artefact (default: app/routing/model)")
    train.set_defaults(func=_cmd_train)

    report = sub.add_parser("report", help="below/above label and cost vs the oracle, per quality policy")
    _corpus_option(report)
    report.add_argument("--split", choices=("test", "cv"), default="test", help="held-out test split or 5-fold CV")
    report.add_argument("--json", action="store_true", help="JSON on stdout")
    report.set_defaults(func=_cmd_report)

    split = sub.add_parser("split", help="counts per split, tier and task (labels of the test split are not shown)")
    _corpus_option(split)
    split.set_defaults(func=_cmd_split)


def _corpus_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--corpus", type=Path, action="append", default=None, help=f"corpus file or directory (default {CORPUS_DIR})"
    )


def _items(args: argparse.Namespace) -> list[Any]:
    try:
        return load_items(args.corpus or [CORPUS_DIR])
    except ValueError as exc:
        raise SystemExit(f"tollway routing: {exc}") from exc


def _cmd_train(args: argparse.Namespace) -> int:
    from app.routing.model import MODEL_DIR, save
    from app.routing.training import train

    started = time.perf_counter()
    meta, arrays, _ = train(_items(args))
    path = save(meta, arrays, args.out or MODEL_DIR)
    took = time.perf_counter() - started
    print(
        f"trained on {meta['trained_on']['items']} items {meta['trained_on']['tiers']}, "
        f"per head (C, embedding weight) {_params(meta)}; wrote {path} in {took:.1f}s"
    )
    return 0


def _params(meta: dict[str, Any]) -> list[tuple[float, float]]:
    return [(h["c"], h["embedding_weight"]) for h in meta["head_params"]]


def _cmd_report(args: argparse.Namespace) -> int:
    from app.routing.model import TierModel
    from app.routing.report import render, report_cv, report_test
    from app.routing.training import train_items

    items = _items(args)
    model = TierModel.load()
    if args.split == "test":
        results = report_test(items, model)
        evaluated = [item for item in items if split_of(item.id) == "test"]
        title = f"held-out test split, tier model {model.version}"
    else:
        params = _params(model.meta)
        results = report_cv(items, params)
        evaluated = train_items(items)
        title = f"5-fold cross-validation over train + validation, per head (C, embedding weight) {params}"
    if args.json:
        json.dump({"title": title, "policies": [r.summary() for r in results]}, sys.stdout, indent=2)
        print()
    else:
        print(render(title, results, evaluated))
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    items = _items(args)
    counts = Counter(split_of(item.id) for item in items)
    print("items per split: " + ", ".join(f"{k} {counts[k]}" for k in ("train", "validation", "test")))
    for name in ("train", "validation"):
        tiers = Counter(item.tier for item in items if split_of(item.id) == name)
        print(f"{name}: " + ", ".join(f"{t} {tiers[t]}" for t in ("small", "medium", "large")))
    return 0

"""How well ``auto`` routes the labelled corpus (``tollway routing report``).

Every item is routed by ``Router.plan`` on the shipped catalog's ``auto`` route, once per quality
policy, and compared with its label:

* **below** — the served model's tier is below the label (quality lost); **above** — above it
  (money lost); **exact** — the rest.
* **cost / oracle** — the summed cost of the served models over the summed cost of the
  *perfect-label oracle*, which sends each request to the cheapest ``auto`` candidate of exactly its
  labelled tier; **cost / always-large** — over the cheapest large candidate on every request.
  Every model is priced the same way (``app.ledger.pricing.expected_cost``): the router's input
  token estimate, no cache reads, and an assumed output length per request: the labelled task's
  typical answer (``EXPECTED_OUTPUT``: classification 20 tokens … planning 1500) capped by the
  request's ``max_tokens``.
* per-task confusion: for each labelled task, how many were served below / at / above the label.

``--split test`` reads the held-out test split with the shipped artefact (the only code path that
reads it); ``--split cv`` gives 5-fold cross-validated figures over train + validation, refitting
the model (same per-head regularisation and embedding weight as the artefact, calibration inside
each fold) on four folds and routing the fifth.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import numpy as np

from app.auth.principal import Principal
from app.config import TIER_ORDER, Catalog, load_catalog
from app.ledger.pricing import expected_cost
from app.routing.corpus import Item, fold_of, split_of, to_chat_request
from app.routing.features import FeatureExtractor
from app.routing.health import DeploymentHealth
from app.routing.model import QUALITY_THRESHOLDS, TierModel
from app.routing.router import EXPECTED_OUTPUT, Router

if TYPE_CHECKING:
    from app.routing.training import HeadParams

ROUTE = "auto"
PRINCIPAL = Principal(team_id="report", team_name="report", key_id="report", key_prefix="tw-report")
TIERS = ("small", "medium", "large")


@dataclass(slots=True)
class Outcome:
    item: Item
    served_tier: str
    cost: Decimal
    oracle: Decimal
    always_large: Decimal
    p_small: float
    p_medium: float


@dataclass(slots=True)
class PolicyResult:
    quality: str
    outcomes: list[Outcome] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        n = len(self.outcomes)
        below = sum(1 for o in self.outcomes if TIER_ORDER[o.served_tier] < TIER_ORDER[o.item.tier])
        above = sum(1 for o in self.outcomes if TIER_ORDER[o.served_tier] > TIER_ORDER[o.item.tier])
        cost = sum((o.cost for o in self.outcomes), Decimal(0))
        oracle = sum((o.oracle for o in self.outcomes), Decimal(0))
        large = sum((o.always_large for o in self.outcomes), Decimal(0))
        per_task: dict[str, Counter[str]] = {}
        confusion: Counter[str] = Counter()
        for o in self.outcomes:
            side = (
                "below"
                if TIER_ORDER[o.served_tier] < TIER_ORDER[o.item.tier]
                else ("above" if TIER_ORDER[o.served_tier] > TIER_ORDER[o.item.tier] else "exact")
            )
            per_task.setdefault(o.item.task, Counter())[side] += 1
            confusion[f"{o.item.tier}->{o.served_tier}"] += 1
        return {
            "quality": self.quality,
            "threshold": QUALITY_THRESHOLDS[self.quality],
            "requests": n,
            "below_label": below / n if n else 0.0,
            "above_label": above / n if n else 0.0,
            "exact": (n - below - above) / n if n else 0.0,
            "cost_over_oracle": float(cost / oracle) if oracle else 0.0,
            "cost_over_always_large": float(cost / large) if large else 0.0,
            "oracle_over_always_large": float(oracle / large) if large else 0.0,
            "tier_confusion": dict(sorted(confusion.items())),
            "per_task": {task: dict(c) for task, c in sorted(per_task.items())},
            "below_ids": [o.item.id for o in self.outcomes if TIER_ORDER[o.served_tier] < TIER_ORDER[o.item.tier]],
        }


def _assumed_output(item: Item) -> int:
    typical = EXPECTED_OUTPUT.get(item.task, 350)
    max_tokens = item.request.get("max_tokens")
    return min(typical, max_tokens) if isinstance(max_tokens, int) and max_tokens > 0 else typical


def route_items(router: Router, catalog: Catalog, items: Sequence[Item]) -> list[PolicyResult]:
    candidates = catalog.routes[ROUTE].candidates
    results = [PolicyResult(quality) for quality in QUALITY_THRESHOLDS]
    for item in items:
        req = to_chat_request(item.request, ROUTE)
        output = _assumed_output(item)
        for result in results:
            plan = router.plan(req, PRINCIPAL, quality=result.quality)
            tokens = plan.input_tokens

            def price(name: str, tokens: int = tokens, output: int = output) -> Decimal:
                return expected_cost(catalog.models[name], tokens, output)

            by_tier = {tier: min(price(n) for n in candidates if catalog.models[n].tier == tier) for tier in TIERS}
            estimate = plan.estimate
            result.outcomes.append(
                Outcome(
                    item=item,
                    served_tier=plan.chosen.tier,
                    cost=price(plan.chosen.name),
                    oracle=by_tier[item.tier],
                    always_large=by_tier["large"],
                    p_small=estimate.adequate[0] if estimate else float("nan"),
                    p_medium=estimate.adequate[1] if estimate else float("nan"),
                )
            )
    return results


def report_test(items: Sequence[Item], model: TierModel | None = None) -> list[PolicyResult]:
    """The held-out test split, routed with the shipped artefact (or ``model``)."""
    catalog = load_catalog(None)
    test = [item for item in items if split_of(item.id) == "test"]
    router = Router(catalog, DeploymentHealth(), tier_model=model or TierModel.load())
    return route_items(router, catalog, test)


def report_cv(items: Sequence[Item], params: Sequence[HeadParams]) -> list[PolicyResult]:
    """5-fold cross-validation over train + validation (the test split is not read)."""
    from app.routing.embedding import load_embedding_table
    from app.routing.features import DENSE_NAMES
    from app.routing.training import EMBED_DIMS, featurise, fit, to_artefact, train_items

    catalog = load_catalog(None)
    usable = train_items(items)
    table = load_embedding_table(EMBED_DIMS)
    extractor = FeatureExtractor()
    matrix = featurise(usable, table, extractor)
    design = matrix.design()
    folds = np.asarray([fold_of(item.id) for item in usable])
    pooled = [PolicyResult(quality) for quality in QUALITY_THRESHOLDS]
    for k in sorted(set(folds.tolist())):
        train_mask = folds != k
        fitted = fit(
            design[train_mask],
            matrix.y[train_mask],
            matrix.votes[train_mask],
            folds[train_mask],
            params,
            len(DENSE_NAMES),
        )
        train_part = [item for item, keep in zip(usable, train_mask, strict=True) if keep]
        meta, arrays = to_artefact(fitted, table, train_part, {})
        router = Router(catalog, DeploymentHealth(), tier_model=TierModel(meta, arrays), features=extractor)
        held_out = [item for item, keep in zip(usable, train_mask, strict=True) if not keep]
        for total, part in zip(pooled, route_items(router, catalog, held_out), strict=True):
            total.outcomes.extend(part.outcomes)
    return pooled


def render(title: str, results: Sequence[PolicyResult], items: Sequence[Item]) -> str:
    tiers = Counter(item.tier for item in items)
    lines = [
        f"{title}: {len(items)} requests (small {tiers['small']}, medium {tiers['medium']}, large {tiers['large']})",
        "",
        "| quality (threshold) | served = label | below label | above label | cost / oracle | cost / always-large |"
        " oracle / always-large |",
        "|---|---|---|---|---|---|---|",
    ]
    summaries = [r.summary() for r in results]
    for s in summaries:
        lines.append(
            f"| {s['quality']} ({s['threshold']}) | {s['exact']:.1%} | {s['below_label']:.1%} "
            f"| {s['above_label']:.1%} | {s['cost_over_oracle']:.2f}x | {s['cost_over_always_large']:.1%} "
            f"| {s['oracle_over_always_large']:.1%} |"
        )
    for s in summaries:
        if s["quality"] != "balanced":
            continue
        lines += ["", "Per task at the default policy (balanced): served below / at / above the label", ""]
        lines += ["| task | below | exact | above |", "|---|---|---|---|"]
        for task, c in s["per_task"].items():
            lines.append(f"| {task} | {c.get('below', 0)} | {c.get('exact', 0)} | {c.get('above', 0)} |")
        lines += [
            "",
            "Tier confusion (label -> served): " + ", ".join(f"{k} {v}" for k, v in s["tier_confusion"].items()),
        ]
        if s["below_ids"]:
            lines.append("Below label: " + ", ".join(s["below_ids"]))
    return "\n".join(lines)

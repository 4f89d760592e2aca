"""Model-selection experiments for the tier model, by 5-fold CV over train + validation only.

Each variant is fitted on four folds and scored on the fifth (calibration inside the training
folds, as ``tollway routing train`` does); the pooled out-of-fold probabilities are turned into
routing decisions per quality policy and priced like ``tollway routing report`` does (cheapest
``auto`` candidate of the chosen tier; the oracle: of the labelled tier). The test split is never
read here.

    python -m bench.routing_experiments              # model variants
    python -m bench.routing_experiments --frontier   # the shipped configuration at every threshold

``--frontier`` routes the pooled out-of-fold probabilities of the shipped configuration (its per-head
C and embedding weight, from ``app/routing/model``) at thresholds 0.50 … 0.95: the trade-off between
requests below their label and cost over the oracle that any choice of policy threshold moves along.
Next to it, the same figures for the *writer's* own judgement of each item (the first of the two
independent judgements; the label is the adjudicated one): how a careful human who wrote the request
scores against the adjudicated labels.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from decimal import Decimal

import numpy as np

from app.config import load_catalog
from app.ledger.pricing import expected_cost
from app.routing.corpus import CORPUS_DIR, Item, fold_of, load_items, to_chat_request
from app.routing.embedding import load_embedding_table
from app.routing.features import FeatureExtractor
from app.routing.model import QUALITY_THRESHOLDS
from app.routing.report import ROUTE, TIERS, _assumed_output
from app.routing.training import Matrix, choose_params, featurise, fit, train_items
from app.tokens import estimate_tokens


def tier_costs(items: list[Item]) -> np.ndarray:
    """(N, 3): the cheapest ``auto`` candidate of each tier, priced for each item."""
    catalog = load_catalog(None)
    names = catalog.routes[ROUTE].candidates
    out = np.zeros((len(items), 3))
    for row, item in enumerate(items):
        tokens = estimate_tokens(to_chat_request(item.request))
        output = _assumed_output(item)
        for col, tier in enumerate(TIERS):
            out[row, col] = float(
                min(
                    (expected_cost(catalog.models[n], tokens, output) for n in names if catalog.models[n].tier == tier),
                    default=Decimal(0),
                )
            )
    return out


def decide(above: np.ndarray, threshold: float) -> np.ndarray:
    p_small, p_medium = 1 - above[:, 0], 1 - above[:, 1]
    return np.where(p_small >= threshold, 0, np.where(p_medium >= threshold, 1, 2))


def score(above: np.ndarray, y: np.ndarray, costs: np.ndarray) -> dict[str, tuple[float, float]]:
    rows = np.arange(len(y))
    oracle = costs[rows, y].sum()
    out = {}
    for quality, threshold in QUALITY_THRESHOLDS.items():
        tier = decide(above, threshold)
        out[quality] = (float((tier < y).mean()), float(costs[rows, tier].sum() / oracle))
    return out


Variant = Callable[[Matrix, np.ndarray, np.ndarray], np.ndarray]


def logistic(use_embedding: bool, dims: int | None = None) -> Variant:
    def run(m: Matrix, folds: np.ndarray, train: np.ndarray) -> np.ndarray:
        design = m.design(use_embedding)
        if use_embedding and dims is not None:
            d = m.dense.shape[1]
            full = m.user_emb.shape[1]
            keep = list(range(d)) + list(range(d, d + dims)) + list(range(d + full, d + full + dims))
            design = design[:, keep]
        d = m.dense.shape[1]
        params, _ = choose_params(design[train], m.y[train], m.votes[train], folds[train], d)
        return fit(design[train], m.y[train], m.votes[train], folds[train], params, d).above(design[~train])

    return run


def boosting(m: Matrix, folds: np.ndarray, train: np.ndarray) -> np.ndarray:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import HistGradientBoostingClassifier

    design = m.design(True)
    out = np.zeros((int((~train).sum()), 2))
    for head, target in enumerate([(m.y >= 1).astype(int), (m.y >= 2).astype(int)]):
        base = HistGradientBoostingClassifier(
            max_depth=3, learning_rate=0.05, max_iter=200, l2_regularization=1.0, random_state=0
        )
        model = CalibratedClassifierCV(base, method="sigmoid", cv=5).fit(design[train], target[train])
        out[:, head] = model.predict_proba(design[~train])[:, 1]
    out[:, 1] = np.minimum(out[:, 1], out[:, 0])
    return out


def frontier(items: list[Item], costs: np.ndarray) -> None:
    from app.routing.model import TierModel
    from app.routing.training import EMBED_DIMS

    table = load_embedding_table(EMBED_DIMS)
    matrix = featurise(items, table, FeatureExtractor())
    folds = np.asarray([fold_of(i.id) for i in items])
    params = [(float(h["c"]), float(h["embedding_weight"])) for h in TierModel.load().meta["head_params"]]
    design, d = matrix.design(), matrix.dense.shape[1]
    above = np.zeros((len(items), 2))
    for k in range(5):
        train = folds != k
        fitted = fit(design[train], matrix.y[train], matrix.votes[train], folds[train], params, d)
        above[~train] = fitted.above(design[~train])
    y, rows = matrix.y, np.arange(len(items))
    oracle = costs[rows, y].sum()
    print(f"{len(items)} train+validation items, 5-fold CV, per head (C, embedding weight) {params}")
    print("| threshold | below label | above label | cost / oracle |\n|---|---|---|---|")
    for threshold in np.arange(0.5, 0.951, 0.05):
        tier = decide(above, float(threshold))
        cost = costs[rows, tier].sum() / oracle
        print(f"| {threshold:.2f} | {(tier < y).mean():.1%} | {(tier > y).mean():.1%} | {cost:.2f}x |")
    writer = np.asarray([TIERS.index(item.judgements[0]) for item in items])
    cost = costs[rows, writer].sum() / oracle
    print(f"| writer's judgement | {(writer < y).mean():.1%} | {(writer > y).mean():.1%} | {cost:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boosting", action="store_true", help="also try gradient boosting (slower)")
    parser.add_argument("--frontier", action="store_true", help="the shipped configuration at every threshold")
    args = parser.parse_args()
    items = train_items(load_items([CORPUS_DIR]))
    if args.frontier:
        frontier(items, tier_costs(items))
        return
    table = load_embedding_table(256)
    matrix = featurise(items, table, FeatureExtractor())
    folds = np.asarray([fold_of(i.id) for i in items])
    costs = tier_costs(items)
    variants: dict[str, Variant] = {
        "logistic, no embedding": logistic(False),
        "logistic, 16-d embeddings": logistic(True, 16),
        "logistic, 32-d embeddings": logistic(True, 32),
        "logistic, 64-d embeddings": logistic(True, 64),
        "logistic, 128-d embeddings": logistic(True, 128),
        "logistic, 256-d embeddings": logistic(True, 256),
    }
    if args.boosting:
        variants["gradient boosting, 256-d"] = boosting
    print(f"{len(items)} train+validation items, 5-fold CV; per policy: below label / cost ÷ oracle")
    for name, variant in variants.items():
        started = time.perf_counter()
        above = np.zeros((len(items), 2))
        for k in range(5):
            train = folds != k
            above[~train] = variant(matrix, folds, train)
        result = score(above, matrix.y, costs)
        cells = "  ".join(f"{q}: {b:5.1%} / {c:.2f}x" for q, (b, c) in result.items())
        print(f"{name:<28} {cells}   ({time.perf_counter() - started:.1f}s)")


if __name__ == "__main__":
    main()

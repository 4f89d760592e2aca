"""Training the tier model (``tollway routing train``): deterministic, seconds, no test data read.

1. Load the corpus (``app.routing.corpus``) and keep the *train* and *validation* splits only.
2. Features per item (``app.routing.features``) and the mean wordllama vector (first ``EMBED_DIMS``
   dimensions) of the user window and of the system window.
3. Soft targets: an item's target for a head is the share of its independent judgements that put it
   at or above that tier (an item two judges called small and one medium counts one third towards
   "needs medium"), so the model estimates how likely a careful judge finds a tier adequate rather
   than memorising which side of a split decision an item fell. Agreed items (80%) are unchanged.
   Model selection and calibration score against the adjudicated labels.
4. Two L2-regularised logistic regressions on standardised features: label ≥ medium, label ≥ large.
   Each head has its own regularisation strength ``C`` (from ``C_GRID``) and its own weight on the
   embedding columns (from ``EMBED_WEIGHTS``; scaling a standardised block by ``w`` divides its L2
   penalty by ``w²``, so the 256 embedding columns are shrunk harder than the ~45 measurements).
   Both are chosen per head by 5-fold cross-validated log-loss over train + validation (folds by id
   hash); ties and near-ties (within ``C_TOLERANCE``) go to the stronger regularisation — a simpler
   model that generalises beyond this corpus. Measured: the small-vs-rest head prefers a light
   embedding weight (the measurements carry it), the large-vs-rest head a heavier one.
5. Platt calibration of each head on its out-of-fold scores, then the final fit on train + validation.
6. The artefact: coefficients as JSON, the embedding weights folded into per-token score tables.

Everything is seeded or order-independent: the same corpus gives byte-identical files.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.routing.corpus import TIER_INDEX, Item, corpus_digest, fold_of, split_of, to_chat_request
from app.routing.embedding import WORDLLAMA_CONFIG, load_embedding_table, wordllama_version
from app.routing.features import DENSE_NAMES, FeatureExtractor
from app.routing.model import FORMAT, FORMAT_VERSION, TierModel

EMBED_DIMS = 128
C_GRID: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)
EMBED_WEIGHTS: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)
C_TOLERANCE = 0.0025  # a head's log-loss within this of its best counts as a tie (take the simpler model)
HEADS = ("above_small", "above_medium")  # label ≥ medium, label ≥ large
PLATT_C = 1e4  # calibration is two parameters: barely regularised
HeadParams = tuple[float, float]  # (C, embedding weight) of one head


@dataclass(slots=True)
class Matrix:
    """Features of a list of items: dense measurements, mean token vectors, token ids, labels."""

    items: list[Item]
    dense: np.ndarray  # (N, D)
    user_emb: np.ndarray  # (N, dims)
    system_emb: np.ndarray  # (N, dims)
    y: np.ndarray  # (N,) adjudicated label: 0 small, 1 medium, 2 large
    votes: np.ndarray  # (N, 3) share of the item's judgements per tier

    def design(self, use_embedding: bool = True) -> np.ndarray:
        parts = [self.dense, self.user_emb, self.system_emb] if use_embedding else [self.dense]
        return np.hstack(parts)

    def subset(self, mask: np.ndarray) -> Matrix:
        return Matrix(
            [item for item, keep in zip(self.items, mask, strict=True) if keep],
            self.dense[mask],
            self.user_emb[mask],
            self.system_emb[mask],
            self.y[mask],
            self.votes[mask],
        )


def featurise(items: Sequence[Item], table: np.ndarray, extractor: FeatureExtractor | None = None) -> Matrix:
    extractor = extractor or FeatureExtractor()
    dims = table.shape[1]
    dense, user, system = [], [], []
    for item in items:
        x = extractor.extract(to_chat_request(item.request))
        dense.append(x.dense)
        user.append(table[x.user_ids].mean(axis=0) if x.user_ids else np.zeros(dims, dtype=np.float32))
        system.append(table[x.system_ids].mean(axis=0) if x.system_ids else np.zeros(dims, dtype=np.float32))
    return Matrix(
        list(items),
        np.asarray(dense, dtype=np.float64).reshape(len(items), len(DENSE_NAMES)),
        np.asarray(user, dtype=np.float64).reshape(len(items), dims),
        np.asarray(system, dtype=np.float64).reshape(len(items), dims),
        np.asarray([item.label for item in items], dtype=np.int64),
        votes(items),
    )


def votes(items: Sequence[Item]) -> np.ndarray:
    """(N, 3): per item, the share of its judgements for small, medium, large."""
    out = np.zeros((len(items), len(TIER_INDEX)))
    for row, item in enumerate(items):
        judged = item.judgements or (item.tier,)
        for tier in judged:
            out[row, TIER_INDEX[tier]] += 1.0 / len(judged)
    return out


def _logreg(c: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000, solver="lbfgs")


@dataclass(slots=True)
class Fitted:
    """A fitted ordinal model in design-matrix space (before folding into the artefact)."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (2, F)
    intercept: np.ndarray  # (2,)
    platt: list[tuple[float, float]]
    params: tuple[HeadParams, HeadParams]

    def scores(self, design: np.ndarray) -> np.ndarray:
        return ((design - self.mean) / self.scale) @ self.coef.T + self.intercept

    def above(self, design: np.ndarray) -> np.ndarray:
        """(N, 2): calibrated P(label ≥ medium), P(label ≥ large)."""
        raw = self.scores(design)
        out = np.empty_like(raw)
        for head, (a, b) in enumerate(self.platt):
            out[:, head] = 1.0 / (1.0 + np.exp(-(a * raw[:, head] + b)))
        out[:, 1] = np.minimum(out[:, 1], out[:, 0])
        return out


def _targets(y: np.ndarray) -> list[np.ndarray]:
    return [(y >= 1).astype(int), (y >= 2).astype(int)]


def _fit_heads(
    design: np.ndarray, votes: np.ndarray, params: Sequence[HeadParams], n_dense: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Standardise, weight the embedding columns per head, fit on soft targets; coefficients in
    standardised space (the head's column weights folded in, so ``z @ coef`` is the head's score).

    A soft target p is fitted exactly as cross-entropy: the row once as positive with weight p and
    once as negative with weight 1 − p (rows of weight 0 are dropped)."""
    mean = design.mean(axis=0)
    scale = design.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = (design - mean) / scale
    coef, intercept = [], []
    for head, (c, weight) in enumerate(params):
        share = votes[:, head + 1 :].sum(axis=1)  # judged at or above the head's tier
        if share.max() <= 0.0 or share.min() >= 1.0:  # one class only (tiny subsets): a constant head
            coef.append(np.zeros(z.shape[1]))
            intercept.append(8.0 if share.min() >= 1.0 else -8.0)
            continue
        columns = np.ones(z.shape[1])
        columns[n_dense:] = weight
        rows = np.concatenate([np.flatnonzero(share > 0), np.flatnonzero(share < 1)])
        target = np.concatenate([np.ones(int((share > 0).sum())), np.zeros(int((share < 1).sum()))])
        sample_weight = np.concatenate([share[share > 0], 1.0 - share[share < 1]])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = _logreg(c).fit(z[rows] * columns, target, sample_weight=sample_weight)
        coef.append(model.coef_[0] * columns)
        intercept.append(float(model.intercept_[0]))
    return mean, scale, np.asarray(coef), np.asarray(intercept)


def _folds(items: Sequence[Item]) -> np.ndarray:
    return np.asarray([fold_of(item.id) for item in items])


def out_of_fold_scores(
    design: np.ndarray, votes: np.ndarray, folds: np.ndarray, params: Sequence[HeadParams], n_dense: int
) -> np.ndarray:
    raw = np.zeros((len(votes), 2))
    for k in np.unique(folds):
        train = folds != k
        mean, scale, coef, intercept = _fit_heads(design[train], votes[train], params, n_dense)
        raw[~train] = ((design[~train] - mean) / scale) @ coef.T + intercept
    return raw


def _platt(raw: np.ndarray, y: np.ndarray) -> list[tuple[float, float]]:
    from sklearn.linear_model import LogisticRegression

    params = []
    for head, target in enumerate(_targets(y)):
        if target.min() == target.max():
            params.append((1.0, 0.0))
            continue
        model = LogisticRegression(C=PLATT_C, max_iter=1000).fit(raw[:, head : head + 1], target)
        params.append((float(model.coef_[0, 0]), float(model.intercept_[0])))
    return params


def _head_log_loss(raw: np.ndarray, target: np.ndarray) -> float:
    p = np.clip(1.0 / (1.0 + np.exp(-raw)), 1e-6, 1 - 1e-6)
    return float(-np.mean(target * np.log(p) + (1 - target) * np.log(1 - p)))


def choose_params(
    design: np.ndarray, y: np.ndarray, votes: np.ndarray, folds: np.ndarray, n_dense: int
) -> tuple[tuple[HeadParams, HeadParams], dict[str, list[float]]]:
    """Per head, the (C, embedding weight) of least out-of-fold log-loss; near-ties to the simplest
    (smallest C, then smallest weight). Returns the choice and every candidate's two losses."""
    grid = [(c, w) for c in C_GRID for w in EMBED_WEIGHTS]  # simplest first
    losses: dict[HeadParams, list[float]] = {}
    for params in grid:
        raw = out_of_fold_scores(design, votes, folds, (params, params), n_dense)
        losses[params] = [_head_log_loss(raw[:, h], t) for h, t in enumerate(_targets(y))]
    chosen = []
    for head in range(2):
        best = min(loss[head] for loss in losses.values())
        chosen.append(next(p for p in grid if losses[p][head] <= best + C_TOLERANCE))
    table = {f"C={c},w={w}": [round(v, 5) for v in losses[(c, w)]] for c, w in grid}
    return (chosen[0], chosen[1]), table


def fit(
    design: np.ndarray,
    y: np.ndarray,
    votes: np.ndarray,
    folds: np.ndarray,
    params: Sequence[HeadParams],
    n_dense: int,
) -> Fitted:
    """Calibrate on out-of-fold scores (against the adjudicated labels ``y``), then fit the heads on
    everything given (soft targets ``votes``)."""
    platt = _platt(out_of_fold_scores(design, votes, folds, params, n_dense), y)
    mean, scale, coef, intercept = _fit_heads(design, votes, params, n_dense)
    return Fitted(mean, scale, coef, intercept, platt, (params[0], params[1]))


def to_artefact(
    fitted: Fitted, table: np.ndarray, items: Sequence[Item], losses: dict[str, list[float]]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Fold the embedding columns into per-token score tables; the rest becomes JSON."""
    d = len(DENSE_NAMES)
    dims = table.shape[1]
    coef, mean, scale = fitted.coef, fitted.mean, fitted.scale
    intercept = fitted.intercept.copy()
    tables = {}
    for name, start in (("user_scores", d), ("system_scores", d + dims)):
        cols = slice(start, start + dims)
        w = coef[:, cols] / scale[cols]  # (2, dims) in raw-embedding space
        tables[name] = table.astype(np.float64) @ w.T  # (vocab, 2)
        intercept -= w @ mean[cols]
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "dense_names": list(DENSE_NAMES),
        "mean": [round(float(v), 8) for v in mean[:d]],
        "scale": [round(float(v), 8) for v in scale[:d]],
        "heads": [
            {
                "name": name,
                "coef_dense": [round(float(v), 8) for v in coef[head, :d]],
                "intercept": round(float(intercept[head]), 8),
                "platt": [round(v, 8) for v in fitted.platt[head]],
            }
            for head, name in enumerate(HEADS)
        ],
        "head_params": [{"c": c, "embedding_weight": w} for c, w in fitted.params],
        "cv_log_loss": losses,
        "embedding": {
            "source": "wordllama",
            "config": WORDLLAMA_CONFIG,
            "dims": dims,
            "wordllama_version": wordllama_version(),
        },
        "trained_on": {
            "corpus_digest": corpus_digest(items),
            "items": len(items),
            "tiers": {t: int(sum(1 for i in items if i.tier == t)) for t in ("small", "medium", "large")},
            "splits": ["train", "validation"],
        },
    }
    return meta, tables


def train_items(items: Sequence[Item]) -> list[Item]:
    """The items training may read: train + validation, never test."""
    return [item for item in items if split_of(item.id) != "test"]


def train(items: Sequence[Item], *, dims: int = EMBED_DIMS) -> tuple[dict[str, Any], dict[str, np.ndarray], TierModel]:
    usable = train_items(items)
    table = load_embedding_table(dims)
    matrix = featurise(usable, table)
    design = matrix.design()
    folds = _folds(usable)
    params, losses = choose_params(design, matrix.y, matrix.votes, folds, len(DENSE_NAMES))
    fitted = fit(design, matrix.y, matrix.votes, folds, params, len(DENSE_NAMES))
    meta, arrays = to_artefact(fitted, table, usable, losses)
    return meta, arrays, TierModel(meta, arrays)

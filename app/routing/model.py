"""The learned tier model at request time: calibrated P(tier adequate), evaluated with numpy.

The artefact (built by ``tollway routing train``, see ``app.routing.training``) is two files under
``app/routing/model/``: ``tier-model-v1.json`` (feature names, standardisation, coefficients, Platt
calibration, the corpus it was trained on) and ``tier-model-v1.npz`` (per-token score tables). No
pickle: loading runs no code from the files.

The model is ordinal: two logistic heads over the same features, ``P(label ≥ medium)`` and
``P(label ≥ large)``, each calibrated with Platt scaling on out-of-fold scores. So

    P(small adequate)  = 1 − P(label ≥ medium)
    P(medium adequate) = 1 − P(label ≥ large)      (never below P(small adequate))
    P(large adequate)  = 1

The embedding part of each head is linear in the mean of the token vectors, hence equal to the mean
of per-token scores: training folds the wordllama table (32,000 × dims) and the head's weights into
one (32,000 × 2) table per embedded window, so a request costs one gather and one mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from app.routing.features import DENSE_NAMES, Extracted

FORMAT = "tollway-tier-model"
FORMAT_VERSION = 1
MODEL_DIR = Path(__file__).with_name("model")
MODEL_STEM = f"tier-model-v{FORMAT_VERSION}"
TIERS: tuple[str, ...] = ("small", "medium", "large")
# The team's ``quality`` policy → the probability a tier must reach to be chosen.
QUALITY_THRESHOLDS: dict[str, float] = {"strict": 0.95, "balanced": 0.85, "economy": 0.7}
DEFAULT_QUALITY = "balanced"


class ModelFileError(Exception):
    """The artefact is missing, from another format version, or inconsistent."""


@dataclass(frozen=True, slots=True)
class TierEstimate:
    adequate: tuple[float, float, float]  # P(small adequate), P(medium adequate), P(large adequate)

    def tier(self, threshold: float) -> str:
        """The cheapest tier whose probability of being adequate reaches ``threshold``."""
        for name, p in zip(TIERS, self.adequate, strict=True):
            if p >= threshold:
                return name
        return TIERS[-1]

    def as_dict(self) -> dict[str, float]:
        return {name: round(p, 4) for name, p in zip(TIERS, self.adequate, strict=True)}


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


class TierModel:
    def __init__(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
            raise ModelFileError(f"not a {FORMAT} v{FORMAT_VERSION} artefact")
        if tuple(meta["dense_names"]) != DENSE_NAMES:
            raise ModelFileError("the artefact's features differ from app.routing.features; retrain it")
        self.meta = meta
        heads = meta["heads"]
        mean = np.asarray(meta["mean"], dtype=np.float64)
        scale = np.asarray(meta["scale"], dtype=np.float64)
        coef = np.asarray([h["coef_dense"] for h in heads], dtype=np.float64).T  # (D, 2)
        # Standardisation folded into the weights: (x - mean) / scale @ W = x @ (W / scale) - mean/scale @ W
        self._w = coef / scale[:, None]
        self._b = np.asarray([h["intercept"] for h in heads], dtype=np.float64) - (mean / scale) @ coef
        self._platt = [(float(h["platt"][0]), float(h["platt"][1])) for h in heads]
        self._user = np.asarray(arrays["user_scores"], dtype=np.float64)
        self._system = np.asarray(arrays["system_scores"], dtype=np.float64)

    @classmethod
    def load(cls, directory: Path = MODEL_DIR, stem: str = MODEL_STEM) -> TierModel:
        meta_path, arrays_path = directory / f"{stem}.json", directory / f"{stem}.npz"
        try:
            meta = orjson.loads(meta_path.read_bytes())
            with np.load(arrays_path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (OSError, orjson.JSONDecodeError, ValueError) as exc:
            raise ModelFileError(f"cannot read the tier model {meta_path}: {exc}") from exc
        return cls(meta, arrays)

    @property
    def version(self) -> str:
        return f"v{self.meta['version']}-{self.meta['trained_on']['corpus_digest']}"

    def logits(self, x: Extracted) -> tuple[float, float]:
        z = np.asarray(x.dense) @ self._w + self._b
        # sum / n rather than .mean(): the same value without numpy's Python-level mean wrapper
        if x.user_ids:
            z += self._user.take(x.user_ids, axis=0).sum(axis=0) / len(x.user_ids)
        if x.system_ids:
            z += self._system.take(x.system_ids, axis=0).sum(axis=0) / len(x.system_ids)
        return float(z[0]), float(z[1])

    def estimate(self, x: Extracted) -> TierEstimate:
        raw = self.logits(x)
        above = [_sigmoid(a * r + b) for (a, b), r in zip(self._platt, raw, strict=True)]
        above_medium = above[0]
        above_large = min(above[1], above_medium)  # ordinal: P(≥ large) ≤ P(≥ medium)
        return TierEstimate((1.0 - above_medium, 1.0 - above_large, 1.0))


def save(
    meta: dict[str, Any], arrays: dict[str, np.ndarray], directory: Path = MODEL_DIR, stem: str = MODEL_STEM
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    meta_path = directory / f"{stem}.json"
    meta_path.write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    tables: dict[str, Any] = {k: v.astype(np.float32) for k, v in arrays.items()}
    np.savez_compressed(directory / f"{stem}.npz", **tables)
    return meta_path

"""The learned tier model: split, features, artefact, calibrated ordinal probabilities, quality policy."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest

from app.auth.principal import Principal, TeamPolicy
from app.config import TIER_ORDER, load_catalog
from app.routing.corpus import CORPUS_DIR, Item, fold_of, load_items, split_of, to_chat_request
from app.routing.embedding import MAX_TOKENS
from app.routing.features import DENSE_NAMES, FeatureExtractor
from app.routing.health import DeploymentHealth
from app.routing.model import MODEL_DIR, MODEL_STEM, QUALITY_THRESHOLDS, TierEstimate, TierModel
from app.routing.router import Router
from app.routing.training import featurise, fit, to_artefact, train_items, votes

HARD = (
    "Our Raft-based replicated log occasionally loses acknowledged writes after a leader change when two "
    "partitions heal at the same time. Which safety invariant is violated, and how do we fix it while keeping "
    "linearizable reads without a read quorum?"
)
EASY = "Translate to French: good morning"


def principal(**policy: object) -> Principal:
    return Principal(team_id="t", team_name="t", key_id="k", key_prefix="p", policy=TeamPolicy(**policy))  # type: ignore[arg-type]


def item(item_id: str, tier: str = "small") -> Item:
    return Item(item_id, "chat", tier, "en", (), "x", {"messages": [{"role": "user", "content": item_id}]})


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor()


@pytest.fixture(scope="module")
def router(extractor: FeatureExtractor) -> Router:
    return Router(load_catalog(None), DeploymentHealth(), tier_model=TierModel.load(), features=extractor)


# ---- the split ---------------------------------------------------------------------------------------


def test_split_is_a_function_of_the_id_alone() -> None:
    ids = [f"x-{n:04d}" for n in range(3000)]
    first = {i: split_of(i) for i in ids}
    assert {i: split_of(i) for i in reversed(ids)} == first  # order and other items do not matter
    shares = Counter(first.values())
    assert 0.17 < shares["test"] / 3000 < 0.23 and 0.17 < shares["validation"] / 3000 < 0.23
    assert {fold_of(i) for i in ids} == {0, 1, 2, 3, 4}


def test_training_never_sees_the_test_split() -> None:
    items = [item(f"x-{n:04d}") for n in range(500)]
    kept = train_items(items)
    assert kept and all(split_of(i.id) != "test" for i in kept)
    assert len(kept) == sum(1 for i in items if split_of(i.id) != "test")


def test_corpus_loads_and_rejects_bad_lines(tmp_path: Path) -> None:
    items = load_items([CORPUS_DIR])
    assert items and all(i.tier in TIER_ORDER for i in items)
    assert all(i.source != "legacy" for i in items)  # legacy labels are by task class: left out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "z-1", "task": "chat", "tier": "huge", "request": {"messages": [{"role": "user"}]}}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        load_items([bad])


def test_judgements_become_soft_targets(tmp_path: Path) -> None:
    corpus = tmp_path / "j.jsonl"
    request = {"messages": [{"role": "user", "content": "hi"}]}
    lines = [
        {"id": "j-1", "task": "chat", "tier": "small", "request": request,
         "judgements": {"writer": "medium", "judge": "small", "third": "small"}},
        {"id": "j-2", "task": "chat", "tier": "large", "request": request},  # no judgements: the label
    ]  # fmt: skip
    corpus.write_bytes(b"\n".join(orjson.dumps(line) for line in lines))
    first, second = load_items([corpus])
    assert first.judgements == ("medium", "small", "small") and second.judgements == ("large",)
    assert votes([first, second]) == pytest.approx(np.array([[2 / 3, 1 / 3, 0.0], [0.0, 0.0, 1.0]]))
    bad = dict(lines[0], judgements={"writer": "huge"})
    corpus.write_bytes(orjson.dumps(bad))
    with pytest.raises(ValueError, match="unknown tier in judgements"):
        load_items([corpus])


def test_a_split_decision_trains_towards_the_middle() -> None:
    """The same request judged small by two judges and medium by one: P(≥ medium) near 1/3, not 0."""
    from app.routing.training import _fit_heads

    design = np.array([[0.0], [1.0]] * 30)
    one_third = np.array([[2 / 3, 1 / 3, 0.0], [0.0, 0.0, 1.0]] * 30)  # row 0 disputed, row 1 large
    mean, scale, coef, intercept = _fit_heads(design, one_third, [(1e4, 1.0), (1e4, 1.0)], n_dense=1)
    z = ((np.array([[0.0]]) - mean) / scale) @ coef.T + intercept
    assert 1 / (1 + np.exp(-z[0, 0])) == pytest.approx(1 / 3, abs=0.02)


# ---- features ------------------------------------------------------------------------------------------


def test_features_are_bounded_on_huge_requests(extractor: FeatureExtractor) -> None:
    messages = [{"role": "user", "content": "word " * 1_000_000}]
    huge = to_chat_request({"system": "rules " * 100_000, "messages": messages})
    x = extractor.extract(huge)
    assert len(x.dense) == len(DENSE_NAMES) and all(np.isfinite(x.dense))
    assert len(x.user_ids) <= MAX_TOKENS and len(x.system_ids) <= MAX_TOKENS


def test_word_memo_never_changes_the_token_ids(extractor: FeatureExtractor) -> None:
    text = "Пожалуйста, переведи: 並行性のバグ concurrency-bug https://example.com/" + "x" * 100
    fresh = FeatureExtractor().tokens.ids(text)
    assert extractor.tokens.ids(text) == fresh == extractor.tokens.ids(text)


# ---- the artefact ---------------------------------------------------------------------------------------


def test_shipped_artefact_is_small_json_and_npz_without_pickles() -> None:
    meta_path, arrays_path = MODEL_DIR / f"{MODEL_STEM}.json", MODEL_DIR / f"{MODEL_STEM}.npz"
    assert meta_path.stat().st_size + arrays_path.stat().st_size <= 25 * 1024 * 1024
    meta = orjson.loads(meta_path.read_bytes())
    assert meta["dense_names"] == list(DENSE_NAMES) and meta["trained_on"]["splits"] == ["train", "validation"]
    with np.load(arrays_path, allow_pickle=False) as npz:  # would raise on object arrays
        assert all(npz[name].dtype == np.float32 for name in npz.files)


def test_folded_artefact_scores_exactly_like_the_fitted_model(extractor: FeatureExtractor) -> None:
    from app.routing.embedding import load_embedding_table

    items = train_items(load_items([CORPUS_DIR]))[:60]
    table = load_embedding_table(16)
    matrix = featurise(items, table, extractor)
    folds = np.asarray([fold_of(i.id) for i in items])
    fitted = fit(matrix.design(), matrix.y, matrix.votes, folds, [(0.3, 0.25), (0.1, 1.0)], matrix.dense.shape[1])
    meta, arrays = to_artefact(fitted, table, items, {})
    model = TierModel(meta, arrays)
    expected = fitted.scores(matrix.design())
    for row, it in enumerate(items[:10]):
        got = model.logits(extractor.extract(to_chat_request(it.request)))
        assert got == pytest.approx(tuple(expected[row]), abs=1e-6)


def test_an_artefact_for_other_features_is_refused() -> None:
    meta = orjson.loads((MODEL_DIR / f"{MODEL_STEM}.json").read_bytes())
    meta["dense_names"] = meta["dense_names"][:-1]
    with pytest.raises(Exception, match="features differ"):
        TierModel(meta, {"user_scores": np.zeros((1, 2)), "system_scores": np.zeros((1, 2))})


# ---- probabilities and the quality policy ----------------------------------------------------------------


def test_tier_is_the_cheapest_whose_probability_reaches_the_threshold() -> None:
    estimate = TierEstimate((0.8, 0.9, 1.0))
    assert estimate.tier(0.7) == "small" and estimate.tier(0.85) == "medium" and estimate.tier(0.95) == "large"


def test_probabilities_are_ordinal_and_calibrated_into_0_1(router: Router) -> None:
    for text in (HARD, EASY):
        plan = router.plan(to_chat_request({"messages": [{"role": "user", "content": text}]}), principal())
        assert plan.estimate is not None
        small, medium, large = plan.estimate.adequate
        assert 0.0 <= small <= medium <= large == 1.0


def test_stricter_quality_never_routes_lower(router: Router) -> None:
    for it in train_items(load_items([CORPUS_DIR]))[:80]:
        req = to_chat_request(it.request)
        tiers = [TIER_ORDER[router.plan(req, principal(quality=q)).chosen.tier] for q in QUALITY_THRESHOLDS]
        assert tiers == sorted(tiers, reverse=True)  # strict ≥ balanced ≥ economy


def test_the_team_quality_policy_sets_the_threshold(router: Router) -> None:
    req = to_chat_request({"messages": [{"role": "user", "content": EASY}]})
    for quality, threshold in QUALITY_THRESHOLDS.items():
        data = router.explain(req, principal(quality=quality))
        assert data["quality"] == quality and data["threshold"] == threshold
        assert set(data["tier_probabilities"]) == {"small", "medium", "large"}


def test_an_unknown_quality_policy_is_a_400(router: Router) -> None:
    req = to_chat_request({"messages": [{"role": "user", "content": EASY}]})
    with pytest.raises(Exception, match="unknown quality policy") as err:
        router.plan(req, principal(), quality="perfect")
    assert getattr(err.value, "status", None) == 400


def test_a_hard_request_needs_more_than_an_easy_one(router: Router) -> None:
    def needed(text: str) -> int:
        plan = router.plan(to_chat_request({"messages": [{"role": "user", "content": text}]}), principal())
        return TIER_ORDER[plan.needed_tier or "small"]

    assert needed(HARD) > needed(EASY)

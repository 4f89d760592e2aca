"""Router: cheapest adequate model, every hard constraint, team policy, errors, explain, escalation.

These tests route by the catalog's ``task_tiers`` (``tier_model=None``), so each one pins a mechanism
(constraints, policy, pricing) rather than a learned decision; the learned tier model has its own
tests in ``test_routing_model.py``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest

from app.auth.principal import Principal, TeamPolicy
from app.config import Catalog
from app.domain import ChatRequest, Message, ResponseFormat, Tool
from app.ledger.pricing import expected_cost
from app.routing.health import DeploymentHealth, deployment_key
from app.routing.router import EXPECTED_OUTPUT, RouteError, Router


def prices(input_: str, output: str) -> dict[str, str]:
    return {
        "input": input_,
        "output": output,
        "cache_write_5m": input_,
        "cache_write_1h": input_,
        "cache_read": str(Decimal(input_) / 10),
    }


def catalog(**route_overrides: Any) -> Catalog:
    no_media = {"vision": False, "documents": False}
    return Catalog.model_validate(
        {
            "providers": {
                "p1": {"kind": "anthropic", "base_url": "http://127.0.0.1:1"},
                "p2": {"kind": "openai", "base_url": "http://127.0.0.1:2"},
            },
            "models": {
                "tiny": {
                    "provider": "p1",
                    "tier": "small",
                    "prices": prices("0.10", "0.50"),
                    "context_window": 8000,
                    "max_output_tokens": 1000,
                    "capabilities": no_media,
                    "aliases": ["tiny-latest"],
                    "min_cache_tokens": 1024,
                },
                "small-b": {
                    "provider": "p2",
                    "tier": "small",
                    "prices": prices("0.30", "1.50"),
                    "context_window": 200000,
                    "max_output_tokens": 32000,
                },
                "mid": {
                    "provider": "p1",
                    "tier": "medium",
                    "prices": prices("2", "10"),
                    "context_window": 200000,
                    "max_output_tokens": 64000,
                },
                "mid-notools": {
                    "provider": "p2",
                    "tier": "medium",
                    "prices": prices("1", "5"),
                    "context_window": 200000,
                    "max_output_tokens": 64000,
                    "capabilities": {"tools": False, "structured_output": False},
                },
                "big": {
                    "deployments": [{"provider": "p1"}, {"provider": "p2", "upstream_model": "big-eu"}],
                    "tier": "large",
                    "prices": prices("5", "25"),
                    "context_window": 1000000,
                    "max_output_tokens": 128000,
                },
            },
            "routes": {
                "auto": {
                    "candidates": ["big", "mid", "mid-notools", "small-b", "tiny"],
                    "escalate": True,
                    **route_overrides,
                },
                "auto:extraction": {"candidates": ["tiny", "small-b", "mid", "big"], "task": "extraction"},
                "floor": {"candidates": ["tiny", "mid", "big"], "min_tier": "medium"},
            },
        }
    )


def principal(**policy: Any) -> Principal:
    return Principal(
        team_id="t1", team_name="team", key_id="k1", key_prefix="tw-x", policy=TeamPolicy(**policy)
    )


def request(text: str = "hello", *, model: str = "auto", **fields: Any) -> ChatRequest:
    content = fields.pop("content", [{"type": "text", "text": text}])
    return ChatRequest(
        model=model,
        messages=[Message(role="user", content=content)],
        max_tokens=fields.pop("max_tokens", 256),
        client_format="anthropic",
        **fields,
    )


CLASSIFY = (
    "Classify the sentiment of this review as positive, negative or neutral. Respond with only the label."
)
REASON = "Prove that there are infinitely many primes, step by step, and explain why the argument works."


@pytest.fixture
def health() -> DeploymentHealth:
    return DeploymentHealth(failures_to_trip=2, cooldown_s=30.0, clock=lambda: 1000.0)


@pytest.fixture
def router(health: DeploymentHealth) -> Router:
    return Router(catalog(), health, tier_model=None)


def trip(health: DeploymentHealth, router: Router, model: str) -> None:
    for dep in router.catalog.models[model].all_deployments(model):
        for _ in range(health.failures_to_trip):
            health.finished(deployment_key(model, dep), ok=False)


# ---- choosing --------------------------------------------------------------------------------------


def test_cheapest_adequate_model_is_chosen_and_candidates_sorted_by_cost(router: Router) -> None:
    plan = router.plan(request(CLASSIFY), principal())
    assert plan.task == "classification" and plan.task_source == "classifier"
    assert plan.min_tier == "small"
    assert plan.chosen.name == "tiny"
    costs = [c.expected_cost for c in plan.candidates]
    assert costs == sorted(costs)
    assert {c.name for c in plan.candidates} == {"tiny", "small-b", "mid", "mid-notools", "big"}
    assert plan.reason == "route=auto task=classification src=classifier tier>=small cheapest"
    assert plan.escalate and plan.fallback


def test_task_tier_excludes_smaller_models(router: Router) -> None:
    plan = router.plan(request(REASON), principal())
    assert plan.task == "reasoning" and plan.min_tier == "large"
    assert [c.name for c in plan.candidates] == ["big"]
    rejected = {c.name: c.verdicts["tier"] for c in plan.rejected}
    assert rejected["tiny"] == "small is below the minimum large"
    assert rejected["mid"] == "medium is below the minimum large"


def test_header_task_hint_wins_over_route_and_classifier(router: Router) -> None:
    plan = router.plan(request(CLASSIFY, model="auto:extraction"), principal(), task_hint="code")
    assert (plan.task, plan.task_source, plan.min_tier) == ("code", "header", "medium")
    assert plan.chosen.name == "mid"


def test_route_fixed_task_is_used_without_classifying(router: Router) -> None:
    plan = router.plan(request(REASON, model="auto:extraction"), principal())
    assert (plan.task, plan.task_source) == ("extraction", "route")
    assert plan.classification is None
    assert plan.chosen.name == "tiny"


def test_unknown_task_hint_is_a_400(router: Router) -> None:
    with pytest.raises(RouteError) as err:
        router.plan(request(CLASSIFY), principal(), task_hint="poetry")
    assert err.value.status == 400 and "poetry" in err.value.message


def test_route_min_tier_raises_the_floor(router: Router) -> None:
    plan = router.plan(request(CLASSIFY, model="floor"), principal())
    assert plan.min_tier == "medium" and plan.chosen.name == "mid"


def test_equal_cost_tie_goes_to_the_higher_tier(health: DeploymentHealth) -> None:
    cat = catalog()
    same = cat.models["tiny"].model_copy(
        update={"tier": "medium", "aliases": [], "capabilities": cat.models["small-b"].capabilities}
    )
    models = {**cat.models, "tiny-twin": same}
    routes = {"auto": cat.routes["auto"].model_copy(update={"candidates": ["tiny", "tiny-twin"]})}
    twin_catalog = cat.model_copy(update={"models": models, "routes": routes})
    plan = Router(twin_catalog, health, tier_model=None).plan(request(CLASSIFY), principal())
    assert plan.candidates[0].expected_cost == plan.candidates[1].expected_cost
    assert [c.name for c in plan.candidates] == ["tiny-twin", "tiny"]


# ---- hard constraints --------------------------------------------------------------------------------


def rejected_verdict(plan: Any, model: str, constraint: str) -> str:
    for cand in plan.rejected:
        if cand.name == model:
            return str(cand.verdicts[constraint])
    raise AssertionError(f"{model} was not rejected: {[c.name for c in plan.candidates]}")


def test_context_window_excludes_a_model(router: Router) -> None:
    long_text = CLASSIFY + "\n\n" + "word " * 8000  # ~11.5k estimated tokens > tiny's 8k window
    plan = router.plan(request(long_text), principal())
    assert "window is 8000" in rejected_verdict(plan, "tiny", "context")
    assert plan.chosen.name == "small-b"


def test_max_tokens_above_model_output_limit_excludes_it(router: Router) -> None:
    plan = router.plan(request(CLASSIFY, max_tokens=2000), principal())
    assert "maximum output 1000" in rejected_verdict(plan, "tiny", "max_output")
    assert plan.chosen.name == "small-b"


def test_tools_exclude_a_model_without_tool_support(router: Router) -> None:
    tool = Tool(name="lookup", description="Look up an order", input_schema={"type": "object"})
    plan = router.plan(request("where is my order 1234?", tools=[tool]), principal(), task_hint="chat")
    assert rejected_verdict(plan, "mid-notools", "tools") == "no tool support"
    assert plan.chosen.name == "mid"


def test_tool_blocks_in_history_count_as_tool_use(router: Router) -> None:
    content = [{"type": "tool_result", "tool_use_id": "t1", "content": "42 items"}]
    plan = router.plan(request(content=content), principal(), task_hint="chat")
    assert rejected_verdict(plan, "mid-notools", "tools") == "no tool support"


def test_images_exclude_a_model_without_vision(router: Router) -> None:
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "text", "text": CLASSIFY},
    ]
    plan = router.plan(request(content=content), principal())
    assert rejected_verdict(plan, "tiny", "vision") == "no image input"
    assert plan.chosen.name == "small-b"


def test_documents_exclude_a_model_without_document_input(router: Router) -> None:
    content = [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Q3 results"}},
        {"type": "text", "text": CLASSIFY},
    ]
    plan = router.plan(request(content=content), principal())
    assert rejected_verdict(plan, "tiny", "documents") == "no document input"


def test_structured_output_excludes_a_model_without_it(router: Router) -> None:
    fmt = ResponseFormat(type="json_object")
    plan = router.plan(
        request("Draft a reply to the customer.", response_format=fmt), principal(), task_hint="chat"
    )
    assert rejected_verdict(plan, "mid-notools", "structured_output") == "no structured output"


def test_allowed_models_filter_route_candidates(router: Router) -> None:
    plan = router.plan(request(CLASSIFY), principal(allowed_models=frozenset({"auto", "mid", "big"})))
    assert plan.chosen.name == "mid"
    assert rejected_verdict(plan, "tiny", "team_allowed") == "not in the team's allowed models"


def test_allowed_routes_only_leave_candidates_unfiltered(router: Router) -> None:
    plan = router.plan(request(CLASSIFY), principal(allowed_models=frozenset({"auto"})))
    assert plan.chosen.name == "tiny"


def test_cooling_down_model_is_excluded(router: Router, health: DeploymentHealth) -> None:
    trip(health, router, "tiny")
    plan = router.plan(request(CLASSIFY), principal())
    assert rejected_verdict(plan, "tiny", "healthy") == "every deployment is cooling down"
    assert plan.chosen.name == "small-b"


def test_every_adequate_model_cooling_down_is_a_503_with_retry_after(
    router: Router, health: DeploymentHealth
) -> None:
    trip(health, router, "big")
    with pytest.raises(RouteError) as err:
        router.plan(request(REASON), principal())
    assert err.value.status == 503 and err.value.kind == "unavailable"
    assert err.value.retry_after_s == pytest.approx(30.0)


def test_no_adequate_model_is_a_400_naming_each_candidate(router: Router) -> None:
    huge = "word " * 800_000  # ~1.1M tokens: more than any window
    with pytest.raises(RouteError) as err:
        router.plan(request(huge), principal(), task_hint="summarization")
    assert err.value.status == 400 and err.value.kind == "invalid_request"
    for name in ("tiny", "small-b", "mid", "mid-notools", "big"):
        assert f"{name}:" in err.value.message
    assert "context" in err.value.message


# ---- team policy -----------------------------------------------------------------------------------


def test_team_min_tier_raises_the_minimum(router: Router) -> None:
    plan = router.plan(request(CLASSIFY), principal(min_tier="medium"))
    assert plan.min_tier == "medium" and plan.chosen.name == "mid-notools"
    assert {c.tier for c in plan.candidates} == {"medium", "large"}


def test_team_max_tier_caps_the_minimum_and_excludes_bigger_models(router: Router) -> None:
    plan = router.plan(request(REASON), principal(max_tier="medium"))
    assert plan.min_tier == "medium"
    assert rejected_verdict(plan, "big", "tier") == "large is above the team's maximum medium"
    assert plan.chosen.tier == "medium"


def test_budget_downgrade_lowers_the_minimum_one_tier(router: Router) -> None:
    policy = {"downgrade_at_budget_share": 0.8}
    normal = router.plan(request(REASON), principal(**policy), budget_share_used=0.5)
    assert normal.min_tier == "large" and not normal.downgraded
    lowered = router.plan(request(REASON), principal(**policy), budget_share_used=0.85)
    assert lowered.min_tier == "medium" and lowered.downgraded
    assert "downgraded=budget" in lowered.reason
    assert lowered.chosen.tier == "medium"


def test_budget_downgrade_never_goes_below_the_team_minimum(router: Router) -> None:
    policy = {"downgrade_at_budget_share": 0.8, "min_tier": "medium"}
    plan = router.plan(
        request("Write a Python function to parse dates."),
        principal(**policy),
        task_hint="code",
        budget_share_used=0.99,
    )
    assert plan.min_tier == "medium" and not plan.downgraded


# ---- concrete models -------------------------------------------------------------------------------


def test_alias_resolves_to_the_model_and_plan_is_explicit(router: Router) -> None:
    plan = router.plan(request(REASON, model="tiny-latest"), principal())
    assert [c.name for c in plan.candidates] == ["tiny"]
    assert plan.reason == "explicit" and plan.route is None and plan.task is None
    assert not plan.escalate and not plan.fallback


def test_unknown_model_is_a_404(router: Router) -> None:
    with pytest.raises(RouteError) as err:
        router.plan(request(model="gpt-9-ultra"), principal())
    assert err.value.status == 404 and err.value.kind == "not_found"
    assert err.value.message == "model not found: gpt-9-ultra"


def test_model_not_allowed_for_team_is_a_403(router: Router) -> None:
    with pytest.raises(RouteError) as err:
        router.plan(request(model="big"), principal(allowed_models=frozenset({"tiny"})))
    assert err.value.status == 403 and err.value.kind == "permission"


def test_alias_in_allowed_models_allows_the_model(router: Router) -> None:
    plan = router.plan(request(model="tiny"), principal(allowed_models=frozenset({"tiny-latest"})))
    assert plan.chosen.name == "tiny"


def test_route_not_allowed_for_team_is_a_403(router: Router) -> None:
    with pytest.raises(RouteError) as err:
        router.plan(request(CLASSIFY), principal(allowed_models=frozenset({"mid"})))
    assert err.value.status == 403


def test_model_above_team_max_tier_is_a_403(router: Router) -> None:
    with pytest.raises(RouteError) as err:
        router.plan(request(model="big"), principal(max_tier="medium"))
    assert err.value.status == 403


def test_concrete_model_too_small_for_the_request_is_a_400_with_the_reason(router: Router) -> None:
    with pytest.raises(RouteError) as err:
        router.plan(request(model="tiny", max_tokens=5000), principal())
    assert err.value.status == 400 and "max_output" in err.value.message


def test_concrete_model_cooling_down_is_a_503(router: Router, health: DeploymentHealth) -> None:
    trip(health, router, "mid")
    with pytest.raises(RouteError) as err:
        router.plan(request(model="mid"), principal())
    assert err.value.status == 503


# ---- cost ------------------------------------------------------------------------------------------


def test_expected_output_is_the_task_length_capped_by_max_tokens(router: Router) -> None:
    plan = router.plan(
        request("Write a Go worker pool with context cancellation."), principal(), task_hint="code"
    )
    assert plan.chosen.expected_output_tokens == 256  # code's 900 capped by max_tokens
    plan = router.plan(request(CLASSIFY), principal())
    assert plan.chosen.expected_output_tokens == EXPECTED_OUTPUT["classification"]


def test_cached_prefix_lowers_the_expected_cost(router: Router) -> None:
    system = [{"type": "text", "text": "Policy handbook. " * 600}]  # ~2.9k tokens of stable prefix
    marked = [{**system[0], "cache_control": {"type": "ephemeral"}}]
    off = router.plan(request(CLASSIFY, system=system), principal(prompt_cache="off"))
    auto = router.plan(request(CLASSIFY, system=system), principal(prompt_cache="auto"))
    explicit = router.plan(request(CLASSIFY, system=marked), principal(prompt_cache="off"))
    assert off.chosen.cached_tokens == 0
    assert auto.chosen.cached_tokens > 2000
    assert explicit.chosen.cached_tokens == auto.chosen.cached_tokens
    assert auto.chosen.expected_cost < off.chosen.expected_cost


def test_prefix_shorter_than_the_model_minimum_is_not_counted_as_cached(router: Router) -> None:
    system = [{"type": "text", "text": "Short system prompt.", "cache_control": {"type": "ephemeral"}}]
    plan = router.plan(request(CLASSIFY, system=system), principal())
    assert plan.chosen.cached_tokens == 0


def test_candidate_costs_are_the_ledger_pricing_of_the_forecast(router: Router) -> None:
    plan = router.plan(request(CLASSIFY, max_tokens=2000), principal())
    for cand in plan.candidates:
        assert cand.expected_cost == expected_cost(
            cand.model, plan.input_tokens, cand.expected_output_tokens, cand.cached_tokens
        )


# ---- explain, escalation, streams --------------------------------------------------------------------


def test_explain_lists_every_candidate_with_verdicts_and_the_choice(router: Router) -> None:
    data = router.explain(request(CLASSIFY, max_tokens=2000), principal())
    orjson.dumps(data)  # JSON-able
    assert data["task"] == "classification" and data["task_source"] == "classifier"
    assert data["chosen"] == "small-b" and data["min_tier"] == "small"
    assert "cues" in data["features"] and data["error"] is None
    by_name = {c["model"]: c for c in data["candidates"]}
    assert set(by_name) == {"tiny", "small-b", "mid", "mid-notools", "big"}
    assert by_name["tiny"]["adequate"] is False and by_name["tiny"]["verdicts"]["max_output"] != "ok"
    assert by_name["small-b"]["chosen"] is True
    assert all(isinstance(c["expected_cost"], str) for c in data["candidates"])
    assert Decimal(by_name["big"]["expected_cost"]) > Decimal(by_name["small-b"]["expected_cost"])


def test_explain_reports_a_request_nothing_can_serve(router: Router) -> None:
    data = router.explain(request("word " * 800_000), principal(), task_hint="summarization")
    assert data["chosen"] is None and data["error"]["status"] == 400
    assert len(data["candidates"]) == 5


def test_next_tier_candidates_climb_one_tier_at_a_time(router: Router) -> None:
    plan = router.plan(request(CLASSIFY), principal())
    after_small = router.next_tier_candidates(plan, "tiny")
    assert [c.tier for c in after_small] == ["medium", "medium", "large"]
    assert after_small[0].name == "mid-notools"  # the cheaper medium model first
    assert [c.name for c in router.next_tier_candidates(plan, "mid")] == ["big"]
    assert router.next_tier_candidates(plan, "big") == []


def test_streaming_requests_skip_escalation(router: Router) -> None:
    assert router.plan(request(CLASSIFY), principal()).escalate is True
    assert router.plan(request(CLASSIFY, stream=True), principal()).escalate is False

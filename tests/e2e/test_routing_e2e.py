"""Routing, retries, fallbacks and escalation through a whole gateway, with simulator fault injection.

`claude-haiku-5-5` gets two deployments, `dep-a` and `dep-b`, both served by the simulator under
different path tags, so `x-sim-error-match: dep-a` fails only one of them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import yaml

from app.config import DEFAULT_CONFIG_PATH, Catalog
from app.routing.health import DeploymentHealth
from tests.gateway import Gateway, run_gateway

MODEL = "claude-haiku-5-5"


def two_deployment_catalog() -> Catalog:
    raw: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    raw["providers"]["anthropic"]["simulator_path"] = "dep-a"
    raw["providers"]["anthropic-b"] = {
        "kind": "anthropic",
        "base_url": "https://anthropic-b.invalid",
        "api_key_env": "TOLLWAY_TEST_UNSET_KEY",
        "simulator_path": "dep-b",
    }
    model = raw["models"][MODEL]
    del model["provider"]
    # dep-a is (almost) always tried first, so the breaker tests are deterministic
    model["deployments"] = [{"provider": "anthropic", "weight": 1000}, {"provider": "anthropic-b", "weight": 1}]
    return Catalog.model_validate(raw)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp: Path = tmp_path_factory.mktemp("routing")
    with run_gateway(
        tmp,
        catalog=two_deployment_catalog(),
        retry_attempts=1,
        retry_base_delay_s=0.01,
        retry_max_delay_s=0.5,
        cooldown_failures=3,
        cooldown_s=1.0,
    ) as gateway:
        yield gateway


@pytest.fixture(autouse=True)
def clean(gw: Gateway) -> None:
    httpx.post(gw.sim("/_sim/reset"))
    # fresh breaker state per test, same settings, everywhere the gateway holds it
    health = DeploymentHealth(failures_to_trip=3, cooldown_s=1.0)
    gw.services.health = health
    gw.services.router.health = health
    gw.app.state.pipeline.dispatcher.health = health


def client(gw: Gateway, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=gw.team_key, max_retries=0, default_headers=headers)


def upstream_tags(gw: Gateway) -> list[str]:
    tags = []
    for r in gw.sim_requests():
        path = r["path"]
        if path.endswith("/v1/messages"):
            tags.append("dep-a" if "/dep-a/" in path else "dep-b" if "/dep-b/" in path else "?")
    return tags


def ask(c: anthropic.Anthropic, **kw: Any) -> Any:
    return c.messages.with_raw_response.create(
        model=kw.pop("model", MODEL), max_tokens=32, messages=[{"role": "user", "content": "hi"}], **kw
    )


def test_529_on_one_deployment_fails_over_to_the_other(gw: Gateway) -> None:
    c = client(gw, **{"x-sim-error": "529", "x-sim-error-match": "dep-a"})
    for _ in range(4):
        raw = ask(c)
        assert raw.http_response.status_code == 200
        assert raw.parse().content[0].type == "text"
    tags = upstream_tags(gw)
    assert "dep-b" in tags
    # every success came from dep-b; every dep-a attempt failed
    assert tags.count("dep-b") == 4


def test_flaky_deployment_enters_cooldown_and_recovers(gw: Gateway) -> None:
    flaky = {"x-sim-error": "500", "x-sim-error-match": "dep-a", "x-sim-error-times": "3", "x-sim-error-key": "flaky"}
    c = client(gw, **flaky)
    for _ in range(6):
        assert ask(c).http_response.status_code == 200
    states = {s["deployment"]: s for s in gw.services.health.snapshot()}
    dep_a = next(v for v in states.values() if v["provider"] == "anthropic")
    assert dep_a["state"] == "open"
    httpx.delete(gw.sim("/_sim/requests"))
    # while cooling down, dep-a gets no traffic
    for _ in range(3):
        assert ask(c).http_response.status_code == 200
    assert upstream_tags(gw) == ["dep-b"] * 3
    # after the cooldown the breaker lets dep-a try again; the fault budget is spent, so it succeeds
    time.sleep(1.1)
    httpx.delete(gw.sim("/_sim/requests"))
    seen: set[str] = set()
    for _ in range(12):
        assert ask(c).http_response.status_code == 200
    seen.update(upstream_tags(gw))
    assert "dep-a" in seen
    states = {s["deployment"]: s for s in gw.services.health.snapshot()}
    assert all(s["state"] == "closed" for s in states.values())


def test_retry_after_is_honoured(gw: Gateway) -> None:
    # a single-deployment model: the gateway waits what the upstream asked, then retries it
    headers = {
        "x-sim-error": "429",
        "x-sim-retry-after": "0.3",
        "x-sim-error-times": "1",
        "x-sim-error-key": "ra",
        "x-sim-error-match": "claude-sonnet-5-5",
    }
    started = time.monotonic()
    raw = ask(client(gw, **headers), model="claude-sonnet-5-5")
    elapsed = time.monotonic() - started
    assert raw.http_response.status_code == 200
    assert elapsed >= 0.3
    assert len([r for r in gw.sim_requests() if r["path"].endswith("/v1/messages")]) == 2


def test_a_rate_limited_deployment_is_skipped_while_another_is_free(gw: Gateway) -> None:
    headers = {"x-sim-error": "429", "x-sim-retry-after": "0.3", "x-sim-error-match": "dep-a"}
    started = time.monotonic()
    raw = ask(client(gw, **headers))
    assert raw.http_response.status_code == 200
    assert time.monotonic() - started < 0.3
    assert upstream_tags(gw) == ["dep-a", "dep-b"]


def test_retry_after_beyond_the_cap_falls_back_instead_of_waiting(gw: Gateway) -> None:
    headers = {"x-sim-error": "429", "x-sim-retry-after": "30", "x-sim-error-match": "dep-a"}
    c = client(gw, **headers)
    started = time.monotonic()
    raw = ask(c)
    assert raw.http_response.status_code == 200
    assert time.monotonic() - started < 5
    assert upstream_tags(gw)[-1] == "dep-b"


def test_everything_failing_gives_one_clear_error(gw: Gateway) -> None:
    c = client(gw, **{"x-sim-error": "529"})
    with pytest.raises(anthropic.APIStatusError) as info:
        ask(c)
    assert info.value.status_code == 529
    assert info.value.response.headers.get("x-should-retry") == "false"
    body = info.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "overloaded_error"
    assert "simulator" not in body["error"]["message"]


def test_no_retry_once_a_stream_has_started(gw: Gateway) -> None:
    c = client(gw, **{"x-sim-stream-error-after": "2"})
    with pytest.raises(anthropic.APIStatusError):
        with c.messages.stream(model=MODEL, max_tokens=32, messages=[{"role": "user", "content": "hi"}]) as s:
            for _ in s.text_stream:
                pass
    assert len(upstream_tags(gw)) == 1


def test_escalation_on_invalid_json(gw: Gateway) -> None:
    oa = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.team_key, max_retries=0)
    schema = {"type": "object", "properties": {"sentiment": {"type": "string"}}, "required": ["sentiment"]}
    raw = oa.chat.completions.with_raw_response.create(
        model="auto:claude",
        messages=[{"role": "user", "content": "Classify the sentiment: I love it"}],
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
        extra_headers={"x-sim-invalid-json-models": MODEL, "x-tollway-task": "classification"},
    )
    completion = raw.parse()
    assert raw.headers["x-tollway-escalations"] == "1"
    assert raw.headers["x-tollway-served-model"] == "claude-sonnet-5-5"
    import json

    assert "sentiment" in json.loads(completion.choices[0].message.content or "")


def test_explain_shows_verdicts_and_the_choice(gw: Gateway) -> None:
    r = httpx.post(
        gw.url + "/v1/routing/explain",
        headers={"authorization": f"Bearer {gw.team_key}"},
        json={"model": "auto", "messages": [{"role": "user", "content": "Is this spam? 'WIN A PRIZE NOW'"}]},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["chosen"] is not None
    names = [c["model"] for c in body["candidates"]]
    assert sum(c["chosen"] for c in body["candidates"]) == 1
    assert all("context" in c["verdicts"] for c in body["candidates"])
    assert "claude-opus-5-5" in names and "claude-haiku-5-5" in names
    assert not gw.sim_requests()  # explaining calls no provider


def test_route_and_reason_headers(gw: Gateway) -> None:
    raw = ask(client(gw), model="auto")
    assert raw.http_response.status_code == 200
    assert raw.headers["x-tollway-served-model"] in gw.services.catalog.routes["auto"].candidates
    assert "route=auto" in raw.headers["x-tollway-route-reason"]


def test_admin_health_shows_breaker_state(gw: Gateway) -> None:
    c = client(gw, **{"x-sim-error": "529", "x-sim-error-match": "dep-a"})
    for _ in range(3):
        ask(c)
    with gw.admin() as admin:
        body = admin.get("/admin/health").json()
        assert admin.get("/admin/health", headers={"authorization": f"Bearer {gw.team_key}"}).status_code == 403
    by_provider = {d["provider"]: d for d in body["deployments"] if d["upstream_model"] == MODEL}
    assert by_provider["anthropic"]["state"] == "open"
    assert by_provider["anthropic-b"]["state"] == "closed"
    assert body["ledger"]["spool_size"] == 0

"""CORS and browser tokens over real HTTP (httpx playing the browser's part: it sends the ``Origin``
header a browser would). The Chromium test (``test_browser_tokens.py``) proves the same in a browser.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gateway import Gateway, run_gateway

PAGE = "http://127.0.0.1:8765"
OTHER_PAGE = "https://app.example.com"
STRANGER = "http://evil.test"
MODEL = "gpt-5-mini"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with run_gateway(tmp_path_factory.mktemp("cors"), cors_origins=f"{PAGE}, {OTHER_PAGE}") as gateway:
        yield gateway


@pytest.fixture(scope="module")
def closed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with run_gateway(tmp_path_factory.mktemp("closed")) as gateway:
        yield gateway


def mint(gw: Gateway, key: str | None = None, **body: Any) -> httpx.Response:
    payload = {"end_user": "user-42", "allowed_origins": [PAGE], "max_tokens_budget": 10_000, **body}
    return httpx.post(
        f"{gw.url}/v1/browser-tokens",
        headers={"authorization": f"Bearer {key or gw.team_key}"},
        json=payload,
        timeout=30,
    )


def token(gw: Gateway, **body: Any) -> dict[str, Any]:
    response = mint(gw, **body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def chat(gw: Gateway, secret: str, origin: str | None = PAGE, **body: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {secret}"}
    if origin is not None:
        headers["origin"] = origin
    payload = {"model": MODEL, "max_tokens": 30, "messages": [{"role": "user", "content": "Hi"}], **body}
    return httpx.post(f"{gw.url}/v1/chat/completions", headers=headers, json=payload, timeout=30)


def preflight(gw: Gateway, origin: str, headers: str = "authorization, content-type") -> httpx.Response:
    return httpx.options(
        f"{gw.url}/v1/chat/completions",
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": headers,
        },
    )


# ---- CORS -----------------------------------------------------------------------------------------


def test_cors_is_closed_by_default(closed: Gateway) -> None:
    answer = preflight(closed, PAGE)
    assert answer.status_code == 405
    assert "access-control-allow-origin" not in answer.headers
    models = httpx.get(f"{closed.url}/v1/models", headers={"origin": PAGE, "x-api-key": closed.team_key})
    assert models.status_code == 200 and "access-control-allow-origin" not in models.headers


def test_preflight_from_an_allowed_origin_is_answered(gw: Gateway) -> None:
    sdk_headers = (
        "authorization, content-type, x-stainless-retry-count, x-stainless-os, x-stainless-timeout, "
        "anthropic-version, anthropic-dangerous-direct-browser-access, x-tollway-task"
    )
    answer = preflight(gw, PAGE, sdk_headers)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == PAGE
    assert set(answer.headers["access-control-allow-methods"].split(", ")) == {"GET", "POST", "OPTIONS"}
    allowed = {h.strip() for h in answer.headers["access-control-allow-headers"].lower().split(",")}
    assert {h.strip() for h in sdk_headers.split(",")} <= allowed
    assert answer.headers["access-control-max-age"] == "600"
    assert "access-control-allow-credentials" not in answer.headers


def test_preflight_from_another_origin_or_with_an_unknown_header_is_refused(gw: Gateway) -> None:
    stranger = preflight(gw, STRANGER)
    assert stranger.status_code == 400 and "origin" in stranger.text
    assert "access-control-allow-origin" not in stranger.headers
    odd = preflight(gw, PAGE, "authorization, x-not-allowed")
    assert odd.status_code == 400 and "headers" in odd.text


def test_responses_to_an_allowed_origin_expose_request_id_and_budget_headers(gw: Gateway) -> None:
    secret = token(gw)["token"]
    answer = chat(gw, secret)
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == PAGE
    exposed = {h.strip() for h in answer.headers["access-control-expose-headers"].split(",")}
    assert {"request-id", "x-request-id", "retry-after", "x-ratelimit-remaining-tokens"} <= exposed
    assert {"anthropic-ratelimit-tokens-remaining", "x-tollway-browser-budget-remaining"} <= exposed
    assert int(answer.headers["x-tollway-browser-budget-remaining"]) < 10_000
    other = httpx.get(f"{gw.url}/v1/models", headers={"origin": STRANGER, "x-api-key": gw.team_key})
    assert "access-control-allow-origin" not in other.headers


def test_streamed_responses_carry_the_cors_headers(gw: Gateway) -> None:
    secret = token(gw)["token"]
    headers = {"authorization": f"Bearer {secret}", "origin": PAGE}
    body = {"model": MODEL, "max_tokens": 30, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", headers=headers, json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["access-control-allow-origin"] == PAGE
        assert "request-id" in r.headers["access-control-expose-headers"]
        text = "".join(r.iter_text())
    assert text.rstrip().endswith("data: [DONE]")


# ---- minting and revoking -------------------------------------------------------------------------


def test_a_minted_token_is_returned_once_with_its_terms(gw: Gateway) -> None:
    minted = token(gw, ttl_s=120, allowed_models=[MODEL, "auto"], allowed_origins=[PAGE + "/", OTHER_PAGE + ":443"])
    assert minted["token"].startswith("twb_") and minted["token"].startswith(minted["prefix"])
    assert minted["end_user"] == "user-42" and minted["max_tokens_budget"] == 10_000
    assert minted["allowed_origins"] == [PAGE, OTHER_PAGE]  # normalised as a browser sends them
    assert minted["allowed_models"] == [MODEL, "auto"] and minted["expires_in"] == 120
    assert minted["expires_at"] > minted["created_at"]


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"ttl_s": 3601}, "ttl_s", "3600"),
        ({"ttl_s": 0}, "ttl_s", "greater than or equal to 1"),
        ({"max_tokens_budget": 0}, "max_tokens_budget", "greater than 0"),
        ({"max_tokens_budget": None}, "max_tokens_budget", "integer"),
        ({"end_user": ""}, "end_user", "at least 1"),
        ({"allowed_origins": []}, "allowed_origins", "at least 1"),
        ({"allowed_origins": ["*"]}, "allowed_origins", "not an origin"),
        ({"allowed_origins": [PAGE + "/app"]}, "allowed_origins", "path"),
        ({"allowed_origins": [STRANGER]}, "allowed_origins", "TOLLWAY_CORS_ORIGINS"),
        ({"allowed_models": ["no-such-model"]}, "allowed_models", "unknown model"),
        ({"surprise": 1}, "surprise", "unknown field"),
    ],
)
def test_bad_mint_requests_get_a_clear_400(gw: Gateway, body: dict[str, Any], param: str, fragment: str) -> None:
    answer = mint(gw, **body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"].startswith(param) and fragment in error["message"]


def test_minting_needs_a_team_key(gw: Gateway) -> None:
    assert mint(gw, key="tw-not-a-key").status_code == 401
    browser = token(gw)["token"]
    refused = mint(gw, key=browser)
    assert refused.status_code == 403 and "browser token cannot mint" in refused.json()["error"]["message"]
    anonymous = httpx.post(f"{gw.url}/v1/browser-tokens", json={})
    assert anonymous.status_code == 401


def test_revocation_by_the_team_ends_the_token(gw: Gateway) -> None:
    minted = token(gw)
    assert chat(gw, minted["token"]).status_code == 200
    revoked = httpx.delete(
        f"{gw.url}/v1/browser-tokens/{minted['id']}", headers={"authorization": f"Bearer {gw.team_key}"}
    )
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    answer = chat(gw, minted["token"])
    assert answer.status_code == 401
    assert answer.json()["error"]["message"] == "this browser token was revoked"
    again = httpx.delete(f"{gw.url}/v1/browser-tokens/{minted['id']}", headers={"x-api-key": gw.admin_key})
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked.json()["revoked_at"]


def test_another_team_cannot_revoke_or_see_a_token(gw: Gateway) -> None:
    minted = token(gw)
    with gw.admin() as admin:
        team = admin.post("/admin/teams", json={"name": f"other-{time.time_ns()}"}).json()
        other_key = admin.post(f"/admin/teams/{team['id']}/keys", json={}).json()["key"]
    answer = httpx.delete(f"{gw.url}/v1/browser-tokens/{minted['id']}", headers={"x-api-key": other_key})
    assert answer.status_code == 404
    assert chat(gw, minted["token"]).status_code == 200  # still valid
    missing = httpx.delete(f"{gw.url}/v1/browser-tokens/nope", headers={"x-api-key": gw.admin_key})
    assert missing.status_code == 404
    as_browser = httpx.delete(
        f"{gw.url}/v1/browser-tokens/{minted['id']}", headers={"authorization": f"Bearer {minted['token']}"}
    )
    assert as_browser.status_code == 403


# ---- using a token --------------------------------------------------------------------------------


def test_a_browser_token_needs_its_origin(gw: Gateway) -> None:
    secret = token(gw)["token"]
    for origin, fragment in ((None, "no Origin header"), (OTHER_PAGE, f"not valid on origin {OTHER_PAGE}")):
        answer = chat(gw, secret, origin=origin)
        assert answer.status_code == 403
        error = answer.json()["error"]
        assert error["code"] == "permission_denied" and fragment in error["message"]  # OpenAI's 403
    anthropic = httpx.post(
        f"{gw.url}/v1/messages",
        headers={"x-api-key": secret, "origin": STRANGER, "anthropic-version": "2023-06-01"},
        json={"model": "claude-haiku-5-5", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]},
    )
    assert anthropic.status_code == 403
    assert anthropic.json()["type"] == "error" and anthropic.json()["error"]["type"] == "permission_error"


def test_a_browser_token_is_limited_to_its_models(gw: Gateway) -> None:
    secret = token(gw, allowed_models=["claude-haiku-5-5"])["token"]
    refused = chat(gw, secret, model="gpt-5")
    assert refused.status_code == 403
    assert "not allowed for this browser token; it allows claude-haiku-5-5" in refused.json()["error"]["message"]
    assert chat(gw, secret, model="claude-haiku-5-5").status_code == 200
    routed = token(gw, allowed_models=["auto"])["token"]
    assert chat(gw, routed, model="auto").status_code == 200
    assert chat(gw, routed, model=MODEL).status_code == 403


def test_an_expired_token_is_refused_with_a_clear_401(gw: Gateway) -> None:
    secret = token(gw, ttl_s=1)["token"]
    time.sleep(1.2)
    answer = chat(gw, secret)
    assert answer.status_code == 401
    message = answer.json()["error"]["message"]
    assert message.startswith("browser token expired at") and "new one" in message
    assert answer.headers["access-control-allow-origin"] == PAGE  # the page can read why


def test_the_token_budget_is_its_own_and_exhaustion_is_a_429(gw: Gateway) -> None:
    secret = token(gw, max_tokens_budget=120)["token"]
    first = chat(gw, secret, max_tokens=40)
    assert first.status_code == 200, first.text
    used = first.json()["usage"]["total_tokens"]
    assert int(first.headers["x-tollway-browser-budget-limit"]) == 120
    refused = None
    for _ in range(10):
        answer = chat(gw, secret, max_tokens=40)
        if answer.status_code == 429:
            refused = answer
            break
        assert answer.status_code == 200
        used += answer.json()["usage"]["total_tokens"]
    assert refused is not None, "the budget was never exhausted"
    assert used <= 120
    error = refused.json()["error"]
    assert error["code"] == "browser_token_budget_exhausted"
    assert "browser token budget exhausted" in error["message"] and "of 120 tokens used" in error["message"]
    assert refused.headers["x-should-retry"] == "false"
    # The team key itself is not limited by the token's budget.
    team = httpx.post(
        f"{gw.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {gw.team_key}"},
        json={"model": MODEL, "max_tokens": 40, "messages": [{"role": "user", "content": "Hi"}]},
    )
    assert team.status_code == 200


def test_a_browser_token_cannot_read_the_team(gw: Gateway) -> None:
    secret = token(gw)["token"]
    me = httpx.get(f"{gw.url}/v1/me", headers={"authorization": f"Bearer {secret}", "origin": PAGE})
    assert me.status_code == 401

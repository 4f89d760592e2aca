"""The built-in web dashboard, end to end: a real gateway, known traffic through the official SDKs,
the summary JSON checked against what the SDKs were told, and the page in headless Chromium.

The expected spend is computed here from the usage each response reported and the catalog's list
prices, not by Tollway's pricing code, so the dashboard has to agree with an independent sum.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth.principal import Limits
from app.auth.records import TeamRecord
from app.dashboard.session import COOKIE_NAME, SESSION_TTL, issue_token, verify_token
from app.dashboard.summary import RANGES, build_summary, window_for
from app.db.engine import create_engine
from app.db.migrate import upgrade
from app.db.tables import USAGE_COLUMNS, usage_events
from app.ledger.events import UsageEvent
from app.teams.store import TeamStore
from tests.conftest import IN_CI
from tests.gateway import Gateway, run_gateway

CHROMIUM = os.environ.get("TOLLWAY_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TOLLWAY_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
MILLION = Decimal(1_000_000)

CLAUDE = "claude-sonnet-5-5"  # caches prefixes from 1,024 tokens
GPT = "gpt-5-mini"
SECOND_TEAM = "research"
# A system prompt long enough to be cached (well over 1,024 tokens), the same on every request.
LONG_SYSTEM = " ".join(
    f"Rule {i}: answer briefly, cite the policy section, and never guess." for i in range(220)
)


@dataclass
class Expected:
    """What the traffic should add up to, summed from the SDK responses."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    cost: Decimal = Decimal(0)
    uncached: Decimal = Decimal(0)
    by_team: dict[str, Expected] = field(default_factory=dict)
    by_model: dict[str, Expected] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_write_tokens + self.cache_read_tokens

    def add(self, team: str, model: str, usage: dict[str, int], prices: Any) -> None:
        for target in (
            self,
            self.by_team.setdefault(team, Expected()),
            self.by_model.setdefault(model, Expected()),
        ):
            target.requests += 1
            target.input_tokens += usage["input"]
            target.output_tokens += usage["output"]
            target.cache_write_tokens += usage["cache_write"]
            target.cache_read_tokens += usage["cache_read"]
            target.cost += (
                usage["input"] * prices.input
                + usage["output"] * prices.output
                + usage["cache_write"] * prices.cache_write_5m
                + usage["cache_read"] * prices.cache_read
            ) / MILLION
            prompt = usage["input"] + usage["cache_write"] + usage["cache_read"]
            target.uncached += (prompt * prices.input + usage["output"] * prices.output) / MILLION


def formatted_usd(amount: Decimal) -> str:
    """How the page formats USD: cents from $1, four decimals below, rounded half-up."""
    places = Decimal("0.01") if amount >= 1 or amount == 0 else Decimal("0.0001")
    rounded = amount.quantize(places, rounding=ROUND_HALF_UP)
    return f"${rounded:,}"


@dataclass
class Traffic:
    gw: Gateway
    expected: Expected
    db_path: Path
    research_id: str


def _anthropic_usage(usage: Any) -> dict[str, int]:
    split = getattr(usage, "cache_creation", None)
    assert not (split and split.ephemeral_1h_input_tokens), "the test's prices assume 5-minute cache writes"
    return {
        "input": usage.input_tokens,
        "output": usage.output_tokens,
        "cache_write": usage.cache_creation_input_tokens or 0,
        "cache_read": usage.cache_read_input_tokens or 0,
    }


def _openai_usage(usage: Any) -> dict[str, int]:
    details = usage.prompt_tokens_details
    cached = (details.cached_tokens or 0) if details else 0
    return {
        "input": usage.prompt_tokens - cached,
        "output": usage.completion_tokens,
        "cache_write": 0,
        "cache_read": cached,
    }


def _send_traffic(gw: Gateway, team_keys: dict[str, str], expected: Expected) -> None:
    catalog = gw.services.catalog
    for team, key in team_keys.items():
        claude = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)
        for question in ("What is the refund window?", "Who approves a refund?"):
            raw = claude.messages.with_raw_response.create(
                model=CLAUDE,
                max_tokens=64,
                system=LONG_SYSTEM,
                messages=[{"role": "user", "content": question}],
            )
            served = raw.headers["x-tollway-served-model"]
            expected.add(team, served, _anthropic_usage(raw.parse().usage), catalog.models[served].prices)
        gpt = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)
        raw_chat = gpt.chat.completions.with_raw_response.create(
            model=GPT, max_tokens=48, messages=[{"role": "user", "content": f"Say hello to team {team}."}]
        )
        served = raw_chat.headers["x-tollway-served-model"]
        completion = raw_chat.parse()
        assert completion.usage is not None
        expected.add(team, served, _openai_usage(completion.usage), catalog.models[served].prices)


@contextmanager
def _signed_in(gw: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=30, follow_redirects=False) as client:
        response = client.post("/dashboard/login", data={"admin_key": gw.admin_key})
        assert response.status_code == 303, response.text
        yield client


def _summary(client: httpx.Client, range_name: str = "7d") -> dict[str, Any]:
    response = client.get("/dashboard/api/summary", params={"range": range_name})
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    tmp = tmp_path_factory.mktemp("dashboard")
    with run_gateway(tmp) as gw:
        admin = gw.admin()
        team = admin.post(
            "/admin/teams",
            json={"name": SECOND_TEAM, "limits": {"tokens_per_day": 50000, "usd_per_month": "5"}},
        )
        assert team.status_code == 201, team.text
        key = admin.post(f"/admin/teams/{SECOND_TEAM}/keys", json={"name": "dashboard-test"})
        assert key.status_code == 201, key.text
        expected = Expected()
        _send_traffic(gw, {"dev": gw.team_key, SECOND_TEAM: key.json()["key"]}, expected)
        assert expected.cache_read_tokens > 0, (
            "the repeated long system prompt should have been read from cache"
        )

        # The ledger writes in the background: wait until it holds every request.
        with _signed_in(gw) as client:
            deadline = time.monotonic() + 15
            while _summary(client)["totals"]["requests"] < expected.requests:
                assert time.monotonic() < deadline, "the ledger did not record the traffic in time"
                time.sleep(0.05)
        yield Traffic(gw=gw, expected=expected, db_path=tmp / "tollway.db", research_id=team.json()["id"])


# ---- HTTP: sign-in and the summary ---------------------------------------------------------------


def test_pages_and_data_need_a_session(traffic: Traffic) -> None:
    with httpx.Client(base_url=traffic.gw.url, timeout=30) as client:
        page = client.get("/dashboard")
        assert page.status_code == 303
        assert page.headers["location"] == "/dashboard/login"
        data = client.get("/dashboard/api/summary")
        assert data.status_code == 401
        assert data.json()["error"]["code"] == "not_signed_in"
    forged_cookie = {COOKIE_NAME: "v1.99999999999.forged"}
    with httpx.Client(base_url=traffic.gw.url, timeout=30, cookies=forged_cookie) as client:
        assert client.get("/dashboard/api/summary").status_code == 401
        assert client.get("/dashboard").status_code == 303
    with httpx.Client(base_url=traffic.gw.url, timeout=30) as client:
        # The admin key itself is not a session: only the signed cookie is.
        bearer = client.get(
            "/dashboard/api/summary", headers={"authorization": f"Bearer {traffic.gw.admin_key}"}
        )
        assert bearer.status_code == 401


def test_session_tokens_expire_and_are_bound_to_the_admin_key() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    token = issue_token("admin-key-one", now)
    assert verify_token(token, "admin-key-one", now + SESSION_TTL - timedelta(seconds=1))
    assert not verify_token(token, "admin-key-one", now + SESSION_TTL)
    assert not verify_token(token, "admin-key-two", now)  # a new admin key signs everyone out
    version, expires, signature = token.split(".")
    assert not verify_token(f"{version}.{int(expires) + 86_400}.{signature}", "admin-key-one", now)
    for garbage in (None, "", "v1", "v1..", f"v2.{expires}.{signature}", f"v1.-5.{signature}", "a.b.c"):
        assert not verify_token(garbage, "admin-key-one", now)


def test_login_page_is_served_with_a_strict_csp(traffic: Traffic) -> None:
    response = httpx.get(f"{traffic.gw.url}/dashboard/login")
    assert response.status_code == 200
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert 'name="admin_key"' in response.text
    css = httpx.get(f"{traffic.gw.url}/dashboard/static/dashboard.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert httpx.get(f"{traffic.gw.url}/dashboard/static/../routes.py").status_code == 404


@pytest.mark.parametrize(
    "wrong", [f"{'x' * 10}", "tw-test-admin-ke", "tw-test-admin-key-", "tw-test-team-key-0001"]
)
def test_a_wrong_key_is_rejected(traffic: Traffic, wrong: str) -> None:
    response = httpx.post(f"{traffic.gw.url}/dashboard/login", data={"admin_key": wrong})
    assert response.status_code == 401
    assert COOKIE_NAME not in response.cookies
    assert "set-cookie" not in response.headers
    assert "That is not the admin key." in response.text


def test_the_admin_key_sets_a_strict_httponly_session_cookie(traffic: Traffic) -> None:
    with httpx.Client(base_url=traffic.gw.url, timeout=30) as client:
        response = client.post("/dashboard/login", data={"admin_key": traffic.gw.admin_key})
        assert response.status_code == 303
        assert response.headers["location"] == "/dashboard"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE_NAME}=v1.")
        assert "HttpOnly" in cookie
        assert "samesite=strict" in cookie.lower()
        assert "Path=/dashboard" in cookie
        assert traffic.gw.admin_key not in cookie

        page = client.get("/dashboard")
        assert page.status_code == 200
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert '<script src="/dashboard/static/dashboard.js"' in page.text
        assert client.get("/dashboard/api/summary").status_code == 200

        logout = client.post("/dashboard/logout")
        assert logout.status_code == 303
        assert f'{COOKIE_NAME}=""' in logout.headers["set-cookie"]
        assert client.get("/dashboard/api/summary").status_code == 401  # the cookie is gone


def test_summary_matches_the_known_traffic_exactly(traffic: Traffic) -> None:
    expected = traffic.expected
    with _signed_in(traffic.gw) as client:
        summary = _summary(client, "7d")
        day = _summary(client, "24h")

    for data in (summary, day):
        totals = data["totals"]
        assert totals["requests"] == expected.requests == 6
        assert totals["errors"] == 0
        assert totals["input_tokens"] == expected.input_tokens
        assert totals["output_tokens"] == expected.output_tokens
        assert totals["cache_write_tokens"] == expected.cache_write_tokens
        assert totals["cache_read_tokens"] == expected.cache_read_tokens
        assert totals["tokens"] == expected.tokens
        assert Decimal(totals["cost_usd"]) == expected.cost
        assert Decimal(totals["uncached_cost_usd"]) == expected.uncached
        assert Decimal(totals["savings_usd"]) == expected.uncached - expected.cost
        assert Decimal(totals["cost_usd"]).quantize(Decimal("0.01")) == expected.cost.quantize(
            Decimal("0.01")
        )
        assert data["statuses"] == {"classes": {"2xx": expected.requests}, "budget_rejections": 0}

    teams = {t["name"]: t for t in summary["teams"]}
    assert set(teams) == {"dev", SECOND_TEAM}
    for name, want in expected.by_team.items():
        assert teams[name]["requests"] == want.requests
        assert teams[name]["tokens"] == want.tokens
        assert Decimal(teams[name]["cost_usd"]) == want.cost
        assert Decimal(teams[name]["savings_usd"]) == want.uncached - want.cost

    models = {m["label"]: m for m in summary["models"]}
    assert set(models) == set(expected.by_model)
    for name, want in expected.by_model.items():
        assert models[name]["requests"] == want.requests
        assert Decimal(models[name]["cost_usd"]) == want.cost

    # The stacked bars add up to the totals, per series and overall.
    for chart, by in (("spend_by_team", expected.by_team), ("spend_by_model", expected.by_model)):
        series = summary[chart]["series"]
        assert len(summary[chart]["buckets"]) == 7
        assert sum(Decimal(s["total_usd"]) for s in series) == expected.cost
        for s in series:
            assert sum(Decimal(v) for v in s["values"]) == Decimal(s["total_usd"])
        assert {s["label"] for s in series} == set(by)
    assert len(day["spend_by_team"]["buckets"]) == 24


def test_budget_status_uses_the_team_limits_and_todays_ledger(traffic: Traffic) -> None:
    started = datetime.now(UTC).date()
    with _signed_in(traffic.gw) as client:
        summary = _summary(client, "30d")
    if datetime.now(UTC).date() != started:
        pytest.skip("the UTC day changed during the test; 'today' is ambiguous")  # pragma: no cover
    research = next(t for t in summary["teams"] if t["name"] == SECOND_TEAM)
    want = traffic.expected.by_team[SECOND_TEAM]
    windows = {w["window"]: w for w in research["budget"]["windows"]}
    assert set(windows) == {"tokens_per_day", "usd_per_month"}
    assert windows["tokens_per_day"]["used"] == str(want.tokens)
    assert windows["tokens_per_day"]["limit"] == "50000"
    assert windows["tokens_per_day"]["remaining"] == str(50000 - want.tokens)
    assert Decimal(windows["usd_per_month"]["used"]) == want.cost
    share = Decimal(want.tokens) / 50000
    assert research["budget"]["status"] == ("warning" if share >= Decimal("0.8") else "ok")
    dev = next(t for t in summary["teams"] if t["name"] == "dev")
    assert dev["budget"] == {
        "status": "unlimited",
        "windows": [],
        "rate_limits": {"requests_per_minute": None, "tokens_per_minute": None},
    }


def test_latency_percentiles_are_the_nearest_rank_of_the_ledger(traffic: Traffic) -> None:
    with sqlite3.connect(traffic.db_path) as db:
        latencies = sorted(
            row[0] for row in db.execute("SELECT latency_ms FROM usage_events WHERE status < 400")
        )
    assert len(latencies) == traffic.expected.requests
    with _signed_in(traffic.gw) as client:
        latency = _summary(client, "24h")["latency"]
    assert latency["count"] == len(latencies)
    # Nearest rank: the first value whose cumulative share reaches the percentile.
    assert latency["p50_ms"] == pytest.approx(latencies[3 - 1])  # ceil(0.50 * 6) = 3
    assert latency["p99_ms"] == pytest.approx(latencies[6 - 1])  # ceil(0.99 * 6) = 6


def test_a_bad_range_is_a_400(traffic: Traffic) -> None:
    with _signed_in(traffic.gw) as client:
        response = client.get("/dashboard/api/summary", params={"range": "1y"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_range"


# ---- the queries on both backends, against a recount in Python ---------------------------------------

NOW = datetime(2026, 6, 1, 10, 30, tzinfo=UTC)  # a month began inside the 7-day range
DELETED_TEAM = "0d7e5b1c-no-longer-a-team"
TIERS = {"gpt-5-mini": "small", "claude-haiku-5-5": "small", "gpt-5": "large"}
REASONS = [
    "explicit",
    "route=auto task=code src=classifier tier>=medium p=0.41/0.93 q=0.8 cheapest",
    "route=auto task=code src=classifier tier>=medium p=0.12/0.88 q=0.8 sticky=gpt-5",
    "route=auto task=chat src=header tier>=small downgraded=budget cheapest",
    None,
]


async def _migrated(url: str) -> AsyncEngine:
    await asyncio.to_thread(upgrade, url)
    return create_engine(url)


async def _fill(engine: AsyncEngine) -> tuple[list[UsageEvent], list[TeamRecord]]:
    store = TeamStore(engine)
    limited = await store.create_team("search", limits=Limits(tokens_per_day=2_000_000, usd_per_month="3.5"))
    plain = await store.create_team("ads")
    await store.create_team("idle")  # no traffic at all: still listed
    team_ids = [limited.id, plain.id, DELETED_TEAM]  # the last one was deleted since
    rng = random.Random(11)
    events = []
    for i in range(400):
        status = rng.choice([200] * 8 + [429, 502, 400])
        rejected = status == 429 and i % 2 == 0  # refused by the budget: no upstream attempt
        streamed = rng.random() < 0.4
        events.append(
            UsageEvent(
                request_id=f"req_{i:05d}",
                team_id=rng.choice(team_ids),
                key_id=rng.choice([None, "key-a", "key-b"]),
                end_user=rng.choice([None, "u1", "u2", "u3"]),
                route_reason=None if rejected else rng.choice(REASONS),
                error_type=rng.choice([None, "api_error", "rate_limit"]) if status >= 400 else None,
                ttft_ms=round(rng.uniform(5, 900), 3) if streamed and status < 400 else None,
                client_format="openai",
                requested_model="auto",
                served_model=None if rejected else rng.choice(["gpt-5-mini", "claude-haiku-5-5", "gpt-5"]),
                attempts=0 if rejected else 1,
                input_tokens=rng.randint(0, 40_000),
                output_tokens=rng.randint(0, 3_000),
                cache_write_5m_tokens=rng.choice([0, rng.randint(1, 9_000)]),
                cache_read_tokens=rng.choice([0, rng.randint(1, 90_000)]),
                cost_usd=Decimal(rng.randint(0, 5 * 10**9)).scaleb(-10),
                uncached_cost_usd=Decimal(rng.randint(5 * 10**9, 9 * 10**9)).scaleb(-10),
                latency_ms=round(rng.uniform(20, 4000), 3),
                status=status,
                created_at=NOW - timedelta(seconds=rng.randint(0, 35 * 86_400)),
            )
        )
    async with engine.begin() as conn:
        await conn.execute(usage_events.insert(), [_row(e) for e in events])
    return events, await store.list_teams()


def _row(event: UsageEvent) -> dict[str, Any]:
    data = {name: getattr(event, name) for name in USAGE_COLUMNS}
    return data


def _recount(events: list[UsageEvent], range_name: str) -> dict[str, Any]:
    window = window_for(range_name, NOW)
    inside = [e for e in events if window.start <= e.created_at < window.end]
    fmt = "%Y-%m-%dT%H:00:00Z" if window.unit == "hour" else "%Y-%m-%d"
    spend: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    classes: dict[str, int] = defaultdict(int)
    for e in inside:
        spend[(e.team_id or "", e.created_at.strftime(fmt))] += e.cost_usd
        classes[f"{e.status // 100}xx"] += 1
    answered = sorted(e.latency_ms for e in inside if e.status < 400)
    return {
        "cost": sum((e.cost_usd for e in inside), Decimal(0)),
        "uncached": sum((e.uncached_cost_usd for e in inside), Decimal(0)),
        "requests": len(inside),
        "errors": sum(1 for e in inside if e.status >= 400),
        "spend": spend,
        "classes": dict(classes),
        "rejections": sum(1 for e in inside if e.status == 429 and e.attempts == 0),
        "p50": answered[math.ceil(0.50 * len(answered)) - 1],
        "p99": answered[math.ceil(0.99 * len(answered)) - 1],
        "buckets": len(window.buckets),
    }


def _by_name(summary: dict[str, Any], teams: list[TeamRecord]) -> str:
    """The summary as JSON with team ids (random per database) replaced by team names."""
    text = json.dumps(summary, sort_keys=True)
    for team in teams:
        text = text.replace(team.id, team.name)
    return text


async def test_summary_agrees_with_a_recount_on_sqlite_and_postgres(
    tmp_path: Path, postgres_url: str
) -> None:
    comparable = {}
    for backend, url in (
        ("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"),
        ("postgres", postgres_url),
    ):
        engine = await _migrated(url)
        try:
            events, teams = await _fill(engine)
            summaries = {r: await build_summary(engine, teams, r, NOW, tiers=TIERS) for r in RANGES}
        finally:
            await engine.dispose()
        _check_against_recount(summaries, events)
        comparable[backend] = {r: _by_name(s, teams) for r, s in summaries.items()}

    # Both backends give the same page, to the last digit.
    assert comparable["sqlite"] == comparable["postgres"]


def _check_ops_against_recount(summary: dict[str, Any], inside: list[UsageEvent]) -> None:
    routing = summary["routing"]
    reasons = [e.route_reason for e in inside]
    assert routing["named"] == reasons.count("explicit")
    assert routing["unrouted"] == reasons.count(None)
    assert routing["routed"] == sum(1 for r in reasons if r and r.startswith("route="))
    decisions = {r["reason"]: r["requests"] for r in routing["reasons"]}
    assert decisions == {
        "route=auto task=code src=classifier tier>=medium": sum(1 for r in reasons if r and "task=code" in r),
        "route=auto task=chat src=header tier>=small downgraded=budget": sum(1 for r in reasons if r and "chat" in r),
    }
    tiers: dict[str, int] = defaultdict(int)
    for e in inside:
        tiers[TIERS[e.served_model] if e.served_model else "(not served)"] += 1
    assert {t["tier"]: t["requests"] for t in routing["by_tier"]} == tiers

    for view, attribute in (("keys", "key_id"), ("end_users", "end_user")):
        groups: dict[str, list[UsageEvent]] = defaultdict(list)
        for e in inside:
            if getattr(e, attribute):
                groups[getattr(e, attribute)].append(e)
        rows = {r["group"]: r for r in summary[view]["rows"]}
        assert set(rows) == set(groups) and summary[view]["count"] == len(groups)
        for group, mine in groups.items():
            assert rows[group]["requests"] == len(mine)
            assert Decimal(rows[group]["cost_usd"]) == sum((e.cost_usd for e in mine), Decimal(0))

    errors: dict[str, int] = defaultdict(int)
    for e in inside:
        if e.status >= 400:
            errors[e.error_type or f"http_{e.status}"] += 1
    assert {e["error_type"]: e["requests"] for e in summary["errors"]} == errors

    answered = [e for e in inside if e.status < 400 and e.served_model]
    for m in summary["latency_by_model"]["models"]:
        mine = [e for e in answered if e.served_model == m["model"]]
        streams = [e.ttft_ms for e in mine if e.ttft_ms is not None]
        assert (m["requests"], m["streams"]) == (len(mine), len(streams))
        assert m["mean_latency_ms"] == pytest.approx(sum(e.latency_ms for e in mine) / len(mine), abs=0.001)
        assert m["mean_ttft_ms"] == pytest.approx(sum(streams) / len(streams), abs=0.001)
    assert {m["model"] for m in summary["latency_by_model"]["models"]} == {e.served_model for e in answered}


def _check_against_recount(summaries: dict[str, dict[str, Any]], events: list[UsageEvent]) -> None:
    for range_name, summary in summaries.items():
        want = _recount(events, range_name)
        window = window_for(range_name, NOW)
        totals = summary["totals"]
        assert (totals["requests"], totals["errors"]) == (want["requests"], want["errors"])
        assert Decimal(totals["cost_usd"]) == want["cost"]
        assert Decimal(totals["savings_usd"]) == want["uncached"] - want["cost"]
        assert summary["statuses"] == {"classes": want["classes"], "budget_rejections": want["rejections"]}
        assert summary["latency"]["p50_ms"] == want["p50"]
        assert summary["latency"]["p99_ms"] == want["p99"]
        chart = summary["spend_by_team"]
        assert len(chart["buckets"]) == want["buckets"]
        assert len(chart["series"]) == 3  # the three teams with traffic
        for series in chart["series"]:
            for bucket, value in zip(chart["buckets"], series["values"], strict=True):
                expected = want["spend"].get((series["key"], bucket), Decimal(0))
                assert Decimal(value) == expected, (series["label"], bucket)
        _check_ops_against_recount(summary, [e for e in events if window.start <= e.created_at < window.end])
        listed = {t["name"]: t for t in summary["teams"]}
        assert {"search", "ads", "idle", DELETED_TEAM} <= set(listed)
        assert listed["idle"]["requests"] == 0
        assert listed[DELETED_TEAM]["exists"] is False

        # Budgets: the UTC calendar day and month of NOW, whatever the range shown.
        search = listed["search"]
        mine = [e for e in events if e.team_id == search["group"]]
        today = [e for e in mine if e.created_at >= datetime(2026, 6, 1, tzinfo=UTC)]  # also this month
        windows = {w["window"]: w for w in search["budget"]["windows"]}
        assert set(windows) == {"tokens_per_day", "usd_per_month"}
        assert Decimal(windows["usd_per_month"]["used"]) == sum((e.cost_usd for e in today), Decimal(0))
        tokens = sum(
            e.input_tokens + e.output_tokens + e.cache_write_5m_tokens + e.cache_read_tokens for e in today
        )
        assert windows["tokens_per_day"]["used"] == str(tokens)


# ---- the page in headless Chromium -----------------------------------------------------------------


def _browser() -> Any:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:  # pragma: no cover - depends on the machine
        missing.append("the selenium package")
    if missing:
        message = (
            f"headless Chromium needs {', '.join(missing)} (Debian: chromium chromium-driver; PyPI: selenium)"
        )
        if IN_CI:
            pytest.fail(f"{message} (CI=true: fails rather than skips)")
        pytest.skip(message)
    return webdriver, Service


def _full_page_screenshot(driver: Any, path: Path) -> None:
    """Grow the window to the page's height, without a scrollbar gutter, then shoot."""
    driver.execute_script("document.documentElement.style.overflow = 'hidden'")
    for _ in range(3):  # the height can change once the charts redraw at the new size
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        if int(driver.execute_script("return window.innerHeight")) >= height:
            break
        frame = int(driver.execute_script("return window.outerHeight - window.innerHeight"))
        driver.set_window_size(1440, height + frame)
        time.sleep(0.3)  # the page redraws its charts 150 ms after a resize
    path.parent.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(path))


def _chromium(webdriver: Any, service_class: Any, tmp_path: Path) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1440,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=service_class(executable_path=CHROMEDRIVER), options=options)


def test_dashboard_in_headless_chromium(traffic: Traffic, tmp_path: Path) -> None:
    webdriver, service_class = _browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _chromium(webdriver, service_class, tmp_path)
    try:
        wait = WebDriverWait(driver, 20)
        driver.get(f"{traffic.gw.url}/dashboard")
        wait.until(ec.url_contains("/dashboard/login"))  # no session: sent to the login form

        driver.find_element(By.ID, "admin-key").send_keys("not-the-admin-key")
        driver.find_element(By.ID, "sign-in").click()
        assert (
            "That is not the admin key."
            in wait.until(ec.presence_of_element_located((By.ID, "login-error"))).text
        )

        driver.get_log("browser")  # drain it: the rejected sign-in above logged its 401

        driver.find_element(By.ID, "admin-key").send_keys(traffic.gw.admin_key)
        driver.find_element(By.ID, "sign-in").click()
        wait.until(ec.url_to_be(f"{traffic.gw.url}/dashboard"))
        cookie = driver.get_cookie(COOKIE_NAME)
        assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert driver.execute_script("return document.cookie") == ""  # HttpOnly: invisible to scripts

        total = formatted_usd(traffic.expected.cost)
        wait.until(ec.text_to_be_present_in_element((By.ID, "total-spend"), total))
        assert driver.find_element(By.ID, "total-spend").text == total
        assert not driver.find_element(By.ID, "load-error").is_displayed()
        assert driver.find_element(By.ID, "total-requests").text == str(traffic.expected.requests)
        assert driver.find_element(By.ID, "total-tokens").text == f"{traffic.expected.tokens:,}"
        saved = traffic.expected.uncached - traffic.expected.cost
        assert driver.find_element(By.ID, "total-savings").text == formatted_usd(saved)

        rows = driver.find_elements(By.CSS_SELECTOR, "#teams-table tbody tr")
        names = [r.find_element(By.CSS_SELECTOR, ".team-name").text for r in rows]
        assert sorted(names) == sorted(["dev", SECOND_TEAM])
        for row, name in zip(rows, names, strict=True):
            spend = row.find_elements(By.CSS_SELECTOR, "td")[1].text
            assert spend == formatted_usd(traffic.expected.by_team[name].cost)
            if name == SECOND_TEAM:  # its limits are shown against today's and this month's use
                assert f"{traffic.expected.by_team[name].tokens:,} / 50,000" in row.text
        models = driver.find_elements(By.CSS_SELECTOR, "#models-table tbody tr")
        assert sorted(r.find_element(By.CSS_SELECTOR, "td").text for r in models) == sorted(
            traffic.expected.by_model
        )
        legend = driver.find_element(By.ID, "legend-team").text
        assert "dev" in legend and SECOND_TEAM in legend
        bars = driver.find_elements(By.CSS_SELECTOR, "#chart-team rect.bar")
        assert len(bars) == 2  # today's bar, one segment per team
        assert driver.find_elements(By.CSS_SELECTOR, "#chart-model rect.bar")

        # Switching the range redraws with hourly buckets; the total is the same traffic.
        driver.find_element(By.CSS_SELECTOR, '.ranges button[data-range="24h"]').click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "unit-team"), "USD per hour"))
        assert driver.find_element(By.ID, "total-spend").text == total

        driver.find_element(By.CSS_SELECTOR, '.ranges button[data-range="7d"]').click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "unit-team"), "USD per day"))

        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors  # no CSP violations, failed loads or script errors

        _full_page_screenshot(driver, ARTIFACTS / "dashboard.png")

        driver.find_element(By.ID, "sign-out").click()
        wait.until(ec.url_contains("/dashboard/login"))
        driver.get(f"{traffic.gw.url}/dashboard")
        wait.until(ec.url_contains("/dashboard/login"))  # signed out for real
    finally:
        driver.quit()


# ---- the ops sections: routing mix, keys, end users, latency and TTFT by model, error types -----------


@dataclass
class OpsTraffic:
    gw: Gateway
    db_path: Path
    requests: int


def _ledger(db_path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db_path) as db:
        return list(db.execute(sql))


def _tollway_usage(db_path: Path, group_by: str) -> dict[str, Any]:
    """What ``tollway usage --group-by … --json`` prints for the test's ledger."""
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "usage", "--group-by", group_by, "--json",
         "--database-url", f"sqlite+aiosqlite:///{db_path}"],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


@pytest.fixture(scope="module")
def ops_traffic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpsTraffic]:
    """Named models and a route, streams, two keys, three end users and a refused model."""
    tmp = tmp_path_factory.mktemp("dashboard-ops")
    with run_gateway(tmp) as gw:
        admin = gw.admin()
        assert admin.post("/admin/teams", json={"name": "ops"}).status_code == 201
        second_key = admin.post("/admin/teams/ops/keys", json={"name": "ops-frontend"}).json()["key"]
        sent = 0
        for key, user in ((gw.team_key, "alice"), (second_key, "bob"), (second_key, "alice")):
            gpt = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)
            gpt.chat.completions.create(
                model=GPT, max_tokens=24, user=user, messages=[{"role": "user", "content": "Name a colour."}]
            )
            gpt.chat.completions.create(
                model="auto", max_tokens=24, user=user, messages=[{"role": "user", "content": "Sum 2 and 3."}]
            )
            sent += 2
        claude = anthropic.Anthropic(base_url=gw.url, api_key=second_key, max_retries=0)
        with claude.messages.stream(
            model=CLAUDE, max_tokens=32, metadata={"user_id": "carol"},
            messages=[{"role": "user", "content": "Count to five."}],
        ) as stream:  # fmt: skip
            assert stream.get_final_text()
        sent += 1
        gpt = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.team_key, max_retries=0)
        chunks = gpt.chat.completions.create(
            model=GPT, max_tokens=24, stream=True, messages=[{"role": "user", "content": "Say hi."}]
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        sent += 1
        with pytest.raises(openai.NotFoundError):
            gpt.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        sent += 1

        db_path = tmp / "tollway.db"
        deadline = time.monotonic() + 15
        with _signed_in(gw) as client:
            while _summary(client)["totals"]["requests"] < sent:
                assert time.monotonic() < deadline, "the ledger did not record the traffic in time"
                time.sleep(0.05)
        assert _ledger(db_path, "SELECT count(*) FROM usage_events") == [(sent,)]
        yield OpsTraffic(gw=gw, db_path=db_path, requests=sent)


def test_ops_sections_match_the_ledger_and_tollway_usage(ops_traffic: OpsTraffic) -> None:
    db = ops_traffic.db_path
    with _signed_in(ops_traffic.gw) as client:
        summary = _summary(client, "7d")

    routing = summary["routing"]
    [(named,)] = _ledger(db, "SELECT count(*) FROM usage_events WHERE route_reason = 'explicit'")
    [(routed,)] = _ledger(db, "SELECT count(*) FROM usage_events WHERE route_reason LIKE 'route=%'")
    [(unrouted,)] = _ledger(db, "SELECT count(*) FROM usage_events WHERE route_reason IS NULL")
    assert (routing["named"], routing["routed"], routing["unrouted"]) == (named, routed, unrouted)
    assert (named, routed) == (5, 3) and named + routed + unrouted == ops_traffic.requests
    assert routing["by_route"] == [{"route": "auto", "requests": 3}]
    catalog = ops_traffic.gw.services.catalog
    tiers: dict[str, int] = defaultdict(int)
    for model, count in _ledger(db, "SELECT served_model, count(*) FROM usage_events GROUP BY served_model"):
        tiers[catalog.models[model].tier if model else "(not served)"] += count
    assert {t["tier"]: t["requests"] for t in routing["by_tier"]} == tiers
    reasons = {r["reason"]: r["requests"] for r in routing["reasons"]}
    assert sum(reasons.values()) + routing["other_reasons"] == routed
    assert all(r.startswith("route=auto task=") and " p=" not in r for r in reasons)
    assert routing["escalations"]["total"] == 0  # the simulator's answers pass verification

    # Keys and end users: the same rows `tollway usage` prints.
    for view, group_by in (("keys", "key"), ("end_users", "end_user")):
        report = {r["group"]: r for r in _tollway_usage(db, group_by)["rows"] if r["group"]}
        shown = {r["group"]: r for r in summary[view]["rows"]}
        assert set(shown) == set(report) and summary[view]["count"] == len(report)
        for group, row in shown.items():
            want = report[group]
            assert (row["label"], row["requests"], row["errors"]) == (want["label"], want["requests"], want["errors"])
            assert Decimal(row["cost_usd"]) == Decimal(want["cost_usd"])
    assert {r["label"] for r in summary["end_users"]["rows"]} == {"alice", "bob", "carol"}
    assert len(summary["keys"]["rows"]) == 2

    # Latency and TTFT by model: the ledger's means over answered requests, per model.
    by_model = {m["model"]: m for m in summary["latency_by_model"]["models"]}
    rows = _ledger(
        db,
        "SELECT served_model, count(*), avg(latency_ms), count(ttft_ms), avg(ttft_ms) FROM usage_events"
        " WHERE status < 400 AND served_model IS NOT NULL GROUP BY served_model",
    )
    assert set(by_model) == {r[0] for r in rows}
    for model, n, latency, streams, ttft in rows:
        got = by_model[model]
        assert (got["requests"], got["streams"]) == (n, streams)
        assert got["mean_latency_ms"] == pytest.approx(latency, abs=0.001)
        assert got["mean_ttft_ms"] == (None if ttft is None else pytest.approx(ttft, abs=0.001))
        assert sum(v is not None for v in got["latency_ms"]) == 1  # all traffic fell on today
    assert sum(m["streams"] for m in by_model.values()) == 2

    errors = _ledger(db, "SELECT error_type, status, count(*) FROM usage_events WHERE status >= 400 GROUP BY 1, 2")
    assert [(e["error_type"], e["statuses"], e["requests"]) for e in summary["errors"]] == [
        (kind, {str(status): count}, count) for kind, status, count in errors
    ]
    assert summary["errors"][0]["statuses"] == {"404": 1}


def test_ops_sections_in_headless_chromium(ops_traffic: OpsTraffic, tmp_path: Path) -> None:
    webdriver, service_class = _browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    with _signed_in(ops_traffic.gw) as client:
        summary = _summary(client, "7d")
    driver = _chromium(webdriver, service_class, tmp_path)
    try:
        wait = WebDriverWait(driver, 20)
        driver.get(f"{ops_traffic.gw.url}/dashboard/login")
        driver.find_element(By.ID, "admin-key").send_keys(ops_traffic.gw.admin_key)
        driver.find_element(By.ID, "sign-in").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "total-requests"), str(ops_traffic.requests)))

        text = lambda element_id: driver.find_element(By.ID, element_id).text  # noqa: E731
        routing = summary["routing"]
        assert (text("routing-named"), text("routing-routed"), text("routing-unrouted")) == (
            str(routing["named"]), str(routing["routed"]), str(routing["unrouted"])
        )  # fmt: skip
        assert text("escalations-total") == "0"

        def table(table_id: str) -> list[list[str]]:
            rows = driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")
            return [[cell.text for cell in row.find_elements(By.CSS_SELECTOR, "td")] for row in rows]

        assert table("tiers-table") == [[t["tier"], str(t["requests"])] for t in routing["by_tier"]]
        assert table("routes-table") == [["auto", "3"]]
        assert [row[1] for row in table("reasons-table")] == [str(r["requests"]) for r in routing["reasons"]]
        assert all(row[0].startswith("route=auto task=") for row in table("reasons-table"))

        for table_id, view in (("keys-table", "keys"), ("end-users-table", "end_users")):
            assert table(table_id) == [
                [r["label"], formatted_usd(Decimal(r["cost_usd"])), str(r["requests"]), str(r["errors"]),
                 f"{r['tokens']:,}"]
                for r in summary[view]["rows"]
            ]  # fmt: skip
        assert sorted(row[0] for row in table("end-users-table")) == ["alice", "bob", "carol"]

        latency_rows = table("latency-table")
        assert [(r[0], r[1], r[3]) for r in latency_rows] == [
            (m["model"], str(m["requests"]), str(m["streams"])) for m in summary["latency_by_model"]["models"]
        ]
        assert all(r[2].endswith(("ms", " s")) for r in latency_rows)
        # One point per model in today's bucket; TTFT only for the models that streamed.
        models = len(summary["latency_by_model"]["models"])
        assert len(driver.find_elements(By.CSS_SELECTOR, "#chart-latency circle.point")) == models
        streamed = sum(1 for m in summary["latency_by_model"]["models"] if m["streams"])
        assert len(driver.find_elements(By.CSS_SELECTOR, "#chart-ttft circle.point")) == streamed == 2
        assert len(driver.find_elements(By.CSS_SELECTOR, "#legend-ttft li")) == 2

        assert table("errors-table") == [
            [e["error_type"], str(e["requests"]), ", ".join(f"{s} × {n}" for s, n in e["statuses"].items())]
            for e in summary["errors"]
        ]
        assert table("errors-table")[0][2] == "404 × 1"

        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
        _full_page_screenshot(driver, ARTIFACTS / "dashboard-ops.png")
    finally:
        driver.quit()

"""The admin API over HTTP (teams, keys, usage), its authentication and input rules, the key store's
cache across replicas, and ``GET /v1/me`` isolation between teams."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api import admin, me
from app.auth.keystore import KeyStore, KeyStoreUnavailable
from app.auth.principal import Limits, Principal
from app.auth.throttle import FailedAuthThrottle
from app.config import Settings, load_catalog
from app.db.engine import create_engine
from app.db.migrate import upgrade
from app.db.tables import api_keys, teams
from app.ledger.events import UsageEvent
from app.ledger.recorder import Recorder
from app.ledger.spool import DiskSpool
from app.teams.store import TeamStore
from tests.conftest import _create_database, _drop_database

ADMIN_KEY = "admin-" + uuid.uuid4().hex


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'admin.db'}"
        await asyncio.to_thread(upgrade, url)
        yield url
        return
    server = request.getfixturevalue("postgres_server_url")
    name = f"tollway_test_{uuid.uuid4().hex[:12]}"
    await _create_database(server, name)
    try:
        url = f"{server.rsplit('/', 1)[0]}/{name}"
        await asyncio.to_thread(upgrade, url)
        yield url
    finally:
        await _drop_database(server, name)


@pytest.fixture
async def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'admin.db'}"
    await asyncio.to_thread(upgrade, url)
    return url


@dataclass
class BudgetsSeen:
    """Stands in for the budgets pillar's limiter: records what the admin API tells it."""

    published: list[tuple[str, str | None, Limits]] = field(default_factory=list)

    async def publish_limits(self, team_id: str, key_id: str | None, limits: Limits) -> None:
        self.published.append((team_id, key_id, limits))

    async def status(self, principal: Principal) -> dict[str, Any]:
        return {"team_id": principal.team_id, "tokens_per_day": {"used": 0, "remaining": None}}


@dataclass
class Admin:
    client: httpx.AsyncClient
    services: SimpleNamespace
    engine: AsyncEngine

    def headers(self, key: str = ADMIN_KEY) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"}

    async def post(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return await self.client.post(path, json=body, headers=self.headers(), **kw)

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.client.get(path, headers=self.headers(), **kw)

    async def patch(self, path: str, body: Any) -> httpx.Response:
        return await self.client.patch(path, json=body, headers=self.headers())


async def make_admin(url: str, tmp_path: Path, *, admin_key: str | None = ADMIN_KEY) -> tuple[Admin, FastAPI]:
    engine = create_engine(url)
    services = SimpleNamespace(
        settings=Settings(admin_key=admin_key),
        catalog=load_catalog(None),
        engine=engine,
        teams=TeamStore(engine),
        keys=KeyStore(engine, ttl_s=2.0),
        recorder=Recorder(engine, spool=DiskSpool(tmp_path / "spool")),
        limiter=BudgetsSeen(),
        # The suite makes many wrong-key calls from one address on purpose; the throttle is tested alone.
        auth_throttle=FailedAuthThrottle(max_failures=1_000_000),
    )
    app = FastAPI()
    app.include_router(admin.router)
    app.include_router(me.router)
    app.state.services = services
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tollway.test")
    return Admin(client, services, engine), app


@pytest.fixture
async def api(database_url: str, tmp_path: Path) -> AsyncIterator[Admin]:
    admin_api, _ = await make_admin(database_url, tmp_path)
    yield admin_api
    await admin_api.client.aclose()
    await admin_api.services.recorder.aclose()
    await admin_api.engine.dispose()


@pytest.fixture
async def sqlite_api(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Admin]:
    admin_api, _ = await make_admin(sqlite_url, tmp_path)
    yield admin_api
    await admin_api.client.aclose()
    await admin_api.services.recorder.aclose()
    await admin_api.engine.dispose()


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error
    return dict(error)


# ---- teams and keys ----------------------------------------------------------------------------------


async def test_team_and_key_lifecycle(api: Admin) -> None:
    created = await api.post("/admin/teams", {"name": "search", "limits": {"tokens_per_day": 1_000_000}})
    assert created.status_code == 201, created.text
    team = created.json()
    assert team["name"] == "search" and team["limits"]["tokens_per_day"] == 1_000_000
    assert team["policy"]["prompt_cache"] == "auto"
    assert api.services.limiter.published[-1] == (team["id"], None, Limits(tokens_per_day=1_000_000))

    assert (await api.get(f"/admin/teams/{team['id']}")).json() == team
    assert (await api.get("/admin/teams/search")).json() == team
    listed = (await api.get("/admin/teams")).json()
    assert [t["name"] for t in listed["data"]] == ["search"]

    patched = await api.patch(
        "/admin/teams/search",
        {"limits": {"usd_per_month": "250.50"}, "policy": {"allowed_models": ["auto", "claude-haiku-5-5"]}},
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    # PATCH merges: the daily limit set at creation is still there.
    assert body["limits"]["tokens_per_day"] == 1_000_000 and body["limits"]["usd_per_month"] == "250.50"
    assert body["policy"]["allowed_models"] == ["auto", "claude-haiku-5-5"]
    assert api.services.limiter.published[-1][2] == Limits(tokens_per_day=1_000_000, usd_per_month="250.50")

    made = await api.post("/admin/teams/search/keys", {"name": "indexer", "limits": {"requests_per_minute": 60}})
    assert made.status_code == 201, made.text
    key = made.json()
    secret = key["key"]
    assert secret.startswith(key["prefix"]) and key["status"] == "active"
    principal = await api.services.keys.lookup(secret)
    assert principal is not None and principal.team_name == "search"
    assert principal.key_limits == Limits(requests_per_minute=60)
    assert principal.team_limits.usd_per_month == "250.50"
    assert principal.policy.allowed_models == frozenset({"auto", "claude-haiku-5-5"})

    key_limits = await api.patch(f"/admin/keys/{key['id']}", {"limits": {"tokens_per_minute": 5000}})
    assert key_limits.status_code == 200, key_limits.text
    assert api.services.limiter.published[-1] == (
        team["id"],
        key["id"],
        Limits(requests_per_minute=60, tokens_per_minute=5000),
    )
    refreshed = await api.services.keys.lookup(secret)
    assert refreshed is not None and refreshed.key_limits.tokens_per_minute == 5000

    rotated = await api.post(f"/admin/keys/{key['id']}/rotate")
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()
    assert new["replaces"] == key["id"] and new["key"] != secret and new["name"] == "indexer"
    assert new["limits"]["tokens_per_minute"] == 5000
    assert await api.services.keys.lookup(secret) is None
    assert (await api.services.keys.lookup(new["key"])) is not None
    assert_error(await api.post(f"/admin/keys/{key['id']}/rotate"), 409)

    statuses = {k["id"]: k["status"] for k in (await api.get("/admin/teams/search/keys")).json()["data"]}
    assert statuses == {key["id"]: "revoked", new["id"]: "active"}

    revoked = await api.post(f"/admin/keys/{new['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert await api.services.keys.lookup(new["key"]) is None

    renamed = await api.patch("/admin/teams/search", {"name": "search-v2"})
    assert renamed.json()["name"] == "search-v2" and renamed.json()["id"] == team["id"]

    deleted = await api.client.delete("/admin/teams/search-v2", headers=api.headers())
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert_error(await api.get("/admin/teams/search-v2"), 404)
    assert_error(await api.get(f"/admin/keys/{new['id']}"), 404)
    async with api.engine.connect() as conn:
        assert (await conn.execute(select(api_keys))).all() == []


async def test_admin_authentication(sqlite_url: str, tmp_path: Path) -> None:
    api, _ = await make_admin(sqlite_url, tmp_path)
    try:
        await api.services.teams.create_team("t")
        team_key = (await api.services.teams.create_key("t")).secret
        assert_error(await api.client.get("/admin/teams"), 401)
        assert_error(await api.client.get("/admin/teams", headers={"authorization": "Bearer nope"}), 401)
        assert_error(await api.client.get("/admin/teams", headers={"authorization": "Basic " + ADMIN_KEY}), 401)
        error = assert_error(await api.client.get("/admin/teams", headers=api.headers(team_key)), 403)
        assert error["type"] == "permission_error"
        assert_error(await api.client.get("/admin/usage", headers={"x-api-key": team_key}), 403)
        assert (await api.client.get("/admin/teams", headers=api.headers())).status_code == 200
        assert (await api.client.get("/admin/teams", headers={"x-api-key": ADMIN_KEY})).status_code == 200
    finally:
        await api.client.aclose()
        await api.engine.dispose()

    disabled, _ = await make_admin(sqlite_url, tmp_path, admin_key=None)
    try:
        error = assert_error(await disabled.client.get("/admin/teams", headers=api.headers()), 503)
        assert "TOLLWAY_ADMIN_KEY" in error["message"]
    finally:
        await disabled.client.aclose()
        await disabled.engine.dispose()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "ok", "limits": {"tokens_per_day": -1}}, "limits.tokens_per_day"),
        ({"name": "ok", "limits": {"usd_per_day": "-5"}}, "limits.usd_per_day"),
        ({"name": "ok", "limits": {"tokens_per_month": 10**18}}, "limits.tokens_per_month"),
        ({"name": "ok", "limits": {"usd_per_month": "1e15"}}, "limits.usd_per_month"),
        ({"name": "ok", "limits": {"tokens_per_day": True}}, "limits.tokens_per_day"),
        ({"name": "ok", "limits": {"tokens_per_day": "lots"}}, "limits.tokens_per_day"),
        ({"name": "ok", "limits": {"token_per_day": 5}}, "limits.token_per_day"),
        ({"name": "ok", "colour": "blue"}, "colour"),
        ({"name": "x" * 101}, "name"),
        ({"name": ""}, "name"),
        ({"name": " padded"}, "name"),
        ({"name": "tab\there"}, "name"),
        ({"name": "a/b"}, "name"),
        ({"name": str(uuid.uuid4())}, "name"),
        ({"name": 42}, "name"),
        ({"limits": {}}, "name"),
        ({"name": "ok", "policy": {"min_tier": "large", "max_tier": "small"}}, "policy"),
        ({"name": "ok", "policy": {"allowed_models": ["no-such-model"]}}, "policy.allowed_models"),
        ({"name": "ok", "policy": {"downgrade_at_budget_share": 1.5}}, "policy.downgrade_at_budget_share"),
    ],
)
async def test_bad_team_input_is_a_clear_400_and_writes_nothing(
    sqlite_api: Admin, body: dict[str, Any], param: str
) -> None:
    error = assert_error(await sqlite_api.post("/admin/teams", body), 400, param)
    assert error["type"] == "invalid_request_error"
    async with sqlite_api.engine.connect() as conn:
        assert (await conn.execute(select(teams))).all() == []


async def test_malformed_bodies(sqlite_api: Admin) -> None:
    api = sqlite_api
    raw = {**api.headers(), "content-type": "application/json"}
    not_utf8 = await api.client.post("/admin/teams", content=b'{"name": "caf\xe9"}', headers=raw)
    assert "UTF-8" in assert_error(not_utf8, 400)["message"]
    truncated = await api.client.post("/admin/teams", content=b'{"name": ', headers=raw)
    assert assert_error(truncated, 400)["code"] == "invalid_json"
    assert_error(await api.client.post("/admin/teams", content=b"[1, 2]", headers=raw), 400)
    assert_error(await api.client.post("/admin/teams", content=b"", headers=raw), 400)
    huge = b'{"name": "' + b"x" * 70_000 + b'"}'
    assert_error(await api.client.post("/admin/teams", content=huge, headers=raw), 413)
    async with api.engine.connect() as conn:
        assert (await conn.execute(select(teams))).all() == []


async def test_conflicts_and_missing_things(api: Admin) -> None:
    assert (await api.post("/admin/teams", {"name": "dup"})).status_code == 201
    error = assert_error(await api.post("/admin/teams", {"name": "dup"}), 409)
    assert error["type"] == "conflict_error" and "dup" in error["message"]
    await api.post("/admin/teams", {"name": "other"})
    assert_error(await api.patch("/admin/teams/other", {"name": "dup"}), 409)

    assert_error(await api.post("/admin/teams/ghost/keys", {"name": "k"}), 404)
    assert_error(await api.get("/admin/teams/ghost/keys"), 404)
    assert_error(await api.post(f"/admin/keys/{uuid.uuid4()}/revoke"), 404)
    assert_error(await api.patch(f"/admin/keys/{uuid.uuid4()}", {"limits": {}}), 404)
    assert_error(await api.patch("/admin/teams/dup", {"limits": {"tokens_per_day": -5}}), 400)
    expired = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    assert_error(await api.post("/admin/teams/dup/keys", {"expires_at": expired}), 400, "expires_at")
    async with api.engine.connect() as conn:
        assert (await conn.execute(select(api_keys))).all() == []
        names = sorted(r.name for r in (await conn.execute(select(teams))).all())
        limits = [r.limits for r in (await conn.execute(select(teams))).all()]
    assert names == ["dup", "other"]
    assert all(value["tokens_per_day"] is None for value in limits)


async def test_key_is_shown_once_and_only_its_hash_is_stored(sqlite_api: Admin) -> None:
    api = sqlite_api
    await api.post("/admin/teams", {"name": "t"})
    made = (await api.post("/admin/teams/t/keys", {"name": "ci"})).json()
    secret = made["key"]
    later = [
        await api.get("/admin/teams/t/keys"),
        await api.get(f"/admin/keys/{made['id']}"),
        await api.get("/admin/teams/t"),
        await api.post(f"/admin/keys/{made['id']}/revoke"),
    ]
    for response in later:
        assert secret not in response.text
        assert secret[len(made["prefix"]) :] not in response.text
    async with api.engine.connect() as conn:
        (row,) = (await conn.execute(select(api_keys))).all()
    assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert all(secret not in str(value) for value in row)


async def test_usage_endpoint_json_and_csv(sqlite_api: Admin) -> None:
    api = sqlite_api
    alpha = (await api.post("/admin/teams", {"name": "alpha"})).json()
    beta = (await api.post("/admin/teams", {"name": "beta"})).json()
    now = datetime.now(UTC)
    recorder: Recorder = api.services.recorder
    for i, (team, cost) in enumerate([(alpha, "0.25"), (alpha, "0.5"), (beta, "1.125")]):
        recorder.record(usage(team["id"], Decimal(cost), f"r{i}", now - timedelta(minutes=i)))
    await recorder.flush()

    report = (await api.get("/admin/usage", params={"group_by": "team"})).json()
    by_name = {row["label"]: row for row in report["rows"]}
    assert by_name["alpha"]["requests"] == 2 and by_name["alpha"]["cost_usd"] == "0.7500000000"
    assert by_name["beta"]["cost_usd"] == "1.1250000000"
    assert report["total"]["cost_usd"] == "1.8750000000" and report["total"]["requests"] == 3

    only_beta = (await api.get("/admin/usage", params={"team": "beta", "group_by": "model"})).json()
    assert only_beta["total"]["requests"] == 1

    csv_response = await api.get("/admin/usage", params={"group_by": "day", "format": "csv"})
    assert csv_response.headers["content-type"].startswith("text/csv")
    lines = csv_response.text.strip().splitlines()
    assert lines[0].startswith("group,label,requests")
    assert lines[-1].startswith("total,total,3,") and ",1.8750000000," in lines[-1]

    assert_error(await api.get("/admin/usage", params={"start": "yesterday"}), 400, "start")
    assert_error(await api.get("/admin/usage", params={"end": "2026-13-45"}), 400, "end")
    assert_error(await api.get("/admin/usage", params={"start": "2026-02-01", "end": "2026-01-01"}), 400, "end")
    assert_error(await api.get("/admin/usage", params={"group_by": "week"}), 400, "group_by")
    assert_error(await api.get("/admin/usage", params={"format": "xml"}), 400, "format")
    assert_error(await api.get("/admin/usage", params={"team": "nobody"}), 404)


def usage(team_id: str, cost: Decimal, request_id: str, at: datetime, key_id: str | None = None) -> UsageEvent:
    return UsageEvent(
        request_id=request_id,
        team_id=team_id,
        key_id=key_id,
        client_format="openai",
        requested_model="auto",
        served_model="gpt-5-mini",
        input_tokens=100,
        output_tokens=10,
        cost_usd=cost,
        uncached_cost_usd=cost,
        created_at=at,
    )


# ---- /v1/me ------------------------------------------------------------------------------------------


async def test_v1_me_shows_only_the_callers_team(api: Admin) -> None:
    store: TeamStore = api.services.teams
    alpha = await store.create_team("alpha", limits=Limits(tokens_per_day=5000))
    beta = await store.create_team("beta-secret-name")
    alpha_key = (await store.create_key("alpha")).secret
    beta_key = (await store.create_key(beta.id)).secret
    now = datetime.now(UTC)
    recorder: Recorder = api.services.recorder
    recorder.record(usage(alpha.id, Decimal("0.01"), "a1", now))
    recorder.record(usage(alpha.id, Decimal("0.02"), "a2", now))
    recorder.record(usage(beta.id, Decimal("7.77"), "b1", now))
    await recorder.flush()

    seen = await api.client.get("/v1/me", headers={"authorization": f"Bearer {alpha_key}"})
    assert seen.status_code == 200, seen.text
    body = seen.json()
    assert body["team"]["name"] == "alpha" and body["team"]["limits"]["tokens_per_day"] == 5000
    assert body["usage"]["today"]["requests"] == 2 and body["usage"]["today"]["cost_usd"] == "0.0300000000"
    assert body["usage"]["this_month"]["requests"] == 2
    assert body["budget"]["team_id"] == alpha.id
    for leak in (beta.id, beta.name, "7.77", beta_key[:11]):
        assert leak not in seen.text

    other = (await api.client.get("/v1/me", headers={"x-api-key": beta_key})).json()
    assert other["team"]["id"] == beta.id and other["usage"]["today"]["requests"] == 1
    assert alpha.id not in str(other)

    assert_error(await api.client.get("/v1/me"), 401)
    assert_error(await api.client.get("/v1/me", headers=api.headers()), 401)  # the admin key is no team
    await store.revoke_key((await store.list_keys("alpha"))[0].id)
    api.services.keys.invalidate()
    assert_error(await api.client.get("/v1/me", headers={"x-api-key": alpha_key}), 401)


# ---- the key store on the hot path -------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def count_queries(engine: AsyncEngine) -> list[str]:
    seen: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    return seen


async def test_revocation_reaches_another_replica_within_its_ttl(database_url: str) -> None:
    engine = create_engine(database_url)
    replica_b_engine = create_engine(database_url)  # another process: its own pool and cache
    try:
        store = TeamStore(engine)
        await store.create_team("t")
        created = await store.create_key("t")
        clock_a, clock_b = FakeClock(), FakeClock()
        replica_a = KeyStore(engine, ttl_s=2.0, clock=clock_a)
        replica_b = KeyStore(replica_b_engine, ttl_s=2.0, clock=clock_b)
        assert await replica_a.lookup(created.secret) is not None
        assert await replica_b.lookup(created.secret) is not None

        await store.revoke_key(created.record.id)
        replica_a.invalidate()  # the replica that served the admin call forgets at once
        assert await replica_a.lookup(created.secret) is None
        clock_b.now += 1.9
        assert await replica_b.lookup(created.secret) is not None  # still cached: within the TTL
        clock_b.now += 0.2
        assert await replica_b.lookup(created.secret) is None  # TTL passed: revoked everywhere
    finally:
        await engine.dispose()
        await replica_b_engine.dispose()


async def set_connections(postgres_url: str, allowed: bool) -> None:
    """Take a database away (no new connections, every open one terminated) or give it back."""
    server, name = postgres_url.rsplit("/", 1)
    conn = await asyncpg.connect(f"{server}/postgres".replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
    finally:
        await conn.close()


async def test_known_keys_keep_working_while_the_database_is_down(postgres_url: str) -> None:
    await asyncio.to_thread(upgrade, postgres_url)
    engine = create_engine(postgres_url)
    try:
        store = TeamStore(engine)
        await store.create_team("t")
        secret = (await store.create_key("t")).secret
        clock = FakeClock()
        keys = KeyStore(engine, ttl_s=2.0, clock=clock, max_stale_s=300)
        assert await keys.lookup(secret) is not None
        assert await keys.lookup("tw-never-valid-" + "x" * 40) is None

        await set_connections(postgres_url, allowed=False)
        clock.now += 5  # past the TTL: a refresh is due, and fails
        principal = await keys.lookup(secret)
        assert principal is not None and principal.team_name == "t"  # the last answer, served stale
        assert await keys.lookup("tw-never-valid-" + "x" * 40) is None  # so is a known-bad answer
        with pytest.raises(KeyStoreUnavailable):
            await keys.lookup("tw-never-seen-before-" + "y" * 40)  # no answer at all: cannot tell
        clock.now += 300
        with pytest.raises(KeyStoreUnavailable):
            await keys.lookup(secret)  # too old to trust any longer

        await set_connections(postgres_url, allowed=True)
        clock.now += 3
        assert await keys.lookup(secret) is not None
    finally:
        await set_connections(postgres_url, allowed=True)
        await engine.dispose()


async def test_admin_api_answers_503_while_the_database_is_down(postgres_url: str, tmp_path: Path) -> None:
    await asyncio.to_thread(upgrade, postgres_url)
    api, _ = await make_admin(postgres_url, tmp_path)
    try:
        assert (await api.get("/admin/teams")).status_code == 200
        await set_connections(postgres_url, allowed=False)
        error = assert_error(await api.post("/admin/teams", {"name": "t"}), 503)
        assert error["code"] == "database_unavailable"
        assert_error(await api.client.get("/v1/me", headers={"x-api-key": "tw-unseen-" + "z" * 40}), 503)
    finally:
        await set_connections(postgres_url, allowed=True)
        await api.client.aclose()
        await api.engine.dispose()


async def test_key_cache_serves_hits_and_misses_without_the_database(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    try:
        store = TeamStore(engine)
        await store.create_team("t")
        secret = (await store.create_key("t")).secret
        clock = FakeClock()
        keys = KeyStore(engine, ttl_s=2.0, clock=clock)
        queries = count_queries(engine)
        results = await asyncio.gather(*(keys.lookup(secret) for _ in range(50)))
        assert all(p is not None and p.team_name == "t" for p in results)
        for _ in range(50):
            assert await keys.lookup("tw-unknown-key-" + "x" * 40) is None
        assert len(queries) == 2  # one for the key (despite 50 concurrent misses), one for the bad key
        clock.now += 2.5
        assert await keys.lookup(secret) is not None
        assert len(queries) == 3
        assert await keys.lookup("") is None and await keys.lookup("x" * 1000) is None
        assert len(queries) == 3  # malformed keys never reach the database
    finally:
        await engine.dispose()


async def test_expired_key_is_refused(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    try:
        store = TeamStore(engine)
        await store.create_team("t")
        expires = datetime.now(UTC) + timedelta(hours=1)
        secret = (await store.create_key("t", expires_at=expires)).secret
        wall = [datetime.now(UTC)]
        keys = KeyStore(engine, wall_clock=lambda: wall[0])
        assert await keys.lookup(secret) is not None
        wall[0] = expires + timedelta(seconds=1)
        assert await keys.lookup(secret) is None  # even from the cache
    finally:
        await engine.dispose()


async def test_last_used_is_written_in_the_background_at_most_once_per_interval(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    try:
        store = TeamStore(engine)
        await store.create_team("t")
        created = await store.create_key("t")
        clock = FakeClock()
        keys = KeyStore(engine, clock=clock, touch_interval_s=60)
        queries = count_queries(engine)
        for _ in range(100):
            await keys.touch_last_used(created.record.id)
        await keys.aclose()  # waits for the background write
        updates = [q for q in queries if q.lstrip().upper().startswith("UPDATE")]
        assert len(updates) == 1
        assert (await store.get_key(created.record.id)).last_used_at is not None
        clock.now += 61
        await keys.touch_last_used(created.record.id)
        await keys.aclose()
        assert len([q for q in queries if q.lstrip().upper().startswith("UPDATE")]) == 2
    finally:
        await engine.dispose()

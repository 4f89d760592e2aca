"""Key (or browser token) → ``Principal`` on the hot path, cached in process.

A browser token (``twb_…``, docs/browser.md) resolves to its team's principal with the minting key's
id and limits and a ``BrowserGrant`` (end user, origins, models, budget, expiry); it is refused with a
message saying why when it, or the key that minted it, is revoked or expired.

Every request presents a key; looking it up in the database each time would put the database on the
request path. Instead each process caches the answer (hits *and* misses, so a flood of bad keys does
not reach the database either) for ``ttl_s`` seconds. There is no cross-replica invalidation message:
a revoked or re-limited key simply ages out of every replica's cache within ``ttl_s`` (2 s by
default), which is the bound the docs promise. ``invalidate()`` drops entries in *this* process at
once, for the admin API's own replica.

**Database outages.** The request path must not need the database. When a refresh fails (the
database is down, slow or restarting), the last answer for that key keeps being served — for at
most ``max_stale_s`` (5 minutes) past its TTL, retrying the database once per ``ttl_s`` — so an
outage does not turn valid keys into errors. Nobody can revoke a key during the outage anyway (the
admin API needs the database too). A key never seen before, or one whose answer is older than
that, raises ``KeyStoreUnavailable`` (the gateway answers 503).

``last_used_at`` is written in the background, at most once per ``touch_interval_s`` per key, in
one statement for all keys due.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth.keys import hash_key, is_browser_token, looks_like_key
from app.auth.principal import BrowserGrant, Principal
from app.auth.records import limits_from_json, policy_from_json
from app.db.tables import api_keys, browser_tokens, teams

log = logging.getLogger(__name__)

MAX_CACHE_ENTRIES = 100_000
DB_TIMEOUT_S = 2.0


class KeyStoreUnavailable(Exception):
    """The database cannot be asked and there is no recent enough answer for this key."""


class CredentialRejected(Exception):
    """A presented key or browser token is not valid now; the message tells the client why."""


INVALID_KEY = "invalid API key"


@dataclass(slots=True)
class _Entry:
    principal: Principal | None
    expires_at: datetime | None  # the key's own expiry (wall clock)
    cached_until: float  # monotonic: ask the database again after this
    loaded_at: float  # monotonic: when the database last confirmed this answer
    rejection: str = INVALID_KEY  # why, when principal is None
    expired: str = INVALID_KEY  # what to say once expires_at has passed


def _now_utc() -> datetime:
    return datetime.now(UTC)


class KeyStore:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        ttl_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = _now_utc,
        touch_interval_s: float = 60.0,
        max_entries: int = MAX_CACHE_ENTRIES,
        max_stale_s: float = 300.0,
        db_timeout_s: float = DB_TIMEOUT_S,
    ) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self.max_stale_s = max_stale_s
        self.db_timeout_s = db_timeout_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._touch_interval_s = touch_interval_s
        self._max_entries = max_entries
        self._cache: dict[str, _Entry] = {}
        # One database query per key however many requests miss the cache at the same moment.
        self._inflight: dict[str, asyncio.Future[_Entry]] = {}
        self._last_touched: dict[str, float] = {}
        self._touch_due: dict[str, datetime] = {}
        self._touch_task: asyncio.Task[None] | None = None

    async def lookup(self, secret: str) -> Principal | None:
        """The principal for a presented *team key*, or None if it is unknown, revoked or expired
        (browser tokens are None here: only the chat endpoints accept them, through ``identify``).
        Raises ``KeyStoreUnavailable`` only when the database is unreachable and this key has no
        answer younger than ``ttl_s + max_stale_s``."""
        if is_browser_token(secret):
            return None
        try:
            return await self.identify(secret)
        except CredentialRejected:
            return None

    async def identify(self, secret: str) -> Principal:
        """The principal for a team key or a browser token (``twb_…``, carrying its ``BrowserGrant``).
        Raises ``CredentialRejected`` saying why it is not valid (unknown, revoked, expired), and
        ``KeyStoreUnavailable`` as ``lookup`` does."""
        if not looks_like_key(secret):
            raise CredentialRejected(INVALID_KEY)
        secret_hash = hash_key(secret)
        entry = self._cache.get(secret_hash)
        if entry is None or entry.cached_until <= self._clock():
            entry = await self._refresh(secret_hash, entry, browser=is_browser_token(secret))
        if entry.principal is None:
            raise CredentialRejected(entry.rejection)
        if entry.expires_at is not None and entry.expires_at <= self._wall_clock():
            raise CredentialRejected(entry.expired)
        return entry.principal

    async def _refresh(self, secret_hash: str, stale: _Entry | None, *, browser: bool) -> _Entry:
        try:
            return await self._load_once(secret_hash, browser=browser)
        except Exception as exc:
            now = self._clock()
            if stale is None or now - stale.loaded_at > self.ttl_s + self.max_stale_s:
                raise KeyStoreUnavailable(f"cannot look up the key: the database is unavailable ({exc})") from exc
            # Serve the last answer, and ask the database again one TTL from now (not on every
            # request: a database that is down should not also be hammered).
            stale.cached_until = now + self.ttl_s
            log.warning("key lookup failed (%s); serving the cached answer", type(exc).__name__)
            return stale

    async def _load_once(self, secret_hash: str, *, browser: bool) -> _Entry:
        pending = self._inflight.get(secret_hash)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        self._inflight[secret_hash] = future
        try:
            entry = await (self._load_browser_token(secret_hash) if browser else self._load(secret_hash))
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters (if any) re-raise it themselves
            raise
        finally:
            self._inflight.pop(secret_hash, None)
        future.set_result(entry)
        self._store(secret_hash, entry)
        return entry

    async def _load(self, secret_hash: str) -> _Entry:
        query = (
            select(
                api_keys.c.id,
                api_keys.c.prefix,
                api_keys.c.secret_hash,
                api_keys.c.limits.label("key_limits"),
                api_keys.c.expires_at,
                api_keys.c.revoked_at,
                teams.c.id.label("team_id"),
                teams.c.name.label("team_name"),
                teams.c.limits.label("team_limits"),
                teams.c.policy,
            )
            .join(teams, teams.c.id == api_keys.c.team_id)
            .where(api_keys.c.secret_hash == secret_hash)
        )
        async with asyncio.timeout(self.db_timeout_s), self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        loaded_at = self._clock()
        cached_until = loaded_at + self.ttl_s
        # The index lookup already matched the hash; comparing again in constant time means no code
        # path ever branches early on how much of a presented credential matched.
        if row is None or not hmac.compare_digest(row.secret_hash, secret_hash) or row.revoked_at is not None:
            return _Entry(principal=None, expires_at=None, cached_until=cached_until, loaded_at=loaded_at)
        principal = Principal(
            team_id=row.team_id,
            team_name=row.team_name,
            key_id=row.id,
            key_prefix=row.prefix,
            policy=policy_from_json(row.policy),
            team_limits=limits_from_json(row.team_limits),
            key_limits=limits_from_json(row.key_limits),
        )
        return _Entry(principal=principal, expires_at=row.expires_at, cached_until=cached_until, loaded_at=loaded_at)

    async def _load_browser_token(self, secret_hash: str) -> _Entry:
        query = (
            select(
                browser_tokens.c.id,
                browser_tokens.c.secret_hash,
                browser_tokens.c.end_user,
                browser_tokens.c.allowed_origins,
                browser_tokens.c.allowed_models,
                browser_tokens.c.token_budget,
                browser_tokens.c.expires_at,
                browser_tokens.c.revoked_at,
                api_keys.c.id.label("key_id"),
                api_keys.c.prefix.label("key_prefix"),
                api_keys.c.limits.label("key_limits"),
                api_keys.c.expires_at.label("key_expires_at"),
                api_keys.c.revoked_at.label("key_revoked_at"),
                teams.c.id.label("team_id"),
                teams.c.name.label("team_name"),
                teams.c.limits.label("team_limits"),
                teams.c.policy,
            )
            .join(api_keys, api_keys.c.id == browser_tokens.c.key_id)
            .join(teams, teams.c.id == browser_tokens.c.team_id)
            .where(browser_tokens.c.secret_hash == secret_hash)
        )
        async with asyncio.timeout(self.db_timeout_s), self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        loaded_at = self._clock()
        cached_until = loaded_at + self.ttl_s
        rejection = browser_token_rejection(row, secret_hash)
        if row is None or rejection is not None:
            return _Entry(None, None, cached_until, loaded_at, rejection=rejection or "invalid browser token")
        grant = BrowserGrant(
            token_id=row.id,
            end_user=row.end_user,
            allowed_origins=frozenset(row.allowed_origins),
            allowed_models=frozenset(row.allowed_models) if row.allowed_models is not None else None,
            token_budget=int(row.token_budget),
            expires_at=row.expires_at,
        )
        principal = Principal(
            team_id=row.team_id,
            team_name=row.team_name,
            key_id=row.key_id,
            key_prefix=row.key_prefix,
            policy=policy_from_json(row.policy),
            team_limits=limits_from_json(row.team_limits),
            key_limits=limits_from_json(row.key_limits),
            browser=grant,
        )
        key_expires = row.key_expires_at
        if key_expires is not None and key_expires < row.expires_at:
            expired = "the API key that minted this browser token has expired"
            return _Entry(principal, key_expires, cached_until, loaded_at, expired=expired)
        expired = f"browser token expired at {row.expires_at.isoformat()}: ask your backend for a new one"
        return _Entry(principal, row.expires_at, cached_until, loaded_at, expired=expired)

    def _store(self, secret_hash: str, entry: _Entry) -> None:
        if len(self._cache) >= self._max_entries:
            now = self._clock()
            for stale in [h for h, e in self._cache.items() if e.cached_until <= now]:
                del self._cache[stale]
            while len(self._cache) >= self._max_entries:  # still full of live entries: oldest out
                del self._cache[next(iter(self._cache))]
        self._cache[secret_hash] = entry

    def invalidate(self, secret_hash: str | None = None) -> None:
        """Forget one cached key (by hash), or every cached key. This process only."""
        if secret_hash is None:
            self._cache.clear()
        else:
            self._cache.pop(secret_hash, None)

    # ---- last_used_at ---------------------------------------------------------------------------

    async def touch_last_used(self, key_id: str) -> None:
        """Note that a key was used. Never waits for the database: at most once per
        ``touch_interval_s`` per key it queues an update that a background task writes."""
        now = self._clock()
        last = self._last_touched.get(key_id)
        if last is not None and now - last < self._touch_interval_s:
            return
        self._last_touched[key_id] = now
        self._touch_due[key_id] = self._wall_clock()
        if self._touch_task is None or self._touch_task.done():
            self._touch_task = asyncio.create_task(self._write_touches(), name="tollway-key-touch")

    async def flush_last_used(self) -> int:
        """Write the queued ``last_used_at`` updates now; return how many keys were updated."""
        due, self._touch_due = self._touch_due, {}
        if not due:
            return 0
        statement = (
            update(api_keys).where(api_keys.c.id == bindparam("key_id")).values(last_used_at=bindparam("used_at"))
        )
        params: list[dict[str, Any]] = [{"key_id": k, "used_at": t} for k, t in due.items()]
        async with self.engine.begin() as conn:
            await conn.execute(statement, params)
        return len(params)

    async def _write_touches(self) -> None:
        try:
            await self.flush_last_used()
        except Exception:  # best effort: last_used_at is informational, never worth a failure
            log.warning("could not update api key last_used_at", exc_info=True)

    async def aclose(self) -> None:
        if self._touch_task is not None:
            with contextlib.suppress(Exception):
                await self._touch_task
        with contextlib.suppress(Exception):
            await self.flush_last_used()


def browser_token_rejection(row: Any, secret_hash: str) -> str | None:
    """Why a browser token's row does not authenticate (None: it does, expiry aside)."""
    if row is None or not hmac.compare_digest(row.secret_hash, secret_hash):
        return "invalid browser token"
    if row.revoked_at is not None:
        return "this browser token was revoked"
    if row.key_revoked_at is not None:
        return "the API key that minted this browser token was revoked"
    return None

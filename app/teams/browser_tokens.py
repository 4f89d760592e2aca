"""Browser tokens in the database: minted by a team's backend, revoked by it or by an admin.

A token row stores the SHA-256 of the secret (the secret is returned once, at minting), the end user
it was minted for, the origins and models it allows, its token budget and its expiry. Expired rows
are useless but harmless; the store deletes those expired for more than ``RETAIN_EXPIRED`` at most
once per ``PRUNE_EVERY_S`` per process, while minting, so the table stays the size of a day's tokens.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.auth.keys import generate_browser_token
from app.db.tables import browser_tokens
from app.teams.store import NotFound

RETAIN_EXPIRED = timedelta(days=1)
PRUNE_EVERY_S = 600.0


class BrowserTokenNotFound(NotFound):
    def __init__(self, token_id: str) -> None:
        super().__init__(f"no browser token with id '{token_id}'")


@dataclass(frozen=True, slots=True)
class BrowserTokenRecord:
    id: str
    team_id: str
    key_id: str
    prefix: str
    end_user: str
    allowed_origins: tuple[str, ...]
    allowed_models: tuple[str, ...] | None
    token_budget: int
    expires_at: datetime
    revoked_at: datetime | None
    created_at: datetime
    secret_hash: str

    @classmethod
    def from_row(cls, row: Any) -> BrowserTokenRecord:
        return cls(
            id=row.id,
            team_id=row.team_id,
            key_id=row.key_id,
            prefix=row.prefix,
            end_user=row.end_user,
            allowed_origins=tuple(row.allowed_origins),
            allowed_models=tuple(row.allowed_models) if row.allowed_models is not None else None,
            token_budget=int(row.token_budget),
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            created_at=row.created_at,
            secret_hash=row.secret_hash,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "object": "browser_token",
            "id": self.id,
            "prefix": self.prefix,
            "team_id": self.team_id,
            "key_id": self.key_id,
            "end_user": self.end_user,
            "allowed_origins": list(self.allowed_origins),
            "allowed_models": list(self.allowed_models) if self.allowed_models is not None else None,
            "max_tokens_budget": self.token_budget,
            "expires_at": self.expires_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "created_at": self.created_at.isoformat(),
        }


def _now_utc() -> datetime:
    return datetime.now(UTC)


class BrowserTokenStore:
    def __init__(self, engine: AsyncEngine, *, now: Callable[[], datetime] = _now_utc) -> None:
        self.engine = engine
        self._now = now
        self._last_prune = 0.0

    async def create(
        self,
        *,
        team_id: str,
        key_id: str,
        end_user: str,
        allowed_origins: tuple[str, ...],
        allowed_models: tuple[str, ...] | None,
        token_budget: int,
        ttl_s: int,
    ) -> tuple[BrowserTokenRecord, str]:
        """A new token and its secret (shown once)."""
        new = generate_browser_token()
        now = self._now()
        token_id = str(uuid.uuid4())
        row: dict[str, Any] = {
            "id": token_id,
            "team_id": team_id,
            "key_id": key_id,
            "prefix": new.prefix,
            "secret_hash": new.secret_hash,
            "end_user": end_user,
            "allowed_origins": list(allowed_origins),
            "allowed_models": list(allowed_models) if allowed_models is not None else None,
            "token_budget": token_budget,
            "expires_at": now + timedelta(seconds=ttl_s),
            "revoked_at": None,
            "created_at": now,
        }
        async with self.engine.begin() as conn:
            await conn.execute(browser_tokens.insert().values(**row))
            if time.monotonic() - self._last_prune >= PRUNE_EVERY_S:
                self._last_prune = time.monotonic()
                await conn.execute(delete(browser_tokens).where(browser_tokens.c.expires_at < now - RETAIN_EXPIRED))
            record = await self._get(conn, token_id)
        return record, new.secret

    async def get(self, token_id: str) -> BrowserTokenRecord:
        async with self.engine.connect() as conn:
            return await self._get(conn, token_id)

    async def revoke(self, token_id: str) -> BrowserTokenRecord:
        """Revoke (idempotent: a revoked token keeps its first revocation time)."""
        async with self.engine.begin() as conn:
            record = await self._get(conn, token_id)
            if record.revoked_at is None:
                await conn.execute(
                    update(browser_tokens).where(browser_tokens.c.id == token_id).values(revoked_at=self._now())
                )
                record = await self._get(conn, token_id)
        return record

    @staticmethod
    async def _get(conn: AsyncConnection, token_id: str) -> BrowserTokenRecord:
        row = (await conn.execute(select(browser_tokens).where(browser_tokens.c.id == token_id))).first()
        if row is None:
            raise BrowserTokenNotFound(token_id)
        return BrowserTokenRecord.from_row(row)

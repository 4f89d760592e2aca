"""Teams and API keys in the database.

Every method is one transaction: a failure anywhere (a duplicate name, a missing team, a lost
connection) writes nothing. The store takes already-validated values (``app/teams/schemas.py``
validates what comes from outside) and raises ``NotFound`` / ``Conflict`` subclasses that the admin
API and the CLI turn into 404 / 409.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.auth.keys import generate_key, hash_key, key_prefix
from app.auth.principal import Limits, TeamPolicy
from app.auth.records import (
    CreatedKey,
    KeyRecord,
    TeamRecord,
    limits_to_json,
    policy_to_json,
)
from app.db.tables import api_keys, teams


class StoreError(Exception):
    pass


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass


class TeamNotFound(NotFound):
    def __init__(self, ref: str) -> None:
        super().__init__(f"no team with id or name '{ref}'")


class KeyNotFound(NotFound):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"no key with id '{key_id}'")


class TeamNameTaken(Conflict):
    def __init__(self, name: str) -> None:
        super().__init__(f"a team named '{name}' already exists")


class KeyRevoked(Conflict):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"key '{key_id}' is revoked and cannot be rotated or changed")


class _Unset:
    """Marks an argument that was not given (``None`` is a value: 'clear it')."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


def _now_utc() -> datetime:
    return datetime.now(UTC)


class TeamStore:
    def __init__(self, engine: AsyncEngine, *, now: Callable[[], datetime] = _now_utc) -> None:
        self.engine = engine
        self._now = now

    # ---- teams ----------------------------------------------------------------------------------

    async def create_team(
        self, name: str, *, limits: Limits | None = None, policy: TeamPolicy | None = None
    ) -> TeamRecord:
        now = self._now()
        team_id = str(uuid.uuid4())
        row = {
            "id": team_id,
            "name": name,
            "limits": limits_to_json(limits or Limits()),
            "policy": policy_to_json(policy or TeamPolicy()),
            "created_at": now,
            "updated_at": now,
        }
        try:
            async with self.engine.begin() as conn:
                if await self._team_id_by_name(conn, name) is not None:
                    raise TeamNameTaken(name)
                await conn.execute(teams.insert().values(**row))
        except IntegrityError as exc:  # a concurrent create won the race for the name
            raise TeamNameTaken(name) from exc
        return await self.get_team(team_id)

    async def list_teams(self) -> list[TeamRecord]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(teams).order_by(teams.c.name))).all()
        return [TeamRecord.from_row(r) for r in rows]

    async def get_team(self, ref: str) -> TeamRecord:
        """A team by id or name."""
        async with self.engine.connect() as conn:
            return await self._get_team(conn, ref)

    async def find_team(self, ref: str) -> TeamRecord | None:
        try:
            return await self.get_team(ref)
        except TeamNotFound:
            return None

    async def update_team(
        self,
        ref: str,
        *,
        name: str | None = None,
        limits: Limits | None = None,
        policy: TeamPolicy | None = None,
    ) -> TeamRecord:
        try:
            async with self.engine.begin() as conn:
                team = await self._get_team(conn, ref)
                values: dict[str, Any] = {"updated_at": self._now()}
                if name is not None and name != team.name:
                    if await self._team_id_by_name(conn, name) is not None:
                        raise TeamNameTaken(name)
                    values["name"] = name
                if limits is not None:
                    values["limits"] = limits_to_json(limits)
                if policy is not None:
                    values["policy"] = policy_to_json(policy)
                await conn.execute(update(teams).where(teams.c.id == team.id).values(**values))
                return await self._get_team(conn, team.id)
        except IntegrityError as exc:
            raise TeamNameTaken(name or ref) from exc

    async def delete_team(self, ref: str) -> TeamRecord:
        """Delete a team and its keys. Its usage rows stay in the ledger."""
        async with self.engine.begin() as conn:
            team = await self._get_team(conn, ref)
            # Explicit rather than relying on ON DELETE CASCADE: SQLite only honours it when the
            # connection enabled foreign keys.
            await conn.execute(api_keys.delete().where(api_keys.c.team_id == team.id))
            await conn.execute(teams.delete().where(teams.c.id == team.id))
        return team

    # ---- keys -----------------------------------------------------------------------------------

    async def create_key(
        self,
        team_ref: str,
        *,
        name: str | None = None,
        limits: Limits | None = None,
        expires_at: datetime | None = None,
    ) -> CreatedKey:
        new = generate_key()
        async with self.engine.begin() as conn:
            team = await self._get_team(conn, team_ref)
            key_id = await self._insert_key(
                conn, team.id, new.prefix, new.secret_hash, name=name, limits=limits, expires_at=expires_at
            )
            record = await self._get_key(conn, key_id)
        return CreatedKey(record=record, secret=new.secret)

    async def list_keys(self, team_ref: str, *, include_revoked: bool = True) -> list[KeyRecord]:
        async with self.engine.connect() as conn:
            team = await self._get_team(conn, team_ref)
            query = select(api_keys).where(api_keys.c.team_id == team.id)
            if not include_revoked:
                query = query.where(api_keys.c.revoked_at.is_(None))
            rows = (await conn.execute(query.order_by(api_keys.c.created_at, api_keys.c.id))).all()
        return [KeyRecord.from_row(r) for r in rows]

    async def get_key(self, key_id: str) -> KeyRecord:
        async with self.engine.connect() as conn:
            return await self._get_key(conn, key_id)

    async def revoke_key(self, key_id: str) -> KeyRecord:
        """Revoke a key (idempotent: revoking a revoked key keeps its first revocation time)."""
        async with self.engine.begin() as conn:
            key = await self._get_key(conn, key_id)
            if key.revoked_at is None:
                await conn.execute(update(api_keys).where(api_keys.c.id == key.id).values(revoked_at=self._now()))
                key = await self._get_key(conn, key.id)
        return key

    async def rotate_key(self, key_id: str) -> CreatedKey:
        """A new secret for the same team, name, limits and expiry; the old key is revoked. Both
        happen in one transaction, so there is never a moment with neither or both half-done."""
        new = generate_key()
        async with self.engine.begin() as conn:
            old = await self._get_key(conn, key_id)
            if old.revoked_at is not None:
                raise KeyRevoked(key_id)
            new_id = await self._insert_key(
                conn,
                old.team_id,
                new.prefix,
                new.secret_hash,
                name=old.name,
                limits=old.limits,
                expires_at=old.expires_at,
            )
            await conn.execute(update(api_keys).where(api_keys.c.id == old.id).values(revoked_at=self._now()))
            record = await self._get_key(conn, new_id)
        return CreatedKey(record=record, secret=new.secret)

    async def update_key(
        self,
        key_id: str,
        *,
        name: str | None = UNSET,
        limits: Limits | None = UNSET,
        expires_at: datetime | None = UNSET,
    ) -> KeyRecord:
        async with self.engine.begin() as conn:
            key = await self._get_key(conn, key_id)
            if key.revoked_at is not None:
                raise KeyRevoked(key_id)
            values: dict[str, Any] = {}
            if name is not UNSET:
                values["name"] = name
            if limits is not UNSET:
                values["limits"] = limits_to_json(limits or Limits())
            if expires_at is not UNSET:
                values["expires_at"] = expires_at
            if values:
                await conn.execute(update(api_keys).where(api_keys.c.id == key.id).values(**values))
            return await self._get_key(conn, key.id)

    async def ensure_seed(self, name: str, keys: list[str]) -> TeamRecord:
        """Create a team declared in config (``seed_teams``) and register its literal keys, by hash.
        Idempotent: run it at every start-up."""
        team = await self.find_team(name)
        if team is None:
            try:
                team = await self.create_team(name)
            except TeamNameTaken:  # another replica seeded it first
                team = await self.get_team(name)
        for secret in keys:
            secret_hash = hash_key(secret)
            try:
                async with self.engine.begin() as conn:
                    exists = await conn.scalar(select(api_keys.c.id).where(api_keys.c.secret_hash == secret_hash))
                    if exists is None:
                        await self._insert_key(conn, team.id, key_prefix(secret), secret_hash, name="seed")
            except IntegrityError:  # seeded concurrently
                pass
        return team

    # ---- helpers --------------------------------------------------------------------------------

    async def _insert_key(
        self,
        conn: AsyncConnection,
        team_id: str,
        prefix: str,
        secret_hash: str,
        *,
        name: str | None,
        limits: Limits | None = None,
        expires_at: datetime | None = None,
    ) -> str:
        key_id = str(uuid.uuid4())
        await conn.execute(
            api_keys.insert().values(
                id=key_id,
                team_id=team_id,
                name=name,
                prefix=prefix,
                secret_hash=secret_hash,
                limits=limits_to_json(limits or Limits()),
                expires_at=expires_at,
                created_at=self._now(),
            )
        )
        return key_id

    @staticmethod
    async def _team_id_by_name(conn: AsyncConnection, name: str) -> str | None:
        return await conn.scalar(select(teams.c.id).where(teams.c.name == name))

    @staticmethod
    async def _get_team(conn: AsyncConnection, ref: str) -> TeamRecord:
        rows = (await conn.execute(select(teams).where(or_(teams.c.id == ref, teams.c.name == ref)))).all()
        if not rows:
            raise TeamNotFound(ref)
        # An id match wins over a name match (names cannot look like ids, but be explicit).
        row = next((r for r in rows if r.id == ref), rows[0])
        return TeamRecord.from_row(row)

    @staticmethod
    async def _get_key(conn: AsyncConnection, key_id: str) -> KeyRecord:
        row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        if row is None:
            raise KeyNotFound(key_id)
        return KeyRecord.from_row(row)

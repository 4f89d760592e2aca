"""Teams and keys as the store returns them, and their JSON columns ↔ ``Limits`` / ``TeamPolicy``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any, Literal

from app.auth.principal import Limits, TeamPolicy

KeyStatus = Literal["active", "revoked", "expired"]

_LIMIT_FIELDS = frozenset(f.name for f in fields(Limits))
_POLICY_FIELDS = frozenset(f.name for f in fields(TeamPolicy))


def limits_to_json(limits: Limits) -> dict[str, Any]:
    return asdict(limits)


def limits_from_json(data: dict[str, Any] | None) -> Limits:
    # Unknown keys are ignored so a row written by a newer Tollway still loads.
    return Limits(**{k: v for k, v in (data or {}).items() if k in _LIMIT_FIELDS})


def policy_to_json(policy: TeamPolicy) -> dict[str, Any]:
    data = asdict(policy)
    if policy.allowed_models is not None:
        data["allowed_models"] = sorted(policy.allowed_models)
    return data


def policy_from_json(data: dict[str, Any] | None) -> TeamPolicy:
    values = {k: v for k, v in (data or {}).items() if k in _POLICY_FIELDS}
    if values.get("allowed_models") is not None:
        values["allowed_models"] = frozenset(values["allowed_models"])
    return TeamPolicy(**values)


@dataclass(frozen=True, slots=True)
class TeamRecord:
    id: str
    name: str
    limits: Limits
    policy: TeamPolicy
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> TeamRecord:
        return cls(
            id=row.id,
            name=row.name,
            limits=limits_from_json(row.limits),
            policy=policy_from_json(row.policy),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "limits": limits_to_json(self.limits),
            "policy": policy_to_json(self.policy),
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key as listed: the prefix only. The secret exists only in ``CreatedKey``."""

    id: str
    team_id: str
    name: str | None
    prefix: str
    limits: Limits
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> KeyRecord:
        return cls(
            id=row.id,
            team_id=row.team_id,
            name=row.name,
            prefix=row.prefix,
            limits=limits_from_json(row.limits),
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            last_used_at=row.last_used_at,
            created_at=row.created_at,
        )

    def status(self, now: datetime) -> KeyStatus:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def to_json(self, now: datetime) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": self.id,
            "team_id": self.team_id,
            "name": self.name,
            "prefix": self.prefix,
            "status": self.status(now),
            "limits": limits_to_json(self.limits),
            "expires_at": iso(self.expires_at),
            "revoked_at": iso(self.revoked_at),
            "last_used_at": iso(self.last_used_at),
            "created_at": iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A key just made: the record plus the secret, which is never available again."""

    record: KeyRecord
    secret: str

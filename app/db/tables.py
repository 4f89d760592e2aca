"""The tables, as SQLAlchemy Core (not ORM): the ledger inserts thousands of rows a second in
multi-row statements, and Core keeps that a single compiled statement with no identity map.

Two portable column types keep PostgreSQL and SQLite answering the same:

* ``UTCDateTime`` — always timezone-aware UTC in Python. SQLite has no timestamp type, so values are
  stored as naive UTC text (which sorts and buckets correctly with ``strftime``).
* ``Money`` — USD as ``Decimal``. PostgreSQL stores ``NUMERIC(20,10)``; SQLite has no decimal type
  (its NUMERIC is a float), so it stores an integer count of 1e-10 USD. Integer ``SUM`` is exact,
  which keeps report totals equal to the sum of the rows on both backends.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

MONEY_SCALE = 10
MONEY_QUANTUM = Decimal(1).scaleb(-MONEY_SCALE)  # 0.0000000001
_MONEY_UNITS = Decimal(10) ** MONEY_SCALE


def quantize_money(value: Decimal) -> Decimal:
    return value.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always aware UTC in Python; naive input is taken to be UTC already."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # SQLite expressions (MIN/MAX) come back as text
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Money(TypeDecorator[Decimal]):
    """USD as an exact Decimal with 10 decimal places (see the module docstring)."""

    impl = Numeric(20, MONEY_SCALE)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(20, MONEY_SCALE, asdecimal=True))

    def process_bind_param(self, value: Decimal | int | str | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        amount = quantize_money(Decimal(value))
        if dialect.name == "sqlite":
            return int(amount * _MONEY_UNITS)
        return amount

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return quantize_money(Decimal(int(value)) / _MONEY_UNITS)
        return quantize_money(Decimal(value))


def json_type() -> TypeEngine[Any]:
    return JSON().with_variant(JSONB(), "postgresql")


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

teams = Table(
    "teams",
    metadata,
    Column("id", String(36), primary_key=True),  # uuid4 as text: portable across both backends
    Column("name", String(100), nullable=False, unique=True),
    Column("limits", json_type(), nullable=False),  # fields of app.auth.principal.Limits
    Column("policy", json_type(), nullable=False),  # fields of app.auth.principal.TeamPolicy
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("team_id", String(36), ForeignKey("teams.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("name", String(100), nullable=True),
    Column("prefix", String(16), nullable=False),  # the visible start of the key, e.g. "tw-ab12cd34"
    Column("secret_hash", String(64), nullable=False, unique=True),  # sha256 hex; never the secret
    Column("limits", json_type(), nullable=False),  # per-key Limits
    Column("expires_at", UTCDateTime(), nullable=True),
    Column("revoked_at", UTCDateTime(), nullable=True),
    Column("last_used_at", UTCDateTime(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
)

# Short-lived tokens minted for browsers (docs/browser.md); the secret is stored as its SHA-256 only.
browser_tokens = Table(
    "browser_tokens",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("team_id", String(36), ForeignKey("teams.id", ondelete="CASCADE"), nullable=False, index=True),
    # The key that minted it: its limits apply too, and revoking it ends the token.
    Column("key_id", String(36), ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("prefix", String(16), nullable=False),  # "twb_" + 8 characters
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("end_user", String(256), nullable=False),
    Column("allowed_origins", json_type(), nullable=False),  # list of normalised origins
    Column("allowed_models", json_type(), nullable=True),  # list of model or route names; null: the team's
    Column("token_budget", BigInteger, nullable=False),  # tokens, over the token's whole life
    Column("expires_at", UTCDateTime(), nullable=False, index=True),
    Column("revoked_at", UTCDateTime(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
)

# One row per request. On PostgreSQL the table is partitioned by month on created_at, so the
# primary key has to include it: (request_id, created_at). A replay carries the created_at the
# event was made with, so it hits the same row and ON CONFLICT DO NOTHING skips it. SQLite is not
# partitioned and additionally has a unique index on request_id alone (created in migration 0001).
usage_events = Table(
    "usage_events",
    metadata,
    Column("request_id", String(128), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("team_id", String(36), nullable=True),  # no FK: the ledger outlives deleted teams
    Column("key_id", String(36), nullable=True),
    Column("client_format", String(16), nullable=False),
    Column("requested_model", String(200), nullable=False),
    Column("served_model", String(200), nullable=True),
    Column("provider", String(100), nullable=True),
    Column("route_reason", String(200), nullable=True),
    Column("attempts", Integer, nullable=False, default=1),
    Column("input_tokens", BigInteger, nullable=False, default=0),
    Column("output_tokens", BigInteger, nullable=False, default=0),
    Column("cache_write_5m_tokens", BigInteger, nullable=False, default=0),
    Column("cache_write_1h_tokens", BigInteger, nullable=False, default=0),
    Column("cache_read_tokens", BigInteger, nullable=False, default=0),
    Column("cost_usd", Money(), nullable=False),
    Column("uncached_cost_usd", Money(), nullable=False),
    Column("latency_ms", Float, nullable=False, default=0.0),
    Column("ttft_ms", Float, nullable=True),
    Column("status", Integer, nullable=False),
    Column("error_type", String(100), nullable=True),
    Column("stop_reason", String(50), nullable=True),
    Column("streamed", Boolean, nullable=False, default=False),
    Column("aborted", Boolean, nullable=False, default=False),
    Column("response_cache_hit", Boolean, nullable=False, default=False),
    Column("end_user", String(200), nullable=True),  # migration 0002
    Column("usage_flag", String(50), nullable=True),  # migration 0002
    PrimaryKeyConstraint("request_id", "created_at", name="pk_usage_events"),
    Index("ix_usage_events_team_id_created_at", "team_id", "created_at"),
    Index("ix_usage_events_created_at", "created_at"),
    Index("ix_usage_events_served_model_created_at", "served_model", "created_at"),
    Index("ix_usage_events_key_id_created_at", "key_id", "created_at"),
    postgresql_partition_by="RANGE (created_at)",
)

# Usage events the database refused even after escaping (migration 0002): kept, never dropped.
ledger_dead_letters = Table(
    "ledger_dead_letters",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("request_id", String(128), nullable=True),
    Column("failed_at", UTCDateTime(), nullable=False),
    Column("error", Text(), nullable=False),
    Column("event_json", Text(), nullable=False),  # UsageEvent.to_json_dict(), strings escaped
    Index("ix_ledger_dead_letters_failed_at", "failed_at"),
)

# The columns a UsageEvent maps onto, in table order (also the spool's field list).
USAGE_COLUMNS: tuple[str, ...] = tuple(str(c.name) for c in usage_events.columns)

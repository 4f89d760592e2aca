"""Teams, API keys and the usage ledger.

On PostgreSQL ``usage_events`` is partitioned by month on ``created_at`` (range partitions named
``usage_events_pYYYYMM`` plus a default partition that catches anything outside them), and two SQL
functions maintain it: ``tollway_ensure_usage_partitions(months_ahead)`` creates the coming months'
partitions (moving any rows the default partition already holds for them), and retention drops old
partitions (``tollway db prune-usage``). On SQLite the table is a plain table.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_DOC = sa.JSON().with_variant(JSONB(), "postgresql")
# USD: NUMERIC(20,10) on PostgreSQL; integer units of 1e-10 USD on SQLite (no exact decimal type).
MONEY = sa.Numeric(20, 10).with_variant(sa.BigInteger(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)

ENSURE_PARTITIONS_SQL = r"""
CREATE OR REPLACE FUNCTION tollway_ensure_usage_partitions(months_ahead integer DEFAULT 3)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    first_month date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    lo date;
    lo_ts timestamptz;
    hi_ts timestamptz;
    part text;
    created integer := 0;
BEGIN
    -- Every replica calls this; serialise them so two never race on the same CREATE.
    PERFORM pg_advisory_xact_lock(hashtext('tollway_usage_partitions'));
    FOR i IN 0..months_ahead LOOP
        lo := (first_month + make_interval(months => i))::date;
        lo_ts := lo::timestamp AT TIME ZONE 'UTC';
        hi_ts := (lo + interval '1 month')::timestamp AT TIME ZONE 'UTC';
        part := format('usage_events_p%s', to_char(lo, 'YYYYMM'));
        IF to_regclass(part) IS NULL THEN
            -- Build the partition beside the table, move in whatever the default partition
            -- caught for this month, then attach: attaching fails if the default still holds
            -- rows of the new range.
            EXECUTE format(
                'CREATE TABLE %I (LIKE usage_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
            EXECUTE format(
                'WITH moved AS (DELETE FROM usage_events_default '
                'WHERE created_at >= %L AND created_at < %L RETURNING *) '
                'INSERT INTO %I SELECT * FROM moved', lo_ts, hi_ts, part);
            EXECUTE format('ALTER TABLE usage_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           part, lo_ts, hi_ts);
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END
$$;
"""


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"

    op.create_table(
        "teams",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("limits", JSON_DOC, nullable=False),
        sa.Column("policy", JSON_DOC, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_teams"),
        sa.UniqueConstraint("name", name="uq_teams_name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("team_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(100), nullable=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("limits", JSON_DOC, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=True),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        sa.Column("last_used_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name="fk_api_keys_team_id_teams", ondelete="CASCADE"),
        sa.UniqueConstraint("secret_hash", name="uq_api_keys_secret_hash"),
    )
    op.create_index("ix_api_keys_team_id", "api_keys", ["team_id"])

    op.create_table(
        "usage_events",
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("team_id", sa.String(36), nullable=True),
        sa.Column("key_id", sa.String(36), nullable=True),
        sa.Column("client_format", sa.String(16), nullable=False),
        sa.Column("requested_model", sa.String(200), nullable=False),
        sa.Column("served_model", sa.String(200), nullable=True),
        sa.Column("provider", sa.String(100), nullable=True),
        sa.Column("route_reason", sa.String(200), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_5m_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_1h_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", MONEY, nullable=False),
        sa.Column("uncached_cost_usd", MONEY, nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("error_type", sa.String(100), nullable=True),
        sa.Column("stop_reason", sa.String(50), nullable=True),
        sa.Column("streamed", sa.Boolean(), nullable=False),
        sa.Column("aborted", sa.Boolean(), nullable=False),
        sa.Column("response_cache_hit", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("request_id", "created_at", name="pk_usage_events"),
        postgresql_partition_by="RANGE (created_at)",
    )
    # On a partitioned table these are partitioned indexes: every partition gets its own.
    op.create_index("ix_usage_events_team_id_created_at", "usage_events", ["team_id", "created_at"])
    op.create_index("ix_usage_events_created_at", "usage_events", ["created_at"])
    op.create_index("ix_usage_events_served_model_created_at", "usage_events", ["served_model", "created_at"])
    op.create_index("ix_usage_events_key_id_created_at", "usage_events", ["key_id", "created_at"])

    if postgres:
        op.execute("CREATE TABLE usage_events_default PARTITION OF usage_events DEFAULT")
        op.execute(ENSURE_PARTITIONS_SQL)
        op.execute("SELECT tollway_ensure_usage_partitions(3)")
    else:
        # Not partitioned, so the request id alone can be unique.
        op.create_index("uq_usage_events_request_id", "usage_events", ["request_id"], unique=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS tollway_ensure_usage_partitions(integer)")
    op.drop_table("usage_events")  # drops its partitions with it on PostgreSQL
    op.drop_index("ix_api_keys_team_id", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("teams")

"""Ledger flags and dead letters.

``usage_events`` gains ``end_user`` (the end-user id of a browser token, or the request's
``user`` / ``metadata.user_id``) and ``usage_flag`` (``over_reservation``, ``malformed_upstream``
…: the provider's usage was recorded as billed but is suspect). Both are nullable, so old replicas
keep inserting during a rolling upgrade. On PostgreSQL the columns reach every partition.

``ledger_dead_letters`` holds usage events the database refused even after their strings were
escaped: the event's JSON and the error, for an operator to repair and re-insert by hand. The
ledger never drops an event silently.

Revision ID: 0002_ledger_flags
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_ledger_flags"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("usage_events", sa.Column("end_user", sa.String(200), nullable=True))
    op.add_column("usage_events", sa.Column("usage_flag", sa.String(50), nullable=True))
    op.create_table(
        "ledger_dead_letters",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("event_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_dead_letters"),
    )
    op.create_index("ix_ledger_dead_letters_failed_at", "ledger_dead_letters", ["failed_at"])


def downgrade() -> None:
    op.drop_index("ix_ledger_dead_letters_failed_at", table_name="ledger_dead_letters")
    op.drop_table("ledger_dead_letters")
    with op.batch_alter_table("usage_events") as batch:
        batch.drop_column("usage_flag")
        batch.drop_column("end_user")

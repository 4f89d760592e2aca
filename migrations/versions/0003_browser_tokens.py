"""Browser tokens: short-lived bearer tokens a team's backend mints for one end user's browser.

Only the SHA-256 of a token is stored (like ``api_keys.secret_hash``). A token belongs to the key
that minted it: deleting the key (or its team) deletes its tokens.

Revision ID: 0003_browser_tokens
Revises: 0002_ledger_flags
Create Date: 2026-02-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003_browser_tokens"
down_revision: str | None = "0002_ledger_flags"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_DOC = sa.JSON().with_variant(JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "browser_tokens",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("team_id", sa.String(36), nullable=False),
        sa.Column("key_id", sa.String(36), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("end_user", sa.String(256), nullable=False),
        sa.Column("allowed_origins", JSON_DOC, nullable=False),
        sa.Column("allowed_models", JSON_DOC, nullable=True),
        sa.Column("token_budget", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_browser_tokens"),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name="fk_browser_tokens_team_id_teams", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.id"], name="fk_browser_tokens_key_id_api_keys", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("secret_hash", name="uq_browser_tokens_secret_hash"),
    )
    op.create_index("ix_browser_tokens_team_id", "browser_tokens", ["team_id"])
    op.create_index("ix_browser_tokens_key_id", "browser_tokens", ["key_id"])
    op.create_index("ix_browser_tokens_expires_at", "browser_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_table("browser_tokens")

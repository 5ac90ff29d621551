"""SAID tasks: which λ scales which tensors (said_groups: layer or tensor)

Revision ID: 3f6a9d2b8c41
Revises: 9b2c6e1f7d30
Create Date: 2026-12-03 15:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "3f6a9d2b8c41"
down_revision: str | Sequence[str] | None = "9b2c6e1f7d30"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Nullable: every existing task keeps its meaning (a SAID task without a grouping has one
    λ per tensor, as its file says by lacking the key)."""
    with op.batch_alter_table("task") as batch:
        batch.add_column(sa.Column("said_groups", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("task") as batch:
        batch.drop_column("said_groups")

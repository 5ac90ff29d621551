"""Jobs and tasks: classification or regression (task_type), and a regression task's stats

Revision ID: 5e8c2a7d1b93
Revises: 3f6a9d2b8c41
Create Date: 2026-12-04 00:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "5e8c2a7d1b93"
down_revision: str | Sequence[str] | None = "3f6a9d2b8c41"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Nullable: every existing task is a classifier, as its file says by lacking the key."""
    with op.batch_alter_table("task") as batch:
        batch.add_column(sa.Column("task_type", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("target_stats", sa.JSON(), nullable=True))
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("task_type", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_column("task_type")
    with op.batch_alter_table("task") as batch:
        batch.drop_column("target_stats")
        batch.drop_column("task_type")

"""lowrank tasks: a job's method options; a task's rank and targets

Revision ID: 7a3f0c2e91b4
Revises: 1cc0be50cd94
Create Date: 2026-12-01 21:30:00

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "7a3f0c2e91b4"
down_revision: str | Sequence[str] | None = "1cc0be50cd94"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Nullable columns: every existing row (SAID, DID, full) keeps its meaning."""
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("options", sa.JSON(), nullable=True))
    with op.batch_alter_table("task") as batch:
        batch.add_column(sa.Column("rank", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("targets", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("task") as batch:
        batch.drop_column("targets")
        batch.drop_column("rank")
    with op.batch_alter_table("job") as batch:
        batch.drop_column("options")

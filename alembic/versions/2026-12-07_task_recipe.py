"""Tasks: how each was trained (recipe: the learning rate and the probe's losses); jobs: the
step their checkpoint holds (checkpoint_step); API keys: operators' (admin)

Revision ID: 8c4f1a6e2d07
Revises: 5e8c2a7d1b93
Create Date: 2026-12-07 00:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "8c4f1a6e2d07"
down_revision: str | Sequence[str] | None = "5e8c2a7d1b93"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Nullable: tasks stored before recipes say nothing about how they were trained."""
    with op.batch_alter_table("task") as batch:
        batch.add_column(sa.Column("recipe", sa.JSON(), nullable=True))
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("checkpoint_step", sa.Integer(), nullable=True))
    with op.batch_alter_table("api_key") as batch:
        batch.add_column(
            sa.Column("admin", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("api_key") as batch:
        batch.drop_column("admin")
    with op.batch_alter_table("job") as batch:
        batch.drop_column("checkpoint_step")
    with op.batch_alter_table("task") as batch:
        batch.drop_column("recipe")

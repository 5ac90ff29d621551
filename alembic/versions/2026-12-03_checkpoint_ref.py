"""full fine-tuning checkpoints in a shared folder: the job row keeps the file's name

Revision ID: 9b2c6e1f7d30
Revises: 4d1e8b7a2c55
Create Date: 2026-12-03 14:30:00

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "9b2c6e1f7d30"
down_revision: str | Sequence[str] | None = "4d1e8b7a2c55"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("checkpoint_ref", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_column("checkpoint_ref")

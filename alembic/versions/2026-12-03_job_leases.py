"""job leases: the worker holding a running job and until when; when a job was last queued

Revision ID: 4d1e8b7a2c55
Revises: 7a3f0c2e91b4
Create Date: 2026-12-03 14:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "4d1e8b7a2c55"
down_revision: str | Sequence[str] | None = "7a3f0c2e91b4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Nullable columns. A job left `running` by an older version has no lease, which the
    sweeper reads as expired, so it is requeued rather than stuck."""
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_column("enqueued_at")
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")

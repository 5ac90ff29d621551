"""Data sets, jobs and tasks: an index per tenant in listing order (created_at, id), which
keyset pages (`after=<id>`) read straight off, however many rows a tenant has

Revision ID: 3d7b9e1f4a62
Revises: 8c4f1a6e2d07
Create Date: 2026-12-07 17:00:00

"""

from collections.abc import Sequence

from alembic import op

revision: str = "3d7b9e1f4a62"
down_revision: str | Sequence[str] | None = "8c4f1a6e2d07"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("dataset", "job", "task")


def upgrade() -> None:
    for table in TABLES:
        op.create_index(f"ix_{table}_listing", table, ["tenant_id", "created_at", "id"])


def downgrade() -> None:
    for table in TABLES:
        op.drop_index(f"ix_{table}_listing", table_name=table)

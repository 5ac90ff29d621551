"""task_event: deletes, pins and unpins that every API replica applies to its own memory

Revision ID: 5e1c7a9b3f20
Revises: 3d7b9e1f4a62
Create Date: 2026-12-07 19:45:00

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "5e1c7a9b3f20"
down_revision: str | Sequence[str] | None = "3d7b9e1f4a62"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "task_event",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_task_event_created_at", "task_event", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_task_event_created_at", table_name="task_event")
    op.drop_table("task_event")

"""image scans keep their specification's os

Revision ID: 82b3edb50768
Revises: 997024368854
Create Date: 2026-11-27 06:41:16.888178
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "82b3edb50768"
down_revision: str | None = "997024368854"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Images queued before this revision keep being scanned on every platform ("").
    with op.batch_alter_table("image_scans", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("os", sa.String(length=32), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("image_scans", schema=None) as batch_op:
        batch_op.drop_column("os")

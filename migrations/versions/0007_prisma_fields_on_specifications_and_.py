"""prisma fields on specifications and credentials

Revision ID: 0007
Revises: ba30dade069c
Create Date: 2026-12-02 01:28:37.771103
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "ba30dade069c"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows saved before get the defaults: no TLS options, no Prisma fields.
    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ca_cert", sa.Text(), nullable=False, server_default=""))
        batch_op.add_column(
            sa.Column("skip_verify", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("api_token", sa.Text(), nullable=False, server_default=""))
        batch_op.add_column(
            sa.Column("reference_fields", sa.JSON(), nullable=False, server_default="{}")
        )

    with op.batch_alter_table("registry_specs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("namespace", sa.String(length=255), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("version_pattern", sa.String(length=255), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("reference_fields", sa.JSON(), nullable=False, server_default="{}")
        )


def downgrade() -> None:
    with op.batch_alter_table("registry_specs", schema=None) as batch_op:
        batch_op.drop_column("reference_fields")
        batch_op.drop_column("version_pattern")
        batch_op.drop_column("namespace")

    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.drop_column("reference_fields")
        batch_op.drop_column("api_token")
        batch_op.drop_column("skip_verify")
        batch_op.drop_column("ca_cert")

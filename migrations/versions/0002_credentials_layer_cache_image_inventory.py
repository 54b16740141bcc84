"""credentials, layer cache, image inventory

Revision ID: 0c1bed361d7a
Revises: 3fdb219fd915
Create Date: 2026-11-27 02:38:43.317690
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.base

revision: str = "0c1bed361d7a"
down_revision: str | None = "3fdb219fd915"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "credentials",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=255), nullable=False),
        sa.Column("secret_token", sa.Text(), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.Column("created_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credentials")),
    )
    op.create_table(
        "layer_analyses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=100), nullable=False),
        sa.Column("analyser_version", sa.Integer(), nullable=False),
        sa.Column("media_type", sa.String(length=128), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("analysed_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_layer_analyses")),
        sa.UniqueConstraint(
            "digest", "analyser_version", name=op.f("uq_layer_analyses_digest_analyser_version")
        ),
    )
    with op.batch_alter_table("image_scans", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("credential_id", sa.String(length=128), nullable=False, server_default="")
        )
    # Images scanned before inventories existed get empty ones (and no analyser version,
    # so the next scan analyses them).
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("os_distro", sa.String(length=64), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("os_distro_version", sa.String(length=64), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("os_distro_release", sa.String(length=64), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("distro", sa.String(length=255), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("packages", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )
        batch_op.add_column(sa.Column("analyser_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("analyser_version")
        batch_op.drop_column("packages")
        batch_op.drop_column("distro")
        batch_op.drop_column("os_distro_release")
        batch_op.drop_column("os_distro_version")
        batch_op.drop_column("os_distro")

    with op.batch_alter_table("image_scans", schema=None) as batch_op:
        batch_op.drop_column("credential_id")
    op.drop_table("layer_analyses")
    op.drop_table("credentials")

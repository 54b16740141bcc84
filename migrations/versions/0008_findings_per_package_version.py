"""findings per package version

Findings were stored per image: a package version held by ten thousand images had its
findings written ten thousand times, and re-written in every image whenever the data
about it changed. They are now stored once per package version, and images are linked
to the package versions they hold, with their counts by severity on their rows.

Stored findings are not carried over: every analysed image is marked never matched, so
the next re-match links it and matches its package versions (from its stored inventory,
without asking any registry). ``vulndb_state.findings_generation`` says up to which
generation of the data every stored finding is current. Downgrading drops the new
tables and leaves the images to be matched again the same way.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 03:47:18.272099
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_IMAGE_COUNTS = ("vulns_critical", "vulns_high", "vulns_medium", "vulns_low", "vulns_total")


def upgrade() -> None:
    op.create_table(
        "package_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("ecosystems", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("version", sa.String(length=255), nullable=False),
        sa.Column("package_type", sa.String(length=32), nullable=False),
        sa.Column("package_name", sa.String(length=512), nullable=False),
        sa.Column("package_version", sa.String(length=255), nullable=False),
        sa.Column("matched_generation", sa.BigInteger(), nullable=True),
        sa.Column("critical", sa.Integer(), nullable=False),
        sa.Column("high", sa.Integer(), nullable=False),
        sa.Column("medium", sa.Integer(), nullable=False),
        sa.Column("low", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_package_versions")),
        sa.UniqueConstraint("key", name=op.f("uq_package_versions_key")),
    )
    with op.batch_alter_table("package_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_package_versions_matched_generation"),
            ["matched_generation"],
            unique=False,
        )
        batch_op.create_index("ix_package_versions_name", ["name"], unique=False)

    op.create_table(
        "image_targets",
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("package_version_id", sa.Integer(), nullable=False),
        sa.Column("binaries", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
            name=op.f("fk_image_targets_image_id_images"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["package_version_id"],
            ["package_versions.id"],
            name=op.f("fk_image_targets_package_version_id_package_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("image_id", "package_version_id", name=op.f("pk_image_targets")),
    )
    with op.batch_alter_table("image_targets", schema=None) as batch_op:
        batch_op.create_index(
            "ix_image_targets_package_version_image",
            ["package_version_id", "image_id"],
            unique=False,
        )

    op.create_table(
        "package_findings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("package_version_id", sa.Integer(), nullable=False),
        sa.Column("vuln_id", sa.String(length=128), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("cvss", sa.Float(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["package_version_id"],
            ["package_versions.id"],
            name=op.f("fk_package_findings_package_version_id_package_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_package_findings")),
    )
    with op.batch_alter_table("package_findings", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_package_findings_package_version_id"),
            ["package_version_id"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_package_findings_vuln_id"), ["vuln_id"], unique=False)

    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_findings_image_id"))
        batch_op.drop_index(batch_op.f("ix_findings_vuln_id"))
    op.drop_table("findings")

    with op.batch_alter_table("images", schema=None) as batch_op:
        for column in _IMAGE_COUNTS:
            batch_op.add_column(sa.Column(column, sa.Integer(), nullable=False, server_default="0"))
    op.execute("UPDATE images SET matched_generation = NULL")
    with op.batch_alter_table("vulndb_state", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("findings_generation", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("vulndb_state", schema=None) as batch_op:
        batch_op.drop_column("findings_generation")
    with op.batch_alter_table("images", schema=None) as batch_op:
        for column in reversed(_IMAGE_COUNTS):
            batch_op.drop_column(column)
    op.execute("UPDATE images SET matched_generation = NULL")

    op.create_table(
        "findings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("vuln_id", sa.String(length=128), nullable=False),
        sa.Column("package_type", sa.String(length=32), nullable=False),
        sa.Column("package_name", sa.String(length=512), nullable=False),
        sa.Column("package_version", sa.String(length=255), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("cvss", sa.Float(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
            name=op.f("fk_findings_image_id_images"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_findings")),
    )
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_findings_vuln_id"), ["vuln_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_findings_image_id"), ["image_id"], unique=False)

    with op.batch_alter_table("package_findings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_package_findings_vuln_id"))
        batch_op.drop_index(batch_op.f("ix_package_findings_package_version_id"))
    op.drop_table("package_findings")
    with op.batch_alter_table("image_targets", schema=None) as batch_op:
        batch_op.drop_index("ix_image_targets_package_version_image")
    op.drop_table("image_targets")
    with op.batch_alter_table("package_versions", schema=None) as batch_op:
        batch_op.drop_index("ix_package_versions_name")
        batch_op.drop_index(batch_op.f("ix_package_versions_matched_generation"))
    op.drop_table("package_versions")

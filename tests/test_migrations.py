"""The schema exists only through the migrations, and they match the models exactly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from models import Base
from models.db import make_engine
from regscan.db import alembic_config, pending_migrations, upgrade
from tests.conftest import _postgres_database, _sqlite_url


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield from _sqlite_url(tmp_path)
    else:
        yield from _postgres_database()


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_builds_the_models_schema_with_no_drift(empty_database: str):
    # Given an empty database, which the command refuses to serve
    assert pending_migrations(empty_database)

    # When the migrations run
    upgrade(empty_database)

    # Then every model table exists and autogenerate finds nothing to add
    assert tables(empty_database) == set(Base.metadata.tables)
    assert not pending_migrations(empty_database)
    command.check(alembic_config(empty_database))  # raises on any drift


def test_downgrade_removes_everything_and_upgrade_rebuilds_it(empty_database: str):
    upgrade(empty_database)
    command.downgrade(alembic_config(empty_database), "base")
    assert tables(empty_database) == set()
    upgrade(empty_database)
    assert tables(empty_database) == set(Base.metadata.tables)


def test_upgrading_keeps_what_is_stored(empty_database: str):
    # Given a database at the first revision holding an image
    first = "3fdb219fd915"
    command.upgrade(alembic_config(empty_database), first)
    engine = make_engine(empty_database)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO images (registry_host, repository, digest, media_type, config_digest,"
                " platform, os, architecture, size, layers, first_seen, last_scanned)"
                " VALUES ('r:5000', 'app', 'sha256:aa', '', '', 'linux/amd64', 'linux', 'amd64',"
                " 1, '[]', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )

    # When the later migrations run
    upgrade(empty_database)

    # Then the image is still there, with an empty inventory still to be made
    with engine.connect() as conn:
        row = conn.execute(text("SELECT digest, packages, analyser_version FROM images")).one()
    engine.dispose()
    assert row[0] == "sha256:aa" and row[2] is None
    assert row[1] in ("[]", [])


def test_images_still_due_at_the_change_log_upgrade_are_matched_in_full(empty_database: str):
    # Given data at generation 2, one image matched against it and one still at 1
    command.upgrade(alembic_config(empty_database), "82b3edb50768")
    engine = make_engine(empty_database)
    columns = (
        "registry_host, repository, digest, media_type, config_digest, platform, os,"
        " architecture, size, layers, os_distro, os_distro_version, os_distro_release,"
        " distro, packages, first_seen, last_scanned, matched_generation"
    )
    values = "'r:5000', 'app', :digest, '', '', '', '', '', 0, '[]', '', '', '', '', '[]'"
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO vulndb_state (id, generation) VALUES (1, 2)"))
        for digest, generation in (("sha256:01", 1), ("sha256:02", 2)):
            conn.execute(
                text(
                    f"INSERT INTO images ({columns}) VALUES ({values},"
                    " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, :generation)"
                ),
                {"digest": digest, "generation": generation},
            )

    # When the revision that starts logging the data's changes runs
    command.upgrade(alembic_config(empty_database), "ba30dade069c")

    # Then the image still due is to be matched in full (its changes were never logged),
    # and the current one stays current
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT digest, matched_generation FROM images ORDER BY digest")
        ).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [("sha256:01", None), ("sha256:02", 2)]


def test_migration_files_sort_in_the_order_of_the_chain():
    # Given the revisions from the first to the newest, as Alembic chains them
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    chain = [Path(rev.path).name for rev in reversed(list(script.walk_revisions()))]

    # Then listing the folder shows them in that order, each numbered
    assert chain == sorted(chain)
    assert [name[:5] for name in chain] == [f"{n:04d}_" for n in range(1, len(chain) + 1)]

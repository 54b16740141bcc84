"""Registry specifications: the registry scanning configuration, one row per entry."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import JSON, Integer, String, delete, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base


class RegistrySpec(Base):
    __tablename__ = "registry_specs"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Order in the configuration, as the user wrote it; PUT rewrites all positions.
    position: Mapped[int] = mapped_column(Integer, index=True)
    version: Mapped[str] = mapped_column(String(32), default="2")
    # As written by the user, scheme included (``http://`` selects plain HTTP).
    address: Mapped[str] = mapped_column(String(255))
    # Host and port only: the registry's identity, whatever scheme was written.
    registry_host: Mapped[str] = mapped_column(String(255), index=True)
    repository: Mapped[str] = mapped_column(String(512), default="")
    tag: Mapped[str] = mapped_column(String(255), default="")
    excluded_repositories: Mapped[list[str]] = mapped_column(JSON, default=list)
    excluded_tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    credential_id: Mapped[str] = mapped_column(String(255), default="")
    os: Mapped[str] = mapped_column(String(32), default="linux")
    cap: Mapped[int] = mapped_column(Integer, default=5)
    scanners: Mapped[int] = mapped_column(Integer, default=2)
    # Prisma fields regscan applies: repositories only under this namespace (a path
    # prefix), tags only matching this glob as well as ``tag``.
    namespace: Mapped[str] = mapped_column(String(255), default="")
    version_pattern: Mapped[str] = mapped_column(String(255), default="")
    # Prisma fields regscan keeps and returns but does not act on (harborDeploymentSecurity,
    # collections, gitlabRegistrySpec), as the user sent them, by their Prisma name.
    reference_fields: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


def list_specs(session: Session) -> list[RegistrySpec]:
    return list(session.scalars(select(RegistrySpec).order_by(RegistrySpec.position)))


def replace_specs(session: Session, specs: Iterable[dict[str, Any]]) -> list[RegistrySpec]:
    """The whole configuration is replaced, as PUT does."""
    session.execute(delete(RegistrySpec))
    return append_specs(session, specs)


def append_specs(session: Session, specs: Iterable[dict[str, Any]]) -> list[RegistrySpec]:
    last = session.scalar(select(func.max(RegistrySpec.position)))
    start = -1 if last is None else last
    rows = [RegistrySpec(position=start + 1 + i, **fields) for i, fields in enumerate(specs)]
    session.add_all(rows)
    session.flush()
    return list_specs(session)

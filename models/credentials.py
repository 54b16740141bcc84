"""Registry credentials, referenced by a specification's ``credentialID``.

The secret is stored only as a Fernet token (see ``core.secrets``) and is never
returned by any endpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base, utcnow
from models.specs import RegistrySpec


class Credential(Base):
    __tablename__ = "credentials"

    # The reference API's ``_id``: a name chosen by the user.
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    account_id: Mapped[str] = mapped_column(String(255), default="")
    secret_token: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(String(255), default="")
    # TLS to the registries of the specifications naming this credential: the CA
    # certificates (PEM) to trust instead of the system's, or no verification at all.
    ca_cert: Mapped[str] = mapped_column(Text, default="")
    skip_verify: Mapped[bool] = mapped_column(Boolean, default=False)
    # The reference's apiToken, a secret like ``secret_token``: a Fernet token, or "".
    api_token: Mapped[str] = mapped_column(Text, default="")
    # Prisma fields kept and returned but not acted on (useAWSRole, accountName,
    # useSTSRegionalEndpoint), by their Prisma name.
    reference_fields: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


def list_credentials(session: Session) -> list[Credential]:
    """Every credential, by id."""
    return list(session.scalars(select(Credential).order_by(Credential.id)))


def get_credential(session: Session, credential_id: str) -> Credential | None:
    return session.get(Credential, credential_id)


def put_credential(
    session: Session,
    credential_id: str,
    *,
    type: str,
    account_id: str,
    secret_token: str,
    description: str,
    ca_cert: str = "",
    skip_verify: bool = False,
    api_token: str = "",
    reference_fields: dict[str, Any] | None = None,
) -> Credential:
    """Create the credential, or replace every field of the one with this id."""
    row = session.get(Credential, credential_id, with_for_update=True)
    if row is None:
        row = Credential(id=credential_id)
        session.add(row)
    row.type = type
    row.account_id = account_id
    row.secret_token = secret_token
    row.description = description
    row.ca_cert = ca_cert
    row.skip_verify = skip_verify
    row.api_token = api_token
    row.reference_fields = reference_fields or {}
    # Set even when nothing changed, so "last modified" means "last saved".
    row.updated_at = utcnow()
    session.flush()
    return row


def specs_using(session: Session, credential_id: str) -> list[RegistrySpec]:
    """The specifications that name this credential."""
    stmt = (
        select(RegistrySpec)
        .where(RegistrySpec.credential_id == credential_id)
        .order_by(RegistrySpec.position)
    )
    return list(session.scalars(stmt))


def lock_credential(session: Session, credential_id: str) -> Credential | None:
    """The credential, locked until the transaction ends (for a delete that checks first
    that no specification uses it: a specification saved meanwhile waits for the lock)."""
    return session.get(Credential, credential_id, with_for_update=True)


def delete_credential(session: Session, row: Credential) -> None:
    session.delete(row)
    session.flush()


def missing_credentials(session: Session, credential_ids: Iterable[str]) -> list[str]:
    """The ids among ``credential_ids`` that do not exist. The ones that do are share-locked
    until the transaction ends, so they cannot be deleted under a specification being saved."""
    wanted = sorted({c for c in credential_ids if c})
    if not wanted:
        return []
    stmt = select(Credential.id).where(Credential.id.in_(wanted)).with_for_update(read=True)
    found = set(session.scalars(stmt))
    return [c for c in wanted if c not in found]

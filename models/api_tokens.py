"""API tokens of other teams' services: a name, a team and a role. Only a token's SHA-256
is stored; it is shown once. Callers own the transaction; hashing is done outside."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base, utcnow


class ApiToken(Base):
    """A token for a team's service; only its SHA-256 is stored, it is shown once."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    team: Mapped[str] = mapped_column(String(128), index=True)
    role: Mapped[str] = mapped_column(String(16))  # admin, operator, viewer
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to recognise it
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)


# Writing last_used_at on every request would make each read a write; a minute is enough
# to tell a token in use from a forgotten one.
USE_NOTE_INTERVAL = timedelta(minutes=1)


def add_token(
    session: Session, *, name: str, team: str, role: str, token_hash: str, prefix: str, by: str
) -> ApiToken:
    row = ApiToken(
        name=name, team=team, role=role, token_hash=token_hash, prefix=prefix, created_by=by
    )
    session.add(row)
    session.flush()
    return row


def list_tokens(session: Session) -> Sequence[ApiToken]:
    return session.scalars(select(ApiToken).order_by(ApiToken.id)).all()


def by_hash(session: Session, token_hash: str) -> ApiToken | None:
    return session.scalar(select(ApiToken).where(ApiToken.token_hash == token_hash))


def note_use(session: Session, row: ApiToken) -> None:
    """Record that the token was used, at most once per ``USE_NOTE_INTERVAL``."""
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > USE_NOTE_INTERVAL:
        row.last_used_at = now


def revoke(session: Session, token_id: int) -> ApiToken | None:
    """Revoke a token; revoking twice keeps the first time."""
    row = session.get(ApiToken, token_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
    return row

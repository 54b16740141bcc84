"""API tokens of other teams' services. Callers own the transaction; hashing is done outside."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.base import utcnow
from models.enqueue import ApiToken

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

"""Users and their bearer tokens. Callers own the transaction; hashing is done outside."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from models.base import utcnow
from models.users import AuthToken, User


def get_user(session: Session, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username))


def put_user(session: Session, username: str, password_hash: str, role: str = "admin") -> User:
    user = get_user(session, username)
    if user is None:
        user = User(username=username, password_hash=password_hash, role=role)
        session.add(user)
    else:
        user.password_hash = password_hash
    session.flush()
    return user


def add_token(session: Session, user: User, token_hash: str, expires_at: datetime) -> None:
    session.execute(delete(AuthToken).where(AuthToken.expires_at < utcnow()))
    session.add(AuthToken(token_hash=token_hash, user_id=user.id, expires_at=expires_at))


def user_for_token(session: Session, token_hash: str) -> User | None:
    stmt = (
        select(User)
        .join(AuthToken, AuthToken.user_id == User.id)
        .where(AuthToken.token_hash == token_hash, AuthToken.expires_at > utcnow())
    )
    return session.scalar(stmt)

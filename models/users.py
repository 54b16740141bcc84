"""Users of the API and the bearer tokens they obtain. Callers own the transaction;
passwords and tokens are hashed outside."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base, rowcount, utcnow


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(32), default="admin")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuthToken(Base):
    """A bearer token from ``POST /authenticate``; only its SHA-256 is stored."""

    __tablename__ = "auth_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


def get_user(session: Session, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username))


def password_hash_of(session: Session, username: str) -> str | None:
    """The stored hash of a user's password; None for no such user."""
    return session.scalar(select(User.password_hash).where(User.username == username))


def put_user(session: Session, username: str, password_hash: str, role: str = "admin") -> User:
    user = get_user(session, username)
    if user is None:
        user = User(username=username, password_hash=password_hash, role=role)
        session.add(user)
    else:
        user.password_hash = password_hash
    session.flush()
    return user


def add_token(session: Session, user_id: int, token_hash: str, expires_at: datetime) -> None:
    session.execute(delete(AuthToken).where(AuthToken.expires_at < utcnow()))
    session.add(AuthToken(token_hash=token_hash, user_id=user_id, expires_at=expires_at))


def delete_token(session: Session, token_hash: str) -> bool:
    """Log one bearer token out; False when there was no such token."""
    stmt = delete(AuthToken).where(AuthToken.token_hash == token_hash)
    return rowcount(session.execute(stmt)) > 0


def delete_tokens_of(session: Session, user_id: int) -> int:
    """Log every bearer token of a user out (its password changed); how many."""
    return rowcount(session.execute(delete(AuthToken).where(AuthToken.user_id == user_id)))


def user_for_token(session: Session, token_hash: str) -> User | None:
    stmt = (
        select(User)
        .join(AuthToken, AuthToken.user_id == User.id)
        .where(AuthToken.token_hash == token_hash, AuthToken.expires_at > utcnow())
    )
    return session.scalar(stmt)

"""The layer cache: each layer is analysed once per analyser version, ever."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, String, UniqueConstraint, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base, utcnow


class LayerAnalysis(Base):
    __tablename__ = "layer_analyses"
    __table_args__ = (UniqueConstraint("digest", "analyser_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    digest: Mapped[str] = mapped_column(String(100))
    analyser_version: Mapped[int] = mapped_column(Integer)
    media_type: Mapped[str] = mapped_column(String(128), default="")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    # What the analyser found: package files, OS files, whiteouts (scanner.layers).
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    analysed_at: Mapped[datetime] = mapped_column(default=utcnow)


def cached_analysis(session: Session, digest: str, analyser_version: int) -> dict[str, Any] | None:
    stmt = select(LayerAnalysis.result).where(
        LayerAnalysis.digest == digest, LayerAnalysis.analyser_version == analyser_version
    )
    return session.scalar(stmt)


def store_analysis(
    session: Session,
    digest: str,
    analyser_version: int,
    media_type: str,
    size: int,
    result: dict[str, Any],
) -> None:
    """Insert a layer's analysis; the caller treats a duplicate key as already stored."""
    session.add(
        LayerAnalysis(
            digest=digest,
            analyser_version=analyser_version,
            media_type=media_type,
            size=size,
            result=result,
        )
    )
    session.flush()

"""The layer cache: each layer is analysed once per analyser version, ever."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

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

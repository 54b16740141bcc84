"""Registry credentials, referenced by a specification's ``credentialID``.

The secret is stored only as a Fernet token (see ``regscan.secrets``) and is never
returned by any endpoint.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, utcnow


class Credential(Base):
    __tablename__ = "credentials"

    # The reference API's ``_id``: a name chosen by the user.
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    account_id: Mapped[str] = mapped_column(String(255), default="")
    secret_token: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

"""Encryption of stored secrets (registry passwords and tokens) with Fernet, and the
webhook secret derived from the same key.

The key comes from ``REGSCAN_SECRET_KEY``: one Fernet key, or several separated by
commas while rotating (the first encrypts, every one of them decrypts). Nothing here
ever puts a key or a secret into a message or a log line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from core.settings import Settings

GENERATE_HINT = (
    "generate one with: python -c "
    '"from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
)


class SecretKeyError(RuntimeError):
    """No key is configured, or the configured value is not a Fernet key."""


class UndecryptableSecret(Exception):
    """A stored secret was encrypted under a key this process does not have, or is damaged."""


class SecretBox:
    """Encrypts and decrypts short secrets under the configured key(s)."""

    def __init__(self, keys: str) -> None:
        parts = [k.strip() for k in keys.split(",") if k.strip()]
        if not parts:
            raise SecretKeyError(f"REGSCAN_SECRET_KEY is empty: {GENERATE_HINT}")
        fernets = []
        for position, key in enumerate(parts, start=1):
            try:
                fernets.append(Fernet(key.encode()))
            except (ValueError, TypeError):
                # The value itself is never repeated: it may be a real secret mistyped.
                raise SecretKeyError(
                    f"REGSCAN_SECRET_KEY (key {position} of {len(parts)}) is not a Fernet key "
                    f"(32 url-safe base64-encoded bytes); {GENERATE_HINT}"
                ) from None
        self._fernet = MultiFernet(fernets)

    def encrypt(self, plain: str) -> str:
        """The Fernet token of ``plain``, as text."""
        return self._fernet.encrypt(plain.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        """The plain text of a token made by :meth:`encrypt` under one of the keys."""
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except (InvalidToken, UnicodeError, ValueError):
            raise UndecryptableSecret(
                "it was encrypted under another REGSCAN_SECRET_KEY, or is damaged"
            ) from None

    def __repr__(self) -> str:
        return "SecretBox(<keys hidden>)"


@lru_cache(maxsize=4)
def _box(keys: str) -> SecretBox:
    return SecretBox(keys)


def secret_box(settings: Settings) -> SecretBox:
    """The box for the configured key; ``SecretKeyError`` says what to set when there is none."""
    if settings.secret_key is None:
        raise SecretKeyError(
            "REGSCAN_SECRET_KEY is not set: registry credentials are stored encrypted; set "
            "REGSCAN_SECRET_KEY to a Fernet key, the same for the API and every worker "
            f"(regscan standalone makes one by itself); {GENERATE_HINT}"
        )
    return _box(settings.secret_key.get_secret_value())


def check_key(settings: Settings) -> None:
    """Fail at start-up on a malformed key; a missing key only disables credentials."""
    if settings.secret_key is not None:
        secret_box(settings)


def generate_key() -> str:
    """A new random Fernet key."""
    return Fernet.generate_key().decode("ascii")


def load_or_create_key_file(path: Path) -> str:
    """The key kept in ``path``, created (readable by the owner only) on first use."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text().strip()
        try:
            SecretBox(key)
        except SecretKeyError:
            raise SecretKeyError(
                f"{path} does not hold a Fernet key; restore it from a backup (credentials "
                "stored under it cannot be read without it) or remove it to start afresh"
            ) from None
        return key
    key = generate_key()
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    return key


# Changing this label changes every derived secret: registries would need reconfiguring.
_WEBHOOK_DERIVATION_LABEL = b"regscan webhook secret v1"


def webhook_secret(settings: Settings) -> str | None:
    """``REGSCAN_WEBHOOK_SECRET``, else one derived from the first ``REGSCAN_SECRET_KEY``.

    Derived, not generated, so that every API process agrees without storing it.
    """
    if settings.webhook_secret is not None:
        return settings.webhook_secret.get_secret_value() or None
    if settings.secret_key is None:
        return None
    first_key = settings.secret_key.get_secret_value().split(",")[0].strip()
    if not first_key:
        return None
    mac = hmac.new(first_key.encode(), _WEBHOOK_DERIVATION_LABEL, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")

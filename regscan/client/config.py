"""Where ``regscan login`` keeps its token: ``$XDG_CONFIG_HOME/regscan/login.json``
(``~/.config/regscan/login.json``), readable by the user alone (mode 0600, in a 0700
folder), holding the server's URL and the token, never a password."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from regscan.client.api import ClientError

FILE_NAME = "login.json"


@dataclass(frozen=True)
class Login:
    url: str
    token: str
    user: str = ""  # who logged in, for `regscan status`; "" for an API token


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "regscan"


def login_file() -> Path:
    return config_dir() / FILE_NAME


def save_login(login: Login) -> Path:
    """Write the login so that only the user can read it, whatever was there before."""
    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / FILE_NAME
    # Created 0600 from the start (no moment where another user could read it), and an
    # older file's mode corrected.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(login), out)
        out.write("\n")
    os.chmod(path, 0o600)
    return path


def load_login() -> Login | None:
    path = login_file()
    try:
        data = json.loads(path.read_text())
        return Login(url=str(data["url"]), token=str(data["token"]), user=str(data.get("user", "")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        raise ClientError(f"{path} cannot be read: run `regscan login` again") from None


def forget_login() -> bool:
    try:
        login_file().unlink()
    except FileNotFoundError:
        return False
    return True

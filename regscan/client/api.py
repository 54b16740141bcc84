"""The HTTP side of the client: where the server is, how to authenticate, and every
failure turned into one :class:`ClientError` line saying what to do."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests

DEFAULT_URL = "http://127.0.0.1:8080"
API = "/api/v1"
TIMEOUT_SECONDS = 30.0
PAGE = 250  # the API's largest page


class ClientError(Exception):
    """A failure the user can act on; the command prints it as one line."""


@dataclass(frozen=True)
class Credentials:
    """A bearer token (a session token from ``regscan login`` or an API token), or a
    user and password sent with HTTP Basic."""

    token: str = ""
    user: str = ""
    password: str = ""

    def header(self) -> dict[str, str]:
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        if self.user:
            pair = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            return {"Authorization": f"Basic {pair}"}
        return {}


def base_url(url: str) -> str:
    """The server's root: ``host:8080``, ``http://host:8080/`` and ``.../api/v1`` alike."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    for suffix in (API, "/api"):
        url = url.removesuffix(suffix)
    return url


class Client:
    def __init__(self, url: str, credentials: Credentials, *, saved: bool = False) -> None:
        self.url = base_url(url)
        self.credentials = credentials
        self.saved = saved  # the credentials come from `regscan login`
        self.http = requests.Session()
        self.http.headers.update(credentials.header())

    def get(self, path: str, **params: Any) -> Any:
        return self._json(self._send("GET", path, params=_present(params)))

    def post(self, path: str, body: Any = None, **params: Any) -> Any:
        return self._json(self._send("POST", path, json=body, params=_present(params)))

    def get_text(self, path: str, **params: Any) -> str:
        return self._send("GET", path, params=_present(params)).text

    def pages(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a paged list (``offset``/``limit``)."""
        offset = 0
        while True:
            items = self.get(path, offset=offset, limit=PAGE, **params)
            yield from items
            if len(items) < PAGE:
                return
            offset += PAGE

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = self.url + API + path
        try:
            response = self.http.request(method, url, timeout=TIMEOUT_SECONDS, **kwargs)
        except requests.ConnectionError:
            raise ClientError(
                f"cannot reach regscan at {self.url}: is it running? (set --url or REGSCAN_URL)"
            ) from None
        except requests.Timeout:
            raise ClientError(
                f"regscan at {self.url} did not answer within {TIMEOUT_SECONDS:g}s"
            ) from None
        except requests.RequestException as exc:
            raise ClientError(f"cannot talk to regscan at {self.url}: {exc}") from None
        if response.status_code >= 400:
            raise ClientError(self._problem(response))
        return response

    def _problem(self, response: requests.Response) -> str:
        status = response.status_code
        message = _err(response) or f"HTTP {status}"
        if status == 401:
            if self.saved:
                return (
                    f"{message}: the login saved for {self.url} has expired or was revoked; "
                    "run `regscan login` again"
                )
            if not self.credentials.header():
                return f"{message}: run `regscan login`, or set REGSCAN_TOKEN"
        return message if status < 500 else f"{message} (HTTP {status})"

    @staticmethod
    def _json(response: requests.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ClientError(
                f"{response.url} answered something that is not JSON: is it regscan?"
            ) from None


def _err(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("err", "")) if isinstance(body, dict) else ""


def _present(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}

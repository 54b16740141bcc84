"""Registry authentication for ``requests``: the Docker token flow and HTTP Basic.

A registry that wants credentials answers ``401`` with a challenge:

- ``WWW-Authenticate: Bearer realm="...",service="...",scope="..."``: fetch a token from
  the realm (HTTP Basic with the account, if any), then repeat the request once with
  ``Authorization: Bearer <token>``. Tokens are cached per (realm, service, scope) until
  shortly before they expire, and sent up front to later requests of the same scope, so
  a whole image costs one token fetch, not one per request.
- ``WWW-Authenticate: Basic ...``: repeat the request with the account, and send it up
  front from then on.

Credentials and tokens only ever go to the registry's own origin and to the realm it
names; requests to any other host (blob storage a registry redirects to) get nothing.
Neither the password nor a token is ever put into a message or a log line.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from urllib3.util.retry import Retry

from scanner.errors import RegistryAuthError, RegistryProtocolError, RegistryUnavailable

log = logging.getLogger(__name__)

DEFAULT_EXPIRES_IN = 60.0
# A token is dropped this share of its lifetime (at most MAX_MARGIN seconds) before it
# expires, so that a request never leaves with a token about to lapse in flight.
MARGIN_SHARE = 0.1
MAX_MARGIN = 30.0
MAX_CACHED_TOKENS = 512
_MAX_TOKEN_RESPONSE = 1 << 20
_DEFAULT_PORTS = {"http": 80, "https": 443}
_RETRIED = "_regscan_auth_retried"

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_SCHEME = re.compile(rf"[\s,]*({_TOKEN})")
_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|{_TOKEN})\s*(?:,|$)')
_REPOSITORY_PATH = re.compile(r"^/v2/(?P<name>.+)/(?:manifests|blobs|tags)/")


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: its scheme (lower case) and params."""

    scheme: str
    params: dict[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """Every challenge in a ``WWW-Authenticate`` header (RFC 9110 auth-params)."""
    challenges: list[Challenge] = []
    pos = 0
    while pos < len(header):
        scheme = _SCHEME.match(header, pos)
        if scheme is None:
            break
        pos = scheme.end()
        params: dict[str, str] = {}
        while (param := _PARAM.match(header, pos)) is not None:
            value = param.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[param.group(1).lower()] = value
            pos = param.end()
        challenges.append(Challenge(scheme.group(1).lower(), params))
        if pos < len(header) and not params:
            # A token68 (``Basic abc==``) or garbage: skip to the next comma.
            comma = header.find(",", pos)
            pos = len(header) if comma < 0 else comma + 1
    return challenges


def scope_for_path(path: str) -> str | None:
    """The token scope the registry will ask for a request path, to send a token up front."""
    if path.rstrip("/") == "/v2/_catalog":
        return "registry:catalog:*"
    match = _REPOSITORY_PATH.match(path)
    return f"repository:{match.group('name')}:pull" if match else None


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL, with the scheme's default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


@dataclass
class _Token:
    value: str
    fresh_until: float

    def fresh(self) -> bool:
        return time.monotonic() < self.fresh_until


class RegistryAuth(AuthBase):
    """``requests`` auth for one registry, with an optional account (user and password).

    Without an account, anonymous tokens are fetched (as public registries require).
    Thread-safe: one instance may serve every request to its registry in a process.
    """

    def __init__(
        self,
        registry_url: str,
        username: str = "",
        password: str = "",
        *,
        timeout: tuple[float, float] = (5.0, 30.0),
        retries: int = 2,
        verify: bool | str = True,
    ) -> None:
        self.registry_origin = origin(registry_url)
        self.username = username
        self._password = password
        self._timeout = timeout
        self._session = requests.Session()
        # The token server is checked as the registry is (requests' ``verify``).
        self._session.verify = verify
        self.verify = verify
        retry = Retry(
            total=retries,
            backoff_factor=0.5,
            status_forcelist=(429, 500, 502, 503, 504),
            allowed_methods=frozenset({"GET"}),
            raise_on_status=False,
        )
        for prefix in ("http://", "https://"):
            self._session.mount(prefix, HTTPAdapter(max_retries=retry))
        self._guard = threading.Lock()
        self._fetching: dict[tuple[str, str, str], threading.Lock] = {}
        self._tokens: dict[tuple[str, str, str], _Token] = {}
        # What the registry asked for last: its realm and service, or Basic.
        self._bearer: tuple[str, str] | None = None
        self._basic = False

    def __repr__(self) -> str:
        scheme, host, port = self.registry_origin
        return f"RegistryAuth({scheme}://{host}:{port}, account={self.username!r})"

    def uses(self, username: str, password: str, verify: bool | str = True) -> bool:
        """True when this instance was made for exactly this account and TLS check."""
        return (username, password, verify) == (self.username, self._password, self.verify)

    def close(self) -> None:
        """Close the token server session."""
        self._session.close()

    # -- requests' interface -------------------------------------------------------

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if origin(request.url or "") != self.registry_origin:
            return request
        header = self._header_up_front(urlsplit(request.url or "").path)
        if header:
            request.headers["Authorization"] = header
        request.register_hook("response", self._on_response)
        return request

    def _header_up_front(self, path: str) -> str | None:
        if self._basic and self.username:
            return self._basic_header()
        bearer = self._bearer
        scope = scope_for_path(path)
        if bearer is None or scope is None:
            return None
        with self._guard:
            token = self._tokens.get((*bearer, scope))
        return f"Bearer {token.value}" if token is not None and token.fresh() else None

    def _on_response(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        request = response.request
        if (
            response.status_code != 401
            or getattr(request, _RETRIED, False)
            or origin(request.url or "") != self.registry_origin
        ):
            return response
        try:
            header = self._answer(response)
        except BaseException:
            response.close()
            raise
        if header is None:
            return response  # the caller reports the 401, body and all
        response.close()
        retry = request.copy()
        retry.headers["Authorization"] = header
        setattr(retry, _RETRIED, True)
        answer = response.connection.send(retry, **kwargs)
        answer.history.append(response)
        answer.request = retry
        return answer

    def _answer(self, response: requests.Response) -> str | None:
        """The Authorization header to repeat the request with, or None to give up."""
        challenges = parse_challenges(response.headers.get("WWW-Authenticate", ""))
        by_scheme = {c.scheme: c for c in challenges}
        bearer = by_scheme.get("bearer")
        if bearer is not None and bearer.params.get("realm"):
            sent = response.request.headers.get("Authorization", "")
            return "Bearer " + self._token(bearer.params, sent.removeprefix("Bearer "))
        if "basic" in by_scheme and self.username:
            self._basic = True
            return self._basic_header()
        return None

    def _basic_header(self) -> str:
        pair = f"{self.username}:{self._password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    # -- tokens ----------------------------------------------------------------------

    def _token(self, params: dict[str, str], sent: str) -> str:
        """A fresh token for the challenge; the one just refused (``sent``) is not reused."""
        realm, service, scope = params["realm"], params.get("service", ""), params.get("scope", "")
        self._check_realm(realm)
        key = (realm, service, scope)
        with self._guard:
            lock = self._fetching.setdefault(key, threading.Lock())
        # One fetch per scope at a time: threads that were refused together share it.
        with lock:
            with self._guard:
                cached = self._tokens.get(key)
            if cached is not None and cached.fresh() and cached.value != sent:
                token = cached
            else:
                token = self._fetch(realm, service, scope)
                self._remember(key, token)
        self._bearer = (realm, service)
        return token.value

    def _remember(self, key: tuple[str, str, str], token: _Token) -> None:
        with self._guard:
            if len(self._tokens) >= MAX_CACHED_TOKENS:
                for old in [k for k, t in self._tokens.items() if not t.fresh()]:
                    del self._tokens[old]
                if len(self._tokens) >= MAX_CACHED_TOKENS:
                    self._tokens.clear()
            self._tokens[key] = token

    def _check_realm(self, realm: str) -> None:
        scheme, host, _port = origin(realm)
        if scheme not in ("http", "https") or not host:
            raise RegistryProtocolError("registry sent an unusable token realm")
        if self.username and self.registry_origin[0] == "https" and scheme == "http":
            raise RegistryAuthError(
                f"the registry's token server {_where(realm)} is plain HTTP while the "
                "registry uses HTTPS; refusing to send the credential's account and secret there"
            )

    def _fetch(self, realm: str, service: str, scope: str) -> _Token:
        params = [("service", service)] if service else []
        params += [("scope", s) for s in scope.split()]
        if self.username:
            params.append(("account", self.username))
        auth = (self.username, self._password) if self.username else None
        what = f"token for {scope or 'registry access'} from {_where(realm)}"
        try:
            response = self._session.get(
                realm, params=params, auth=auth, timeout=self._timeout, stream=True
            )
        except requests.RequestException as exc:
            raise RegistryUnavailable(
                f"{what}: cannot reach the token server ({type(exc).__name__})"
            ) from None
        with response:
            self._raise_for_status(response, what)
            body = _read_json(response, what)
        value = body.get("token") or body.get("access_token")
        if not isinstance(value, str) or not value:
            raise RegistryProtocolError(f"{what}: the answer holds no token or access_token")
        expires_in = body.get("expires_in")
        if not isinstance(expires_in, int | float) or expires_in <= 0:
            expires_in = DEFAULT_EXPIRES_IN
        margin = min(MAX_MARGIN, expires_in * MARGIN_SHARE)
        log.debug("fetched %s, valid for %ss", what, expires_in)
        return _Token(value, time.monotonic() + expires_in - margin)

    def _raise_for_status(self, response: requests.Response, what: str) -> None:
        # The status's standard phrase, not the server's: a hostile server can put anything
        # in its reason phrase, and the message ends up in job errors and logs.
        status = _status_line(response.status_code)
        if response.status_code in (401, 403):
            who = f"account {self.username!r}" if self.username else "anonymous access"
            raise RegistryAuthError(
                f"{what}: the token server refused {who} ({status}); check the "
                "credential's account and secret"
            )
        if response.status_code == 429 or response.status_code >= 500:
            raise RegistryUnavailable(f"{what}: token server answered {status}")
        if response.status_code != 200:
            raise RegistryProtocolError(f"{what}: token server answered {status}")


def _read_json(response: requests.Response, what: str) -> dict[str, Any]:
    body = bytearray()
    try:
        for chunk in response.iter_content(64 << 10):
            body += chunk
            if len(body) > _MAX_TOKEN_RESPONSE:
                raise RegistryProtocolError(f"{what}: the answer is over {_MAX_TOKEN_RESPONSE}")
    except requests.RequestException as exc:
        raise RegistryUnavailable(f"{what}: {type(exc).__name__}") from None
    try:
        parsed = json.loads(bytes(body))
    except ValueError:
        raise RegistryProtocolError(f"{what}: the answer is not JSON") from None
    if not isinstance(parsed, dict):
        raise RegistryProtocolError(f"{what}: the answer is not a JSON object")
    return parsed


def _where(url: str) -> str:
    """A server's address for messages: scheme, host and port, nothing it chose itself."""
    scheme, host, port = origin(url)
    return f"{scheme}://{host}" + (f":{port}" if port else "")


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


class FixedAuthorization(AuthBase):
    """Sends one given ``Authorization`` value (say ``Bearer <token>``, as Harbor may hand
    a scanner) with every request to the registry's origin, and to nothing else."""

    def __init__(self, registry_url: str, authorization: str) -> None:
        self.registry_origin = origin(registry_url)
        self._authorization = authorization

    def __repr__(self) -> str:
        scheme, host, port = self.registry_origin
        return f"FixedAuthorization({scheme}://{host}:{port})"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if origin(request.url or "") == self.registry_origin:
            request.headers["Authorization"] = self._authorization
        return request

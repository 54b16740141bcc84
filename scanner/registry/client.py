"""A small client for the Registry HTTP API v2 (the OCI distribution API).

It lists repositories and tags, fetches manifests and small blobs, streams layer blobs,
and verifies every digest it is given or told. How requests are retried and bodies
capped is in ``transport``, what a manifest is in ``manifests``, the verified layer
stream in ``blobs``; errors come out as ``ScanError``.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlencode, urljoin

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from requests.structures import CaseInsensitiveDict

from core.reference import (
    image_name,
    is_digest,
    parse_registry,
    validate_digest,
    validate_reference,
    validate_repository,
    validate_tag,
)
from scanner.errors import (
    BodyInterrupted,
    InvalidContent,
    InvalidManifest,
    NotFound,
    RegistryAuthError,
    RegistryProtocolError,
    RegistryUnavailable,
    ScanError,
)
from scanner.registry.auth import origin
from scanner.registry.blobs import VerifiedBlob
from scanner.registry.manifests import (
    ACCEPT,
    Manifest,
    ManifestRef,
    manifest_digest,
    manifest_media_type,
    ref_from_headers,
    verify_digest,
)
from scanner.registry.transport import (
    CHUNK,
    RETRY_STATUSES,
    SessionPool,
    failure,
    pause,
    read_capped,
    retry_policy,
    retrying_session,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# A listing page holds names only; even a huge registry's page of 1000 stays far below.
_MAX_PAGE_BYTES = 8 << 20
_MAX_ERROR_BYTES = 8 << 10
_ERROR_CODE = re.compile(r"[A-Z][A-Z_]{0,63}")  # as the distribution spec names them


class RegistryClient:
    """Talks to one registry. Use as a context manager, or call ``close()``.

    With ``pool`` given, the client uses the pool's session for the registry and leaves
    it open when it closes. With ``session`` given, the client mounts its retrying
    adapter for the registry's own URL prefix only and leaves the rest of the session
    alone. Otherwise it owns a session that retries for every host (blob storage a
    registry redirects to included). Credentials (``auth``) go with each request;
    requests drops them when a redirect leads to another host, so blob storage never
    sees them. ``verify`` is requests' TLS check: True (the system's CAs), a CA
    bundle's path, or False; it goes with each request, so clients of one pooled
    session may check differently.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.5,
        backoff_max: float = 30.0,
        session: requests.Session | None = None,
        pool: SessionPool | None = None,
        auth: AuthBase | tuple[str, str] | None = None,
        max_manifest_bytes: int = 4 << 20,
        max_config_bytes: int = 8 << 20,
        verify: bool | str = True,
    ) -> None:
        address = parse_registry(base_url)
        self.base_url = address.base_url
        self.host = address.host
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.max_manifest_bytes = max_manifest_bytes
        self.max_config_bytes = max_config_bytes
        self._timeout = (connect_timeout, read_timeout)
        self._auth = auth
        # TLS: True checks the registry's certificate against the system's CAs, a path
        # against the CA certificates in that file, False not at all.
        self._verify = verify
        self._owns_session = session is None and pool is None
        if pool is not None:
            self._session = pool.session(self.base_url, retries, backoff, backoff_max)
        elif session is not None:
            self._session = session
            adapter = HTTPAdapter(max_retries=retry_policy(retries, backoff, backoff_max))
            self._session.mount(f"{self.base_url}/", adapter)
        else:
            self._session = retrying_session(retries, backoff, backoff_max)

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the session if the client created it."""
        if self._owns_session:
            self._session.close()

    def ping(self) -> None:
        """Check that a Registry API v2 answers at the base URL (200, or 401 for auth)."""
        what = f"registry API v2 at {self.base_url}/v2/"
        with self._open("GET", f"{self.base_url}/v2/", what) as response:
            if response.status_code in (200, 401):
                return
            self._raise_for_status(response, what)
            raise RegistryProtocolError(
                f"{what} answered {response.status_code}, expected 200 or 401"
            )

    def catalog(self, page_size: int = 100) -> Iterator[str]:
        """Every repository name, fetched ``page_size`` at a time."""
        return self._paginate("_catalog", page_size, "repositories", f"catalog of {self.host}")

    def tags(self, repository: str, page_size: int = 100) -> Iterator[str]:
        """Every tag of ``repository``, fetched ``page_size`` at a time."""
        validate_repository(repository)
        what = f"tags of {self.host}/{repository}"
        return self._paginate(f"{repository}/tags/list", page_size, "tags", what)

    def get_manifest(self, repository: str, reference: str) -> Manifest:
        """Fetch a manifest or index by tag or digest and verify its digest."""
        what = f"manifest {self._name(repository, reference)}"
        url = self._url(f"{repository}/manifests/{reference}")
        headers, raw = self._get(url, what, self.max_manifest_bytes, accept=ACCEPT)
        digest = manifest_digest(raw, reference, headers.get("Docker-Content-Digest"), what)
        body = _json_object(raw, what, InvalidManifest)
        media_type = manifest_media_type(headers.get("Content-Type", ""), body, what)
        return Manifest(digest=digest, media_type=media_type, raw=raw, body=body)

    def head_manifest(self, repository: str, reference: str) -> ManifestRef:
        """Digest, type and size of a manifest; falls back to GET when HEAD says too little."""
        what = f"manifest {self._name(repository, reference)}"
        url = self._url(f"{repository}/manifests/{reference}")
        with self._open("HEAD", url, what, accept=ACCEPT) as response:
            self._raise_for_status(response, what)
            ref = ref_from_headers(response.headers, reference)
        if ref is not None:
            return ref
        manifest = self.get_manifest(repository, reference)
        return ManifestRef(manifest.digest, manifest.media_type, len(manifest.raw))

    def get_blob(self, repository: str, digest: str, max_bytes: int | None = None) -> bytes:
        """Fetch a small blob (a config), at most ``max_bytes``, and verify its digest."""
        validate_repository(repository)
        validate_digest(digest)
        what = f"blob {image_name(self.host, repository, digest=digest)}"
        limit = self.max_config_bytes if max_bytes is None else max_bytes
        _, data = self._get(self._url(f"{repository}/blobs/{digest}"), what, limit)
        verify_digest(data, digest, what)
        return data

    def read_blob(
        self,
        repository: str,
        digest: str,
        read: Callable[[BinaryIO], T],
        *,
        size: int | None = None,
    ) -> T:
        """``read(blob)`` on a streamed blob (see :meth:`open_blob`). When the stream breaks
        off (cut short, or stalled past the read timeout) the blob is downloaded again
        from the start and ``read`` called afresh, up to ``retries`` times."""

        def attempt() -> T:
            with self.open_blob(repository, digest, size=size) as blob:
                return read(blob)

        return self._again_if_interrupted(attempt)

    @contextmanager
    def open_blob(
        self, repository: str, digest: str, *, size: int | None = None
    ) -> Iterator[BinaryIO]:
        """Stream a blob (a layer) as the registry stores it, compressed.

        Reading it to the end verifies its digest and ``size``: a mismatch raises
        ``InvalidContent`` there. More than ``size`` bytes are never read. A connection
        lost while streaming raises ``BodyInterrupted``; :meth:`read_blob` retries it.
        """
        validate_repository(repository)
        validate_digest(digest)
        what = f"blob {image_name(self.host, repository, digest=digest)}"
        url = self._url(f"{repository}/blobs/{digest}")
        # A compressing server would hand us bytes that are not the blob's.
        with self._open("GET", url, what, headers={"Accept-Encoding": "identity"}) as response:
            self._raise_for_status(response, what)
            declared = response.headers.get("Content-Length", "")
            if size is not None and declared.isdigit() and int(declared) != size:
                raise InvalidContent(
                    f"layer {digest}: manifest says {size} bytes, registry sent {declared}"
                )
            yield io.BufferedReader(VerifiedBlob(response, digest, size, what), CHUNK)

    def _name(self, repository: str, reference: str) -> str:
        """Validate a repository and reference and name them for messages."""
        validate_repository(repository)
        validate_reference(reference)
        if is_digest(reference):
            return image_name(self.host, repository, digest=reference)
        return image_name(self.host, repository, tag=reference)

    def _url(self, path: str) -> str:
        return f"{self.base_url}/v2/{path}"

    def _paginate(self, path: str, page_size: int, key: str, what: str) -> Iterator[str]:
        """Validate eagerly, then iterate lazily over the pages."""
        if page_size < 1:
            raise ValueError(f"page_size {page_size} must be at least 1")
        first = f"{self._url(path)}?{urlencode({'n': page_size})}"
        return self._pages(first, key, what)

    def _pages(self, url: str | None, key: str, what: str) -> Iterator[str]:
        # A registry whose Link points back at a page already read would loop forever;
        # that is a broken registry, not a passing fault, hence a permanent error.
        seen: set[str] = set()
        while url is not None:
            if url in seen:
                raise RegistryProtocolError(f"{what}: pagination loops back to {url}")
            seen.add(url)
            items, url = self._page(url, key, what)
            yield from items

    def _page(self, url: str, key: str, what: str) -> tuple[list[str], str | None]:
        """One page of a listing: its valid names and the next page's URL, if any."""

        def read() -> tuple[bytes, str | None]:
            with self._open("GET", url, what) as response:
                self._raise_for_status(response, what)
                body = read_capped(response, _MAX_PAGE_BYTES, what, RegistryProtocolError)
                return body, response.links.get("next", {}).get("url")

        raw, link = self._again_if_interrupted(read)
        items = _json_object(raw, what, RegistryProtocolError).get(key) or []
        if not isinstance(items, list):
            raise RegistryProtocolError(f"{what}: {key!r} is not a list")
        return _valid_names(items, key, what), self._next_url(url, link, what)

    def _next_url(self, current: str, link: str | None, what: str) -> str | None:
        """Resolve a ``Link`` target; refuse other origins so credentials stay home."""
        if not link:
            return None
        target = urljoin(current, link)
        if origin(target) != origin(self.base_url):
            raise RegistryProtocolError(f"{what}: next page {target} is on another host")
        return target

    def _get(
        self, url: str, what: str, limit: int, accept: str | None = None
    ) -> tuple[CaseInsensitiveDict[str], bytes]:
        """GET a body of at most ``limit`` bytes; returns the headers and the body."""

        def read() -> tuple[CaseInsensitiveDict[str], bytes]:
            with self._open("GET", url, what, accept=accept) as response:
                self._raise_for_status(response, what)
                return response.headers, read_capped(response, limit, what, InvalidManifest)

        return self._again_if_interrupted(read)

    def _again_if_interrupted(self, attempt: Callable[[], T]) -> T:
        """``attempt()``, made again when its answer breaks off after the headers: up to
        ``retries`` times, with the same backoff as faults before the headers."""
        for tries in range(self.retries):
            try:
                return attempt()
            except BodyInterrupted as exc:
                log.info("%s; trying again", exc)
                pause(tries, self.backoff, self.backoff_max)
        return attempt()

    @contextmanager
    def _open(
        self,
        method: str,
        url: str,
        what: str,
        accept: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Iterator[requests.Response]:
        """Send a request (retried by the adapter) and turn transport failures into errors."""
        headers = {**(headers or {}), **({"Accept": accept} if accept else {})}
        try:
            response = self._session.request(
                method,
                url,
                headers=headers,
                auth=self._auth,
                timeout=self._timeout,
                stream=True,
                verify=self._verify,
            )
        except requests.RequestException as exc:
            raise RegistryUnavailable(f"{what} unavailable: {failure(exc, self.retries)}") from exc
        with response:
            try:
                yield response
            except requests.RequestException as exc:
                # Raised while streaming the body, which urllib3 does not retry.
                raise BodyInterrupted(f"{what} unavailable: {failure(exc, 0)}") from exc

    def _raise_for_status(self, response: requests.Response, what: str) -> None:
        """Map a non-2xx status to the matching ``ScanError``."""
        status = response.status_code
        if status < 300:
            return
        if status == 404:
            raise NotFound(f"{what} not found (404)")
        if status in (401, 403):
            raise RegistryAuthError(f"{what}: access denied ({status}){_detail(response)}")
        if status in RETRY_STATUSES or status == 408:
            raise RegistryUnavailable(
                f"{what} unavailable: registry answered {status} "
                f"(gave up after {self.retries} retries)"
            )
        raise RegistryProtocolError(f"{what}: unexpected status {status}{_detail(response)}")


def _json_object(raw: bytes, what: str, error: type[ScanError]) -> dict[str, Any]:
    """Parse ``raw`` as a JSON object or raise ``error``."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise error(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise error(f"{what} is not a JSON object")
    return body


def _valid_names(items: list[Any], key: str, what: str) -> list[str]:
    """Drop names that could not be used in a URL; they cannot be fetched anyway."""
    check: Callable[[str], str] = validate_repository if key == "repositories" else validate_tag
    valid = []
    for item in items:
        try:
            valid.append(check(item))
        except (ValueError, TypeError):
            log.warning("%s: skipping invalid name %r", what, item)
    return valid


def _detail(response: requests.Response) -> str:
    """The code of the first error the registry reported in its JSON body (such as
    ``DENIED``), for messages. Never its message: a hostile registry can echo anything
    there, our own Authorization header included, and messages reach job errors."""
    try:
        raw = read_capped(response, _MAX_ERROR_BYTES, "error", RegistryProtocolError)
        code = json.loads(raw)["errors"][0]["code"]
    except (ScanError, requests.RequestException, ValueError, KeyError, IndexError, TypeError):
        return ""
    return f": {code}" if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else ""

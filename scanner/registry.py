"""A small client for the Registry HTTP API v2 (the OCI distribution API).

It lists repositories and tags, fetches manifests and small blobs, and verifies every
digest it is given or told. Bodies are streamed with a size cap, so a hostile registry
cannot make us buffer more than we asked for. Retries of idempotent requests are left
to urllib3's ``Retry`` on the session's adapter; errors come out as ``ScanError``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import urlencode, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.util.retry import Retry

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
    InvalidContent,
    InvalidManifest,
    NotFound,
    RegistryAuthError,
    RegistryProtocolError,
    RegistryUnavailable,
    ScanError,
)

log = logging.getLogger(__name__)

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE_MANIFEST_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEX_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
MANIFEST_TYPES = IMAGE_MANIFEST_TYPES | INDEX_TYPES
_ACCEPT = ", ".join([OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST])

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# A listing page holds names only; even a huge registry's page of 1000 stays far below.
_MAX_PAGE_BYTES = 8 << 20
_MAX_ERROR_BYTES = 8 << 10
_CHUNK = 64 << 10
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Manifest:
    """A manifest or index as fetched: its verified digest, type, exact bytes and JSON."""

    digest: str
    media_type: str
    raw: bytes
    body: dict[str, Any]

    @property
    def is_index(self) -> bool:
        """True for a Docker manifest list or an OCI index."""
        return self.media_type in INDEX_TYPES


@dataclass(frozen=True)
class ManifestRef:
    """What a HEAD request says about a manifest, without its body."""

    digest: str
    media_type: str
    size: int


def compute_digest(data: bytes, algorithm: str = "sha256") -> str:
    """The ``algorithm:hex`` digest of ``data``."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def verify_digest(data: bytes, digest: str, what: str) -> None:
    """Raise ``InvalidManifest`` unless ``data`` hashes to ``digest`` (sha256 or sha512)."""
    actual = compute_digest(data, digest.partition(":")[0])
    if actual != digest:
        raise InvalidManifest(f"{what}: digest mismatch: expected {digest}, content is {actual}")


class _RegistryRetry(Retry):
    """urllib3's ``Retry`` with a pause before every retry and a capped ``Retry-After``."""

    def get_backoff_time(self) -> float:
        # urllib3 retries the first failure at once; a registry that fails is usually
        # overloaded, so every retry waits, with jitter so that workers do not march in step.
        if not self.history:
            return 0.0
        delay = self.backoff_factor * 2 ** (len(self.history) - 1)
        return min(self.backoff_max, delay + random.uniform(0, self.backoff_jitter))

    def parse_retry_after(self, retry_after: str) -> float:
        # A registry must not be able to park a worker for hours.
        return min(super().parse_retry_after(retry_after), self.backoff_max)


def _retry_policy(retries: int, backoff: float, backoff_max: float) -> Retry:
    """Retries for GET/HEAD on lost connections, read timeouts and 429/5xx."""
    return _RegistryRetry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=0,
        allowed_methods=frozenset({"GET", "HEAD"}),
        status_forcelist=RETRY_STATUSES,
        backoff_factor=backoff,
        backoff_jitter=backoff,
        backoff_max=backoff_max,
        respect_retry_after_header=True,
        # Hand the last response back so its status can be reported.
        raise_on_status=False,
    )


class RegistryClient:
    """Talks to one registry. Use as a context manager, or call ``close()``.

    With ``session`` given, the client mounts its retrying adapter for the registry's
    own URL prefix only and leaves the rest of the session alone; otherwise it owns a
    session that retries for every host (blob storage a registry redirects to included).
    Credentials (``auth``) go with each request; requests drops them when a redirect
    leads to another host, so blob storage never sees them.
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
        auth: AuthBase | tuple[str, str] | None = None,
        max_manifest_bytes: int = 4 << 20,
        max_config_bytes: int = 8 << 20,
    ) -> None:
        address = parse_registry(base_url)
        self.base_url = address.base_url
        self.host = address.host
        self.retries = retries
        self.max_manifest_bytes = max_manifest_bytes
        self.max_config_bytes = max_config_bytes
        self._timeout = (connect_timeout, read_timeout)
        self._auth = auth
        self._owns_session = session is None
        self._session = session if session is not None else requests.Session()
        adapter = HTTPAdapter(max_retries=_retry_policy(retries, backoff, backoff_max))
        prefixes = ("http://", "https://") if self._owns_session else (f"{self.base_url}/",)
        for prefix in prefixes:
            self._session.mount(prefix, adapter)

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
        headers, raw = self._get(url, what, self.max_manifest_bytes, accept=_ACCEPT)
        digest = _manifest_digest(raw, reference, headers.get("Docker-Content-Digest"), what)
        body = _json_object(raw, what, InvalidManifest)
        media_type = _manifest_media_type(headers.get("Content-Type", ""), body, what)
        return Manifest(digest=digest, media_type=media_type, raw=raw, body=body)

    def head_manifest(self, repository: str, reference: str) -> ManifestRef:
        """Digest, type and size of a manifest; falls back to GET when HEAD says too little."""
        what = f"manifest {self._name(repository, reference)}"
        url = self._url(f"{repository}/manifests/{reference}")
        with self._open("HEAD", url, what, accept=_ACCEPT) as response:
            self._raise_for_status(response, what)
            ref = _ref_from_headers(response.headers, reference)
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

    @contextmanager
    def open_blob(
        self, repository: str, digest: str, *, size: int | None = None
    ) -> Iterator[BinaryIO]:
        """Stream a blob (a layer) as the registry stores it, compressed.

        Reading it to the end verifies its digest and ``size``: a mismatch raises
        ``InvalidContent`` there. More than ``size`` bytes are never read. A connection
        lost while streaming raises ``RegistryUnavailable``; it is not retried here.
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
            yield io.BufferedReader(_VerifiedBlob(response, digest, size, what), _CHUNK)

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
        with self._open("GET", url, what) as response:
            self._raise_for_status(response, what)
            raw = _read_capped(response, _MAX_PAGE_BYTES, what, RegistryProtocolError)
            link = response.links.get("next", {}).get("url")
        items = _json_object(raw, what, RegistryProtocolError).get(key) or []
        if not isinstance(items, list):
            raise RegistryProtocolError(f"{what}: {key!r} is not a list")
        return _valid_names(items, key, what), self._next_url(url, link, what)

    def _next_url(self, current: str, link: str | None, what: str) -> str | None:
        """Resolve a ``Link`` target; refuse other origins so credentials stay home."""
        if not link:
            return None
        target = urljoin(current, link)
        if _origin(target) != _origin(self.base_url):
            raise RegistryProtocolError(f"{what}: next page {target} is on another host")
        return target

    def _get(
        self, url: str, what: str, limit: int, accept: str | None = None
    ) -> tuple[CaseInsensitiveDict[str], bytes]:
        """GET a body of at most ``limit`` bytes; returns the headers and the body."""
        with self._open("GET", url, what, accept=accept) as response:
            self._raise_for_status(response, what)
            return response.headers, _read_capped(response, limit, what, InvalidManifest)

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
                method, url, headers=headers, auth=self._auth, timeout=self._timeout, stream=True
            )
        except requests.RequestException as exc:
            raise RegistryUnavailable(f"{what} unavailable: {_failure(exc, self.retries)}") from exc
        with response:
            try:
                yield response
            except requests.RequestException as exc:
                # Raised while streaming the body, which urllib3 does not retry.
                raise RegistryUnavailable(f"{what} unavailable: {_failure(exc, 0)}") from exc

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


class _VerifiedBlob(io.RawIOBase):
    """A blob's body as the registry sends it, hashed as it is read and checked at EOF."""

    def __init__(
        self, response: requests.Response, digest: str, size: int | None, what: str
    ) -> None:
        super().__init__()
        self._raw = response.raw
        self._digest = digest
        self._hash = hashlib.new(digest.partition(":")[0])
        self._size = size
        self._what = what
        self._count = 0
        self._eof = False
        self._error: InvalidContent | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` with the next bytes; 0 at the end, once they are verified."""
        if self._error is not None:
            raise self._error  # a caller that swallowed it must not see a clean end
        if self._eof:
            return 0
        wanted = len(buffer)
        if self._size is not None:
            # One byte past the size is enough to tell the registry sent too much.
            wanted = min(wanted, self._size - self._count + 1)
        data = self._read(wanted)
        if not data:
            self._eof = True
            self._check(self._verify())
            return 0
        self._count += len(data)
        if self._size is not None and self._count > self._size:
            self._check(
                f"layer {self._digest}: manifest says {self._size} bytes, registry sent more"
            )
        self._hash.update(data)
        buffer[: len(data)] = data
        return len(data)

    def _read(self, amount: int) -> bytes:
        try:
            return self._raw.read(amount, decode_content=False)
        except (HTTPError, OSError) as exc:
            raise RegistryUnavailable(f"{self._what} unavailable: {_describe(exc)}") from exc

    def _verify(self) -> str:
        """Why the bytes read are not the blob, or "" when they are."""
        if self._size is not None and self._count != self._size:
            return (
                f"layer {self._digest}: manifest says {self._size} bytes, "
                f"registry sent {self._count}"
            )
        actual = f"{self._digest.partition(':')[0]}:{self._hash.hexdigest()}"
        if actual != self._digest:
            return f"layer {self._digest} digest mismatch: content is {actual}"
        return ""

    def _check(self, problem: str) -> None:
        if problem:
            self._error = InvalidContent(problem)
            raise self._error


def _read_capped(
    response: requests.Response, limit: int, what: str, error: type[ScanError]
) -> bytes:
    """Read the body, failing as soon as it grows past ``limit`` bytes."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise error(f"{what} is {declared} bytes, over the limit of {limit}")
    body = bytearray()
    for chunk in response.iter_content(_CHUNK):
        body += chunk
        if len(body) > limit:
            raise error(f"{what} is over the limit of {limit} bytes")
    return bytes(body)


def _json_object(raw: bytes, what: str, error: type[ScanError]) -> dict[str, Any]:
    """Parse ``raw`` as a JSON object or raise ``error``."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise error(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise error(f"{what} is not a JSON object")
    return body


def _manifest_digest(raw: bytes, reference: str, header: str | None, what: str) -> str:
    """The manifest's digest, checked against the reference or the registry's header."""
    if is_digest(reference):
        verify_digest(raw, reference, what)
        return reference
    if header and _is_valid_digest(header):
        verify_digest(raw, header, what)
    return compute_digest(raw)


def _manifest_media_type(content_type: str, body: dict[str, Any], what: str) -> str:
    """Content-Type when it names a manifest type, else the body's ``mediaType``."""
    declared = content_type.partition(";")[0].strip().lower()
    in_body = body.get("mediaType")
    if declared in MANIFEST_TYPES:
        # A body claiming another type would be read as something it is not.
        if in_body is not None and in_body != declared:
            raise InvalidManifest(f"{what} is served as {declared!r} but says {in_body!r}")
        return declared
    if in_body in MANIFEST_TYPES:
        return str(in_body)
    found = in_body if isinstance(in_body, str) and in_body else declared or "none"
    supported = ", ".join(sorted(MANIFEST_TYPES))
    raise InvalidManifest(f"{what} has unsupported media type {found!r}; supported: {supported}")


def _ref_from_headers(headers: CaseInsensitiveDict[str], reference: str) -> ManifestRef | None:
    """A ``ManifestRef`` from HEAD headers, or None when they are missing or suspicious."""
    digest = headers.get("Docker-Content-Digest", "")
    media_type = headers.get("Content-Type", "").partition(";")[0].strip().lower()
    size = headers.get("Content-Length", "")
    if not _is_valid_digest(digest) or media_type not in MANIFEST_TYPES or not size.isdigit():
        return None
    if is_digest(reference) and digest != reference:
        return None
    return ManifestRef(digest=digest, media_type=media_type, size=int(size))


def _is_valid_digest(digest: str) -> bool:
    try:
        validate_digest(digest)
    except ValueError:
        return False
    return True


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


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port or _DEFAULT_PORTS.get(parts.scheme)


def _detail(response: requests.Response) -> str:
    """The first error the registry reported in its JSON body, for messages."""
    try:
        raw = _read_capped(response, _MAX_ERROR_BYTES, "error", RegistryProtocolError)
        first = json.loads(raw)["errors"][0]
        return f": {first['code']} {first.get('message', '')}".rstrip()
    except (ScanError, requests.RequestException, ValueError, KeyError, IndexError, TypeError):
        return ""


def _failure(exc: requests.RequestException, retries: int) -> str:
    """Say briefly why a request failed; requests wraps urllib3's reason in ``args[0]``."""
    cause: BaseException = exc
    if exc.args and isinstance(exc.args[0], BaseException):
        cause = exc.args[0]
    if isinstance(cause, MaxRetryError) and cause.reason is not None:
        return f"{_describe(cause.reason)} (gave up after {retries} retries)"
    return _describe(cause)


def _describe(cause: BaseException) -> str:
    if isinstance(cause, ReadTimeoutError | requests.ReadTimeout):
        return "read timed out"
    if isinstance(cause, NewConnectionError):
        return f"cannot connect: {str(cause).rpartition(': ')[2]}"
    if isinstance(cause, ConnectTimeoutError):
        return "connect timed out"
    if isinstance(cause, ProtocolError):
        return f"connection lost: {cause.args[-1] if cause.args else cause}"
    return str(cause) or type(cause).__name__

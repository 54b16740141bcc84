"""Registry addresses and image references, checked against the distribution reference
grammar before they are put in a URL or a database row.

:class:`ImageRef` is the one shape an image reference takes, from the request body that
names it to the job row that stores it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator, model_validator

_DEFAULT_PORTS = {"http": "80", "https": "443"}
_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOSTPORT = re.compile(
    rf"(?P<host>{_LABEL}(?:\.{_LABEL})*|\[[0-9a-fA-F:.]+\])(?::(?P<port>[0-9]{{1,5}}))?",
    re.ASCII,
)
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*", re.ASCII)
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"(?P<algorithm>[a-z0-9]+(?:[.+_-][a-z0-9]+)*):(?P<hex>[a-zA-Z0-9=_-]+)")
# Only algorithms we can verify; anything else could not be checked against content.
_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_LOWER_HEX = re.compile(r"[a-f0-9]+")
MAX_REPOSITORY_LENGTH = 255


@dataclass(frozen=True)
class RegistryAddress:
    """Where to send requests (``base_url``) and the registry's identity (``host``)."""

    base_url: str
    host: str


def parse_registry(address: str) -> RegistryAddress:
    """Parse ``[scheme://]host[:port][/]``; https is assumed when no scheme is given.

    The host is lower-cased and a scheme's default port dropped, so the same registry
    always gets the same identity.
    """
    _reject_unusable_address(address)
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "https", address
    scheme = scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"registry address {address!r} has scheme {scheme!r}: use http or https")
    host = _parse_hostport(address, rest.removesuffix("/"), scheme)
    return RegistryAddress(base_url=f"{scheme}://{host}", host=host)


def _reject_unusable_address(address: str) -> None:
    """Reject the mistakes that cannot be parsed into a host: empty, spaces, credentials."""
    if not address:
        raise ValueError("registry address is empty: give a host such as registry.example.com")
    if any(ch.isspace() for ch in address):
        raise ValueError(f"registry address {address!r} contains whitespace: remove it")
    if "@" in address:
        raise ValueError(
            f"registry address {address!r} contains user info: "
            "remove 'user@' and configure credentials separately"
        )


def _parse_hostport(address: str, hostport: str, scheme: str) -> str:
    """Return ``host[:port]`` lower-cased, without the scheme's default port."""
    if any(ch in hostport for ch in "/?#"):
        raise ValueError(
            f"registry address {address!r} has a path: give only the host and port, "
            "e.g. registry.example.com:5000"
        )
    match = _HOSTPORT.fullmatch(hostport)
    if match is None:
        raise ValueError(f"registry address {address!r} has no valid host name")
    host, port = match["host"].lower(), match["port"]
    if port is None or port.lstrip("0") == _DEFAULT_PORTS[scheme]:
        return host
    if not 0 < int(port) < 65536:
        raise ValueError(f"registry address {address!r} has port {port}: use 1 to 65535")
    return f"{host}:{int(port)}"


def validate_repository(repo: str) -> str:
    """Return ``repo`` if it is a valid repository path, else raise ``ValueError``."""
    if len(repo) > MAX_REPOSITORY_LENGTH:
        raise ValueError(
            f"repo {repo[:40]!r}... is {len(repo)} characters long: "
            f"repository names are at most {MAX_REPOSITORY_LENGTH}"
        )
    if not all(_PATH_COMPONENT.fullmatch(part) for part in repo.split("/")):
        raise ValueError(
            f"repo {repo!r} is not a valid repository name: "
            "use lowercase letters, digits and separators . _ - /"
        )
    return repo


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag, else raise ``ValueError``."""
    if not _TAG.fullmatch(tag):
        raise ValueError(
            f"tag {tag!r} is not a valid tag: use up to 128 letters, digits, '_', '.' "
            "and '-', not starting with '.' or '-'"
        )
    return tag


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is a sha256 or sha512 digest, else raise ``ValueError``."""
    match = _DIGEST.fullmatch(digest)
    if match is None:
        raise ValueError(f"digest {digest!r} is not a valid digest: use algorithm:hex")
    algorithm, encoded = match["algorithm"], match["hex"]
    length = _HEX_LENGTHS.get(algorithm)
    if length is None:
        raise ValueError(f"digest {digest!r} uses algorithm {algorithm!r}: use sha256 or sha512")
    if len(encoded) != length or not _LOWER_HEX.fullmatch(encoded):
        raise ValueError(
            f"digest {digest!r} is not a valid {algorithm} digest: "
            f"use {length} lowercase hex characters after '{algorithm}:'"
        )
    return digest


def is_digest(reference: str) -> bool:
    """True when ``reference`` is written as a digest (tags cannot contain ``:``)."""
    return ":" in reference


def validate_reference(reference: str) -> str:
    """Return ``reference`` if it is a valid tag or digest, else raise ``ValueError``."""
    if is_digest(reference):
        return validate_digest(reference)
    return validate_tag(reference)


def image_name(host: str, repo: str, tag: str = "", digest: str = "") -> str:
    """``host/repo:tag``, ``host/repo@digest`` or ``host/repo:tag@digest``."""
    name = f"{host}/{repo}"
    if tag:
        name += f":{tag}"
    if digest:
        name += f"@{digest}"
    return name


class ImageRef(BaseModel):
    """An image to scan: ``registry/repo:tag``, ``registry/repo@digest``, or both.

    ``registry`` is written as the user wrote it (``http://`` included); :attr:`host` is
    its identity. As in the reference API, no tag and no digest means ``latest``.
    Unknown fields are refused; ``id``, which some reference payloads carry, is ignored.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    registry: StrictStr
    repo: StrictStr
    tag: StrictStr = ""
    digest: StrictStr = ""
    id: StrictStr = Field(default="", exclude=True, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _default_tag(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("tag") and not data.get("digest"):
            return {**data, "tag": "latest"}
        return data

    @field_validator("registry")
    @classmethod
    def _registry(cls, v: str) -> str:
        parse_registry(v)
        return v

    @field_validator("repo")
    @classmethod
    def _repo(cls, v: str) -> str:
        return validate_repository(v)

    @field_validator("tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        return validate_tag(v) if v else v

    @field_validator("digest")
    @classmethod
    def _digest(cls, v: str) -> str:
        return validate_digest(v) if v else v

    @property
    def host(self) -> str:
        """The registry's identity, ``host[:port]``."""
        return parse_registry(self.registry).host

    def as_target(self) -> dict[str, str]:
        """As a job row keeps it: ``{registry, repo, tag, digest}``."""
        return {
            "registry": self.registry,
            "repo": self.repo,
            "tag": self.tag,
            "digest": self.digest,
        }

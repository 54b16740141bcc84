"""Which images the registry scanning configuration covers.

A specification names a registry (by host and port), a repository glob and a tag
glob, minus exclusions. Blank or ``*`` means "all". Matching is case-sensitive
glob matching (``fnmatch``), as repositories and tags are. Two Prisma fields narrow
it further: ``namespace`` keeps the repositories under that path, ``versionPattern``
the tags that also match that glob.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.reference import ImageRef, RegistryAddress, parse_registry
from models import RegistrySpec
from scheduler.errors import OutOfScope


@dataclass(frozen=True)
class Spec:
    position: int
    address: RegistryAddress
    repository: str = ""
    tag: str = ""
    excluded_repositories: tuple[str, ...] = ()
    excluded_tags: tuple[str, ...] = ()
    credential_id: str = ""
    os: str = "linux"
    cap: int = 5
    scanners: int = 2
    namespace: str = ""
    version_pattern: str = ""

    @classmethod
    def from_row(cls, row: Any) -> Spec:
        """From a stored specification (``RegistrySpec``), or a row of :data:`SPEC_COLUMNS`."""
        return cls(
            position=row.position,
            address=parse_registry(row.address),
            repository=row.repository,
            tag=row.tag,
            excluded_repositories=tuple(row.excluded_repositories or ()),
            excluded_tags=tuple(row.excluded_tags or ()),
            credential_id=row.credential_id,
            os=row.os,
            cap=row.cap,
            scanners=max(1, row.scanners),
            namespace=row.namespace.strip("/"),
            version_pattern=row.version_pattern,
        )

    @property
    def lists_catalog(self) -> bool:
        """True when the repository pattern needs the catalog to be expanded."""
        return not self.repository or any(c in self.repository for c in "*?[")

    def covers_repository(self, repository: str) -> bool:
        return (
            _in_namespace(self.namespace, repository)
            and _matches(self.repository, repository)
            and not _any_match(self.excluded_repositories, repository)
        )

    def covers_tag(self, tag: str) -> bool:
        return (
            _matches(self.tag, tag)
            and _matches(self.version_pattern, tag)
            and not _any_match(self.excluded_tags, tag)
        )

    @property
    def limits_tags(self) -> bool:
        """True when only some tags are in scope (a tag pattern, or exclusions)."""
        return self.tag not in ("", "*") or any(self.excluded_tags)

    def covers(self, host: str, repository: str, tag: str) -> bool:
        """A tag of "" (a digest-only reference) is covered only where every tag is: the
        tag filter cannot be applied to a digest alone."""
        if host != self.address.host or not self.covers_repository(repository):
            return False
        return self.covers_tag(tag) if tag else not self.limits_tags


def _matches(pattern: str, value: str) -> bool:
    return pattern in ("", "*") or fnmatchcase(value, pattern)


def _in_namespace(namespace: str, repository: str) -> bool:
    """Blank is every repository; otherwise the namespace itself and the paths under it."""
    return not namespace or repository == namespace or repository.startswith(namespace + "/")


def _any_match(patterns: Iterable[str], value: str) -> bool:
    return any(fnmatchcase(value, p) for p in patterns if p)


def find_spec(specs: Iterable[Spec], host: str, repository: str, tag: str) -> Spec | None:
    """The first specification, in configuration order, covering the image."""
    return next((s for s in specs if s.covers(host, repository, tag)), None)


def describe_miss(specs: list[Spec], host: str, repository: str, tag: str) -> str:
    """Why no specification covers an image, in words a user can act on."""
    name = f"{host}/{repository}" + (f":{tag}" if tag else "")
    if not specs:
        return (
            f"{name} is outside the registry scope: no registry specification is configured. "
            "Add one with PUT /api/v1/settings/registry."
        )
    same_registry = [s for s in specs if s.address.host == host]
    if not same_registry:
        known = ", ".join(sorted({s.address.host for s in specs}))
        return (
            f"{name} is outside the registry scope: registry {host} is not configured "
            f"(configured: {known})."
        )
    if not tag and any(s.covers_repository(repository) for s in same_registry):
        return (
            f"{name} is outside the registry scope: the specifications covering this "
            "repository scan only some of its tags, which a digest alone cannot be "
            "checked against; name the tag along with the digest."
        )
    return (
        f"{name} is outside the registry scope: no specification for registry {host} "
        "covers this repository and tag (check repository, tag and the exclusions in "
        "GET /api/v1/settings/registry)."
    )


# What a Spec is made of. Every scan request reads the configuration: plain columns cost
# a fraction of what loading whole ORM objects does.
SPEC_COLUMNS = (
    RegistrySpec.position,
    RegistrySpec.address,
    RegistrySpec.repository,
    RegistrySpec.tag,
    RegistrySpec.excluded_repositories,
    RegistrySpec.excluded_tags,
    RegistrySpec.credential_id,
    RegistrySpec.os,
    RegistrySpec.cap,
    RegistrySpec.scanners,
    RegistrySpec.namespace,
    RegistrySpec.version_pattern,
)


def load_specs(session: Session) -> list[Spec]:
    """The configuration, in the order the user wrote it."""
    rows = session.execute(select(*SPEC_COLUMNS).order_by(RegistrySpec.position))
    return [Spec.from_row(row) for row in rows]


def spec_for(specs: list[Spec], ref: ImageRef) -> Spec:
    """The specification covering ``ref``; :class:`OutOfScope` says why none does."""
    spec = find_spec(specs, ref.host, ref.repo, ref.tag)
    if spec is None:
        raise OutOfScope(describe_miss(specs, ref.host, ref.repo, ref.tag))
    return spec


def split_by_scope(
    specs: list[Spec], refs: Sequence[ImageRef]
) -> tuple[list[tuple[ImageRef, Spec]], list[ImageRef]]:
    """The images some specification covers, each with it, and the others."""
    inside, outside = [], []
    for ref in refs:
        spec = find_spec(specs, ref.host, ref.repo, ref.tag)
        if spec is None:
            outside.append(ref)
        else:
            inside.append((ref, spec))
    return inside, outside

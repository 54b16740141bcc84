"""Matching stored inventories against the vulnerability data, and re-matching them when
the data changes.

Matching reads only what scans stored (an image's inventory and OS); it never downloads
a blob or asks a registry anything, so re-matching the whole fleet after the data
changed costs database reads only.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from core import keys
from models import Image, findings, vuln_records
from models.base import utcnow
from models.db import transaction
from scanner.vulns import matching, osv
from worker.runtime import Runtime

log = logging.getLogger(__name__)
# Bounds of a process's match memo; past either it starts again empty. Measured with the
# re-match benchmark's data: 1.5 KB per parsed record, 0.7 KB per package's findings.
MEMO_RECORDS = 20_000
MEMO_TARGETS = 50_000
# Past this many changed packages since an image's match, it is matched again without
# comparing: a first import or a full refresh changes everything anyway.
CHANGED_KEYS_LIMIT = 20_000


@dataclass
class MatchMemo:
    """What matching images against one generation of the data can share: the ids of the
    records naming each (ecosystem, package), the records read and parsed (``None`` for
    withdrawn or unreadable ones) and each package's findings.

    Images share most of their candidate records and many of their packages, so reading,
    parsing and evaluating them again for each image was most of a re-match's cost.
    Valid for one generation only: the data changes only with a new generation.
    """

    generation: int
    naming: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    records: dict[str, osv.Record | None] = field(default_factory=dict)
    targets: dict[matching.Target, matching.TargetMatch] = field(default_factory=dict)
    # By the generation an image was matched at: the packages changed since (None: too
    # many to compare).
    changed: dict[int, frozenset[tuple[str, str]] | None] = field(default_factory=dict)

    @property
    def oversized(self) -> bool:
        return max(len(self.naming), len(self.targets)) > MEMO_TARGETS or (
            len(self.records) > MEMO_RECORDS
        )


_memo_lock = threading.Lock()
_memo: MatchMemo | None = None


def memo_for(generation: int) -> MatchMemo:
    """This process's memo for ``generation``, shared by the re-match batches it runs.

    A batch that read an older generation than the current memo's gets one of its own,
    so what it reads never mixes with the newer data's.
    """
    global _memo
    with _memo_lock:
        if _memo is None or _memo.generation < generation or _memo.oversized:
            _memo = MatchMemo(generation)
        if _memo.generation == generation:
            return _memo
    return MatchMemo(generation)


def match_image(
    session: Session, image: Image, generation: int | None = None, memo: MatchMemo | None = None
) -> int:
    """Match one stored image against the data and replace its findings; the number of
    findings. Reads the generation before the records, so data that changes meanwhile
    leaves the image due for another pass rather than marked current.
    """
    if generation is None:
        generation = vuln_records.current_generation(session)
    if memo is None or memo.generation != generation:
        memo = MatchMemo(generation)
    return _match(session, image, _targets(image), generation, memo)


def current_findings(session: Session, image: Image) -> list[dict]:
    """The image's findings against the data as it is now, matched afresh and not
    stored: what its stored findings must equal once it is current."""
    memo = MatchMemo(vuln_records.current_generation(session))
    return _findings(session, _targets(image), memo).findings


def _findings(
    session: Session, found: list[matching.Target], memo: MatchMemo
) -> matching.MatchResult:
    records = _records(session, _candidates(session, matching.lookup_keys(found), memo), memo)
    return matching.match(found, records, utcnow(), memo.targets)


def _targets(image: Image) -> list[matching.Target]:
    image_os = matching.ImageOS(image.os_distro, image.os_distro_version, image.distro)
    return matching.targets(image_os, image.packages or [])


def _match(
    session: Session,
    image: Image,
    found: list[matching.Target],
    generation: int,
    memo: MatchMemo,
    only: set[findings.PackageKey] | None = None,
) -> int:
    """Match ``found`` and store the findings: all of the image's, or with ``only``, those
    of these packages (the others are kept as they are)."""
    result = _findings(session, found, memo)
    if result.unreadable_ranges:
        log.info(
            "image=%s: %s ranges skipped (unreadable versions)", image.id, result.unreadable_ranges
        )
    findings.replace_findings(session, image, result.findings, generation, only=only)
    return len(result.findings)


def _candidates(session: Session, keys: set[tuple[str, str]], memo: MatchMemo) -> set[str]:
    """Ids of the records naming any of ``keys``, asking the database only for keys the
    memo has not seen yet."""
    naming = memo.naming
    missing = keys - naming.keys()
    if missing:
        found = vuln_records.records_naming(session, missing)
        for key in missing:
            naming[key] = frozenset(found.get(key, ()))
    return set().union(*(naming[key] for key in keys))


def _records(session: Session, ids: set[str], memo: MatchMemo) -> list[osv.Record]:
    """The parsed records with these ids, reading only those not in the memo yet."""
    cache = memo.records
    missing = ids - cache.keys()
    read = vuln_records.records_by_id(session, missing)
    for rid in missing:
        cache[rid] = _parse(read[rid]) if rid in read else None  # None: withdrawn
    return [record for rid in ids if (record := cache[rid]) is not None]


def _parse(data: dict) -> osv.Record | None:
    try:
        return osv.parse_record(data)
    except osv.InvalidRecord as exc:  # stored by an older, laxer version of us
        log.warning("stored OSV record is invalid, not matched: %s", exc)
        return None


@dataclass
class RematchCounts:
    matched: int = 0  # matched again in full, all findings replaced
    partly: int = 0  # only the packages the data changed for matched again
    unaffected: int = 0  # holding no package the data changed for: marked current only

    @property
    def images(self) -> int:
        return self.matched + self.partly + self.unaffected


def rematch_batch(sessions: sessionmaker[Session], limit: int) -> RematchCounts:
    """Bring up to ``limit`` images whose findings predate the data up to date.

    A package's findings depend only on the records naming it, so only the packages the
    data changed for since an image's match are matched again, and only their findings
    replaced; an image holding none is just marked current. An image never matched, or
    matched before more changes than ``CHANGED_KEYS_LIMIT``, is matched in full.
    """
    counts = RematchCounts()
    with transaction(sessions) as session:
        generation = vuln_records.current_generation(session)
        images = findings.images_due(session, generation, limit)
        memo = memo_for(generation)
        for image in images:
            found = _targets(image)
            changed = _changed_since(session, image, memo)
            if changed is None:
                _match(session, image, found, generation, memo)
                counts.matched += 1
                continue
            packages = {_package(t) for t in found if _names_any(t, changed)}
            if packages:
                # Every target shown as one of these packages: their findings are replaced.
                again = [t for t in found if _package(t) in packages]
                _match(session, image, again, generation, memo, only=packages)
                counts.partly += 1
            else:
                image.matched_generation = generation
                counts.unaffected += 1
    return counts


def _changed_since(
    session: Session, image: Image, memo: MatchMemo
) -> frozenset[tuple[str, str]] | None:
    """The (ecosystem, name) pairs the data changed for since the image's match; None
    when it was never matched or the changes are too many to compare."""
    since = image.matched_generation
    if since is None:
        return None
    if since not in memo.changed:
        memo.changed[since] = vuln_records.changed_since(
            session, since, memo.generation, CHANGED_KEYS_LIMIT
        )
    return memo.changed[since]


def _names_any(target: matching.Target, keys: frozenset[tuple[str, str]]) -> bool:
    return any((eco, target.name) in keys for eco in target.ecosystems)


def _package(target: matching.Target) -> findings.PackageKey:
    """The package as its findings name it."""
    return (target.package_type, target.package_name, target.package_version)


def rematch_next(rt: Runtime) -> None:
    """One batch of the re-match chain; the next batch is published while images remain."""
    done = rematch_batch(rt.sessions, rt.settings.rematch_batch)
    if done.images:
        log.info(
            "re-matched %s images against the current vulnerability data in full, %s in "
            "the packages it changed for; %s held none of them",
            done.matched,
            done.partly,
            done.unaffected,
        )
    if done.images >= rt.settings.rematch_batch:
        rt.publisher.rematch()


def rematch_if_due(rt: Runtime) -> None:
    """Publish a re-match when stored images were matched against older data (at most
    once a minute, cluster-wide, however many workers look)."""
    with rt.sessions() as session:
        due = findings.any_due(session)
    if due and rt.redis.set(keys.REMATCH_KICK, "1", nx=True, ex=keys.REMATCH_KICK_SECONDS):
        rt.publisher.rematch()

"""Matching stored inventories against the vulnerability data, and matching again what
a change of the data concerns.

Findings are stored per package version (``models.findings``): an image is *linked* to
the package versions it holds, and a package version nobody held before is matched when
the first image holding it is linked. When the data changes, only the package versions
the changed records name are matched again, and the counts of the images holding them
follow, set by set; a package version the change does not name is just marked current.
Matching reads only what scans stored; it never asks a registry anything.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core import keys
from models import Image, findings, vuln_records
from models.base import utcnow
from models.db import transaction
from models.findings import ImageTarget, PackageRef, PackageVersion
from scanner.vulns import matching, osv
from worker.runtime import Runtime

log = logging.getLogger(__name__)
# Bounds of a process's match memo; past either it starts again empty. Measured with the
# re-match benchmark's data: 1.5 KB per parsed record, 0.7 KB per package's findings.
MEMO_RECORDS = 20_000
MEMO_TARGETS = 50_000
# Past this many changed packages since a package version's match, it is matched again
# without comparing: a first import or a full refresh changes everything anyway.
CHANGED_KEYS_LIMIT = 20_000


@dataclass
class MatchMemo:
    """What matching against one generation of the data can share: the ids of the
    records naming each (ecosystem, package), the records read and parsed (``None`` for
    withdrawn or unreadable ones), each target's findings, and by generation the
    packages the data changed for since (``None``: too many to compare).

    Valid for one generation only: the data changes only with a new generation.
    """

    generation: int
    naming: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    records: dict[str, osv.Record | None] = field(default_factory=dict)
    targets: dict[matching.Target, matching.TargetMatch] = field(default_factory=dict)
    changed: dict[int, frozenset[tuple[str, str]] | None] = field(default_factory=dict)

    @property
    def oversized(self) -> bool:
        return max(len(self.naming), len(self.targets)) > MEMO_TARGETS or (
            len(self.records) > MEMO_RECORDS
        )


_memo_lock = threading.Lock()
_memo: MatchMemo | None = None


def memo_for(generation: int) -> MatchMemo:
    """This process's memo for ``generation``, shared by the matches it runs.

    A caller that read an older generation than the current memo's gets one of its own,
    so what it reads never mixes with the newer data's.
    """
    global _memo
    with _memo_lock:
        if _memo is None or _memo.generation < generation or _memo.oversized:
            _memo = MatchMemo(generation)
        if _memo.generation == generation:
            return _memo
    return MatchMemo(generation)


# -- package versions ---------------------------------------------------------------------


def ref_of(target: matching.Target) -> PackageRef:
    return PackageRef(
        target.ecosystems,
        target.name,
        target.version,
        target.package_type,
        target.package_name,
        target.package_version,
    )


def _target_of(ref: PackageRef) -> matching.Target:
    return matching.Target(
        ref.ecosystems,
        ref.name,
        ref.version,
        ref.package_type,
        ref.package_name,
        ref.package_version,
    )


def _targets(image: Image) -> list[matching.Target]:
    image_os = matching.ImageOS(image.os_distro, image.os_distro_version, image.distro)
    return matching.targets(image_os, image.packages or [])


def _links(image: Image) -> dict[PackageRef, tuple[str, ...]]:
    """The package versions ``image`` holds, with the binaries it has of each."""
    links: dict[PackageRef, tuple[str, ...]] = {}
    for target in _targets(image):
        ref = ref_of(target)
        links[ref] = tuple(sorted({*links.get(ref, ()), *target.binaries}))
    return links


def _match(session: Session, refs: dict[int, PackageRef], memo: MatchMemo) -> dict[int, list[dict]]:
    """The findings of each package version (id -> findings) against the memo's data."""
    targets = {pv_id: _target_of(ref) for pv_id, ref in refs.items()}
    wanted = matching.lookup_keys(list(targets.values()))
    records = _records(session, _candidates(session, wanted, memo), memo)
    result = matching.match(list(targets.values()), records, utcnow(), memo.targets)
    if result.unreadable_ranges:
        log.info("%s ranges skipped (unreadable versions)", result.unreadable_ranges)
    return {pv_id: list(memo.targets[target].findings) for pv_id, target in targets.items()}


def _candidates(session: Session, wanted: set[tuple[str, str]], memo: MatchMemo) -> set[str]:
    """Ids of the records naming any of ``wanted``, asking the database only for keys
    the memo has not seen yet."""
    naming = memo.naming
    missing = wanted - naming.keys()
    if missing:
        found = vuln_records.records_naming(session, missing)
        for key in missing:
            naming[key] = frozenset(found.get(key, ()))
    return set().union(*(naming[key] for key in wanted))


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


# -- linking an image ---------------------------------------------------------------------


def match_image(
    session: Session, image: Image, generation: int | None = None, memo: MatchMemo | None = None
) -> list[int]:
    """Give a stored image its findings: link it to the package versions it holds (those
    nobody held before are matched now), unless it is linked already. The ids of the
    package versions it holds that are older than the data (for :func:`refresh`).

    Call it under :func:`models.findings.lock_for_linking`.
    """
    if generation is None:
        generation = vuln_records.current_generation(session)
    if image.matched_generation is not None:  # linked: its inventory did not change
        return [] if image.matched_generation >= generation else _stale_of(session, image.id)
    if memo is None or memo.generation != generation:
        memo = memo_for(generation)
    links = _links(image)
    known = findings.ensure_package_versions(session, links)
    unmatched = {k.id: ref for ref, k in _by_ref(links, known) if k.matched_generation is None}
    findings.store_matches(session, _match(session, unmatched, memo), generation)
    findings.link_image(
        session, image, {known[ref.key].id: binaries for ref, binaries in links.items()}, generation
    )
    return [
        k.id
        for _ref, k in _by_ref(links, known)
        if k.matched_generation is not None and k.matched_generation < generation
    ]


def _by_ref(
    links: dict[PackageRef, tuple[str, ...]], known: dict[str, findings.Known]
) -> Iterable[tuple[PackageRef, findings.Known]]:
    return ((ref, known[ref.key]) for ref in links)


def _stale_of(session: Session, image_id: int) -> list[int]:
    stmt = (
        select(PackageVersion.id)
        .join(ImageTarget, ImageTarget.package_version_id == PackageVersion.id)
        .where(ImageTarget.image_id == image_id)
        .where(PackageVersion.matched_generation < vuln_records.current_generation(session))
    )
    return list(session.scalars(stmt))


def current_findings(session: Session, image: Image) -> list[dict]:
    """The image's findings against the data as it is now, matched afresh and not
    stored: what its stored findings must equal once it is current."""
    memo = MatchMemo(vuln_records.current_generation(session))
    found = _targets(image)
    wanted = matching.lookup_keys(found)
    records = _records(session, _candidates(session, wanted, memo), memo)
    return matching.match(found, records, utcnow(), memo.targets).findings


def inventory_refs(
    distro: str, version: str, pretty_name: str, packages: list[dict]
) -> set[PackageRef]:
    """The package versions an inventory holds."""
    image_os = matching.ImageOS(distro, version, pretty_name)
    return {ref_of(t) for t in matching.targets(image_os, packages)}


def stale_among(
    session: Session, refs: Iterable[PackageRef] = (), image_ids: Iterable[int] = ()
) -> list[int]:
    """Ids of the package versions older than the data among ``refs`` and those the
    images ``image_ids`` hold."""
    generation = vuln_records.current_generation(session)
    stale: set[int] = set()
    for chunk in vuln_records.chunks(sorted(ref.key for ref in refs)):
        stmt = select(PackageVersion.id).where(
            PackageVersion.key.in_(chunk), PackageVersion.matched_generation < generation
        )
        stale.update(session.scalars(stmt))
    for image_id in image_ids:
        stale.update(_stale_of(session, image_id))
    return sorted(stale)


# -- the data changed -----------------------------------------------------------------------


@dataclass
class RematchCounts:
    linked: int = 0  # images linked to their package versions (never matched before)
    versions_matched: int = 0  # package versions matched again: the data changed for them
    versions_unchanged: int = 0  # package versions the data did not change for
    images_changed: int = 0  # images whose counts changed
    more: bool = False  # a batch stopped at its limit: there is more to do

    @property
    def work(self) -> int:
        return self.linked + self.versions_matched + self.versions_unchanged


def refresh(sessions: sessionmaker[Session], pv_ids: Sequence[int]) -> RematchCounts:
    """Bring these package versions up to the data, with the counts of the images
    holding them, in a transaction of its own."""
    counts = RematchCounts()
    with transaction(sessions) as session:
        findings.lock_for_refresh(session)
        generation = vuln_records.current_generation(session)
        memo = memo_for(generation)
        stale = [
            (pv_id, g)
            for pv_id, g in findings.generations_of(session, pv_ids)
            if g is not None and g < generation
        ]
        _refresh(session, stale, generation, memo, counts)
    return counts


def rematch_batch(sessions: sessionmaker[Session], limit: int) -> RematchCounts:
    """One transaction's worth of bringing the stored findings up to the data: package
    versions the changed records name are matched again (up to ``limit``), then images
    never linked are linked (up to ``limit``), and once nothing is behind, every
    package version and image is marked current."""
    counts = RematchCounts()
    with transaction(sessions) as session:
        findings.lock_for_refresh(session)
        generation = vuln_records.current_generation(session)
        memo = memo_for(generation)
        due = _changed_for(session, generation, memo, limit)
        _refresh(session, due, generation, memo, counts)
        unlinked = findings.unlinked_images(session, limit)
        for image in unlinked:
            match_image(session, image, generation, memo)
        counts.linked = len(unlinked)
        counts.more = len(due) >= limit or len(unlinked) >= limit
        if not counts.more:
            counts.versions_unchanged += findings.mark_all_matched(session, generation)
            findings.mark_images_current(session, generation)
    return counts


def _changed_for(
    session: Session, generation: int, memo: MatchMemo, limit: int
) -> list[tuple[int, int]]:
    """Up to ``limit`` (id, matched generation) of package versions older than
    ``generation`` that a change since their match names."""
    due: list[tuple[int, int]] = []
    for since in findings.stale_generations(session, generation):
        changed = _changed_since(session, since, memo)
        if changed is None:
            due += findings.stale_at(session, since, limit - len(due))
        else:
            names = {name for _eco, name in changed}
            due += [
                (pv_id, g)
                for pv_id, g, ecosystems, name in findings.stale_naming(session, since, names)
                if any((eco, name) in changed for eco in ecosystems)
            ][: limit - len(due)]
        if len(due) >= limit:
            break
    return due


def _changed_since(
    session: Session, since: int, memo: MatchMemo
) -> frozenset[tuple[str, str]] | None:
    if since not in memo.changed:
        memo.changed[since] = vuln_records.changed_since(
            session, since, memo.generation, CHANGED_KEYS_LIMIT
        )
    return memo.changed[since]


def _refresh(
    session: Session,
    stale: Sequence[tuple[int, int]],
    generation: int,
    memo: MatchMemo,
    counts: RematchCounts,
) -> None:
    """Match again those of ``stale`` (id, matched generation) the data changed for
    since, mark the others current, and carry the changes to the images' counts."""
    refs = findings.refs_of(session, [pv_id for pv_id, _since in stale])
    again: list[int] = []
    unchanged: list[int] = []
    for pv_id, since in stale:
        changed = _changed_since(session, since, memo)
        ref = refs[pv_id]
        if changed is None or any((eco, ref.name) in changed for eco in ref.ecosystems):
            again.append(pv_id)
        else:
            unchanged.append(pv_id)
    changes = findings.store_matches(
        session, _match(session, {i: refs[i] for i in again}, memo), generation
    )
    findings.mark_matched(session, unchanged, generation)
    counts.versions_matched += len(again)
    counts.versions_unchanged += len(unchanged)
    counts.images_changed += findings.apply_changes(session, changes)


def rematch_next(rt: Runtime) -> None:
    """One batch of the re-match chain; the next batch is published while work remains."""
    done = rematch_batch(rt.sessions, rt.settings.rematch_batch)
    if done.work:
        log.info(
            "brought findings up to the vulnerability data: %s package versions matched "
            "again, %s unchanged, %s images linked, %s images' counts changed",
            done.versions_matched,
            done.versions_unchanged,
            done.linked,
            done.images_changed,
        )
    if done.more:
        rt.publisher.rematch()


def rematch_if_due(rt: Runtime) -> None:
    """Publish a re-match when stored findings are older than the data (at most once a
    minute, cluster-wide, however many workers look)."""
    with rt.sessions() as session:
        due = findings.any_due(session, vuln_records.current_generation(session))
    if due and rt.redis.set(keys.REMATCH_KICK, "1", nx=True, ex=keys.REMATCH_KICK_SECONDS):
        rt.publisher.rematch()

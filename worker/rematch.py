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
from models import Image, findings, package_versions, vuln_records
from models.base import utcnow
from models.db import transaction
from models.findings import ImageTarget
from models.package_versions import PackageRef, PackageVersion
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
    """Give a stored image its findings (:func:`link_images` of one image)."""
    return link_images(session, [image], generation, memo)


def link_images(
    session: Session,
    images: Sequence[Image],
    generation: int | None = None,
    memo: MatchMemo | None = None,
) -> list[int]:
    """Give stored images their findings: link each to the package versions it holds
    (those nobody held before are matched now), unless it is linked already. The ids of
    the package versions they hold that the data changed for since their match (for
    :func:`refresh`; there are none once the re-match has caught up).

    Call it under :func:`models.findings.lock_for_linking`.
    """
    if generation is None:
        generation = vuln_records.current_generation(session)
    if memo is None or memo.generation != generation:
        memo = memo_for(generation)
    caught_up = vuln_records.findings_generation(session)
    linked = [image for image in images if image.matched_generation is not None]
    fresh = [image for image in images if image.matched_generation is None]
    held: set[int] = set()
    if caught_up < generation:
        held.update(*(_held(session, image) for image in linked))
    links = {image.id: _links(image) for image in fresh}
    refs = {ref.key: ref for image_links in links.values() for ref in image_links}
    known = package_versions.ensure_package_versions(session, refs.values())
    unmatched = {k.id: refs[key] for key, k in known.items() if k.matched_generation is None}
    matched = _match(session, unmatched, memo)
    package_versions.store_matches(session, matched, generation)
    counts = {pv_id: package_versions.Counts.of(found) for pv_id, found in matched.items()}
    stale: list[int] = []
    if caught_up < generation:
        held.update(k.id for k in known.values())
        stale = _changed(session, memo, package_versions.behind(session, generation, ids=held))
    behind = set(stale)
    linking = []
    for image in fresh:
        holding = {}
        for ref, binaries in links[image.id].items():
            k = known[ref.key]
            holding[k.id] = (binaries, counts.get(k.id, k.counts))
        linking.append((image, holding, caught_up if behind & holding.keys() else generation))
    findings.link_images(session, linking)
    return stale


def _held(session: Session, image: Image) -> list[int]:
    stmt = select(ImageTarget.package_version_id).where(ImageTarget.image_id == image.id)
    return list(session.scalars(stmt))


def _changed(session: Session, memo: MatchMemo, due: Sequence[package_versions.Due]) -> list[int]:
    """Ids of those of ``due`` (package versions matched before the memo's generation)
    that a change of the data since the findings were last all current names."""
    if not due:
        return []
    changed = _changed_since(session, vuln_records.findings_generation(session), memo)
    if changed is None:
        return [pv_id for pv_id, _ecosystems, _name in due]
    return [
        pv_id
        for pv_id, ecosystems, name in due
        if any((eco, name) in changed for eco in ecosystems)
    ]


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
    """Ids of the package versions the data changed for since their match, among
    ``refs`` and those the images ``image_ids`` hold."""
    generation = vuln_records.current_generation(session)
    if vuln_records.findings_generation(session) >= generation:
        return []  # every finding is current
    ids: set[int] = set()
    for chunk in vuln_records.chunks(sorted(ref.key for ref in refs)):
        ids.update(session.scalars(select(PackageVersion.id).where(PackageVersion.key.in_(chunk))))
    for chunk in vuln_records.chunks(sorted(set(image_ids))):
        stmt = select(ImageTarget.package_version_id).where(ImageTarget.image_id.in_(chunk))
        ids.update(session.scalars(stmt))
    due = package_versions.behind(session, generation, ids=ids)
    return _changed(session, memo_for(generation), due)


# -- the data changed -----------------------------------------------------------------------


@dataclass
class RematchCounts:
    linked: int = 0  # images linked to their package versions (never matched before)
    versions_matched: int = 0  # package versions matched again: the data changed for them
    images_changed: int = 0  # images whose counts changed
    findings_written: int = 0  # finding rows of the package versions matched again
    more: bool = False  # a batch stopped at its limit: there is more to do

    @property
    def work(self) -> int:
        return self.linked + self.versions_matched


def refresh(sessions: sessionmaker[Session], pv_ids: Sequence[int]) -> RematchCounts:
    """Match again those of these package versions the data changed for since their
    match, with the counts of the images holding them, in a transaction of its own."""
    counts = RematchCounts()
    with transaction(sessions) as session:
        findings.lock_for_refresh(session)
        generation = vuln_records.current_generation(session)
        memo = memo_for(generation)
        due = _changed(session, memo, package_versions.behind(session, generation, ids=pv_ids))
        _refresh(session, due, generation, memo, counts)
    return counts


def rematch_batch(
    sessions: sessionmaker[Session], limit: int, versions: int | None = None
) -> RematchCounts:
    """One transaction's worth of bringing the stored findings up to the data: up to
    ``versions`` (default ``limit``) package versions that the changes since the
    findings were last all current name are matched again, and up to ``limit`` images
    never linked are linked. Once none is left, the findings are current at the data's
    generation.

    A package version's findings depend only on the records naming it, so those the
    changes do not name are left as they are, whatever number of images hold them.
    """
    counts = RematchCounts()
    with transaction(sessions) as session:
        findings.lock_for_refresh(session)
        generation = vuln_records.current_generation(session)
        caught_up = vuln_records.findings_generation(session)
        memo = memo_for(generation)
        due: list[int] = []
        versions = versions or limit
        if caught_up < generation:
            due = _due(session, generation, caught_up, memo, versions)
            _refresh(session, due, generation, memo, counts)
        unlinked = findings.unlinked_images(session, limit)
        link_images(session, unlinked, generation, memo)
        counts.linked = len(unlinked)
        counts.more = len(due) >= versions or len(unlinked) >= limit
        if not counts.more and caught_up < generation:
            vuln_records.set_findings_generation(session, generation)
    return counts


def _due(
    session: Session, generation: int, caught_up: int, memo: MatchMemo, limit: int
) -> list[int]:
    """Up to ``limit`` ids of package versions matched before ``generation`` that a
    change since ``caught_up`` names."""
    changed = _changed_since(session, caught_up, memo)
    if changed is None:  # too many changes to compare: every package version
        return [pv_id for pv_id, _e, _n in package_versions.behind_any(session, generation, limit)]
    names = {name for _eco, name in changed}
    return _changed(session, memo, package_versions.behind(session, generation, names=names))[
        :limit
    ]


def _changed_since(
    session: Session, since: int, memo: MatchMemo
) -> frozenset[tuple[str, str]] | None:
    """The (ecosystem, name) pairs the data changed for after generation ``since``, up
    to the memo's; None when too many to compare."""
    if since not in memo.changed:
        memo.changed[since] = vuln_records.changed_since(
            session, since, memo.generation, CHANGED_KEYS_LIMIT
        )
    return memo.changed[since]


def _refresh(
    session: Session, due: Sequence[int], generation: int, memo: MatchMemo, counts: RematchCounts
) -> None:
    """Match ``due`` again and carry the changes to the counts of the images holding them."""
    if not due:
        return
    refs = package_versions.refs_of(session, due)
    matched = _match(session, refs, memo)
    changes = package_versions.store_matches(session, matched, generation)
    counts.versions_matched += len(matched)
    counts.findings_written += sum(len(found) for found in matched.values())
    counts.images_changed += findings.apply_changes(session, changes)


def rematch_next(rt: Runtime) -> None:
    """One batch of the re-match chain; the next batch is published while work remains."""
    done = rematch_batch(rt.sessions, rt.settings.rematch_batch, rt.settings.rematch_versions)
    if done.work:
        log.info(
            "brought findings up to the vulnerability data: %s package versions matched "
            "again, %s images linked, %s images' counts changed",
            done.versions_matched,
            done.linked,
            done.images_changed,
        )
    if done.more:
        rt.publisher.rematch()


def rematch_if_due(rt: Runtime) -> None:
    """Publish a re-match when stored findings are older than the data (at most once a
    minute, cluster-wide, however many workers look)."""
    with rt.sessions() as session:
        generation = vuln_records.current_generation(session)
        due = findings.any_due(session, generation, vuln_records.findings_generation(session))
    if due and rt.redis.set(keys.REMATCH_KICK, "1", nx=True, ex=keys.REMATCH_KICK_SECONDS):
        rt.publisher.rematch()

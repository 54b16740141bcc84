"""Vulnerability data: OSV records, the packages each one names, where they came from,
and a generation counter with the log of what each generation changed.

``VulnRecord`` keeps each OSV record whole; ``VulnPackage`` indexes the packages it
affects so matching only reads the records that can concern a package. Records are
upserted by id and replaced only by a newer ``modified``; each import that changed
anything bumps ``VulnDbState.generation`` once, and an image whose
``matched_generation`` is older is due for re-matching. ``VulnChange`` rows say which
(ecosystem, package) pairs each generation changed, so that re-matching an image matches
again only its packages among them. Callers own the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base, rowcount, utcnow
from models.images import Image, matched_before

STATE_ID = 1
IN_CHUNK = 500  # values per IN (...) list, well under every backend's parameter limit


class VulnSource(Base):
    """A configured place vulnerability data comes from: a file, a folder, a URL."""

    __tablename__ = "vuln_sources"

    id: Mapped[int] = mapped_column(primary_key=True)
    location: Mapped[str] = mapped_column(String(1024), unique=True)
    etag: Mapped[str] = mapped_column(String(255), default="")
    last_modified: Mapped[str] = mapped_column(String(64), default="")
    refreshed_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str] = mapped_column(Text, default="")
    records: Mapped[int] = mapped_column(Integer, default=0)


class VulnRecord(Base):
    __tablename__ = "vuln_records"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # OSV id
    modified: Mapped[datetime] = mapped_column()
    published: Mapped[datetime | None] = mapped_column(default=None)
    withdrawn: Mapped[datetime | None] = mapped_column(default=None)
    aliases: Mapped[list[str]] = mapped_column(JSON, default=list)
    source_id: Mapped[int | None] = mapped_column(
        ForeignKey("vuln_sources.id", ondelete="SET NULL"), default=None, index=True
    )
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    imported_at: Mapped[datetime] = mapped_column(default=utcnow)


class VulnPackage(Base):
    """One (ecosystem, package) a record affects, e.g. ("Debian:12", "openssl")."""

    __tablename__ = "vuln_packages"
    __table_args__ = (Index("ix_vuln_packages_ecosystem_name", "ecosystem", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    record_id: Mapped[str] = mapped_column(
        ForeignKey("vuln_records.id", ondelete="CASCADE"), index=True
    )
    ecosystem: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(512))


class VulnChange(Base):
    """An (ecosystem, package) whose records an import added, replaced or withdrew.

    ``generation`` is the data generation the change took effect in, or NULL while the
    import writing it is still running (the import that bumps the generation next claims
    it). An image's findings for the packages a change does not name are the same after
    it, so re-matching matches again only the packages it names.
    """

    __tablename__ = "vuln_changes"

    id: Mapped[int] = mapped_column(primary_key=True)
    generation: Mapped[int | None] = mapped_column(BigInteger, default=None, index=True)
    ecosystem: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(512))


class VulnDbState(Base):
    """One row: a counter bumped whenever the vulnerability data changes, and the
    generation every stored finding is current at (``models.findings``: the package
    versions the changes since name are matched again, then it moves up)."""

    __tablename__ = "vulndb_state"

    id: Mapped[int] = mapped_column(primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    changed_at: Mapped[datetime | None] = mapped_column(default=None)
    findings_generation: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


@dataclass(frozen=True)
class RecordRow:
    """One OSV record as stored, with the (ecosystem, name) pairs it is indexed under."""

    id: str
    modified: datetime
    published: datetime | None
    withdrawn: datetime | None
    aliases: list[str]
    record: dict[str, Any]
    packages: set[tuple[str, str]] = field(default_factory=set)


@dataclass
class StoreCounts:
    added: int = 0
    updated: int = 0
    unchanged: int = 0

    @property
    def changed(self) -> int:
        return self.added + self.updated


# -- the generation counter --------------------------------------------------------------


def lock_state(session: Session) -> VulnDbState:
    """The state row, created if missing and row-locked (PostgreSQL) until commit, so
    that concurrent imports write one at a time."""
    stmt = select(VulnDbState).where(VulnDbState.id == STATE_ID).with_for_update()
    state = session.scalar(stmt)
    if state is not None:
        return state
    try:
        with session.begin_nested():
            session.add(VulnDbState(id=STATE_ID, generation=0))
    except IntegrityError:
        pass  # created meanwhile by another import
    state = session.scalar(stmt)
    assert state is not None
    return state


def current_generation(session: Session) -> int:
    return session.scalar(select(VulnDbState.generation).where(VulnDbState.id == STATE_ID)) or 0


def findings_generation(session: Session) -> int:
    """The generation every linked image's findings are current at."""
    stmt = select(VulnDbState.findings_generation).where(VulnDbState.id == STATE_ID)
    return session.scalar(stmt) or 0


def set_findings_generation(session: Session, generation: int) -> None:
    stmt = (
        update(VulnDbState).where(VulnDbState.id == STATE_ID).values(findings_generation=generation)
    )
    session.execute(stmt)


def bump_generation(session: Session) -> int:
    """Mark the data changed: images matched before now are due for re-matching. The
    changes stored since the last bump (by this import, or by one that failed before
    its end) become this generation's."""
    state = lock_state(session)
    state.generation += 1
    state.changed_at = utcnow()
    session.execute(
        update(VulnChange)
        .where(VulnChange.generation.is_(None))
        .values(generation=state.generation)
    )
    session.flush()
    return state.generation


def changed_since(
    session: Session, after: int, upto: int, limit: int
) -> frozenset[tuple[str, str]] | None:
    """The (ecosystem, name) pairs generations ``after`` (excluded) to ``upto`` changed;
    ``None`` when they are more than ``limit``, as after a first import."""
    stmt = (
        select(VulnChange.ecosystem, VulnChange.name)
        .where(VulnChange.generation > after, VulnChange.generation <= upto)
        .distinct()
        .limit(limit + 1)
    )
    rows = frozenset((ecosystem, name) for ecosystem, name in session.execute(stmt))
    return None if len(rows) > limit else rows


def forget_changes(session: Session) -> int:
    """Delete the changes every stored finding is past; how many rows."""
    oldest = findings_generation(session)
    stmt = delete(VulnChange).where(VulnChange.generation <= oldest)
    return rowcount(session.execute(stmt))


# -- records -----------------------------------------------------------------------------


def store_records(
    session: Session, rows: Sequence[RecordRow], source_id: int | None
) -> StoreCounts:
    """Upsert ``rows`` by id; a stored record is replaced only by a newer ``modified``."""
    lock_state(session)
    counts = StoreCounts()
    newest: dict[str, RecordRow] = {}
    for row in rows:  # the same id twice in one batch: the newer one counts
        if row.id not in newest or row.modified > newest[row.id].modified:
            newest[row.id] = row
    counts.unchanged += len(rows) - len(newest)
    stored = _stored_modified(session, list(newest))
    added = [row for row in newest.values() if row.id not in stored]
    replaced = [
        row for row in newest.values() if row.id in stored and row.modified > stored[row.id]
    ]
    counts.added += len(added)
    counts.updated += len(replaced)
    counts.unchanged += len(newest) - len(added) - len(replaced)
    # What a replaced record named before counts as changed too: a package it no longer
    # names loses its findings. Read before the records' packages are rewritten.
    touched = _stored_packages(session, [row.id for row in replaced])
    for row in added:
        _write_record(session, row, source_id, replace=False)
    for row in replaced:
        _write_record(session, row, source_id, replace=True)
    written = added + replaced
    session.flush()  # the records first: their packages refer to them
    session.add_all(
        VulnPackage(record_id=row.id, ecosystem=eco, name=name)
        for row in written
        for eco, name in row.packages
    )
    touched.update(key for row in written for key in row.packages)
    session.add_all(VulnChange(ecosystem=eco, name=name) for eco, name in sorted(touched))
    session.flush()
    return counts


def _stored_packages(session: Session, ids: list[str]) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for chunk in chunks(ids):
        stmt = select(VulnPackage.ecosystem, VulnPackage.name).where(
            VulnPackage.record_id.in_(chunk)
        )
        found.update((ecosystem, name) for ecosystem, name in session.execute(stmt))
    return found


def _stored_modified(session: Session, ids: list[str]) -> dict[str, datetime]:
    found: dict[str, datetime] = {}
    for chunk in chunks(ids):
        stmt = select(VulnRecord.id, VulnRecord.modified).where(VulnRecord.id.in_(chunk))
        found.update({record_id: modified for record_id, modified in session.execute(stmt)})
    return found


def _write_record(session: Session, row: RecordRow, source_id: int | None, replace: bool) -> None:
    values = {
        "modified": row.modified,
        "published": row.published,
        "withdrawn": row.withdrawn,
        "aliases": row.aliases,
        "source_id": source_id,
        "record": row.record,
        "imported_at": utcnow(),
    }
    if replace:
        session.execute(update(VulnRecord).where(VulnRecord.id == row.id).values(**values))
        session.execute(delete(VulnPackage).where(VulnPackage.record_id == row.id))
    else:
        session.add(VulnRecord(id=row.id, **values))


def records_naming(session: Session, keys: set[tuple[str, str]]) -> dict[tuple[str, str], set[str]]:
    """Ids of the records that name each (ecosystem, name) pair; pairs no record names
    are left out."""
    found: dict[tuple[str, str], set[str]] = {}
    for chunk in chunks(sorted({name for _eco, name in keys})):
        stmt = select(VulnPackage.record_id, VulnPackage.ecosystem, VulnPackage.name).where(
            VulnPackage.name.in_(chunk)
        )
        for rid, eco, name in session.execute(stmt):
            if (eco, name) in keys:
                found.setdefault((eco, name), set()).add(rid)
    return found


def records_by_id(session: Session, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The records (as OSV JSON) with these ids, withdrawn ones left out."""
    records: dict[str, dict[str, Any]] = {}
    for chunk in chunks(sorted(ids)):
        stmt = select(VulnRecord.id, VulnRecord.record).where(
            VulnRecord.id.in_(chunk), VulnRecord.withdrawn.is_(None)
        )
        records.update((rid, record) for rid, record in session.execute(stmt))
    return records


def chunks(values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), IN_CHUNK):
        yield values[start : start + IN_CHUNK]


# -- sources ------------------------------------------------------------------------------


def source_for(session: Session, location: str) -> VulnSource:
    """The source row of ``location``, created on first use."""
    stmt = select(VulnSource).where(VulnSource.location == location)
    source = session.scalar(stmt)
    if source is not None:
        return source
    try:
        with session.begin_nested():
            session.add(VulnSource(location=location))
    except IntegrityError:
        pass  # created meanwhile
    source = session.scalar(stmt)
    assert source is not None
    return source


def record_refresh(
    session: Session,
    source_id: int,
    *,
    etag: str | None = None,
    last_modified: str | None = None,
    records: int | None = None,
    error: str = "",
) -> None:
    """What the last refresh of a source found; ``None`` leaves a field as it was."""
    values: dict[str, Any] = {"refreshed_at": utcnow(), "last_error": error}
    if etag is not None:
        values["etag"] = etag
    if last_modified is not None:
        values["last_modified"] = last_modified
    if records is not None:
        values["records"] = records
    session.execute(update(VulnSource).where(VulnSource.id == source_id).values(**values))


def summary(session: Session) -> dict[str, Any]:
    """Sources, record counts per ecosystem, withdrawn count, generation, last change."""
    state = session.get(VulnDbState, STATE_ID)
    generation = state.generation if state else 0
    return {
        "sources": list(session.scalars(select(VulnSource).order_by(VulnSource.location))),
        "by_ecosystem": _records_per_ecosystem(session),
        "records": _count(session, VulnRecord.id),
        "withdrawn": _count(session, VulnRecord.id, VulnRecord.withdrawn.is_not(None)),
        "generation": generation,
        "changed_at": state.changed_at if state else None,
        "images_due": _count(
            session, Image.id, matched_before(generation, findings_generation(session))
        ),
    }


def _records_per_ecosystem(session: Session) -> dict[str, int]:
    stmt = select(VulnPackage.ecosystem, func.count(func.distinct(VulnPackage.record_id)))
    rows = session.execute(stmt.group_by(VulnPackage.ecosystem).order_by(VulnPackage.ecosystem))
    return {ecosystem: n for ecosystem, n in rows}


def _count(session: Session, column: Any, *where: Any) -> int:
    return session.scalar(select(func.count(column)).where(*where)) or 0

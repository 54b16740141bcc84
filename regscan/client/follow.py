"""Following a scan until it ends: live progress with ``rich`` in a terminal, one plain
line per change otherwise (a pipe, a CI log), or nothing until the end (``--wait``)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from regscan.client.api import Client

FINAL = ("completed", "stopped", "failed")
RATE_WINDOW_SECONDS = 30.0
STATUS_STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "stopping": "yellow",
    "completed": "green",
    "stopped": "yellow",
    "failed": "red",
}


@dataclass(frozen=True)
class Snapshot:
    """What a job says of its progress at one moment."""

    job_id: int
    status: str
    what: str
    total: int
    scanned: int
    failed: int
    skipped: int
    discovering: bool

    @classmethod
    def of(cls, job: dict[str, Any]) -> Snapshot:
        counts = job.get("counts") or {}
        regular = str(job.get("kind", "")).startswith("regular")
        return cls(
            job_id=int(job["id"]),
            status=str(job["status"]),
            what=str(job.get("name") or "every image in scope"),
            total=int(counts.get("total", 0)),
            scanned=int(counts.get("scanned", 0)),
            failed=int(counts.get("failed", 0)),
            skipped=int(counts.get("skipped", 0)),
            discovering=regular and job.get("discoveredAt") is None and job["status"] not in FINAL,
        )

    @property
    def done(self) -> int:
        return self.scanned + self.failed + self.skipped

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def change_key(self) -> tuple[Any, ...]:
        """What a plain line is printed for when it changes (not the rate or ETA)."""
        return (self.status, self.discovering, self.total, self.done, self.failed)


class Rate:
    """Images finished per second over the last half minute, and the time left."""

    def __init__(self, window: float = RATE_WINDOW_SECONDS) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, done: int) -> None:
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window:
            self.samples.popleft()

    def per_second(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None

    def eta(self, remaining: int) -> float | None:
        rate = self.per_second()
        return remaining / rate if rate else None


def duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def describe(snap: Snapshot, rate: Rate | None = None, elapsed: float | None = None) -> str:
    """The progress as one line."""
    head = f"scan {snap.job_id} {snap.status}"
    if snap.final:
        took = f" in {duration(elapsed)}" if elapsed is not None else ""
        return (
            f"{head}: {snap.scanned} scanned, {snap.failed} failed, {snap.skipped} skipped "
            f"of {snap.total} images{took}"
        )
    if snap.status == "queued":
        return f"{head}: waiting for a worker"
    if snap.discovering:
        return f"{head}: discovering images in {snap.what}, {snap.total} found so far"
    parts = [f"{snap.done}/{snap.total} images", f"{snap.failed} failed"]
    speed = rate.per_second() if rate else None
    if speed is not None:
        parts.append(f"{speed:.1f} images/s")
        eta = rate.eta(snap.total - snap.done) if rate else None
        if eta is not None and snap.done < snap.total:
            parts.append(f"ETA {duration(eta)}")
    return f"{head}: " + ", ".join(parts)


def render(snap: Snapshot, rate: Rate) -> RenderableType:
    """The live view: what is scanned, the discovery count, a bar, the rate and ETA."""
    title = Text.assemble(
        (f"scan {snap.job_id} ", "bold"),
        (snap.status, STATUS_STYLE.get(snap.status, "")),
        f" · {snap.what}",
    )
    if snap.status == "queued":
        return Group(title, Spinner("dots", text="waiting for a worker"))
    if snap.discovering:
        return Group(title, Spinner("dots", text=f"discovering images: {snap.total} found"))
    row = Table.grid(padding=(0, 1))
    bar = ProgressBar(total=max(snap.total, 1), completed=snap.done, width=40)
    speed, eta = rate.per_second(), rate.eta(snap.total - snap.done)
    row.add_row(
        bar,
        Text(f"{snap.done}/{snap.total}", style="bold"),
        Text(f"{snap.scanned} scanned"),
        Text(f"{snap.failed} failed", style="red" if snap.failed else "dim"),
        Text(f"{speed:.1f} images/s" if speed is not None else "", style="dim"),
        Text(f"ETA {duration(eta)}" if eta is not None and not snap.final else "", style="dim"),
    )
    return Group(title, Text(f"discovered {snap.total} images", style="dim"), row)


class Follower:
    """Polls one job until it ends."""

    def __init__(self, client: Client, job_id: int, interval: float) -> None:
        self.client = client
        self.job_id = job_id
        self.interval = interval
        self.rate = Rate()
        self.started = time.monotonic()

    def poll(self) -> tuple[dict[str, Any], Snapshot]:
        job = self.client.get(f"/registry/scans/{self.job_id}")
        snap = Snapshot.of(job)
        self.rate.add(time.monotonic(), snap.done)
        return job, snap

    def until_final(self, show: Callable[[Snapshot], None]) -> dict[str, Any]:
        while True:
            job, snap = self.poll()
            show(snap)
            if snap.final:
                return job
            time.sleep(self.interval)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def follow_live(follower: Follower, console: Console) -> dict[str, Any]:
    """Redraw the progress in place until the job ends."""
    with Live(console=console, refresh_per_second=8, transient=False) as live:
        job = follower.until_final(lambda snap: live.update(render(snap, follower.rate)))
    console.print(describe(Snapshot.of(job), elapsed=follower.elapsed()))
    return job


def follow_plain(follower: Follower, out: TextIO) -> dict[str, Any]:
    """A line each time the progress changes; the last says how the scan ended."""
    last: list[tuple[Any, ...]] = []

    def show(snap: Snapshot) -> None:
        if last and last[0] == snap.change_key():
            return
        last[:] = [snap.change_key()]
        elapsed = follower.elapsed() if snap.final else None
        print(describe(snap, follower.rate, elapsed), file=out, flush=True)

    return follower.until_final(show)


def wait_quietly(follower: Follower, out: TextIO) -> dict[str, Any]:
    job = follower.until_final(lambda _snap: None)
    print(describe(Snapshot.of(job), elapsed=follower.elapsed()), file=out, flush=True)
    return job

"""The disk scenario: the big file cached on an SSD tier, beside a direct read of the same disk.

The other scenarios keep every cache on tmpfs, so they compare software, not media. Here the
medium is a real disk, and what is checked is that a whole file cached there is handed to the
kernel (FUSE passthrough from the file's extent on the tier) at once, on a fresh mount:

    direct read   a fresh copy of the source file in a directory on the disk, page cache
                  dropped, 1 MiB read()s; best of 2 (as the tmpfs reference), one run before
                  eddy's and one after, so a drift of the shared machine cannot favour eddy.
                  Each run writes its own copy, so it reads a file written once and never
                  read, as eddy's one-shot read does: this VM's disk is cached by its host,
                  and a second read of the same copy ran 4x faster than its first
    eddy cold     `eddy mount` with one SSD tier (and its state dir) in that directory, an
                  empty cache, page cache dropped: the file read from S3 once
    eddy oneshot  unmounted at once (no preload), page cache dropped, a fresh mount on the
                  same cache dir, one read: no second chance
    eddy hot      the same read again on that mount, page cache kept (once)

The oneshot row's details hold what that mount's daemon logged on unmounting (its FUSE
`reads` and `passthrough_opens`, the hot read and a byte-for-byte check of the file
included): no reads and an open handed over means the kernel read the tier itself.
The directory (--disk-dir, /var/tmp by default) is removed at the end, on failure and on
Ctrl-C too. When it is on tmpfs, or has no room for the copy and the tier, the rows are
skipped with the reason.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import tempfile

from eddy.base.mounttable import MEMORY_FILESYSTEMS, filesystem_of

from .measure import drop_caches, read_file
from .mounts import TIER_HEADROOM, Eddy, Mounted
from .results import DISK, DISK_REFERENCE, DISK_ROWS, Results, Row
from .scenarios import describe
from .source import BIG, BIG_NAME, Source

SPARE = 256 << 20  # free space left on the disk beside the copy and the full tier


def unusable(disk_dir: str, size: int) -> str | None:
    """Why the disk rows cannot run in `disk_dir` for a file of `size` bytes; None if they can."""
    if not os.path.isdir(disk_dir):
        return f"--disk-dir {disk_dir} is not a directory"
    fstype = filesystem_of(disk_dir)
    if fstype in MEMORY_FILESYSTEMS:
        return f"{disk_dir} is on {fstype}, not a disk"
    need = size + int(size * TIER_HEADROOM) + SPARE
    free = shutil.disk_usage(disk_dir).free
    if free < need:
        return f"{disk_dir} has {free >> 20} MiB free, the disk rows need {need >> 20} MiB"
    return None


def run(source: Source, results: Results, workdir: str, disk_dir: str) -> None:
    """Every disk row, or every one skipped with the reason the disk cannot be used."""
    rows = {f"{system}/{phase}": results[f"{DISK}/{system}/{phase}"]
            for system, phase in DISK_ROWS}
    why = unusable(disk_dir, source.big_bytes)
    if why:
        print(f"  skipped: {why}", flush=True)
        for row in rows.values():
            row.skipped = why
        return
    root = tempfile.mkdtemp(prefix="eddy-bench-disk-", dir=disk_dir)
    try:
        copy = os.path.join(root, BIG_NAME)
        _direct(rows[DISK_REFERENCE], copy, source)
        _eddy(Eddy(source, workdir, tier="SSD"), os.path.join(root, "cache"), rows, source)
        _direct(rows[DISK_REFERENCE], copy, source)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _direct(row: Row, path: str, source: Source) -> None:
    """Write a fresh copy at `path`, drop the page cache, read it once, remove it; the row
    keeps the faster run."""
    shutil.copyfile(source.big_path, path)
    try:
        drop_caches()
        timing = read_file(path)
    finally:
        os.unlink(path)
    row.record(timing, source.big_bytes, 1, keep_faster=True)
    row.details.setdefault("runs_mb_s", []).append(round(timing.mb_s, 1))
    _progress(row, f"run {len(row.details['runs_mb_s'])}: {timing.mb_s:.1f} MB/s")


def _eddy(system: Eddy, cache: str, rows: dict[str, Row], source: Source) -> None:
    """cold, oneshot and hot on one cache dir; a failure marks the phase and those after it."""
    phase = "cold"
    try:
        drop_caches()
        with system.mount(BIG, cache, source.big_bytes) as mounted:
            _read(rows["eddy/cold"], mounted, source)
        rows["eddy/cold"].details["mount"] = system.session(mounted)
        phase = "oneshot"
        drop_caches()
        with system.mount(BIG, cache, source.big_bytes) as mounted:
            _read(rows["eddy/oneshot"], mounted, source)
            phase = "hot"
            _read(rows["eddy/hot"], mounted, source)
            rows["eddy/hot"].details["status"] = system.status(mounted)
            if not filecmp.cmp(source.big_path, os.path.join(mounted.path, BIG_NAME),
                               shallow=False):
                rows["eddy/hot"].error = "the bytes read differ from the source"
        session = rows["eddy/oneshot"].details["mount"] = system.session(mounted)
        print(f"  {rows['eddy/oneshot'].id}: that mount answered {session.get('reads', '?')} "
              f"FUSE reads and handed {session.get('passthrough_opens', '?')} opens to the "
              "kernel (passthrough), the hot read and a byte check included", flush=True)
    except Exception as e:  # noqa: BLE001 - the direct read's second run still follows
        message = describe(e)
        print(f"  eddy {DISK} {phase}: FAILED: {message}", flush=True)
        tail = system.log_tail()
        if tail:
            print("  " + tail.replace("\n", "\n  "))
        phases = [p for _, p in DISK_ROWS[1:]]
        for p in phases[phases.index(phase):]:
            rows[f"eddy/{p}"].error = rows[f"eddy/{p}"].error or message


def _read(row: Row, mounted: Mounted, source: Source) -> None:
    timing = read_file(os.path.join(mounted.path, BIG_NAME))
    row.record(timing, source.big_bytes, 1)
    peak = mounted.peak_rss_mib()
    row.peak_rss_mib = max(peak or 0, row.peak_rss_mib or 0) or None
    _progress(row)


def _progress(row: Row, note: str = "") -> None:
    print(f"  {row.id:<20} {row.seconds:8.2f} s {row.mb_s:9.1f} MB/s"
          + (f"  ({row.error})" if row.error else "")
          + (f"  ({note})" if note else ""), flush=True)

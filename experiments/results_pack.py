"""Pack a results tree: every run's metrics.jsonl gzipped in place as metrics.jsonl.gz.

    python -m experiments.results_pack results/ [--dry-run]

Why: the checkout travels to the GPU machine in calls of at most 64 MiB, and the per-step metrics of committed runs
are most of results/; gzipped they take 5-10x less. Every reader of a run directory reads either form
(experiments.rundir.RunDir.metrics_to_read: metrics.jsonl if present, else metrics.jsonl.gz), and training unpacks a
packed file before appending to it (experiments.results.unpack_metrics), so packing loses nothing. To read one by
hand: `zcat results/<group>/<run>/metrics.jsonl.gz | head`.

Deterministic: the gzip header holds no name and mtime 0, so packing the same lines again gives the same bytes (git
sees no change). A file already packed is skipped; where both files are there (the run trained on after packing),
the plain one is what readers read, so it replaces the packed one. Only runs that have ended are packed: a run
directory without summary.json, or whose summary says "interrupted" (a resume may be appending to it now), is left as
it is and listed.
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from experiments.results import (METRICS_FILE, PACKED_METRICS_FILE, STATUSES, RunDir, atomic_write_bytes, fsync_dir,
                                 read_maybe_gzipped)


def gzip_bytes(data: bytes) -> bytes:
    """`data` gzipped with a fixed header (no file name, mtime 0, OS byte 255 'unknown' as GzipFile writes it), so
    the same bytes always give the same packed bytes with the same zlib."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as packed:
        packed.write(data)
    return buffer.getvalue()


@dataclass
class PackReport:
    packed: list[tuple[Path, int, int]] = field(default_factory=list)  # (plain file, its size, packed size)
    already_packed: int = 0
    left_out: list[tuple[Path, str]] = field(default_factory=list)  # (plain file, why it stays plain)

    @property
    def bytes_before(self) -> int:
        return sum(before for _, before, _ in self.packed)

    @property
    def bytes_after(self) -> int:
        return sum(after for _, _, after in self.packed)


def _why_not_packable(run_dir: Path) -> str | None:
    """None when the run has ended (its metrics can be packed), else why it is left as it is."""
    summary_path = RunDir(run_dir).summary
    if not summary_path.is_file():
        return "no summary.json: the run may still be training"
    try:
        status = json.loads(summary_path.read_text(encoding="utf-8")).get("status")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return "summary.json is not a readable JSON object"
    if status == "interrupted":
        return "summary.json says interrupted: a resume may be appending to it"
    if status not in STATUSES:
        return f"summary.json has status {status!r}, not one of {', '.join(STATUSES)}"
    return None


def pack_run_metrics(run_dir: Path) -> tuple[int, int]:
    """Gzip <run_dir>/metrics.jsonl into metrics.jsonl.gz (atomically, checked by reading it back), then remove the
    plain file. Returns (plain size, packed size)."""
    run = RunDir(run_dir)
    data = run.metrics.read_bytes()
    packed = gzip_bytes(data)
    if not (run.packed_metrics.is_file() and run.packed_metrics.read_bytes() == packed):
        atomic_write_bytes(run.packed_metrics, packed)
    if read_maybe_gzipped(run.packed_metrics) != data:  # never drop the plain file on a packed copy that differs
        raise OSError(f"{run.packed_metrics}: reads back different from {run.metrics}; {run.metrics} kept")
    run.metrics.unlink()
    fsync_dir(run.path)
    return len(data), len(packed)


def pack_tree(root: Path, *, dry_run: bool = False) -> PackReport:
    """Pack every metrics.jsonl under `root` (superseded runs and per-task runs included) whose run has ended."""
    report = PackReport()
    report.already_packed = sum(1 for path in root.rglob(PACKED_METRICS_FILE)
                                if not (path.parent / METRICS_FILE).exists())
    for plain in sorted(root.rglob(METRICS_FILE)):
        if not plain.is_file():
            continue
        why = _why_not_packable(plain.parent)
        if why:
            report.left_out.append((plain, why))
        elif dry_run:
            report.packed.append((plain, plain.stat().st_size, len(gzip_bytes(plain.read_bytes()))))
        else:
            report.packed.append((plain, *pack_run_metrics(plain.parent)))
    return report


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.results_pack", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a results tree, e.g. results/")
    parser.add_argument("--dry-run", action="store_true", help="say what would be packed; change nothing")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        print(f"error: {args.folder} is not a folder (give a results tree, e.g. results/)", file=sys.stderr)
        return 2
    report = pack_tree(args.folder, dry_run=args.dry_run)
    verb = "would pack" if args.dry_run else "packed"
    for plain, before, after in report.packed:
        print(f"{verb} {plain}: {_mb(before)} -> {_mb(after)}")
    for plain, why in report.left_out:
        print(f"left as it is: {plain} ({why})")
    saved = report.bytes_before - report.bytes_after
    print(f"{verb} {len(report.packed)} metrics file(s): {_mb(report.bytes_before)} -> {_mb(report.bytes_after)} "
          f"(saved {_mb(saved)}); {report.already_packed} already packed, {len(report.left_out)} left as they are")
    return 0


if __name__ == "__main__":
    sys.exit(main())

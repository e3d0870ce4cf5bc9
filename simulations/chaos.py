"""Crash the writer and readers while the task-manager workload runs; lose nothing.

    python simulations/chaos.py [--seconds 10] [--threads 16] [--kill-every 0.2]

Prints a report and exits non-zero if an acknowledged write is missing, a call failed,
the supervisor did not restart every crashed actor, or the run tested nothing (no
crash injected, no write acknowledged). A bad option exits 2 with a usage line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atlas_actors as atlas
from atlas_actors.cli import positive
from atlas_actors.workload import WorkloadReport, run_workload


def failures(report: WorkloadReport, integrity: str) -> list[str]:
    """Why the run fails the simulation (empty: it passes)."""
    reasons = []
    if report.kills == 0:
        reasons.append("no crash was injected: run longer than --kill-every")
    if report.writes.count == 0:
        reasons.append("no write was acknowledged")
    if report.lost_writes:
        reasons.append(f"{report.lost_writes} acknowledged writes lost")
    if report.errors:
        reasons.append(f"calls failed: {report.errors}")
    if report.restarts < report.kills:
        reasons.append(f"{report.kills} crashes injected, only {report.restarts} restarts")
    if integrity != "ok":
        reasons.append(f"integrity_check: {integrity}")
    return reasons


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds",
        type=positive(float),
        default=10.0,
        help="how long the workload runs (default: %(default)g)",
    )
    parser.add_argument(
        "--threads",
        type=positive(int, at_most=1024),
        default=16,
        help="worker threads running the task-manager mix (default: %(default)d)",
    )
    parser.add_argument(
        "--kill-every",
        type=positive(float),
        default=0.2,
        metavar="SECONDS",
        help="crash the writer or a reader (in turn) every SECONDS (default: %(default)g)",
    )
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        atlas.open(Path(tmp) / "chaos.db", restart_max=10_000, synchronous="NORMAL") as db,
    ):
        report = run_workload(
            db, threads=args.threads, seconds=args.seconds, kill_every=args.kill_every
        )
        integrity = db.query("PRAGMA integrity_check")[0][0]
    print(f"chaos: {args.threads} threads, {report.seconds:.1f}s, a crash every {args.kill_every}s")
    print(
        f"  operations  {report.operations_per_second:.0f}/s "
        f"({report.writes.count} writes, {report.reads.count} reads)"
    )
    print(f"  write p99   {report.writes.p99:.2f} ms (max {report.writes.max:.2f} ms)")
    print(f"  crashes     {report.kills} injected, {report.restarts} restarts")
    print(f"  errors      {report.errors or 'none'}")
    print(f"  lost writes {report.lost_writes}")
    print(f"  integrity   {integrity}")
    reasons = failures(report, integrity)
    for reason in reasons:
        print(f"  FAIL: {reason}")
    print("FAIL" if reasons else "PASS")
    return 1 if reasons else 0


if __name__ == "__main__":
    sys.exit(main())

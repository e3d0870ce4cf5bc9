"""Crash the writer and readers while the task-manager workload runs; lose nothing.

    python simulations/chaos.py [--seconds 10] [--threads 16] [--kill-every 0.2]

Prints a report and exits non-zero if an acknowledged write is missing, a call failed,
or the supervisor did not restart every crashed actor.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atlas_actors as atlas
from atlas_actors.workload import run_workload


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--kill-every", type=float, default=0.2)
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
    ok = (
        report.lost_writes == 0
        and not report.errors
        and report.restarts >= report.kills
        and integrity == "ok"
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

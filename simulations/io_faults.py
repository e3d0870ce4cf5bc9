"""Make fsync fail now and then under load: failed commits fail their calls, typed;
acknowledged writes all survive; the writer keeps serving.

    python simulations/io_faults.py [--seconds 5] [--threads 8] [--fault-every 0.5]

Faults come from a real apsw VFS (atlas_actors.faults.FaultyVFS): for 20 ms every
FAULT_EVERY seconds, every fsync raises SQLITE_IOERR. After the last fault window the
workers go on until writes started after it are acknowledged (at most --recover-within
seconds).

PASS needs all of: at least one injected fault surfaced as a typed error (AtlasError),
writes started after the last fault window acknowledged, no worker died of any other
exception or hung, no acknowledged write lost, and integrity_check "ok". A bad option
(a count or duration that is not a finite number above 0) exits 2 with a usage line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import apsw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atlas_actors as atlas
from atlas_actors.cli import positive
from atlas_actors.errors import AtlasError
from atlas_actors.faults import FaultyVFS

FAULT_WINDOW = 0.02  # seconds each fault window lasts


@dataclass
class Outcome:
    """What one run observed; :func:`failures` judges it."""

    fault_windows: int = 0
    acknowledged: int = 0
    acknowledged_after_faults: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    crashed: list[str] = field(default_factory=list)
    hung: list[str] = field(default_factory=list)
    lost: int = 0
    integrity: str = "not checked"


def failures(outcome: Outcome) -> list[str]:
    """Why ``outcome`` fails the simulation (empty: it passes)."""
    reasons = []
    if outcome.fault_windows == 0:
        reasons.append("no fault window was opened")
    if not outcome.errors:
        reasons.append("no injected fault surfaced as a typed error")
    if outcome.acknowledged_after_faults == 0:
        reasons.append("no write started after the last fault window was acknowledged")
    if outcome.crashed:
        reasons.append(f"workers died of unexpected exceptions: {outcome.crashed}")
    if outcome.hung:
        reasons.append(f"workers still running after the join: {outcome.hung}")
    if outcome.lost:
        reasons.append(f"{outcome.lost} acknowledged writes lost")
    if outcome.integrity != "ok":
        reasons.append(f"integrity_check: {outcome.integrity}")
    return reasons


def simulate(seconds: float, threads: int, fault_every: float, recover_within: float) -> Outcome:
    """Run the workload against a faulty VFS and return what happened."""
    outcome = Outcome()
    vfs = FaultyVFS()
    acked: list[tuple[int, float]] = []  # (id, when its write call started)
    stop = threading.Event()
    counter = iter(range(1, 10**9))
    lock = threading.Lock()
    last_heal = float("inf")

    def served_after_faults() -> int:
        return sum(1 for _n, started in list(acked) if started > last_heal)

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "faults.db"
            with atlas.open(path, vfs=vfs.name, restart_max=10_000) as db:
                db.execute("CREATE TABLE items(id INTEGER PRIMARY KEY)")

                def work() -> None:
                    try:
                        while not stop.is_set():
                            with lock:
                                n = next(counter)
                            started = time.monotonic()
                            try:
                                db.write("INSERT INTO items(id) VALUES (?)", [n])
                            except AtlasError as error:
                                with lock:
                                    outcome.errors[type(error).__name__] += 1
                            else:
                                acked.append((n, started))
                    except BaseException as error:  # a worker must never die
                        with lock:
                            outcome.crashed.append(f"{type(error).__name__}: {error}")

                workers = [
                    threading.Thread(target=work, name=f"worker-{i}", daemon=True)
                    for i in range(threads)
                ]
                for worker in workers:
                    worker.start()
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    time.sleep(fault_every)
                    vfs.fail_syncs = apsw.IOError
                    time.sleep(FAULT_WINDOW)
                    vfs.fail_syncs = None
                    last_heal = time.monotonic()
                    outcome.fault_windows += 1
                # The writer must keep serving: wait for writes started after the faults.
                recovery_deadline = time.monotonic() + recover_within
                while not served_after_faults() and time.monotonic() < recovery_deadline:
                    if not any(worker.is_alive() for worker in workers):
                        break
                    time.sleep(0.01)
                stop.set()
                join_deadline = time.monotonic() + 30
                for worker in workers:
                    worker.join(max(0.0, join_deadline - time.monotonic()))
                outcome.hung = [worker.name for worker in workers if worker.is_alive()]
            with atlas.open(path) as again:
                stored = {r.id for r in again.query("SELECT id FROM items")}
                outcome.integrity = again.query("PRAGMA integrity_check")[0][0]
    finally:
        vfs.unregister()
    outcome.acknowledged = len(acked)
    outcome.acknowledged_after_faults = served_after_faults()
    outcome.lost = len({n for n, _started in acked} - stored)
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds",
        type=positive(float),
        default=5.0,
        help="how long fault windows keep opening (default: %(default)g)",
    )
    parser.add_argument(
        "--threads",
        type=positive(int, at_most=1024),
        default=8,
        help="worker threads writing (default: %(default)d)",
    )
    parser.add_argument(
        "--fault-every",
        type=positive(float),
        default=0.5,
        metavar="SECONDS",
        help=f"open a {FAULT_WINDOW * 1e3:g} ms fault window every SECONDS (default: %(default)g)",
    )
    parser.add_argument(
        "--recover-within",
        type=positive(float),
        default=10.0,
        metavar="SECONDS",
        help="seconds the writer has to acknowledge writes after the last fault window "
        "(default: %(default)g)",
    )
    args = parser.parse_args()
    outcome = simulate(args.seconds, args.threads, args.fault_every, args.recover_within)
    print(
        f"io faults: {args.threads} threads, {args.seconds:g}s, "
        f"{outcome.fault_windows} fault windows of {FAULT_WINDOW * 1e3:g} ms"
    )
    print(
        f"  acknowledged {outcome.acknowledged} "
        f"({outcome.acknowledged_after_faults} after the last fault window), "
        f"failed calls {dict(outcome.errors) or 'none'}"
    )
    print(
        f"  workers crashed {len(outcome.crashed)}, hung {len(outcome.hung)}; "
        f"lost acknowledged writes {outcome.lost}, integrity {outcome.integrity}"
    )
    reasons = failures(outcome)
    for reason in reasons:
        print(f"  FAIL: {reason}")
    print("FAIL" if reasons else "PASS")
    return 1 if reasons else 0


if __name__ == "__main__":
    sys.exit(main())

"""Instructions per operation: atlas beside its yardsticks, counted by valgrind.

Timings of single calls move by half on a shared machine; the number of instructions a
process executes moves far less (``valgrind --tool=callgrind`` counts them, about 50x
slower than a normal run). It still moves: thread interleavings and garbage collection
differ from run to run (identical runs of 20 operations differed by 3.6 million
instructions in total), so keep ``--many`` well above ``--few`` (at least 500 more) and
compare figures of the same settings. Each workload runs twice in a child process, with
a few and with many operations, and the difference divided by the difference in
operations is the cost of one operation, start-up excluded:

* ``writes``: one thread queues ``write_all([insert, update])`` calls behind a writer
  that is busy, then lets it run them (so they are group-committed, as under load);
  atlas's ``db.writer.write_all`` against ``bare-writer`` (``bench/writes.py``).
* ``transactions``: one thread runs the 5-statement transfer of ``bench/transactions.py``
  (each commits alone); ``atlas.tx`` against ``bare-lease``.
* ``reads``: one thread runs ``bench/reads.py``'s point read by primary key, over
  10,000 rows; ``atlas.query`` (cache off) against ``sqlite3`` (a connection of the
  standard library, the peer ``reads.py`` judges against).

The counts are for the whole process (the caller, the writer and every other thread).
Needs valgrind (Debian: ``apt install valgrind``). Run ``--help`` for the options.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import reads
import transactions
import writes
from _common import environment, positive, print_environment, remove_db, scratch_dir, table

import atlas_actors as atlas

WORKLOADS = {
    "writes": ("atlas", "bare-writer"),
    "transactions": ("atlas.tx", "bare-lease"),
    "reads": ("atlas.query", "sqlite3"),
}
"""Workload → (atlas's variant, the yardstick)."""

MIN_SPAN = 500
"""Fewest operations between the two runs: below it, run-to-run noise swamps the cost."""

_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


class _Gate:
    """Statements that wait for ``event`` and then are none: holds a writer thread busy."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __iter__(self) -> Iterator[tuple[str, None]]:
        self.event.wait(60)
        return iter(())


def run_writes(peer_name: str, operations: int, path: Path) -> None:
    """Queue ``operations`` write_all calls behind a busy writer, then let them run."""
    remove_db(path)
    writes.prepare(path, trigger=False)
    counter = itertools.count()

    def statements() -> list[tuple[str, tuple[int, str, float] | None]]:
        return [(writes.INSERT, writes._task(0, counter)), (writes.UPDATE, None)]

    gate = threading.Event()
    if peer_name == "atlas":
        with atlas.open(path, synchronous="NORMAL") as db:
            db.writer.run(lambda _: gate.wait(60))
            time.sleep(0.05)  # the writer has taken the blocker
            futures = [db.writer.write_all(statements()) for _ in range(operations)]
            gate.set()
            for future in futures:
                future.get(60)
        return
    peer = writes.BareWriterPeer()
    peer.open(path, "NORMAL")
    busy = threading.Lock()
    busy.acquire()
    peer.queue.put((_Gate(gate), busy, []))  # type: ignore[arg-type]
    time.sleep(0.05)  # the writer has taken the blocker
    locks: list[threading.Lock] = []
    for _ in range(operations):
        lock = threading.Lock()
        lock.acquire()
        locks.append(lock)
        peer.queue.put((statements(), lock, []))
    gate.set()
    for lock in locks:
        lock.acquire()
    peer.close()


def run_transactions(peer_name: str, operations: int, path: Path) -> None:
    """Run ``operations`` transfers in one thread."""
    transactions.prepare(path, 1_000)
    peer = transactions.PEERS[peer_name]()
    peer.open(path, "NORMAL", True)
    op, done = peer.thread_op(0, 1_000)
    for _ in range(operations):
        op()
    done()
    peer.close()


READ_ROWS = 10_000
"""Rows in the reads workload's table."""


def run_reads(peer_name: str, operations: int, path: Path) -> None:
    """Run ``operations`` of ``bench/reads.py``'s point reads in one thread."""
    remove_db(path)
    reads.prepare(path, READ_ROWS)
    db = atlas.open(path, cache=False) if peer_name.startswith("atlas") else None
    try:
        op, cleanup = reads.make_factory(peer_name, path, READ_ROWS, db)(0)
        for _ in range(operations):
            op()
        cleanup()
    finally:
        if db is not None:
            db.close()


RUNNERS = {"writes": run_writes, "transactions": run_transactions, "reads": run_reads}
"""Workload → the function a child process runs."""


def count(workload: str, peer_name: str, operations: int, directory: Path) -> int:
    """Instructions of a child process running ``operations`` of the workload."""
    result = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            workload,
            peer_name,
            str(operations),
            str(directory / f"{workload}-{peer_name}-{operations}.db"),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict layouts every run
    )
    what = f"{workload} {peer_name} x{operations}"
    if result.returncode != 0:
        raise RuntimeError(f"the child for {what} failed:\n{result.stderr[-2000:]}")
    return parse_collected(result.stderr, what)


def parse_collected(stderr: str, what: str) -> int:
    """The instruction count callgrind reports on stderr ("Collected : N")."""
    found = _COLLECTED.search(stderr)
    if found is None:
        raise RuntimeError(f"valgrind reported no count for {what}:\n{stderr[-2000:]}")
    return int(found.group(1))


def per_operation(few: int, many: int, count_few: int, count_many: int) -> float:
    """Instructions of one operation: the difference of two runs over their difference."""
    if many <= few:
        raise ValueError(f"need more operations in the second run ({many} <= {few})")
    return (count_many - count_few) / (many - few)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Instructions per operation (valgrind's callgrind, deterministic) of atlas and "
            "of the yardstick beside it, for writes, transactions and point reads."
        ),
        epilog="Takes a few minutes: every child runs about 50x slower under valgrind.",
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated subset of: {', '.join(WORKLOADS)} (default all)",
    )
    parser.add_argument(
        "--few", type=positive(int), default=100, help="operations in the small run"
    )
    parser.add_argument(
        "--many", type=positive(int), default=1_100, help="operations in the big run"
    )
    parser.add_argument("--dir", default=None, help="directory for the scratch databases")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        workload, peer_name, operations, path = args.child
        RUNNERS[workload](peer_name, int(operations), Path(path))
        return 0
    if args.many - args.few < MIN_SPAN:
        print(f"--many must exceed --few by at least {MIN_SPAN}", file=sys.stderr)
        return 2
    workloads = args.workloads.split(",")
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        print(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}", file=sys.stderr)
        return 2
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt install valgrind)", file=sys.stderr)
        return 2
    rows = []
    with scratch_dir(args.dir, "atlas-bench-instructions-") as directory:
        for workload in workloads:
            costs = []
            for peer_name in WORKLOADS[workload]:
                print(f"counting {workload} / {peer_name} ...", file=sys.stderr, flush=True)
                few = count(workload, peer_name, args.few, directory)
                many = count(workload, peer_name, args.many, directory)
                costs.append(per_operation(args.few, args.many, few, many))
            atlas_cost, yardstick_cost = costs
            rows.append(
                [
                    workload,
                    f"{atlas_cost:,.0f}",
                    f"{yardstick_cost:,.0f}",
                    f"{atlas_cost / yardstick_cost:.2f}x",
                ]
            )
    print_environment(environment())
    print(f"instructions per operation: {args.few} and {args.many} operations per workload")
    print(table(["workload", "atlas", "yardstick", "atlas / yardstick"], rows, "lrrr"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Durable writes while other threads of the same process run Python.

Python threads share one GIL, and every call into SQLite releases it: a thread that
made one must wait for the GIL back, behind threads running Python (each keeps it for
up to ``sys.getswitchinterval()``, 5 ms by default). Write paths then slow down by far
more than the work they do. This script shows by how much, for atlas's single writer
thread and for the usual alternative, side by side:

* ``--writers`` closed-loop threads each write ``UPDATE counters SET n = n + 1 WHERE
  id = ?`` as its own durable transaction (WAL, ``synchronous=FULL``);
* ``--busy`` closed-loop threads run pure Python meanwhile (one op: 200 dict lookups
  under a lock, about what a cache hit or some request handling costs), standing in for
  the rest of an application.

Peers: ``atlas`` (``db.write``: the writer thread's group commit) and ``sqlite3`` (a
stdlib sqlite3 connection per thread, ``BEGIN IMMEDIATE`` ... ``COMMIT``, busy timeout
30 s). Reported: writes/s, write latency and the Python ops/s the busy threads got done.
After each cell the sum of the counters must equal the acknowledged writes, or the cell
is a MISMATCH.

No issue sets a target here: it documents a limit of Python threads (see
``docs/performance.md``), and that the single writer suffers less from it than a
connection per thread.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from _common import (
    CellResult,
    Op,
    Segment,
    add_run_options,
    cell_troubles,
    environment,
    find_cell,
    finish,
    fmt,
    fmt_ratio,
    noop,
    positive,
    print_environment,
    progress,
    ratio,
    remove_db,
    rotated,
    round_ratios,
    run_closed_loop,
    scratch_dir,
    spread,
    table,
)

import atlas_actors as atlas

PEERS = ("atlas", "sqlite3")
BASELINE = "sqlite3"
COUNTERS = 1_000
BUSY_TIMEOUT = 30.0
UPDATE = "UPDATE counters SET n = n + 1 WHERE id = ?"
LOOKUPS = 200
"""Dict lookups per busy op."""


def prepare(path: Path) -> None:
    """A WAL file with ``COUNTERS`` counters at zero."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE counters(id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT INTO counters(id, n) VALUES (?, 0)", ((i,) for i in range(COUNTERS))
        )
        connection.execute("COMMIT")
    finally:
        connection.close()


def busy_op() -> Op:
    """Pure Python work: ``LOOKUPS`` lookups in a shared dict under a lock."""
    table_ = {i: (i, "value") for i in range(1024)}
    lock = threading.Lock()

    def op() -> str:
        with lock:
            for key in range(LOOKUPS):
                table_.get(key)
        return "python"

    return op


def make_factory(
    peer: str, path: Path, writers: int, db: atlas.Storage | None, done: list[int]
) -> Callable[[int], tuple[Op, Callable[[], None]]]:
    """Thread ``index`` writes if ``index < writers`` (counting into ``done``), else
    runs Python."""

    def factory(index: int) -> tuple[Op, Callable[[], None]]:
        if index >= writers:
            return busy_op(), noop
        keys = iter(range(index, 1 << 62, writers))
        if peer == BASELINE:
            connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
            connection.execute("PRAGMA synchronous=FULL")
            execute = connection.execute

            def sqlite3_write() -> str:
                execute("BEGIN IMMEDIATE")
                try:
                    execute(UPDATE, (next(keys) % COUNTERS,))
                    execute("COMMIT")
                except BaseException:
                    if connection.in_transaction:
                        execute("ROLLBACK")
                    raise
                done[index] += 1
                return "write"

            return sqlite3_write, connection.close
        if db is None:
            raise ValueError("the atlas peer needs an open storage")
        write = db.write

        def atlas_write() -> str:
            write(UPDATE, (next(keys) % COUNTERS,))
            done[index] += 1
            return "write"

        return atlas_write, noop

    return factory


def run_cell(peer: str, args: argparse.Namespace, path: Path) -> tuple[Segment, list[str]]:
    """One round of ``peer`` on a fresh file: its segment and any verification failure."""
    done = [0] * args.writers
    db = atlas.open(path) if peer == "atlas" else None
    try:
        segment = run_closed_loop(
            args.writers + args.busy,
            args.duration / args.rounds,
            make_factory(peer, path, args.writers, db, done),
            warmup=args.warmup,
            by_kind=True,
        )
    finally:
        if db is not None:
            db.close()
    connection = sqlite3.connect(path)
    try:
        total = connection.execute("SELECT sum(n) FROM counters").fetchone()[0]
    finally:
        connection.close()
    if total != sum(done):
        return segment, [f"{peer}: counters add up to {total}, {sum(done)} writes acknowledged"]
    return segment, []


def run_cells(args: argparse.Namespace, template: Path, directory: Path) -> list[CellResult]:
    """Every peer in every round, rotating the order, each on a fresh copy of the file."""
    segments: dict[str, list[Segment]] = {peer: [] for peer in PEERS}
    mismatches: dict[str, list[str]] = {peer: [] for peer in PEERS}
    with progress(args.rounds * len(PEERS), "busy") as bar:
        for round_index in range(args.rounds):
            for peer in rotated(PEERS, round_index):
                bar.set_postfix_str(peer)
                path = directory / f"{peer}-{round_index}.db"
                path.write_bytes(template.read_bytes())
                try:
                    segment, failures = run_cell(peer, args, path)
                finally:
                    remove_db(path)
                segments[peer].append(segment)
                mismatches[peer] += failures
                bar.update()
    cells = []
    for peer in PEERS:
        cell = CellResult(peer=peer, threads=args.writers)
        cell.add(segments[peer])
        cell.mismatches = mismatches[peer]
        cells.append(cell)
    return cells


def print_cells(cells: Sequence[CellResult]) -> None:
    base = find_cell(cells, BASELINE, cells[0].threads)
    rows = []
    for cell in cells:
        writes, python = cell.kind("write"), cell.kind("python")
        versus = per_round = ""
        if base is not None and cell is not base:
            versus = fmt_ratio(ratio(writes.ops_per_s, base.kind("write").ops_per_s))
            per_round = spread(round_ratios(cell, base, "write"))
        rows.append(
            [
                cell.peer,
                fmt(writes.ops_per_s, 0),
                versus,
                per_round,
                fmt(writes.p50_ms, 2),
                fmt(writes.p99_ms, 1),
                fmt(cell.max_ms, 0),
                fmt(python.ops_per_s, 0),
                str(cell.errors),
                "MISMATCH: " + "; ".join(cell.mismatches) if cell.mismatches else "ok",
            ]
        )
    headers = [
        "peer",
        "writes/s",
        "vs sqlite3",
        "per round",
        "write p50 ms",
        "write p99 ms",
        "max ms",
        "python ops/s",
        "errors",
        "check",
    ]
    print(table(headers, rows, align="lrrrrrrrrl"))
    print(
        "python ops/s = what the busy threads got done; max ms = the slowest op of any "
        "thread; check = the counters add up to the acknowledged writes"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Durable writes (one UPDATE per transaction) while other threads run pure "
            "Python: atlas's writer thread and a sqlite3 connection per thread, side by "
            "side. Shows what the GIL costs a write path; no issue target."
        ),
        epilog=(
            "--quick: 4 s per peer in 2 rounds (about 10 s). Default: 16 s per peer in 4 "
            "rounds (about 35 s)."
        ),
    )
    add_run_options(parser, threads=None, duration=16, rounds=4, warmup=0.3)
    parser.add_argument("--writers", type=positive(int), default=8, help="writing threads (8)")
    parser.add_argument(
        "--busy", type=positive(int, zero=True), default=8, help="threads running Python (8)"
    )
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 4.0 if args.quick else 16.0
    if args.rounds is None:
        args.rounds = 2 if args.quick else 4
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    env = environment()
    print_environment(env)
    print(
        f"busy: {args.writers} writing threads and {args.busy} threads running Python "
        f"({LOOKUPS} dict lookups per op); {args.duration:g} s per peer in {args.rounds} "
        f"round(s) after {args.warmup:g} s warm-up each; GIL switch interval "
        f"{sys.getswitchinterval() * 1000:g} ms"
    )
    with scratch_dir(args.dir, "atlas-bench-busy-") as directory:
        template = directory / "template.db"
        prepare(template)
        cells = run_cells(args, template, directory)
    print("\n== durable writes while other threads run Python ==")
    print_cells(cells)
    figures = {"environment": env, "args": vars(args), "cells": cells}
    return finish("busy.py", started, args.json, figures, cell_troubles(cells))


if __name__ == "__main__":
    sys.exit(main())

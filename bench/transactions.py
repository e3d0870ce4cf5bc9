"""Transactions: a 5-statement transfer through atlas, side by side with sqlite3.

One operation is one transaction of five statements, a transfer between two accounts
whose amount depends on what it read::

    SELECT balance FROM accounts WHERE id = :a          -- amount = 1 + balance % 10
    UPDATE accounts SET balance = balance - :amount WHERE id = :a
    UPDATE accounts SET balance = balance + :amount WHERE id = :b
    INSERT INTO ledger(account, amount, ref) VALUES (:a, -:amount, :ref)
    INSERT INTO ledger(account, amount, ref) VALUES (:b, :amount, :ref)

Closed-loop threads run transfers back to back between random accounts for a fixed
time. Every cell (peer x thread count x round) starts on a fresh WAL file, and after it
the file must hold what was acknowledged: the sum of balances unchanged, two ledger rows
per acknowledged transaction, ledger amounts summing to 0, and every account's balance
equal to its opening balance plus its ledger entries; otherwise the cell is reported as
a MISMATCH.

Peers, all ``synchronous=FULL`` in WAL mode:

* ``sqlite3``: a stdlib sqlite3 connection per thread, autocommit mode,
  ``BEGIN IMMEDIATE`` ... ``COMMIT``, busy timeout 30 s (the issue's baseline).
* ``atlas.tx``: ``with db.transaction() as tx:`` (serializable, the API issue 4 names):
  the writer lends its connection (the lease) and the five statements run in the
  caller's thread; leaving the block commits, through the group commit.
* ``atlas.run``: ``db.transactions.run(fn)``: the same, with retries on transient errors.
* ``atlas.in_writer``: ``db.run_in_writer(fn)``: ``fn`` with the whole read-then-write
  logic runs inside the writer thread as one unit (own savepoint) of a group commit:
  the function goes to the thread that owns the connection, not the connection to the
  caller.

atlas runs with its default configuration (read cache on) unless ``--atlas-cache off``.
Passes: ``full`` (this disk) and ``slow`` (every fsync delayed 2 ms by
``bench/slowsync``, preloaded into a child process). Run ``--help`` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import queue
import random
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import apsw
from _common import (
    CellResult,
    Op,
    PassResult,
    Segment,
    Target,
    add_run_options,
    cell_troubles,
    clean_cells_target,
    environment,
    find_cell,
    finish,
    fmt,
    fmt_ratio,
    median,
    noop,
    positive,
    print_environment,
    print_targets,
    progress,
    ratio,
    remove_db,
    rotated,
    round_ratios,
    run_as_slow_child,
    run_closed_loop,
    run_passes,
    run_slow_child,
    scratch_dir,
    spread,
    table,
    time_fsync,
    yardstick_note,
)

import atlas_actors as atlas

OPENING_BALANCE = 1_000
SCHEMA = """
CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
CREATE TABLE ledger(id INTEGER PRIMARY KEY, account INTEGER NOT NULL,
                    amount INTEGER NOT NULL, ref TEXT NOT NULL);
"""
SELECT = "SELECT balance FROM accounts WHERE id = ?"
DEBIT = "UPDATE accounts SET balance = balance - ? WHERE id = ?"
CREDIT = "UPDATE accounts SET balance = balance + ? WHERE id = ?"
LEDGER = "INSERT INTO ledger(account, amount, ref) VALUES (?, ?, ?)"

BUSY_TIMEOUT = 30.0
"""Seconds the sqlite3 peer waits on the write lock before 'database is locked'."""

SLOW_US = 2000
"""The slow pass's fsync delay in microseconds (the benchmarks' slow disk: 2 ms)."""

BARE_BATCH = 512
"""Most transactions ``bare-lease`` commits at once (atlas's ``max_batch_size``)."""

PAIRS_PER_THREAD = 1 << 14
TARGETS = {"full": 1.4, "slow": 5.0}
"""Pass → the issue's throughput target against the baseline at 16 threads."""
JUDGED = "atlas.tx"
"""The variant the targets are judged on: the interactive API issue 4 names."""
BASELINE = "sqlite3"


_LeaseMessage = tuple[str, threading.Lock, list[apsw.Error | None]]
"""A ``bare-lease`` caller's message ("request", "return", or "lost": SQLite rolled the
batch back), its lock, its result box."""


def _pairs(seed: int, accounts: int) -> list[tuple[int, int]]:
    """Random (from, to) account pairs for one thread, drawn up front."""
    rng = random.Random(seed)
    pairs: list[tuple[int, int]] = []
    while len(pairs) < PAIRS_PER_THREAD:
        a, b = rng.randint(1, accounts), rng.randint(1, accounts)
        if a != b:
            pairs.append((a, b))
    return pairs


def _amount(balance: object) -> int:
    """The transfer's amount, from the balance it read (the read matters)."""
    if not isinstance(balance, int):
        raise TypeError(f"balance read as {balance!r}")
    return 1 + balance % 10


class Transfers:
    """One thread's stream of transfers: the next (from, to, ref)."""

    def __init__(self, index: int, accounts: int) -> None:
        self.index = index
        self.pairs = _pairs(index, accounts)
        self.counter = itertools.count()

    def next(self) -> tuple[int, int, str]:
        n = next(self.counter)
        a, b = self.pairs[n & (PAIRS_PER_THREAD - 1)]
        return a, b, f"{self.index}-{n}"


# -- peers ------------------------------------------------------------------------------


class Peer:
    """One way of running the transfer; a fresh instance per cell."""

    name: ClassVar[str]

    def open(self, path: Path, synchronous: str, cache: bool) -> None:
        """Connect to the prepared file."""
        raise NotImplementedError

    def thread_op(self, index: int, accounts: int) -> tuple[Op, Callable[[], None]]:
        """Called in worker thread ``index``: the op, and what to do when it is done."""
        raise NotImplementedError

    def close(self) -> dict[str, Any]:
        """Disconnect; return peer-specific figures."""
        return {}


class Sqlite3Peer(Peer):
    name = "sqlite3"

    def open(self, path: Path, synchronous: str, cache: bool) -> None:
        self.path = path
        self.synchronous = synchronous

    def thread_op(self, index: int, accounts: int) -> tuple[Op, Callable[[], None]]:
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        connection.execute(f"PRAGMA synchronous={self.synchronous}")
        execute = connection.execute
        transfers = Transfers(index, accounts)

        def op() -> object:
            a, b, ref = transfers.next()
            execute("BEGIN IMMEDIATE")
            try:
                (balance,) = execute(SELECT, (a,)).fetchone()
                amount = _amount(balance)
                execute(DEBIT, (amount, a))
                execute(CREDIT, (amount, b))
                execute(LEDGER, (a, -amount, ref))
                execute(LEDGER, (b, amount, ref))
                execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    execute("ROLLBACK")
                raise
            return None

        return op, connection.close


class AtlasPeer(Peer):
    """The atlas variants share opening, closing and their figures."""

    def open(self, path: Path, synchronous: str, cache: bool) -> None:
        self.db = atlas.open(path, synchronous=synchronous, cache=cache)

    def close(self) -> dict[str, Any]:
        writer = self.db.writer.stats()
        status = self.db.transactions.status()
        self.db.close()
        return {
            "writes": writer.writes,
            "batches": writer.batches,
            "max_batch": writer.max_batch,
            "committed": status.committed,
            "rolled_back": status.rolled_back,
        }


def _transfer_in(tx: atlas.Transaction, a: int, b: int, ref: str) -> None:
    """The five statements through a transaction handle."""
    amount = _amount(tx.query(SELECT, [a])[0].balance)
    tx.execute(DEBIT, [amount, a])
    tx.execute(CREDIT, [amount, b])
    tx.execute(LEDGER, [a, -amount, ref])
    tx.execute(LEDGER, [b, amount, ref])


class AtlasTxPeer(AtlasPeer):
    name = "atlas.tx"

    def thread_op(self, index: int, accounts: int) -> tuple[Op, Callable[[], None]]:
        transaction = self.db.transaction
        transfers = Transfers(index, accounts)

        def op() -> object:
            a, b, ref = transfers.next()
            with transaction() as tx:
                _transfer_in(tx, a, b, ref)
            return None

        return op, noop


class AtlasRunPeer(AtlasPeer):
    name = "atlas.run"

    def thread_op(self, index: int, accounts: int) -> tuple[Op, Callable[[], None]]:
        run = self.db.transactions.run
        transfers = Transfers(index, accounts)

        def op() -> object:
            a, b, ref = transfers.next()
            return run(lambda tx: _transfer_in(tx, a, b, ref))

        return op, noop


class AtlasInWriterPeer(AtlasPeer):
    name = "atlas.in_writer"

    def thread_op(self, index: int, accounts: int) -> tuple[Op, Callable[[], None]]:
        run_in_writer = self.db.run_in_writer
        transfers = Transfers(index, accounts)

        def op() -> object:
            a, b, ref = transfers.next()

            def transfer(connection: apsw.Connection) -> None:
                execute = connection.execute
                amount = _amount(execute(SELECT, (a,)).fetchall()[0][0])
                execute(DEBIT, (amount, a))
                execute(CREDIT, (amount, b))
                execute(LEDGER, (a, -amount, ref))
                execute(LEDGER, (b, amount, ref))

            return run_in_writer(transfer)

        return op, noop


class BareLeasePeer(Peer):
    """The least the lease design can do in CPython (a yardstick, not a library).

    What ``atlas.tx`` does, and nothing else: a writer thread owns the connection and
    takes lease requests from a queue; a granted caller runs its five statements under
    its own SAVEPOINT in its own thread, then hands the connection straight to the next
    caller waiting (or back to the writer when none waits); the writer commits when no
    lease is out and nothing is queued, then wakes every transaction of the batch. No
    deadlines, timeouts, deadlock checks, metrics, tracing or restarts.
    """

    name = "bare-lease"

    def open(self, path: Path, synchronous: str, cache: bool) -> None:
        self.connection = apsw.Connection(str(path))
        self.connection.set_busy_timeout(int(BUSY_TIMEOUT * 1000))
        self.connection.pragma("synchronous", synchronous)
        self.queue: queue.SimpleQueue[_LeaseMessage | None] = queue.SimpleQueue()
        self.mutex = threading.Lock()  # guards the four fields below
        self.lent = False
        self.waiting: deque[threading.Lock] = deque()
        self.acks: list[tuple[threading.Lock, list[apsw.Error | None]]] = []
        self.chained = 0
        self.thread = threading.Thread(target=self._serve, name="bare-lease", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        execute = self.connection.cursor().execute
        while (message := self.queue.get()) is not None:
            kind, lock, box = message
            lost: list[tuple[threading.Lock, list[apsw.Error | None]]] = []
            with self.mutex:
                if kind == "request":
                    if self.lent:
                        self.waiting.append(lock)
                        continue
                    grant: threading.Lock | None = lock
                else:
                    self.lent = False
                    self.acks.append((lock, box))
                    if kind == "lost":  # SQLite rolled the batch back: nothing of it is in
                        lost, self.acks, self.chained = self.acks, [], 0
                    grant = self.waiting.popleft() if self.waiting else None
                commit = grant is None or len(self.acks) >= BARE_BATCH
            for waiter, result in lost:
                result[:] = [apsw.AbortError("the batch was rolled back by SQLite")]
                waiter.release()
            if commit and (grant is not None or self.queue.empty()) and self.acks:
                self._commit(execute)
            if grant is not None:
                if not self.connection.in_transaction:
                    execute("BEGIN IMMEDIATE")
                self.lent = True
                grant.release()
        if self.acks:
            self._commit(execute)

    def _commit(self, execute: Callable[[str], object]) -> None:
        with self.mutex:
            acks, self.acks, self.chained = self.acks, [], 0
        try:
            execute("COMMIT")
        except apsw.Error as error:
            if self.connection.in_transaction:
                execute("ROLLBACK")
            for _, box in acks:
                box[:] = [error]
        for lock, _ in acks:
            lock.release()

    def thread_op(self, index: int, accounts: int) -> tuple[Op, Callable[[], None]]:
        transfers = Transfers(index, accounts)
        put = self.queue.put

        def op() -> object:
            a, b, ref = transfers.next()
            granted = threading.Lock()
            granted.acquire()
            put(("request", granted, []))
            granted.acquire()  # the connection is this thread's now
            connection = self.connection
            execute = connection.cursor().execute
            failed: BaseException | None = None
            try:
                execute("SAVEPOINT tx")
                amount = _amount(execute(SELECT, (a,)).fetchall()[0][0])
                execute(DEBIT, (amount, a))
                execute(CREDIT, (amount, b))
                execute(LEDGER, (a, -amount, ref))
                execute(LEDGER, (b, amount, ref))
                execute("RELEASE tx")
            except BaseException as error:  # the lease still goes on (or back) below
                failed = error
                with contextlib.suppress(apsw.Error):
                    if connection.in_transaction:
                        execute("ROLLBACK TO tx; RELEASE tx")
            done = threading.Lock()
            done.acquire()
            box: list[apsw.Error | None] = [None]
            successor = None
            if connection.in_transaction:
                with self.mutex:
                    if self.waiting and self.chained < BARE_BATCH:
                        successor = self.waiting.popleft()
                        self.acks.append((done, box))
                        self.chained += 1
            if successor is not None:
                successor.release()  # straight to the next transaction waiting
            else:
                put(("return" if connection.in_transaction else "lost", done, box))
            done.acquire()  # committed
            outcome = failed if failed is not None else box[0]
            if outcome is not None:
                raise outcome
            return None

        return op, noop

    def close(self) -> dict[str, Any]:
        self.queue.put(None)
        self.thread.join()
        self.connection.close()
        return {}


PEERS: dict[str, type[Peer]] = {
    peer.name: peer
    for peer in (Sqlite3Peer, AtlasTxPeer, AtlasRunPeer, AtlasInWriterPeer, BareLeasePeer)
}


# -- one pass ---------------------------------------------------------------------------


def prepare(path: Path, accounts: int) -> None:
    """A fresh WAL database with ``accounts`` accounts at the opening balance."""
    remove_db(path)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript(SCHEMA)
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT INTO accounts(id, balance) VALUES (?, ?)",
            ((i, OPENING_BALANCE) for i in range(1, accounts + 1)),
        )
        connection.execute("COMMIT")
    finally:
        connection.close()


def verify(path: Path, accounts: int, acknowledged: int) -> list[str]:
    """The invariants after a cell; empty when the file holds what was acknowledged."""
    connection = sqlite3.connect(path)
    try:
        total = connection.execute("SELECT sum(balance) FROM accounts").fetchone()[0]
        rows, amounts = connection.execute(
            "SELECT count(*), coalesce(sum(amount), 0) FROM ledger"
        ).fetchone()
        off = connection.execute(
            "SELECT count(*) FROM accounts AS a LEFT JOIN "
            "(SELECT account, sum(amount) AS moved FROM ledger GROUP BY account) AS l "
            "ON l.account = a.id WHERE a.balance != ? + coalesce(l.moved, 0)",
            (OPENING_BALANCE,),
        ).fetchone()[0]
    finally:
        connection.close()
    problems = []
    if total != accounts * OPENING_BALANCE:
        problems.append(f"sum of balances is {total}, expected {accounts * OPENING_BALANCE}")
    if rows != 2 * acknowledged:
        problems.append(f"ledger holds {rows} rows, {acknowledged} transactions acknowledged")
    if amounts != 0:
        problems.append(f"ledger amounts sum to {amounts}, expected 0")
    if off:
        problems.append(f"{off} accounts disagree with their ledger entries")
    return problems


def run_pass(
    name: str, args: argparse.Namespace, peers: Sequence[str]
) -> tuple[list[CellResult], dict[str, Any]]:
    """Every cell of one pass; rounds outermost, peers rotating within each round."""
    synchronous = "FULL"
    cache = args.atlas_cache == "on"
    segment_time = args.duration / args.rounds
    segments: dict[tuple[str, int], list[Segment]] = {}
    extras: dict[tuple[str, int], list[dict[str, Any]]] = {}
    problems: dict[tuple[str, int], list[str]] = {}
    info: dict[str, Any] = {"synchronous": synchronous, "atlas_cache": cache}
    with scratch_dir(args.dir, f"atlas-bench-tx-{name}-") as directory:
        info["fsync_ms"] = time_fsync(directory)
        bar = progress(args.rounds * len(args.threads) * len(peers), f"transactions/{name}")
        with bar:
            for round_index in range(args.rounds):
                for t_index, threads in enumerate(args.threads):
                    for peer_name in rotated(peers, round_index + t_index):
                        bar.set_postfix_str(f"{peer_name} x{threads}")
                        peer = PEERS[peer_name]()
                        path = directory / "bench.db"
                        prepare(path, args.accounts)
                        peer.open(path, synchronous, cache)
                        try:
                            segment = run_closed_loop(
                                threads,
                                segment_time,
                                lambda i, p=peer: p.thread_op(i, args.accounts),  # type: ignore[misc]
                                warmup=args.warmup,
                            )
                        finally:
                            extra = peer.close()
                        key = (peer_name, threads)
                        segments.setdefault(key, []).append(segment)
                        extras.setdefault(key, []).append(extra)
                        found = verify(path, args.accounts, segment.acked_total)
                        problems.setdefault(key, []).extend(
                            f"round {round_index + 1}: {p}" for p in found
                        )
                        remove_db(path)
                        bar.update()
    cells = []
    for threads in args.threads:
        for peer_name in peers:
            key = (peer_name, threads)
            cell = CellResult(peer=peer_name, threads=threads)
            cell.add(segments[key])
            cell.mismatches = problems[key]
            if peer_name.startswith("atlas"):
                writes = sum(e["writes"] for e in extras[key])
                batches = sum(e["batches"] for e in extras[key])
                cell.extra = {
                    "mean_batch": ratio(writes, batches),
                    "max_batch": max(e["max_batch"] for e in extras[key]),
                    "committed": sum(e["committed"] for e in extras[key]),
                    "rolled_back": sum(e["rolled_back"] for e in extras[key]),
                }
            cells.append(cell)
    return cells, info


def print_pass(name: str, cells: Sequence[CellResult], info: dict[str, Any]) -> None:
    """The figures of one pass, each atlas variant's ratio to the baseline per round."""
    title = {
        "full": "this disk, synchronous=FULL",
        "slow": f"slow disk (every fsync +{SLOW_US / 1000:g} ms), synchronous=FULL",
    }[name]
    print(
        f"\n== transactions, pass '{name}': {title}; fsync measured {info['fsync_ms']:.2f} ms; "
        f"atlas cache {'on' if info['atlas_cache'] else 'off'} =="
    )
    rows = []
    for cell in cells:
        base = find_cell(cells, BASELINE, cell.threads)
        notes = []
        if "mean_batch" in cell.extra:
            notes.append(f"batch mean {cell.extra['mean_batch']:.1f} max {cell.extra['max_batch']}")
            if cell.extra["rolled_back"]:
                notes.append(f"{cell.extra['rolled_back']} rolled back")
        notes += cell.trouble_notes()
        versus = ratio(cell.ops_per_s, base.ops_per_s) if base else float("nan")
        rows.append(
            [
                cell.peer,
                str(cell.threads),
                fmt(cell.ops_per_s, 0),
                fmt_ratio(versus) if base is not cell else "",
                spread(round_ratios(cell, base)) if base and base is not cell else "",
                fmt(cell.p50_ms, 2),
                fmt(cell.p99_ms, 2),
                fmt(cell.max_ms, 1),
                fmt(cell.slowest_thread * 100, 0) if cell.threads > 1 else "",
                str(cell.errors),
                "ok" if not cell.mismatches else "MISMATCH",
                "; ".join(notes),
            ]
        )
    headers = ["peer", "thr", "tx/s", "vs sqlite3", "per round", "p50 ms", "p99 ms", "max ms"]
    print(table([*headers, "slowest%", "errors", "check", "notes"], rows))
    print(
        "vs sqlite3 = throughput over all rounds / the baseline's; per round = lowest and "
        "highest ratio of single rounds (peers side by side); slowest% = the least "
        "productive thread's transactions as % of the mean per thread (100: fair)"
    )
    for cell in cells:
        for problem in cell.mismatches:
            print(f"  MISMATCH {cell.peer} x{cell.threads}: {problem}")


def judge(name: str, cells: Sequence[CellResult], threads: int = 16) -> list[Target]:
    """The issue's throughput target for every atlas variant, and the clean-run check."""
    at_least = TARGETS[name]
    targets = []
    base = find_cell(cells, BASELINE, threads)
    variants = [c.peer for c in cells if c.peer.startswith("atlas") and c.threads == threads]
    for variant in sorted(variants, key=lambda v: v != JUDGED):
        mine = find_cell(cells, variant, threads)
        judged = " (the target)" if variant == JUDGED else ""
        wanted = f"{name}: {variant}{judged} >= {at_least:g}x {BASELINE} at {threads} threads"
        if mine is None or base is None:
            targets.append(Target(wanted, "not measured", None))
            continue
        speed = ratio(mine.ops_per_s, base.ops_per_s)
        rounds = round_ratios(mine, base)
        measured = (
            f"{fmt_ratio(speed, 3)} ({fmt(mine.ops_per_s, 0)} vs {fmt(base.ops_per_s, 0)} tx/s)"
        )
        if len(rounds) > 1:
            measured += f"; rounds median {fmt_ratio(median(rounds))}, {spread(rounds)}"
        measured += yardstick_note(cells, "bare-lease", mine, base)
        targets.append(Target(wanted, measured, speed >= at_least))
    if not variants:
        targets.append(
            Target(
                f"{name}: {JUDGED} >= {at_least:g}x {BASELINE} at {threads} threads",
                f"not measured ({threads} threads or the variant not run)",
                None,
            )
        )
    targets.append(
        clean_cells_target(
            cells, f"{name}: zero errors, broken invariants or hangs in every atlas cell"
        )
    )
    return targets


# -- the slow pass in a child process ---------------------------------------------------


def run_slow_pass(args: argparse.Namespace, peers: Sequence[str]) -> dict[str, Any]:
    """Re-run this script's slow pass in a child with libslowsync.so preloaded."""
    argv = [
        "--pass",
        "slow",
        "--slow-child",
        "--threads",
        ",".join(map(str, args.threads)),
        "--duration",
        str(args.duration),
        "--rounds",
        str(args.rounds),
        "--warmup",
        str(args.warmup),
        "--accounts",
        str(args.accounts),
        "--atlas-cache",
        args.atlas_cache,
        "--peers",
        ",".join(peers),
    ]
    if args.dir:
        argv += ["--dir", args.dir]
    return run_slow_child(Path(__file__).resolve(), argv, SLOW_US, args.dir)


# -- main -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Transaction throughput (a 5-statement transfer per transaction) through "
            "atlas's transaction APIs and a sqlite3 connection per thread, side by side, "
            "on this disk and with a 2 ms fsync. Prints a table per pass and the issue-4 "
            "targets."
        ),
        epilog=(
            "--quick: 16 threads, 3 s per cell in 3 rounds, both passes (about a minute). "
            "Default: 1,4,16 threads, 6 s per cell in 6 rounds of 1 s (about 3.5 minutes). "
            "Ratios are the result; absolute numbers depend on the machine and its load."
        ),
    )
    add_run_options(parser, threads="1,4,16", duration=6, rounds=6, warmup=0.1)
    parser.add_argument(
        "--accounts", type=positive(int), default=10_000, help="accounts in the table (10000)"
    )
    parser.add_argument(
        "--pass",
        dest="passes",
        choices=["full", "slow", "all"],
        default="all",
        help="which pass to run (default all)",
    )
    parser.add_argument(
        "--peers",
        default=",".join(PEERS),
        help=f"comma-separated subset of: {', '.join(PEERS)} (default all)",
    )
    parser.add_argument(
        "--atlas-cache",
        choices=["on", "off"],
        default="on",
        help="atlas's read cache (on: the default configuration)",
    )
    parser.add_argument("--slow-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads is None:
        args.threads = [16] if args.quick else [1, 4, 16]
    if args.duration is None:
        args.duration = 3.0 if args.quick else 6.0
    if args.rounds is None:
        args.rounds = 3 if args.quick else 6
    if args.accounts < 2:
        parser.error("--accounts must be at least 2 (a transfer is between two)")
    unknown = [p for p in args.peers.split(",") if p not in PEERS]
    if unknown:
        parser.error(f"unknown peer(s) {unknown}; choose from {list(PEERS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    peers = args.peers.split(",")
    started = time.perf_counter()

    def one_pass(name: str) -> PassResult:
        cells, info = run_pass(name, args, peers)
        print_pass(name, cells, info)
        targets = judge(name, cells)
        return {"cells": cells, "info": info, "targets": targets, "trouble": cell_troubles(cells)}

    if args.slow_child:
        return run_as_slow_child(one_pass, args.json, SLOW_US)
    env = environment()
    print_environment(env)
    print(
        f"transactions: 5 statements each, {args.accounts:,} accounts, threads {args.threads}, "
        f"{args.duration:g} s per cell in {args.rounds} round(s) after {args.warmup:g} s "
        f"warm-up, peers {peers}; targets judged on {JUDGED}"
    )
    passes = ["full", "slow"] if args.passes == "all" else [args.passes]
    results, targets, trouble = run_passes(passes, one_pass, lambda: run_slow_pass(args, peers))
    print_targets(targets, "Targets (issue 4)")
    payload = {"environment": env, "args": vars(args), "passes": results}
    return finish("transactions.py", started, args.json, payload, trouble)


if __name__ == "__main__":
    sys.exit(main())

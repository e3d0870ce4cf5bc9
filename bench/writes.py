"""Durable writes: atlas's group commit side by side with what a user would pick instead.

Each operation is one transaction of two statements: an INSERT into ``tasks`` and an
UPDATE of a row of ``counters``. Closed-loop worker threads run operations back to back
for a fixed time; every cell (peer x thread count x round) starts on a fresh database
file in WAL mode, and after each cell the file must hold exactly the acknowledged
operations (rows in ``tasks`` and the counter value), or the cell reports a mismatch.

Peers, all on the same file layout and synchronous setting:

* ``atlas``: ``db.write_all([insert, update])``: one unit in the writer's group commit.
* ``conn-per-thread``: a stdlib sqlite3 connection per thread, autocommit mode,
  ``BEGIN IMMEDIATE`` ... ``COMMIT``, busy timeout 30 s.
* ``shared-lock``: one sqlite3 connection shared by all threads behind a threading.Lock.
* ``peewee-q/trigger``: peewee's ``SqliteQueueDatabase``. Its documentation says
  transactions are not supported (``atomic()`` raises): every write statement is queued
  to its writer thread and runs in autocommit. The closest honest equivalent of the
  two-statement transaction is ONE statement: the INSERT, with an ``AFTER INSERT``
  trigger doing the counter UPDATE inside the same statement's implicit transaction
  (atomic, one commit). Raw SQL through ``db.execute_sql``, no models.
* ``peewee-q/2-stmt``: the same queue database used as documented: the INSERT and the
  UPDATE as two queued statements, each waited for. NOT atomic (two commits, two
  fsyncs per operation; a failure between them leaves the counter behind).
* ``sqlalchemy``: SQLAlchemy Core, default pool for a file database (QueuePool, 5 + 10
  overflow), ``with engine.begin() as conn:``; WAL and synchronous set in a ``connect``
  event, busy timeout 30 s via ``connect_args``; the pysqlite driver's own (deferred)
  BEGIN.
* ``bare-writer``: a yardstick, not a library: the least a single writer thread can do
  in CPython (a queue, a lock per call, group commit with a SAVEPOINT per operation,
  nothing else). ``atlas`` over it is atlas's own per-operation cost; it over
  ``conn-per-thread`` is the single-writer design's.

Passes: ``full`` (synchronous=FULL on this disk), ``normal`` (synchronous=NORMAL), and
``slow`` (FULL with every fsync delayed 2 ms by ``bench/slowsync``, built with cc and
preloaded into a child process). Run ``--help`` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import queue
import sqlite3
import sys
import threading
import time
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
    noop,
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
from playhouse.sqliteq import SqliteQueueDatabase  # type: ignore[import-untyped]
from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    Table,
    Text,
    create_engine,
    event,
    insert,
    update,
)

import atlas_actors as atlas

SCHEMA = """
CREATE TABLE tasks(id INTEGER PRIMARY KEY, worker INTEGER NOT NULL, title TEXT NOT NULL,
                   created REAL NOT NULL);
CREATE TABLE counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO counters(name, value) VALUES ('ops', 0);
"""
TRIGGER = """
CREATE TRIGGER tasks_count AFTER INSERT ON tasks
BEGIN UPDATE counters SET value = value + 1 WHERE name = 'ops'; END;
"""
INSERT = "INSERT INTO tasks(worker, title, created) VALUES (?, ?, ?)"
UPDATE = "UPDATE counters SET value = value + 1 WHERE name = 'ops'"

BUSY_TIMEOUT = 30.0
"""Seconds the sqlite3-based peers wait on a lock before 'database is locked'."""

BARE_BATCH = 512
"""Most operations ``bare-writer`` commits at once (atlas's ``max_batch_size``)."""

SLOW_US = 2000
"""The slow pass's fsync delay in microseconds (issue 2: 2 ms)."""

PASSES = {"full": "FULL", "normal": "NORMAL", "slow": "FULL"}
"""Pass name → ``PRAGMA synchronous`` of every peer."""


_BareItem = tuple[list[tuple[str, tuple[Any, ...] | None]], threading.Lock, list[apsw.Error | None]]
"""What a ``bare-writer`` caller queues: its statements, the lock it waits on, a result box."""


def _task(index: int, counter: itertools.count[int]) -> tuple[int, str, float]:
    return (index, f"task {index}-{next(counter)}: write the benchmark report", time.time())


# -- peers ------------------------------------------------------------------------------


class Peer:
    """One way of doing the operation; a fresh instance per cell."""

    name: ClassVar[str]
    trigger: ClassVar[bool] = False
    """The file gets the counter trigger (the peer's op is the INSERT alone)."""

    def open(self, path: Path, synchronous: str) -> None:
        """Connect to the prepared file."""
        raise NotImplementedError

    def thread_op(self, index: int) -> tuple[Op, Callable[[], None]]:
        """Called in worker thread ``index``: the op, and what to do when it is done."""
        raise NotImplementedError

    def close(self) -> dict[str, Any]:
        """Disconnect; return peer-specific figures."""
        return {}


class AtlasPeer(Peer):
    name = "atlas"

    def open(self, path: Path, synchronous: str) -> None:
        self.db = atlas.open(path, synchronous=synchronous)

    def thread_op(self, index: int) -> tuple[Op, Callable[[], None]]:
        write_all = self.db.write_all
        counter = itertools.count()

        def op() -> object:
            return write_all([(INSERT, _task(index, counter)), (UPDATE, None)])

        return op, noop

    def close(self) -> dict[str, Any]:
        stats = self.db.writer.stats()
        self.db.close()
        return {"writes": stats.writes, "batches": stats.batches, "max_batch": stats.max_batch}


def _sqlite3_connect(path: Path, synchronous: str, **kwargs: Any) -> sqlite3.Connection:
    connection: sqlite3.Connection = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT, isolation_level=None, **kwargs
    )
    connection.execute(f"PRAGMA synchronous={synchronous}")  # per connection, not in the file
    return connection


def _transaction(connection: sqlite3.Connection, params: tuple[int, str, float]) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute(INSERT, params)
        connection.execute(UPDATE)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


class ConnPerThreadPeer(Peer):
    name = "conn-per-thread"

    def open(self, path: Path, synchronous: str) -> None:
        self.path = path
        self.synchronous = synchronous

    def thread_op(self, index: int) -> tuple[Op, Callable[[], None]]:
        connection = _sqlite3_connect(self.path, self.synchronous)
        counter = itertools.count()

        def op() -> object:
            _transaction(connection, _task(index, counter))
            return None

        return op, connection.close


class SharedLockPeer(Peer):
    name = "shared-lock"

    def open(self, path: Path, synchronous: str) -> None:
        self.connection = _sqlite3_connect(path, synchronous, check_same_thread=False)
        self.lock = threading.Lock()

    def thread_op(self, index: int) -> tuple[Op, Callable[[], None]]:
        connection, lock = self.connection, self.lock
        counter = itertools.count()

        def op() -> object:
            params = _task(index, counter)
            with lock:
                _transaction(connection, params)
            return None

        return op, noop

    def close(self) -> dict[str, Any]:
        self.connection.close()
        return {}


class PeeweeQueuePeer(Peer):
    """``playhouse.sqliteq.SqliteQueueDatabase``: one INSERT; a trigger does the UPDATE."""

    name = "peewee-q/trigger"
    trigger = True

    def open(self, path: Path, synchronous: str) -> None:
        self.db = SqliteQueueDatabase(
            str(path),
            pragmas={"journal_mode": "wal", "synchronous": synchronous.lower()},
            timeout=BUSY_TIMEOUT,
            results_timeout=120.0,
        )

    def thread_op(self, index: int) -> tuple[Op, Callable[[], None]]:
        execute = self.db.execute_sql
        counter = itertools.count()

        def op() -> object:
            # The cursor's lastrowid waits until the writer thread has run (and, in
            # autocommit, committed) the statement.
            return execute(INSERT, _task(index, counter)).lastrowid

        return op, noop

    def close(self) -> dict[str, Any]:
        self.db.stop()
        with contextlib.suppress(Exception):
            self.db.close()
        return {}


class PeeweeQueueTwoStatementsPeer(PeeweeQueuePeer):
    """The queue database as documented: two queued autocommit statements, not atomic."""

    name = "peewee-q/2-stmt"
    trigger = False

    def thread_op(self, index: int) -> tuple[Op, Callable[[], None]]:
        execute = self.db.execute_sql
        counter = itertools.count()

        def op() -> object:
            execute(INSERT, _task(index, counter)).lastrowid  # noqa: B018 (waits for it)
            return execute(UPDATE).rowcount

        return op, noop


class SQLAlchemyPeer(Peer):
    name = "sqlalchemy"

    def open(self, path: Path, synchronous: str) -> None:
        self.engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": BUSY_TIMEOUT})

        @event.listens_for(self.engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.close()

        meta = MetaData()
        tasks = Table(
            "tasks",
            meta,
            Column("id", Integer, primary_key=True),
            Column("worker", Integer),
            Column("title", Text),
            Column("created", Float),
        )
        counters = Table(
            "counters", meta, Column("name", Text, primary_key=True), Column("value", Integer)
        )
        self.insert = insert(tasks)
        self.update = (
            update(counters).where(counters.c.name == "ops").values(value=counters.c.value + 1)
        )

    def thread_op(self, index: int) -> tuple[Op, Callable[[], None]]:
        engine, insert_stmt, update_stmt = self.engine, self.insert, self.update
        counter = itertools.count()

        def op() -> object:
            worker, title, created = _task(index, counter)
            with engine.begin() as connection:
                connection.execute(
                    insert_stmt, {"worker": worker, "title": title, "created": created}
                )
                connection.execute(update_stmt)
            return None

        return op, noop

    def close(self) -> dict[str, Any]:
        self.engine.dispose()
        return {}


class BareWriterPeer(Peer):
    """The least a single writer thread can do in CPython (a yardstick, not a library).

    Callers put (statements, lock, box) on a ``SimpleQueue`` and block on the lock; one
    thread takes what is queued (up to ``BARE_BATCH``), runs it in one ``BEGIN
    IMMEDIATE`` ... ``COMMIT`` with each operation under its own SAVEPOINT, then
    releases the locks: the same hand-offs and group commit as atlas's writer, without
    anything else (no deadlines, backpressure, metrics, tracing, restarts or cache
    invalidation). The gap between it and ``atlas`` is atlas's own per-operation cost;
    the gap between it and ``conn-per-thread`` is the single-writer design's.
    """

    name = "bare-writer"

    def open(self, path: Path, synchronous: str) -> None:
        self.queue: queue.SimpleQueue[_BareItem | None] = queue.SimpleQueue()
        self.connection = apsw.Connection(str(path))
        self.connection.set_busy_timeout(int(BUSY_TIMEOUT * 1000))
        self.connection.pragma("journal_mode", "wal")
        self.connection.pragma("synchronous", synchronous)
        self.thread = threading.Thread(target=self._serve, name="bare-writer", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while (first := self.queue.get()) is not None:
            batch = [first]
            stop = False
            while len(batch) < BARE_BATCH:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._run_batch(batch)
            if stop:
                return

    def _run_batch(self, batch: list[_BareItem]) -> None:
        execute = self.connection.cursor().execute
        try:
            execute("BEGIN IMMEDIATE")
            for statements, _, box in batch:
                execute("SAVEPOINT op")
                try:
                    for sql, params in statements:
                        execute(sql, params)
                    execute("RELEASE op")
                    box.append(None)
                except apsw.Error as error:
                    execute("ROLLBACK TO op; RELEASE op")
                    box.append(error)
            execute("COMMIT")
        except apsw.Error as error:  # nothing of the batch is in (BEGIN, COMMIT, ROLLBACK TO)
            if self.connection.in_transaction:
                execute("ROLLBACK")
            for _, _, box in batch:
                box[:] = [error]
        for _, lock, _ in batch:
            lock.release()

    def thread_op(self, index: int) -> tuple[Op, Callable[[], None]]:
        put = self.queue.put
        counter = itertools.count()

        def op() -> object:
            lock = threading.Lock()
            lock.acquire()
            box: list[apsw.Error | None] = []
            put(([(INSERT, _task(index, counter)), (UPDATE, None)], lock, box))
            lock.acquire()
            if box[0] is not None:
                raise box[0]
            return None

        return op, noop

    def close(self) -> dict[str, Any]:
        self.queue.put(None)
        self.thread.join()
        self.connection.close()
        return {}


PEERS: dict[str, type[Peer]] = {
    peer.name: peer
    for peer in (
        AtlasPeer,
        ConnPerThreadPeer,
        SharedLockPeer,
        PeeweeQueuePeer,
        PeeweeQueueTwoStatementsPeer,
        SQLAlchemyPeer,
        BareWriterPeer,
    )
}
BASELINE = "conn-per-thread"
"""The peer the issue's targets are stated against."""


# -- one pass ---------------------------------------------------------------------------


def prepare(path: Path, *, trigger: bool) -> None:
    """Create a fresh WAL database with the schema (the same for every peer)."""
    remove_db(path)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript(SCHEMA)
        if trigger:
            connection.executescript(TRIGGER)
    finally:
        connection.close()


def verify(path: Path, acknowledged: int) -> list[str]:
    """What the file holds versus what was acknowledged; empty when they agree."""
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute("SELECT count(*) FROM tasks").fetchone()[0]
        counter = connection.execute("SELECT value FROM counters WHERE name = 'ops'").fetchone()[0]
    finally:
        connection.close()
    problems = []
    if rows != acknowledged:
        problems.append(f"tasks holds {rows} rows, {acknowledged} ops acknowledged")
    if counter != acknowledged:
        problems.append(f"counter is {counter}, {acknowledged} ops acknowledged")
    return problems


def run_pass(
    name: str, args: argparse.Namespace, peers: Sequence[str]
) -> tuple[list[CellResult], dict[str, Any]]:
    """Run every cell of one pass; rounds outermost so noise spreads over all peers."""
    synchronous = PASSES[name]
    segment_time = args.duration / args.rounds
    segments: dict[tuple[str, int], list[Segment]] = {}
    extras: dict[tuple[str, int], list[dict[str, Any]]] = {}
    problems: dict[tuple[str, int], list[str]] = {}
    info: dict[str, Any] = {"synchronous": synchronous}
    with scratch_dir(args.dir, f"atlas-bench-writes-{name}-") as directory:
        info["fsync_ms"] = time_fsync(directory)
        bar = progress(args.rounds * len(args.threads) * len(peers), f"writes/{name}")
        with bar:
            for round_index in range(args.rounds):
                for t_index, threads in enumerate(args.threads):
                    for peer_name in rotated(peers, round_index + t_index):
                        bar.set_postfix_str(f"{peer_name} x{threads}")
                        peer = PEERS[peer_name]()
                        path = directory / "bench.db"
                        prepare(path, trigger=peer.trigger)
                        peer.open(path, synchronous)
                        try:
                            segment = run_closed_loop(threads, segment_time, peer.thread_op)
                        finally:
                            extra = peer.close()
                        key = (peer_name, threads)
                        segments.setdefault(key, []).append(segment)
                        extras.setdefault(key, []).append(extra)
                        problems.setdefault(key, []).extend(verify(path, segment.acked_total))
                        remove_db(path)
                        bar.update()
    cells = []
    for threads in args.threads:
        for peer_name in peers:
            key = (peer_name, threads)
            cell = CellResult(peer=peer_name, threads=threads)
            cell.add(segments[key])
            cell.mismatches = problems[key]
            if peer_name == "atlas":
                writes = sum(e["writes"] for e in extras[key])
                batches = sum(e["batches"] for e in extras[key])
                cell.extra = {
                    "mean_batch": ratio(writes, batches),
                    "max_batch": max(e["max_batch"] for e in extras[key]),
                }
            cells.append(cell)
    return cells, info


def print_pass(name: str, cells: Sequence[CellResult], info: dict[str, Any]) -> None:
    """The figures of one pass, then atlas's ratio to each peer."""
    title = {
        "full": "this disk, synchronous=FULL",
        "normal": "this disk, synchronous=NORMAL",
        "slow": f"slow disk (every fsync +{SLOW_US / 1000:g} ms), synchronous=FULL",
    }[name]
    print(f"\n== writes, pass '{name}': {title}; fsync measured {info['fsync_ms']:.2f} ms ==")
    rows = []
    for cell in cells:
        notes = []
        if "mean_batch" in cell.extra:
            notes.append(f"batch mean {cell.extra['mean_batch']:.1f} max {cell.extra['max_batch']}")
        notes += cell.trouble_notes()
        rows.append(
            [
                cell.peer,
                str(cell.threads),
                fmt(cell.ops_per_s, 0),
                fmt(cell.p50_ms, 2),
                fmt(cell.p99_ms, 2),
                fmt(cell.max_ms, 1),
                fmt(cell.slowest_thread * 100, 0) if cell.threads > 1 else "",
                str(cell.errors),
                "ok" if not cell.mismatches else "MISMATCH",
                "; ".join(notes),
            ]
        )
    headers = ["peer", "thr", "ops/s", "p50 ms", "p99 ms", "max ms", "slowest%", "errors", "rows"]
    print(table([*headers, "notes"], rows))
    print(
        "slowest% = the least productive thread's ops as % of the mean per thread (100: fair;"
        " near 0: a thread starved, which per-op p99 hides since it finishes few ops)"
    )
    for cell in cells:
        for problem in cell.mismatches:
            print(f"  MISMATCH {cell.peer} x{cell.threads}: {problem}")
    others = [c.peer for c in cells if c.peer != "atlas" and c.threads == cells[0].threads]
    if "atlas" not in {c.peer for c in cells} or not others:
        return
    print("\natlas / peer: throughput ratio, p99 latency ratio (higher, lower is better)")
    ratio_rows = []
    for threads in sorted({c.threads for c in cells}):
        by_peer = {c.peer: c for c in cells if c.threads == threads}
        mine = by_peer["atlas"]
        ratio_rows.append(
            [str(threads)]
            + [
                f"{fmt_ratio(ratio(mine.ops_per_s, by_peer[p].ops_per_s))} / "
                f"{fmt_ratio(ratio(mine.p99_ms, by_peer[p].p99_ms))}"
                for p in others
            ]
        )
    print(table(["threads", *others], ratio_rows))


def judge(name: str, cells: Sequence[CellResult]) -> list[Target]:
    """The issue's targets for one pass, from the measured cells."""
    targets = []

    def throughput(threads: int, at_least: float, p99_at_most: float | None = None) -> Target:
        mine, base = find_cell(cells, "atlas", threads), find_cell(cells, BASELINE, threads)
        wanted = f"{name}: >= {at_least:g}x {BASELINE} at {threads} threads"
        if p99_at_most is not None:
            wanted += f", p99 <= {p99_at_most:g}x its p99"
        if mine is None or base is None:
            return Target(wanted, "not measured (thread count or peer not run)", None)
        speed = ratio(mine.ops_per_s, base.ops_per_s)
        measured = (
            f"{fmt_ratio(speed, 3)} ({fmt(mine.ops_per_s, 0)} vs {fmt(base.ops_per_s, 0)} ops/s)"
        )
        passed = speed >= at_least
        rounds = spread(round_ratios(mine, base))
        if rounds:
            measured += f", rounds {rounds}"
        measured += yardstick_note(cells, "bare-writer", mine, base)
        if p99_at_most is not None:
            p99 = ratio(mine.p99_ms, base.p99_ms)
            measured += (
                f"; p99 {fmt_ratio(p99, 3)} ({fmt(mine.p99_ms, 2)} vs {fmt(base.p99_ms, 2)} ms)"
            )
            passed = passed and p99 <= p99_at_most
            measured += (
                f"; peer max {fmt(base.max_ms, 0)} ms, its slowest thread "
                f"{fmt(base.slowest_thread * 100, 0)}% of the mean"
            )
        return Target(wanted, measured, passed)

    if name == "slow":
        targets += [throughput(64, 10.0), throughput(16, 5.0)]
    elif name == "full":
        targets.append(throughput(64, 1.5, 0.1))
    elif name == "normal":
        targets.append(throughput(64, 1.0))
    targets.append(
        clean_cells_target(
            cells, f"{name}: zero errors, lost/extra writes or hangs in every atlas cell"
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
            "Durable writes (one INSERT + one UPDATE per transaction) through atlas and "
            "its peers, side by side, closed-loop threads, fresh file per cell. Prints a "
            "table per pass, atlas's ratio to each peer, and the issue-2 targets."
        ),
        epilog=(
            "--quick: passes full, normal and slow at 16 and 64 threads, 1 s per cell in one "
            "round (about a minute). Default: 1,4,16,64 threads, 6 s per cell in 4 rounds "
            "of 1.5 s (about 10 minutes). Ratios are the result; absolute numbers depend on "
            "the machine and its load."
        ),
    )
    add_run_options(parser, threads="1,4,16,64", duration=6, rounds=4)
    parser.add_argument(
        "--pass",
        dest="passes",
        choices=["full", "normal", "slow", "all"],
        default="all",
        help="which pass to run (default all)",
    )
    parser.add_argument(
        "--peers",
        default=",".join(PEERS),
        help=f"comma-separated subset of: {', '.join(PEERS)} (default all)",
    )
    parser.add_argument("--slow-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads is None:
        args.threads = [16, 64] if args.quick else [1, 4, 16, 64]
    if args.duration is None:
        args.duration = 1.0 if args.quick else 6.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 4
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
        f"writes: threads {args.threads}, {args.duration:g} s per cell in {args.rounds} "
        f"round(s), peers {peers}"
    )
    passes = ["full", "normal", "slow"] if args.passes == "all" else [args.passes]
    results, targets, trouble = run_passes(passes, one_pass, lambda: run_slow_pass(args, peers))
    print_targets(targets)
    payload = {"environment": env, "args": vars(args), "passes": results}
    return finish("writes.py", started, args.json, payload, trouble)


if __name__ == "__main__":
    sys.exit(main())

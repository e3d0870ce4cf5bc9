"""The read cache: a task manager's read mix through atlas, side by side with sqlite3.

One file (WAL mode) holds ``--projects`` projects, ``--tasks`` tasks (project_id,
status, assignee, title, updated) and about as many comments. Closed-loop threads run a
mix of about 90% reads and 10% writes (``--writes``) for a fixed time:

* read, task (50% of reads): ``SELECT ... FROM tasks WHERE id = ?``
* read, project page (30%): ``SELECT ... FROM tasks WHERE project_id = ?
  ORDER BY updated DESC LIMIT 20``
* read, status counts (10%): ``SELECT status, count(*) FROM tasks WHERE project_id = ?
  GROUP BY status``
* read, comments of a task (10%): ``SELECT ... FROM comments WHERE task_id = ?
  ORDER BY id DESC LIMIT 10``
* write, half of them: ``UPDATE tasks SET status = ?, updated = max(updated, ?)
  WHERE id = ?``; the other half: ``INSERT INTO comments(...)`` (one statement each)

Task ids and project ids are Zipf-distributed (exponent ``--zipf``, 1.1 by default) over
ranks shuffled with a fixed seed, so the hot ids are spread over the table rather than
clustered at its start; writes pick their task the same way. ``updated`` is a logical
clock shared by the threads, and ``max(updated, ?)`` keeps it from going back, so a read
can tell whether it sees a write.

Correctness, every peer: each read must return the row asked for; and after each of its
own acknowledged writes a thread's next operation reads what it wrote (the task, whose
``updated`` must be at least the value written; or the task's comments, whose newest id
must be at least the new comment's). A miss is a ``StaleRead`` error. These check reads
count as reads (so writes are scripted at ``w / (1 - w)`` per drawn operation, and all
operations end up about ``w`` writes).

Peers:

* ``atlas``: default configuration (read cache on: L1 in memory, L2 on disk for
  statements slower than ``cache_disk_min_seconds``); reads ``db.query``, writes
  ``db.write`` (group commit, ``synchronous=FULL``).
* ``atlas.nocache``: the same with ``cache=False``.
* ``sqlite3``: a stdlib sqlite3 connection per thread: reads in autocommit, writes in
  ``BEGIN IMMEDIATE`` ... ``COMMIT``, busy timeout 30 s, ``synchronous=FULL``.

``--writes`` takes several shares (the full run: 10%, 1% and 0%): each is a series of
its own, the targets are judged on the first (the issue's 10%), and a last table shows
hit rate and read ratios by write share, which is where the cache's table-granular
invalidation shows.

Every cell starts from a copy of one prepared file (and an empty cache), runs an
unrecorded warm-up, then the window; ``db.cache.stats()`` is read as the window opens
and as it closes, so hit rates cover exactly the recorded window.

Beside each hit rate stand the best ones possible over the same operations
(:func:`ceiling`: unbounded caches that drop exactly what each write changed, keeping
results from their first or second read); ``--ceiling`` computes them over long
scripted runs instead, without running any peer.
"""

from __future__ import annotations

import argparse
import itertools
import random
import shutil
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _common import (
    CellResult,
    Op,
    Segment,
    Target,
    WrongResultError,
    add_run_options,
    cell_troubles,
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
    run_closed_loop,
    scratch_dir,
    spread,
    table,
)

import atlas_actors as atlas
from atlas_actors.cache.manager import CacheStats

SCHEMA = """
CREATE TABLE projects(id INTEGER PRIMARY KEY, name TEXT NOT NULL, owner TEXT NOT NULL);
CREATE TABLE tasks(id INTEGER PRIMARY KEY, project_id INTEGER NOT NULL REFERENCES projects(id),
                   status TEXT NOT NULL, assignee TEXT NOT NULL, title TEXT NOT NULL,
                   updated INTEGER NOT NULL);
CREATE INDEX tasks_project_updated ON tasks(project_id, updated);
CREATE TABLE comments(id INTEGER PRIMARY KEY, task_id INTEGER NOT NULL REFERENCES tasks(id),
                      author TEXT NOT NULL, body TEXT NOT NULL, created INTEGER NOT NULL);
CREATE INDEX comments_task ON comments(task_id, id);
"""
TASK = "SELECT id, project_id, status, assignee, title, updated FROM tasks WHERE id = ?"
PAGE = (
    "SELECT id, status, assignee, title, updated FROM tasks WHERE project_id = ? "
    "ORDER BY updated DESC LIMIT 20"
)
COUNTS = "SELECT status, count(*) AS n FROM tasks WHERE project_id = ? GROUP BY status"
COMMENTS = (
    "SELECT id, author, body, created FROM comments WHERE task_id = ? ORDER BY id DESC LIMIT 10"
)
SET_STATUS = "UPDATE tasks SET status = ?, updated = max(updated, ?) WHERE id = ?"
ADD_COMMENT = "INSERT INTO comments(task_id, author, body, created) VALUES (?, ?, ?, ?)"

STATUSES = ("todo", "doing", "review", "done")
READ_MIX = (("task", 50), ("page", 30), ("counts", 10), ("comments", 10))
"""Read kinds and their weights; writes are split evenly between status and comment."""
READ_KINDS = frozenset(kind for kind, _ in READ_MIX)
CLOCK_START = 2_000_000_000
"""The logical clock of writes starts above every ``updated`` of the prepared data."""

BUSY_TIMEOUT = 30.0
OPS_PER_THREAD = 1 << 15
PEERS = ("atlas", "atlas.nocache", "sqlite3")
CACHED = "atlas"
BASELINE = "sqlite3"
HIT_RATE_TARGET = 0.90
READS_TARGET = 2.0


class StaleReadError(Exception):
    """A thread's read right after its own acknowledged write did not see it."""


# -- data -------------------------------------------------------------------------------


def prepare(path: Path, projects: int, tasks: int, seed: int = 7) -> None:
    """Create the task-manager file (the same data for every cell: it is copied)."""
    rng = random.Random(seed)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript(SCHEMA)
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT INTO projects(id, name, owner) VALUES (?, ?, ?)",
            ((p, f"project {p}", f"user{p % 50}") for p in range(1, projects + 1)),
        )
        connection.executemany(
            "INSERT INTO tasks(id, project_id, status, assignee, title, updated) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                (
                    t,
                    rng.randint(1, projects),
                    rng.choice(STATUSES),
                    f"user{rng.randrange(50)}",
                    f"task {t}: fix the thing in the place",
                    rng.randrange(1, 1_000_000_000),
                )
                for t in range(1, tasks + 1)
            ),
        )
        connection.executemany(
            "INSERT INTO comments(task_id, author, body, created) VALUES (?, ?, ?, ?)",
            (
                (rng.randint(1, tasks), f"user{rng.randrange(50)}", "looks good to me", c)
                for c in range(1, tasks + 1)
            ),
        )
        connection.execute("COMMIT")
        connection.execute("ANALYZE")
    finally:
        connection.close()


class Zipf:
    """Zipf(s) over ``1..n``, ranks shuffled with a fixed seed (hot ids spread out)."""

    def __init__(self, n: int, s: float, seed: int) -> None:
        self.ids = list(range(1, n + 1))
        random.Random(seed).shuffle(self.ids)
        self.cum_weights = list(itertools.accumulate(1.0 / k**s for k in range(1, n + 1)))

    def draw(self, rng: random.Random, k: int) -> list[int]:
        return rng.choices(self.ids, cum_weights=self.cum_weights, k=k)

    def head_share(self, fraction: float) -> float:
        """The probability mass of the hottest ``fraction`` of the ids."""
        top = max(1, int(len(self.ids) * fraction))
        share: float = self.cum_weights[top - 1] / self.cum_weights[-1]
        return share


def script(seed: int, task_ids: Zipf, project_ids: Zipf, writes: float) -> list[tuple[str, int]]:
    """One thread's drawn operations: (kind, id), drawn up front so every peer pays the
    same for choosing. Writes are drawn at ``w / (1 - w)`` so that, with the check read
    after each, about ``w`` of all operations are writes."""
    rng = random.Random(seed)
    scripted_writes = writes / (1 - writes)
    read_kinds = [kind for kind, _ in READ_MIX]
    read_weights = [weight for _, weight in READ_MIX]
    tasks = task_ids.draw(rng, OPS_PER_THREAD)
    projects = project_ids.draw(rng, OPS_PER_THREAD)
    ops = []
    for i in range(OPS_PER_THREAD):
        if rng.random() < scripted_writes:
            kind = "status" if rng.random() < 0.5 else "comment"
        else:
            kind = rng.choices(read_kinds, read_weights)[0]
        ops.append((kind, projects[i] if kind in ("page", "counts") else tasks[i]))
    return ops


def projects_of_tasks(path: Path) -> list[int]:
    """The project of each task, by task id (index 0 unused)."""
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute("SELECT id, project_id FROM tasks ORDER BY id").fetchall()
    finally:
        connection.close()
    project_of = [0] * (rows[-1][0] + 1 if rows else 1)
    for task, project in rows:
        project_of[task] = project
    return project_of


# -- the workload -----------------------------------------------------------------------


Read = Callable[[str, tuple[Any, ...]], Sequence[Sequence[Any]]]
"""Runs a read, returns rows (tuples: columns by position)."""
Write = Callable[[str, tuple[Any, ...]], int | None]
"""Runs one write statement as its own acknowledged transaction; returns lastrowid."""


Event = tuple[int, str, int]
"""(sequence number, kind, id): a read begun (kind ``task``, ``page``, ``counts`` or
``comments``, id of the task or project), a read ended (``-``, the number the read
began with), a write sent (``status+`` of a task, ``comment+`` on a task) or
acknowledged (``status``, ``comment``)."""


Result = tuple[str, int]
"""A read's result in :func:`ceiling`: (kind, id)."""


@dataclass(frozen=True)
class Ceiling:
    """The hits that caches which drop what each write changes could make at best."""

    reads: int
    """Reads in the window."""
    first_ask: int
    """Hits of a cache that keeps every result from its first read on: none does better."""
    second_ask: int
    """Hits of one that keeps a result from its second read on (atlas's admission)."""


def ceiling(
    events: Iterable[Iterable[Event]], start: int, end: int, project_of: Sequence[int]
) -> Ceiling:
    """Replay a cell's reads and writes against unbounded caches and count their hits.

    The events (each thread's, merged by sequence number) go through in order. A write
    drops exactly the results it changed: a status write its task, and the page and
    counts of that task's project (``project_of[task]``); a comment the task's comments.
    Reads begun from ``start`` up to ``end`` are counted; earlier ones (the warm-up)
    only fill the caches, which start empty like atlas's in each round.

    Each operation took effect at some moment between its events (a read's begin and
    end, a write's sending and acknowledgement), and every overlap is settled in the
    cache's favour: a read hits if its result is cached at any moment while it runs; it
    stores its result (if the policy keeps it) as soon as it begins; and a write does
    not drop a result that a storing read of it overlapped (that read may have run just
    after the drop). The caches hold at least what a real one could at every moment, so
    these are upper bounds for the same operations: no memory limit, no TTL, no race
    lost.
    """
    policies = (0, 1)  # 0 keeps a result from its first read, 1 from its second
    caches: tuple[set[Result], set[Result]] = (set(), set())
    kept: tuple[set[Result], set[Result]] = (set(), set())  # overlapped by a storing read
    storing: tuple[Counter[Result], Counter[Result]] = (Counter(), Counter())  # running
    waiting: tuple[dict[Result, list[int]], dict[Result, list[int]]] = ({}, {})
    # running reads that have not hit yet: result -> the numbers they began with
    running: dict[int, tuple[Result, tuple[bool, bool]]] = {}
    asked: set[Result] = set()
    writing: Counter[Result] = Counter()  # results that writes in flight change
    reads = 0
    hits = [0, 0]

    def cached(policy: int, item: Result) -> None:
        caches[policy].add(item)
        for number in waiting[policy].pop(item, ()):  # they may have run after this
            hits[policy] += number >= start

    for number, kind, key in sorted(itertools.chain.from_iterable(events)):
        if number >= end and kind != "-":
            continue  # reads still running at the end may yet hit (not counted)
        if kind == "-":
            began = running.pop(key, None)
            if began is None:
                continue
            item, stores = began
            for policy in policies:
                pending = waiting[policy].get(item)
                if pending is not None and key in pending:
                    pending.remove(key)
                if stores[policy]:
                    storing[policy][item] -= 1
            continue
        if kind in READ_KINDS:
            item = (kind, key)
            counted = start <= number < end
            reads += counted
            stores = (True, item in asked)
            asked.add(item)
            running[number] = (item, stores)
            for policy in policies:
                if item in caches[policy]:
                    hits[policy] += counted
                else:
                    if stores[policy]:
                        cached(policy, item)
                    waiting[policy].setdefault(item, []).append(number)
                if stores[policy]:
                    storing[policy][item] += 1
                    if writing[item] > 0:
                        kept[policy].add(item)
            continue
        project = project_of[key]
        changed = (
            [("task", key), ("page", project), ("counts", project)]
            if kind.startswith("status")
            else [("comments", key)]
        )
        if kind.endswith("+"):
            writing.update(changed)
            for policy in policies:
                kept[policy].update(item for item in changed if storing[policy][item] > 0)
            continue
        writing.subtract(changed)
        for policy in policies:
            for item in changed:
                if item not in kept[policy] and storing[policy][item] <= 0:
                    caches[policy].discard(item)
                if writing[item] <= 0:
                    kept[policy].discard(item)
    return Ceiling(reads, hits[0], hits[1])


def scripted_events(workload: Workload, threads: int, operations: int) -> list[Event]:
    """``operations`` events of ``threads`` threads' scripts taken in turn (the check read
    after each write included), each operation over before the next begins."""
    scripts = [workload.script_for(index) for index in range(threads)]
    number = itertools.count()
    events: list[Event] = []
    for position in itertools.count():
        for ops in scripts:
            kind, key = ops[position & (OPS_PER_THREAD - 1)]
            if kind in READ_KINDS:
                reads = [(kind, key)]
            else:
                events.append((next(number), f"{kind}+", key))
                events.append((next(number), kind, key))
                reads = [("task" if kind == "status" else "comments", key)]  # the check
            for read_kind, read_key in reads:
                begun = next(number)
                events.append((begun, read_kind, read_key))
                events.append((next(number), "-", begun))
        if len(events) >= operations:
            return events[:operations]
    raise AssertionError("unreachable")


def print_steady_ceilings(
    task_ids: Zipf, project_ids: Zipf, shares: Sequence[float], project_of: Sequence[int]
) -> None:
    """The best hit rates over long scripted runs: what a warm cache could reach at best."""
    rows = []
    spans = ((0, 100_000), (0, 1_000_000), (1_000_000, 2_000_000), (3_000_000, 4_000_000))
    for writes in shares:
        workload = Workload(task_ids, project_ids, writes, project_of)
        events = scripted_events(workload, 16, spans[-1][1])
        for start, end in spans:
            found = ceiling([events], start, end, project_of)
            rows.append(
                [
                    f"{writes:.0%} writes",
                    f"{start:,}-{end:,}",
                    fmt(ratio(found.first_ask, found.reads) * 100, 1),
                    fmt(ratio(found.second_ask, found.reads) * 100, 1),
                ]
            )
    print("\n== the best hit rates over long runs (scripted operations, no peer run) ==")
    print(table(["mix", "events counted", "best %", "best 2nd %"], rows))
    print(
        "16 threads' scripts in turn from an empty cache (events: each read twice, begun and "
        "ended, each write twice, sent and acknowledged); events before the counted ones fill "
        "it; scripts repeat every "
        f"{OPS_PER_THREAD:,} operations per thread, which only helps the cache"
    )


class Workload:
    """The state of one cell shared by its threads: the clock, the checks done, and the
    operations in order (events, for :func:`ceiling`)."""

    def __init__(
        self, task_ids: Zipf, project_ids: Zipf, writes: float, project_of: Sequence[int]
    ) -> None:
        self.task_ids = task_ids
        self.project_of = project_of
        """The project of each task, by task id."""
        self.project_ids = project_ids
        self.writes = writes
        self.clock = itertools.count(CLOCK_START)
        self.checks = itertools.count()
        self.scripts: dict[int, list[tuple[str, int]]] = {}
        self.sequence = itertools.count()
        self.events: list[list[Event]] = []
        """Each thread's reads (begun, ended) and writes (sent, acknowledged), in order
        (for :func:`ceiling`)."""
        self.marks: dict[str, int] = {}

    def checks_done(self) -> int:
        return int(self.checks.__reduce__()[1][0])

    def mark(self, name: str) -> None:
        """Note where the window opens (``start``) or closes (``end``) in the events."""
        self.marks[name] = int(self.sequence.__reduce__()[1][0])

    def script_for(self, index: int) -> list[tuple[str, int]]:
        found = self.scripts.get(index)
        if found is None:
            found = self.scripts[index] = script(
                1000 + index, self.task_ids, self.project_ids, self.writes
            )
        return found

    def op(self, index: int, read: Read, write: Write) -> Op:
        """The mixed operation of thread ``index``; returns ``"read"`` or ``"write"``."""
        ops = self.script_for(index)
        position = itertools.count()
        mask = OPS_PER_THREAD - 1
        clock, checks, sequence = self.clock, self.checks, self.sequence
        pending: list[tuple[str, int, int]] = []  # (kind, task, value) to check next
        events: list[Event] = []
        self.events.append(events)  # list.append: atomic, threads may start together
        note = events.append

        def noted(sql: str, params: tuple[Any, ...], kind: str, key: int) -> Any:
            begun = next(sequence)
            note((begun, kind, key))
            try:
                return read(sql, params)
            finally:
                note((next(sequence), "-", begun))  # the read with that number ended

        def op() -> str:
            if pending:
                kind, task, value = pending.pop()
                next(checks)
                if kind == "status":
                    rows = noted(TASK, (task,), "task", task)
                    if not rows or rows[0][0] != task:
                        raise WrongResultError(f"task {task}: got {rows!r}")
                    if rows[0][5] < value:
                        raise StaleReadError(
                            f"task {task}: updated={rows[0][5]} after this thread's "
                            f"acknowledged write of updated={value}"
                        )
                else:
                    rows = noted(COMMENTS, (task,), "comments", task)
                    if not rows or rows[0][0] < value:
                        newest = rows[0][0] if rows else None
                        raise StaleReadError(
                            f"task {task}: newest comment {newest} after this thread's "
                            f"acknowledged comment {value}"
                        )
                return "read"
            kind, key = ops[next(position) & mask]
            if kind == "task":
                rows = noted(TASK, (key,), kind, key)
                if not rows or rows[0][0] != key:
                    raise WrongResultError(f"task {key}: got {rows!r}")
                return "read"
            if kind == "page":
                noted(PAGE, (key,), kind, key)
                return "read"
            if kind == "counts":
                noted(COUNTS, (key,), kind, key)
                return "read"
            if kind == "comments":
                noted(COMMENTS, (key,), kind, key)
                return "read"
            stamp = next(clock)
            note((next(sequence), f"{kind}+", key))  # sent
            if kind == "status":
                write(SET_STATUS, (STATUSES[stamp % 4], stamp, key))
                pending.append(("status", key, stamp))
            else:
                rowid = write(ADD_COMMENT, (key, f"user{index}", f"comment {stamp}", stamp))
                pending.append(("comment", key, rowid if rowid is not None else 1 << 62))
            note((next(sequence), kind, key))  # once acknowledged
            return "write"

        return op


def make_factory(
    peer: str, path: Path, workload: Workload, db: atlas.Storage | None
) -> Callable[[int], tuple[Op, Callable[[], None]]]:
    """The per-thread op factory of ``peer``."""

    def factory(index: int) -> tuple[Op, Callable[[], None]]:
        if peer == BASELINE:
            connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
            connection.execute("PRAGMA synchronous=FULL")
            execute = connection.execute

            def sqlite3_read(sql: str, params: tuple[Any, ...]) -> Sequence[Sequence[Any]]:
                return execute(sql, params).fetchall()

            def sqlite3_write(sql: str, params: tuple[Any, ...]) -> int | None:
                execute("BEGIN IMMEDIATE")
                try:
                    rowid = execute(sql, params).lastrowid
                    execute("COMMIT")
                except BaseException:
                    if connection.in_transaction:
                        execute("ROLLBACK")
                    raise
                return rowid

            return workload.op(index, sqlite3_read, sqlite3_write), connection.close
        if db is None:
            raise ValueError(f"peer {peer!r} needs an open atlas storage")
        query, write = db.query, db.write

        def atlas_read(sql: str, params: tuple[Any, ...]) -> Sequence[Sequence[Any]]:
            return query(sql, params)

        def atlas_write(sql: str, params: tuple[Any, ...]) -> int | None:
            return write(sql, params).lastrowid

        return workload.op(index, atlas_read, atlas_write), noop

    return factory


# -- the cells --------------------------------------------------------------------------


STAT_FIELDS = (
    "hits",
    "misses",
    "l1_hits",
    "l2_hits",
    "bypassed",
    "skipped",
    "evictions",
    "invalidations",
)
"""CacheStats counters taken as differences over the window."""


def window_stats(before: CacheStats, after: CacheStats) -> dict[str, Any]:
    """Cache figures over the window: counter differences, sizes at its end."""
    figures: dict[str, Any] = {f: getattr(after, f) - getattr(before, f) for f in STAT_FIELDS}
    figures["size"] = after.size
    figures["memory_usage"] = after.memory_usage
    figures["l2_entries"] = after.l2_entries
    figures["l2_bytes"] = after.l2_bytes
    figures["page_cache_hit_rate"] = after.page_cache_hit_rate
    return figures


def run_cell(
    peer: str,
    threads: int,
    seconds: float,
    args: argparse.Namespace,
    path: Path,
    workload: Workload,
) -> tuple[Segment, dict[str, Any]]:
    """One peer's round on a fresh copy of the file: the segment and its cache figures."""
    db = atlas.open(path, cache=peer == CACHED) if peer.startswith("atlas") else None
    snapshots: dict[str, CacheStats] = {}

    def mark(name: str) -> None:
        workload.mark(name)
        if db is not None:
            snapshots[name] = db.cache.stats()

    extra: dict[str, Any] = {}
    try:
        segment = run_closed_loop(
            threads,
            seconds,
            make_factory(peer, path, workload, db),
            warmup=args.warmup,
            by_kind=True,
            marks=mark,
        )
        if db is not None:
            extra = window_stats(snapshots["start"], snapshots["end"])
            extra["mean_batch"] = db.writer.stats().mean_batch
            extra["pool"] = db.pool.status().total
    finally:
        if db is not None:
            db.close()
    if peer == CACHED:
        marks = workload.marks
        extra["ceiling"] = asdict(
            ceiling(workload.events, marks["start"], marks["end"], workload.project_of)
        )
    extra["checks"] = workload.checks_done()
    return segment, extra


def run_cells(
    args: argparse.Namespace,
    template: Path,
    directory: Path,
    workload_of: Callable[[], Workload],
    label: str,
) -> tuple[list[CellResult], dict[tuple[str, int], list[dict[str, Any]]]]:
    """Every peer at every thread count, rounds outermost, peers rotating."""
    segment_time = args.duration / args.rounds
    segments: dict[tuple[str, int], list[Segment]] = {}
    extras: dict[tuple[str, int], list[dict[str, Any]]] = {}
    cell_number = itertools.count()
    bar = progress(args.rounds * len(args.threads) * len(PEERS), f"cache/{label}")
    with bar:
        for round_index in range(args.rounds):
            for t_index, threads in enumerate(args.threads):
                for peer in rotated(PEERS, round_index + t_index):
                    bar.set_postfix_str(f"{peer} x{threads}")
                    path = directory / f"cell{next(cell_number)}.db"
                    shutil.copyfile(template, path)
                    try:
                        segment, extra = run_cell(
                            peer, threads, segment_time, args, path, workload_of()
                        )
                    finally:
                        remove_db(path)
                        shutil.rmtree(f"{path}.cache", ignore_errors=True)
                    segments.setdefault((peer, threads), []).append(segment)
                    extras.setdefault((peer, threads), []).append(extra)
                    bar.update()
    cells = []
    for threads in args.threads:
        for peer in PEERS:
            cell = CellResult(peer=peer, threads=threads)
            cell.add(segments[(peer, threads)])
            cell.extra = summarize(extras[(peer, threads)])
            cells.append(cell)
    return cells, extras


def summarize(extras: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One cell's figures over its rounds (sums of counters; hit rate per round too)."""
    total: dict[str, Any] = {"checks": sum(e["checks"] for e in extras)}
    if "hits" not in extras[0]:
        return total
    for name in STAT_FIELDS:
        total[name] = sum(e[name] for e in extras)
    total["hit_rate"] = ratio(total["hits"], total["hits"] + total["misses"])
    total["round_hit_rates"] = [ratio(e["hits"], e["hits"] + e["misses"]) for e in extras]
    for name in ("size", "memory_usage", "l2_entries", "l2_bytes", "pool"):
        total[f"max_{name}"] = max(e[name] for e in extras)
    total["page_cache_hit_rate"] = median([e["page_cache_hit_rate"] for e in extras])
    total["mean_batch"] = median([e["mean_batch"] for e in extras])
    if "ceiling" in extras[0]:
        reads = sum(e["ceiling"]["reads"] for e in extras)
        for policy in ("first_ask", "second_ask"):
            total[f"ceiling_{policy}"] = ratio(sum(e["ceiling"][policy] for e in extras), reads)
    return total


def print_cells(cells: Sequence[CellResult]) -> None:
    rows = []
    for cell in cells:
        base = find_cell(cells, BASELINE, cell.threads)
        reads, writes = cell.kind("read"), cell.kind("write")
        notes = []
        notes += cell.trouble_notes(70)
        rows.append(
            [
                cell.peer,
                str(cell.threads),
                fmt(reads.ops_per_s, 0),
                fmt_ratio(ratio(reads.ops_per_s, base.kind("read").ops_per_s))
                if base and base is not cell
                else "",
                spread(round_ratios(cell, base, "read")) if base and base is not cell else "",
                fmt(writes.ops_per_s, 0),
                fmt(ratio(writes.ops_per_s, reads.ops_per_s + writes.ops_per_s) * 100, 1),
                fmt(reads.p50_ms * 1000, 0),
                fmt(reads.p99_ms * 1000, 0),
                fmt(writes.p50_ms, 2),
                fmt(writes.p99_ms, 2),
                fmt(cell.slowest_thread * 100, 0) if cell.threads > 1 else "",
                str(cell.extra.get("checks", 0)),
                str(cell.errors),
                "; ".join(notes),
            ]
        )
    headers = ["peer", "thr", "reads/s", "vs sqlite3", "per round", "writes/s", "w%"]
    headers += ["read p50 us", "read p99 us", "write p50 ms", "write p99 ms", "slowest%"]
    print(table([*headers, "checks", "errors", "notes"], rows))
    print(
        "per round = the lowest and highest reads/s ratio of single rounds (peers side by "
        "side); w% = writes among all operations; checks = reads right after the thread's "
        "own acknowledged write (each must see it, or it is a StaleRead error)"
    )
    cached = [c for c in cells if c.peer == CACHED and "hits" in c.extra]
    if not cached:
        return
    print("\natlas's cache over the recorded windows (differences of db.cache.stats())")
    rows = []
    for cell in cached:
        e = cell.extra
        round_rates = [r * 100 for r in e["round_hit_rates"]]
        rows.append(
            [
                cell.peer,
                str(cell.threads),
                fmt(e["hit_rate"] * 100, 1),
                f"{min(round_rates):.1f}-{max(round_rates):.1f}" if len(round_rates) > 1 else "",
                fmt(e["ceiling_first_ask"] * 100, 1),
                fmt(e["ceiling_second_ask"] * 100, 1),
                f"{e['hits']:,}",
                f"{e['misses']:,}",
                f"{e['l1_hits']:,}",
                f"{e['l2_hits']:,}",
                f"{e['bypassed']:,}",
                f"{e['skipped']:,}",
                f"{e['invalidations']:,}",
                f"{e['evictions']:,}",
                f"{e['max_size']:,} / {e['max_memory_usage'] / 1e6:.1f} MB",
                f"{e['max_l2_entries']:,} / {e['max_l2_bytes'] / 1e6:.1f} MB",
                fmt(e["page_cache_hit_rate"] * 100, 1),
            ]
        )
    headers = ["peer", "thr", "hit %", "per round", "best %", "best 2nd %", "hits", "misses"]
    headers += ["L1 hits", "L2 hits", "bypassed", "skipped", "invalidated", "evicted"]
    headers += ["L1 entries/bytes", "L2 entries/bytes", "page cache hit %"]
    print(table(headers, rows))
    print(
        "hit % = hits / (hits + misses); best % = the hit rate of an unbounded cache that "
        "keeps every result from its first read and drops exactly what each write changed, "
        "over the same operations from the same empty start, with overlapping operations "
        "settled in its favour (no cache that invalidates on writes can do better); best "
        "2nd % = the same keeping results from their second read (atlas's admission for "
        "cheap statements; it keeps slow ones from their first); invalidated = entries "
        "dropped by writes that changed rows they read, other processes' commits, restarts "
        "and invalidate(); skipped = reads of statements whose results were not asked for "
        "again, sent straight to a reader (counted as misses); L1/L2 sizes are the largest "
        "at a window's end"
    )


def judge(cells: Sequence[CellResult], label: str, threads: int = 16) -> list[Target]:
    """The issue's targets at ``threads`` threads, and the clean-run check."""
    targets = []
    mine, base = find_cell(cells, CACHED, threads), find_cell(cells, BASELINE, threads)
    wanted_hits = f"cache: hit rate >= {HIT_RATE_TARGET:.0%} ({CACHED}, {threads} thr, {label})"
    wanted_reads = f"cache: {CACHED} reads >= {READS_TARGET:g}x {BASELINE} ({threads} thr, {label})"
    if mine is None or base is None:
        targets.append(Target(wanted_hits, f"not measured ({threads} threads not run)", None))
        targets.append(Target(wanted_reads, f"not measured ({threads} threads not run)", None))
    else:
        rate = mine.extra["hit_rate"]
        rounds = [r * 100 for r in mine.extra["round_hit_rates"]]
        hits, misses = mine.extra["hits"], mine.extra["misses"]
        measured = f"{rate * 100:.1f}% ({hits:,} hits, {misses:,} misses)"
        if len(rounds) > 1:
            measured += f"; rounds {min(rounds):.1f}-{max(rounds):.1f}%"
        measured += (
            f"; best possible over these operations {mine.extra['ceiling_first_ask']:.1%} "
            f"({mine.extra['ceiling_second_ask']:.1%} with atlas's second-read admission)"
        )
        targets.append(Target(wanted_hits, measured, rate >= HIT_RATE_TARGET))
        speed = ratio(mine.kind("read").ops_per_s, base.kind("read").ops_per_s)
        per_round = round_ratios(mine, base, "read")
        measured = (
            f"{fmt_ratio(speed, 3)} ({fmt(mine.kind('read').ops_per_s, 0)} vs "
            f"{fmt(base.kind('read').ops_per_s, 0)} reads/s)"
        )
        if len(per_round) > 1:
            measured += f"; rounds median {fmt_ratio(median(per_round))}, {spread(per_round)}"
        targets.append(Target(wanted_reads, measured, speed >= READS_TARGET))
    return targets + judge_clean(cells, label)


def judge_clean(cells: Sequence[CellResult], label: str) -> list[Target]:
    """No stale or wrong read, error or hang in any atlas cell."""
    atlas_cells = [c for c in cells if c.peer.startswith("atlas")]
    bad = [trouble for c in atlas_cells if (trouble := c.trouble()) is not None]
    kinds = list(dict.fromkeys(k for c in atlas_cells for k in c.error_kinds))
    checks = sum(c.extra.get("checks", 0) for c in atlas_cells)
    measured = f"{len(atlas_cells)} cells clean, {checks:,} checks"
    if bad:
        measured = "; ".join(bad) + (f" (first: {kinds[0][:90]})" if kinds else "")
    return [
        Target(
            f"cache: no stale or wrong reads, errors or hangs in atlas cells ({label})",
            measured,
            not bad,
        )
    ]


def print_sweep(series: dict[str, Any]) -> None:
    """Hit rate and read ratios at each write share, side by side."""
    print("\n== by write share: atlas's hit rate and reads/s ratios ==")
    rows = []
    for label, found in series.items():
        cells = found["cells"]
        for threads in sorted({c["threads"] for c in cells}):
            by_peer = {c["peer"]: c for c in cells if c["threads"] == threads}
            base = by_peer[BASELINE]["kinds"].get("read", {}).get("ops_per_s", 0.0)
            row = [label, str(threads)]
            row.append(fmt(by_peer[CACHED]["extra"].get("hit_rate", float("nan")) * 100, 1))
            for peer in (CACHED, "atlas.nocache"):
                reads = by_peer[peer]["kinds"].get("read", {}).get("ops_per_s", 0.0)
                row.append(fmt_ratio(ratio(reads, base)))
            row.append(fmt(base, 0))
            rows.append(row)
    headers = ["writes", "thr", "hit %", f"{CACHED} / sqlite3", "atlas.nocache / sqlite3"]
    print(table([*headers, "sqlite3 reads/s"], rows))


# -- main -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "A task manager's read mix (Zipf task ids and project pages, ~10% writes) "
            "through atlas with its cache on and off and a sqlite3 connection per thread, "
            "side by side; cache hit rates over the recorded window; the issue-5 targets."
        ),
        epilog=(
            "--quick: 16 threads, 10% writes, 6 s per cell in 3 rounds (about 35 s). "
            "Default: 4,16 threads, 12 s per cell in 6 rounds of 2 s, at 10%, 1% and 0% "
            "writes (about 5.5 minutes). Ratios are the result; absolute numbers depend on "
            "the machine and its load."
        ),
    )
    add_run_options(parser, threads="4,16", duration=12, rounds=6, warmup=0.5)
    parser.add_argument("--tasks", type=positive(int), default=100_000, help="tasks (100000)")
    parser.add_argument("--projects", type=positive(int), default=1_000, help="projects (1000)")
    parser.add_argument(
        "--zipf",
        type=positive(float),
        default=1.1,
        help="Zipf exponent s of task and project ids (1.1)",
    )
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="only print the best hit rates possible over long scripted runs of the mix "
        "(at each --writes share; about 10 s each) and exit",
    )
    parser.add_argument(
        "--writes",
        type=write_shares,
        help="shares of operations that write, each a series of its own; the targets are "
        "judged on the first (quick: 0.1; default: 0.1,0.01,0)",
    )
    args = parser.parse_args(argv)
    args.threads = args.threads or ([16] if args.quick else [4, 16])
    if args.duration is None:
        args.duration = 6.0 if args.quick else 12.0
    if args.rounds is None:
        args.rounds = 3 if args.quick else 6
    if args.writes is None:
        args.writes = [0.1] if args.quick else [0.1, 0.01, 0.0]
    return args


def write_shares(text: str) -> list[float]:
    """Parse ``--writes 0.1,0.01,0`` (order kept: the first is judged)."""
    try:
        shares = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected e.g. 0.1,0.01,0") from None
    if not shares or any(not 0 <= w < 0.5 for w in shares):
        raise argparse.ArgumentTypeError(f"{text!r}: each share must be in [0, 0.5)")
    return shares


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    env = environment()
    print_environment(env)
    task_ids = Zipf(args.tasks, args.zipf, seed=11)
    project_ids = Zipf(args.projects, args.zipf, seed=13)
    print(
        f"cache: {args.tasks:,} tasks in {args.projects:,} projects; threads {args.threads}; "
        f"{args.duration:g} s per cell in {args.rounds} round(s) after {args.warmup:g} s "
        f"warm-up; writes {', '.join(f'{w:.0%}' for w in args.writes)} of operations (a "
        f"series each, targets judged at {args.writes[0]:.0%}); Zipf s={args.zipf:g} over "
        f"shuffled ids: the hottest 1% of tasks draw {task_ids.head_share(0.01):.0%} of task "
        f"picks, the hottest 1% of projects {project_ids.head_share(0.01):.0%} of project picks"
    )
    series: dict[str, Any] = {}
    targets: list[Target] = []
    trouble: list[str] = []
    with scratch_dir(args.dir, "atlas-bench-cache-") as directory:
        template = directory / "template.db"
        began = time.perf_counter()
        prepare(template, args.projects, args.tasks)
        project_of = projects_of_tasks(template)
        print(f"prepared the file in {time.perf_counter() - began:.1f} s")
        if args.ceiling:
            print_steady_ceilings(task_ids, project_ids, args.writes, project_of)
            return 0
        for position, writes in enumerate(args.writes):
            label = f"{writes:.0%} writes"
            cells, extras = run_cells(
                args,
                template,
                directory,
                lambda w=writes: Workload(task_ids, project_ids, w, project_of),  # type: ignore[misc]
                label,
            )
            print(f"\n== the task-manager mix, {label} ==")
            print_cells(cells)
            trouble += cell_troubles(cells, label)
            series[label] = {
                "writes": writes,
                "cells": [asdict(c) for c in cells],
                "rounds": {f"{p} x{t}": e for (p, t), e in extras.items()},
            }
            if position == 0:
                targets = judge(cells, label)
            else:
                targets += judge_clean(cells, label)
    if len(args.writes) > 1:
        print_sweep(series)
    print_targets(targets, "Targets (issue 5)")
    payload = {
        "environment": env,
        "args": vars(args),
        "series": series,
        "targets": targets,
    }
    return finish("cache.py", started, args.json, payload, trouble)


if __name__ == "__main__":
    sys.exit(main())

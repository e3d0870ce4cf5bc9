"""A task-manager workload: the demo's job and the simulations' load.

Threads create tasks, move them through statuses, comment on them, and read them back
(by id, by project and status, counts per status). :func:`run_workload` drives it for a
while, optionally injecting actor crashes, and returns a :class:`WorkloadReport`.
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import apsw

from atlas_actors.errors import AtlasError
from atlas_actors.storage import Storage

__all__ = [
    "SCHEMA",
    "LatencySummary",
    "WorkloadReport",
    "create_schema",
    "run_workload",
    "schema_conflicts",
]

SCHEMA = """
CREATE TABLE IF NOT EXISTS projects(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS tasks(
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    title TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'doing', 'review', 'done')),
    assignee TEXT,
    priority INTEGER NOT NULL DEFAULT 2,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_project_status ON tasks(project_id, status);
CREATE TABLE IF NOT EXISTS comments(
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks(id),
    body TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""
"""The task-manager tables the workload uses."""

COLUMNS: dict[str, tuple[str, ...]] = {
    "projects": ("id", "name"),
    "tasks": ("id", "project_id", "title", "status", "assignee", "priority", "updated_at"),
    "comments": ("id", "task_id", "body", "created_at"),
}
"""The columns of each table in :data:`SCHEMA` (what the workload reads and writes)."""

_STATUSES = ("open", "doing", "review", "done")
_PEOPLE = ("ada", "brian", "chen", "dana", "eve", "farid")
_PROJECTS = 20


_INSERT_PROJECT = "INSERT OR IGNORE INTO projects(id, name) VALUES (?, ?)"
_INSERT_TASK = (
    "INSERT INTO tasks(project_id, title, assignee, priority, updated_at) VALUES (?, ?, ?, ?, ?)"
)
_SET_STATUS = "UPDATE tasks SET status = ?, updated_at = ? WHERE id = ?"
_INSERT_COMMENT = "INSERT INTO comments(task_id, body, created_at) VALUES (?, ?, ?)"
_TOUCH_TASK = "UPDATE tasks SET updated_at = ? WHERE id = ?"


def schema_conflicts(connection: apsw.Connection) -> list[str]:
    """What in this database stops the workload: tables of its names that it cannot use.

    ``CREATE TABLE IF NOT EXISTS`` keeps a table of another application that has the
    same name (a ``tasks`` table of one's own, say), and the workload would then fail on
    its first statement. Returns one line per table that lacks columns the workload
    uses (``tasks: no column project_id, ...``); if none does, the line of the first of
    the workload's writes that fails on an empty in-memory copy of the schema (a NOT
    NULL column it does not set, a CHECK, a trigger: ``tasks: NOT NULL constraint
    failed: tasks.owner``). Empty if the tables are missing or the workload's own.
    ``connection`` is only read.
    """
    conflicts = []
    found = False
    for table, wanted in COLUMNS.items():
        have = {row[1] for row in connection.execute("SELECT * FROM pragma_table_info(?)", [table])}
        missing = [column for column in wanted if column not in have]
        found = found or bool(have)
        if have and missing:
            conflicts.append(f"{table}: no column {', '.join(missing)}")
    if conflicts or not found:
        return conflicts
    return _dry_run(connection)


def _dry_run(connection: apsw.Connection) -> list[str]:
    """Each kind of the workload's writes, once, on an empty copy of the schema in memory.

    Returns ``["<table>: <why>"]`` for the first that fails, else ``[]``.
    """
    scratch = apsw.Connection(":memory:")
    try:
        schema = connection.execute(
            "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL "
            "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
            "ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 WHEN 'view' THEN 2 "
            "ELSE 3 END, rowid"
        ).fetchall()
        for (sql,) in schema:
            # (What cannot be copied, a virtual table of a module not loaded here, say,
            # is left out: the check is then less thorough, never wrong.)
            with contextlib.suppress(apsw.Error):
                scratch.execute(str(sql))
        scratch.pragma("foreign_keys", 1)  # (as the storage's connections have it)
        now = time.time()
        table = "schema"
        try:
            scratch.execute(SCHEMA)
            table = "projects"
            # (Without OR IGNORE: a row the copy refuses, it says why; the workload's
            # statement would skip it, and its tasks would then fail.)
            scratch.execute(_INSERT_PROJECT.replace(" OR IGNORE", ""), (1, "project 1"))
            table = "tasks"
            scratch.execute(_INSERT_TASK, (1, "task 0.0", _PEOPLE[0], 2, now))
            task = scratch.last_insert_rowid()
            if not scratch.execute("SELECT 1 FROM tasks WHERE id = ?", (task,)).fetchall():
                return ["tasks: its id column is not the rowid (INTEGER PRIMARY KEY)"]
            for status in _STATUSES:
                scratch.execute(_SET_STATUS, (status, now, task))
            table = "comments"
            scratch.execute(_INSERT_COMMENT, (task, "looks good", now))
            table = "tasks"
            scratch.execute(_TOUCH_TASK, (now, task))
        except apsw.Error as error:
            return [f"{table}: {error}"]
        return []
    finally:
        scratch.close()


def create_schema(db: Storage) -> None:
    """Create the tables (if missing) and the projects."""
    db.execute(SCHEMA)
    db.write_many(_INSERT_PROJECT, [(i, f"project {i}") for i in range(1, _PROJECTS + 1)])


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Latency percentiles of one kind of call, in milliseconds."""

    count: int
    """Calls measured."""
    p50: float
    """Median."""
    p95: float
    """95th percentile."""
    p99: float
    """99th percentile."""
    max: float
    """Slowest call."""

    @classmethod
    def of(cls, seconds: list[float]) -> LatencySummary:
        """Summarise a list of durations in seconds."""
        if not seconds:
            return cls(0, 0.0, 0.0, 0.0, 0.0)
        ordered = sorted(seconds)

        def pick(q: float) -> float:
            # Nearest rank: the smallest value with at least q of them at or below it
            # (round(): 0.29 * 100 is 28.999999999999996 in floating point).
            rank = math.ceil(round(q * len(ordered), 9))
            return ordered[min(len(ordered), max(rank, 1)) - 1] * 1000

        return cls(len(ordered), pick(0.50), pick(0.95), pick(0.99), ordered[-1] * 1000)


@dataclass(frozen=True, slots=True)
class WorkloadReport:
    """What a workload run did."""

    seconds: float
    """Wall-clock duration."""
    writes: LatencySummary
    """Acknowledged writes."""
    reads: LatencySummary
    """Reads."""
    errors: dict[str, int]
    """Failed calls by error type (expected to be empty, even with crashes injected)."""
    kills: int
    """Actor crashes injected."""
    restarts: int
    """Restarts the supervisor performed (counted once each crash injected was restarted,
    or after the storage's ``default_timeout``)."""
    mean_batch: float
    """Mean writes per group commit."""
    lost_writes: int
    """Acknowledged task inserts missing from the database afterwards (must be 0)."""
    interrupted: bool = False
    """True if ``stop`` ended the run before its ``seconds`` were up."""

    @property
    def operations_per_second(self) -> float:
        """Reads and writes per second."""
        return (self.writes.count + self.reads.count) / self.seconds if self.seconds else 0.0


@dataclass
class _Worker:
    rng: random.Random
    tag: int
    """The worker's number: its tasks' titles are unique (``task <tag>.<n>``)."""
    write_latency: list[float] = field(default_factory=list)
    read_latency: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    created: list[int] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)
    """Each acknowledged insert's title, by ``created``'s order: the check of the run
    finds each (id, title) pair, so a lost row whose id was reused still counts."""


def _one_operation(db: Storage, worker: _Worker) -> None:
    rng = worker.rng
    roll = rng.random()
    now = time.time()
    started = time.perf_counter()
    if roll < 0.15 or not worker.created:
        title = f"task {worker.tag}.{len(worker.created)}"
        result = db.write(
            _INSERT_TASK,
            [rng.randint(1, _PROJECTS), title, rng.choice(_PEOPLE), rng.randint(1, 4), now],
        )
        if result.lastrowid is not None:
            worker.created.append(result.lastrowid)
            worker.titles.append(title)
        worker.write_latency.append(time.perf_counter() - started)
    elif roll < 0.25:
        db.write(
            _SET_STATUS,
            [rng.choice(_STATUSES), now, rng.choice(worker.created)],
        )
        worker.write_latency.append(time.perf_counter() - started)
    elif roll < 0.30:
        task = rng.choice(worker.created)
        db.write_all(
            [
                (_INSERT_COMMENT, [task, "looks good", now]),
                (_TOUCH_TASK, [now, task]),
            ]
        )
        worker.write_latency.append(time.perf_counter() - started)
    elif roll < 0.70:
        db.query("SELECT * FROM tasks WHERE id = ?", [rng.choice(worker.created)])
        worker.read_latency.append(time.perf_counter() - started)
    elif roll < 0.90:
        db.query(
            "SELECT id, title, assignee FROM tasks WHERE project_id = ? AND status = ? "
            "ORDER BY updated_at DESC LIMIT 20",
            [rng.randint(1, _PROJECTS), rng.choice(_STATUSES)],
        )
        worker.read_latency.append(time.perf_counter() - started)
    else:
        db.query("SELECT status, count(*) AS n FROM tasks GROUP BY status")
        worker.read_latency.append(time.perf_counter() - started)


def run_workload(
    db: Storage,
    *,
    threads: int = 16,
    seconds: float = 10.0,
    kill_every: float = 0.0,
    seed: int = 0,
    progress: Callable[[int], object] | None = None,
    stop: threading.Event | None = None,
) -> WorkloadReport:
    """Run the task-manager mix from ``threads`` threads for ``seconds``.

    ``kill_every`` > 0 crashes the writer or a reader (alternately) that often, to show
    the supervisor at work. ``progress(n)`` is called with the number of operations
    finished since its last call, about ten times a second. Setting ``stop`` (from
    another thread or a signal handler) ends the run early, within about 0.1 s: the
    workers finish their current call, the report covers the run so far and says
    ``interrupted``.
    """
    interrupt = stop if stop is not None else threading.Event()
    create_schema(db)
    restarts_before = db.supervisor.status().restarts
    halt = threading.Event()  # the workers' own: set when the run ends, however
    workers = [_Worker(random.Random(seed * 1000 + i), i) for i in range(threads)]

    def loop(worker: _Worker) -> None:
        while not halt.is_set():
            try:
                _one_operation(db, worker)
            except AtlasError as error:
                worker.errors[type(error).__name__] += 1

    kills = 0
    pool = [
        threading.Thread(target=loop, args=(w,), name=f"demo-{i}") for i, w in enumerate(workers)
    ]
    started = time.monotonic()
    next_kill = started + kill_every if kill_every > 0 else float("inf")
    reported = 0
    try:
        _start(pool)  # (inside: the threads started stop if a later one cannot start)
        while (now := time.monotonic()) - started < seconds and not interrupt.is_set():
            # Sleep, not interrupt.wait(): a signal handler may set the event, and
            # Event.set() from a handler deadlocks if the thread it interrupted is
            # inside wait() on the same event, holding its lock.
            time.sleep(min(0.1, max(0.0, seconds - (now - started))))
            if time.monotonic() >= next_kill:
                kills += _inject_crash(db, kills)
                next_kill += kill_every
            if progress is not None:
                done = sum(len(w.write_latency) + len(w.read_latency) for w in workers)
                progress(done - reported)
                reported = done
        cut_short = interrupt.is_set()
    finally:
        halt.set()
        for thread in pool:
            if thread.ident is not None:  # (started)
                thread.join(db.config.default_timeout)
    elapsed = time.monotonic() - started
    restarts = _await_restarts(db, restarts_before + kills, db.config.default_timeout)
    created = [task for w in workers for task in zip(w.created, w.titles, strict=True)]
    present = _count_present(db, created)
    errors: Counter[str] = Counter()
    for worker in workers:
        errors.update(worker.errors)
    return WorkloadReport(
        seconds=elapsed,
        writes=LatencySummary.of([x for w in workers for x in w.write_latency]),
        reads=LatencySummary.of([x for w in workers for x in w.read_latency]),
        errors=dict(errors),
        kills=kills,
        restarts=restarts - restarts_before,
        mean_batch=db.writer.stats().mean_batch,
        lost_writes=len(created) - present,
        interrupted=cut_short,
    )


def _inject_crash(db: Storage, kills: int) -> int:
    """Crash the writer or a reader (alternately, the readers in turn); 1 if one was."""
    running = [c.role for c in db.supervisor.status().children if c.state == "running"]
    if kills % 2 == 0:
        roles = [role for role in running if role == "writer"]
    else:
        roles = [role for role in running if role.startswith("reader-")]
    if not roles:
        return 0
    try:
        db.supervisor.kill(roles[(kills // 2) % len(roles)])
    except AtlasError:
        return 0  # it was restarting already
    return 1


def _await_restarts(db: Storage, at_least: int, within: float) -> int:
    """The supervisor's count of restarts once it reaches ``at_least``.

    Or sooner if the storage failed (it restarts nothing more), or ``within`` seconds
    passed. ``supervisor.kill()`` only queues the crash: the actor takes it when done
    with what it is doing, and the restart is counted then; a crash injected in the
    run's last moments may not be counted yet when the run ends.
    """
    deadline = time.monotonic() + within
    while True:
        status = db.supervisor.status()
        if status.restarts >= at_least or status.state != "running":
            return status.restarts
        if time.monotonic() >= deadline:
            return status.restarts
        time.sleep(0.005)


def _start(threads: list[threading.Thread]) -> None:
    """Start ``threads``, or raise :class:`AtlasError` saying how many could start."""
    for count, thread in enumerate(threads):
        try:
            thread.start()
        except RuntimeError as error:  # ("can't start new thread": memory, ulimit -u)
            raise AtlasError(
                f"could start only {count} of {len(threads)} worker threads ({error}); "
                "run with fewer threads"
            ) from error


def _count_present(db: Storage, created: list[tuple[int, str]]) -> int:
    """How many of the acknowledged inserts' (id, title) pairs the file holds.

    By pair, not by id: a row lost from the file frees its id, which the next insert
    takes, so an id alone would be found for a lost write.
    """
    ids = sorted({task_id for task_id, _ in created})
    found: set[tuple[int, str]] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows = db.query(f"SELECT id, title FROM tasks WHERE id IN ({marks})", chunk)
        found.update((task_id, title) for task_id, title in rows)
    present = sum(pair in found for pair in created)
    return present

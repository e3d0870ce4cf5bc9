"""Benchmark: typical task-manager queries before and after the advisor's indexes.

    python bench/queries.py            # 1M tasks (about 35 s on a 2-core machine)
    python bench/queries.py --quick    # 100k tasks (a few seconds)
    python bench/queries.py --tasks 300000 --runs 7 --json results.json
    python bench/queries.py --quick --db bench.db  # keep the database (--overwrite to replace)

Steps: generate data (primary keys only), open it with ``atlas.open()`` and time every query
through ``db.query`` (median of --runs runs; the storage records each read in its workload),
ask ``db.optimizer.advise()`` for indexes, ``db.optimizer.apply()`` them (through the
writer), time every query again, and print per-query times, ratios and the total speed-up.
The result cache is off, so every run executes the statement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atlas_actors as atlas
from atlas_actors.cli import positive
from atlas_actors.query import IndexSuggestion

SCHEMA = """
CREATE TABLE projects(
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, owner TEXT NOT NULL, created INTEGER NOT NULL
);
CREATE TABLE tasks(
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    title TEXT NOT NULL COLLATE NOCASE,
    status TEXT NOT NULL,
    assignee TEXT,
    priority INTEGER NOT NULL,
    due INTEGER,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL
);
CREATE TABLE tags(id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE task_tags(task_id INTEGER NOT NULL, tag_id INTEGER NOT NULL);
CREATE TABLE comments(
    id INTEGER PRIMARY KEY, task_id INTEGER NOT NULL, author TEXT NOT NULL,
    body TEXT NOT NULL, created INTEGER NOT NULL
);
"""

NOW = 1_700_000_000
USERS = 500
TAGS = 200

# Deterministic pseudo-random numbers from the row number: h(i, k) is a multiplicative
# hash, so two runs generate the same database.
H = "((({i}) * 2654435761 + {k} * 40503) % 1000003)"


def h(i: str, k: int) -> str:
    return H.format(i=i, k=k)


TASKS_SQL = f"""
WITH RECURSIVE seq(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM seq WHERE i < ?2)
INSERT INTO tasks(id, project_id, title, status, assignee, priority, due, created, updated)
SELECT i,
  {h("i", 1)} % ?3 + 1,
  (CASE {h("i", 2)} % 5 WHEN 0 THEN 'fix' WHEN 1 THEN 'add' WHEN 2 THEN 'write'
   WHEN 3 THEN 'review' ELSE 'plan' END) || ' item ' || i,
  (CASE WHEN {h("i", 3)} % 100 < 25 THEN 'open' WHEN {h("i", 3)} % 100 < 35 THEN 'in_progress'
   WHEN {h("i", 3)} % 100 < 40 THEN 'review' WHEN {h("i", 3)} % 100 < 97 THEN 'done'
   ELSE 'blocked' END),
  CASE WHEN {h("i", 4)} % 10 = 0 THEN NULL ELSE 'user' || ({h("i", 5)} % {USERS}) END,
  {h("i", 6)} % 4 + 1,
  CASE WHEN {h("i", 7)} % 5 = 0 THEN NULL ELSE {NOW} + ({h("i", 8)} % 730 - 365) * 86400 END,
  {NOW} - (?2 - i) * 60,
  {NOW} - (?2 - i) * 30 - {h("i", 9)} % 30
FROM seq
"""
COMMENTS_SQL = f"""
WITH RECURSIVE seq(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM seq WHERE i < ?2)
INSERT INTO comments(id, task_id, author, body, created)
SELECT i, {h("i", 11)} % ?3 + 1, 'user' || ({h("i", 12)} % {USERS}), 'lgtm', {NOW} - (?2 - i) * 15
FROM seq
"""
TAGS_SQL = f"""
WITH RECURSIVE seq(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM seq WHERE i < ?2)
INSERT INTO task_tags(task_id, tag_id)
SELECT i, {h("i", 13)} % {TAGS} + 1 FROM seq
UNION ALL
SELECT i, {h("i", 14)} % {TAGS} + 1 FROM seq WHERE {h("i", 15)} % 2 = 0
"""

# (name, sql, params): what a task manager asks all day.
QUERIES: list[tuple[str, str, tuple[Any, ...]]] = [
    ("my open tasks", "SELECT id, title, due FROM tasks WHERE assignee = ? AND status = 'open' "
     "ORDER BY due LIMIT 50", ("user42",)),
    ("count by status+assignee", "SELECT count(*) FROM tasks WHERE status = ? AND assignee = ?",
     ("in_progress", "user7")),
    ("overdue", "SELECT id, title, assignee FROM tasks WHERE due < ? AND status = 'open' "
     "ORDER BY due LIMIT 100", (NOW - 360 * 86400,)),
    ("by tag", "SELECT t.id, t.title FROM tasks t JOIN task_tags tt ON tt.task_id = t.id "
     "JOIN tags g ON g.id = tt.tag_id WHERE g.name = ? ORDER BY t.updated DESC LIMIT 100",
     ("tag17",)),
    ("title prefix search", "SELECT id, title FROM tasks WHERE title LIKE 'Fix item 123%' "
     "LIMIT 20", ()),
    ("counts per project", "SELECT status, count(*) FROM tasks WHERE project_id = ? "
     "GROUP BY status", (17,)),
    ("recent activity", "SELECT id, task_id, author, created FROM comments "
     "ORDER BY created DESC LIMIT 20", ()),
    ("project activity", "SELECT c.id, c.author, c.created FROM comments c "
     "JOIN tasks t ON t.id = c.task_id WHERE t.project_id = ? ORDER BY c.created DESC LIMIT 20",
     (23,)),
    ("task comments", "SELECT id, author, body, created FROM comments WHERE task_id = ? "
     "ORDER BY created", (4242,)),
    ("project board", "SELECT id, title, status, priority FROM tasks WHERE project_id = ? "
     "AND status <> 'done' ORDER BY priority DESC LIMIT 100", (5,)),
    ("my urgent tasks", "SELECT id, title FROM tasks WHERE assignee = ? AND priority = 4 "
     "AND status <> 'done'", ("user13",)),
    ("unassigned open", "SELECT id, title FROM tasks WHERE assignee IS NULL AND status = 'open' "
     "AND project_id = ?", (9,)),
    ("tags of a task", "SELECT g.name FROM task_tags tt JOIN tags g ON g.id = tt.tag_id "
     "WHERE tt.task_id = ?", (777,)),
    ("recently updated", "SELECT id, title, updated FROM tasks WHERE updated > ? "
     "ORDER BY updated DESC LIMIT 50", (NOW - 3600,)),
    ("owner dashboard", "SELECT p.id, p.name, count(t.id) FROM projects p "
     "LEFT JOIN tasks t ON t.project_id = p.id AND t.status = 'open' WHERE p.owner = ? "
     "GROUP BY p.id", ("user3",)),
    ("user activity", "SELECT count(*) FROM comments WHERE author = ? AND created > ?",
     ("user99", NOW - 7 * 86400)),
    ("due this week", "SELECT id, title FROM tasks WHERE due BETWEEN ? AND ? "
     "AND status <> 'done' ORDER BY due LIMIT 100", (NOW, NOW + 7 * 86400)),
    ("task detail", "SELECT * FROM tasks WHERE id = ?", (31337,)),
]  # fmt: skip


def generate(conn: apsw.Connection, tasks: int, chunk: int = 20_000) -> None:
    """Create the schema and fill it (primary keys only, no secondary index)."""
    conn.execute(SCHEMA)
    projects = max(tasks // 100, 10)
    comments = tasks * 2
    with conn:
        conn.executemany(
            "INSERT INTO projects VALUES (?, ?, ?, ?)",
            [(i, f"project {i}", f"user{i % USERS}", NOW - i) for i in range(1, projects + 1)],
        )
        conn.executemany(
            "INSERT INTO tags VALUES (?, ?)", [(i, f"tag{i}") for i in range(1, TAGS + 1)]
        )
    total = tasks * 2 + comments
    with tqdm(total=total, unit="rows", desc="generating", file=sys.stderr) as bar:
        for sql, count, modulus in (
            (TASKS_SQL, tasks, projects),
            (COMMENTS_SQL, comments, tasks),
            (TAGS_SQL, tasks, 0),
        ):
            for start in range(1, count + 1, chunk):
                end = min(start + chunk - 1, count)
                with conn:  # one transaction per chunk: executemany-speed inserts
                    if modulus:
                        conn.execute(sql, (start, end, modulus))
                    else:
                        conn.execute(sql, (start, end))
                bar.update(end - start + 1)


def recording_cost(db: atlas.Storage, calls: int = 50_000, batches: int = 7) -> float:
    """Seconds one ``db.workload.record()`` call costs (the fastest of ``batches``)."""
    sql = "SELECT * FROM tasks WHERE status = ? AND assignee = ?"
    record, best = db.workload.record, float("inf")
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(calls):
            record(sql, 0.001, 1)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def time_query(db: atlas.Storage, sql: str, params: tuple[Any, ...], runs: int) -> float:
    """Return the median seconds of ``runs`` runs of one query through ``db.query``."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        db.query(sql, params)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


@dataclass
class Result:
    name: str
    before: float
    after: float

    @property
    def ratio(self) -> float:
        return self.before / self.after if self.after > 0 else float("inf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tasks", type=positive(int), default=1_000_000, help="number of tasks (default 1M)"
    )
    parser.add_argument("--quick", action="store_true", help="100k tasks")
    parser.add_argument(
        "--runs", type=positive(int), default=5, help="runs per query; the median counts"
    )
    parser.add_argument(
        "--top", type=positive(int), default=len(QUERIES), help="statements advise() considers"
    )
    parser.add_argument(
        "--db", type=Path, help="database file to create (default: a temporary file)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="let --db replace an existing database (and its -wal, -shm and -journal files)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    tasks, runs = (100_000, args.runs) if args.quick else (args.tasks, args.runs)

    if args.db is not None:
        existing = [f for f in database_files(args.db) if f.exists() or f.is_symlink()]
        listed = ", ".join(str(f) for f in existing)
        if any(f.is_dir() for f in existing):
            parser.error(f"--db {args.db}: not a database file path ({listed} is a directory)")
        if not args.db.absolute().parent.is_dir():
            parser.error(
                f"--db {args.db}: the directory {args.db.absolute().parent} does not exist; "
                "create it first or choose another path"
            )
        if existing and not args.overwrite:
            parser.error(
                f"--db {args.db}: would replace an existing database ({listed}); "
                "pass --overwrite to replace it, or choose another path"
            )
        for file in existing:
            file.unlink()

    folder = tempfile.TemporaryDirectory(prefix="atlas-bench-")
    try:
        return run(args, folder=Path(folder.name), tasks=tasks, runs=runs)
    finally:
        folder.cleanup()


def database_files(path: Path) -> list[Path]:
    """``path`` and the files SQLite keeps beside it."""
    return [path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))]


def run(args: argparse.Namespace, *, folder: Path, tasks: int, runs: int) -> int:
    """Generate, time, index, time again and report (``main`` checked the arguments)."""
    path = args.db or folder / "bench.db"
    conn = apsw.Connection(str(path))
    conn.execute(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -262144"
    )

    started = time.perf_counter()
    generate(conn, tasks)
    generated = time.perf_counter() - started

    conn.close()
    db = atlas.open(path, cache=False, synchronous="NORMAL", cache_size_kib=262_144)
    before = {
        name: time_query(db, sql, p, runs)
        for name, sql, p in tqdm(QUERIES, desc="timing, no indexes", file=sys.stderr)
    }

    started = time.perf_counter()
    advice = db.optimizer.advise(top=args.top)
    advised = time.perf_counter() - started
    started = time.perf_counter()
    for suggestion in tqdm(advice, desc="creating indexes", unit="index", file=sys.stderr):
        db.optimizer.apply(suggestion)
    applied = time.perf_counter() - started

    after = {
        name: time_query(db, sql, p, runs)
        for name, sql, p in tqdm(QUERIES, desc="timing, indexed", file=sys.stderr)
    }
    recording = recording_cost(db)
    db.close()
    results = [Result(name, before[name], after[name]) for name, _s, _p in QUERIES]
    report(
        results,
        advice,
        tasks=tasks,
        runs=runs,
        generated=generated,
        advised=advised,
        applied=applied,
        recording=recording,
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "tasks": tasks,
                    "runs": runs,
                    "sqlite": apsw.sqlite_lib_version(),
                    "queries": [
                        {
                            "name": r.name,
                            "before_ms": r.before * 1e3,
                            "after_ms": r.after * 1e3,
                            "ratio": r.ratio,
                        }
                        for r in results
                    ],
                    "indexes": [s.create_sql for s in advice],
                    "total_before_ms": sum(r.before for r in results) * 1e3,
                    "total_after_ms": sum(r.after for r in results) * 1e3,
                },
                indent=2,
            )
        )
    return 0


def report(
    results: list[Result],
    advice: list[IndexSuggestion],
    *,
    tasks: int,
    runs: int,
    generated: float,
    advised: float,
    applied: float,
    recording: float,
) -> None:
    print(f"\n{tasks:,} tasks, SQLite {apsw.sqlite_lib_version()}, median of {runs} runs")
    print(
        f"data generated in {generated:.1f}s; advise() took {advised:.2f}s; "
        f"{len(advice)} indexes created in {applied:.1f}s; "
        f"recording a read in the workload costs {recording * 1e9:.0f} ns\n"
    )
    print(f"{'query':28} {'before ms':>11} {'after ms':>10} {'speed-up':>9}")
    for r in results:
        print(f"{r.name:28} {r.before * 1e3:11.2f} {r.after * 1e3:10.3f} {r.ratio:8.1f}x")
    total_before = sum(r.before for r in results)
    total_after = sum(r.after for r in results)
    print(
        f"{'TOTAL':28} {total_before * 1e3:11.2f} {total_after * 1e3:10.3f} "
        f"{total_before / total_after:8.1f}x"
    )
    print("\nindexes applied (best first):")
    for s in advice:
        print(f"  {s.create_sql}   -- {len(s.queries)} statement(s)")


if __name__ == "__main__":
    raise SystemExit(main())

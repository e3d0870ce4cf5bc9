"""The task-manager workload: ending a run early."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors.workload import (
    COLUMNS,
    SCHEMA,
    LatencySummary,
    _count_present,
    _inject_crash,
    create_schema,
    run_workload,
    schema_conflicts,
)
from tests.helpers import wait_until


def test_setting_stop_ends_the_run_early_with_a_report_of_it(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    db = open_storage()
    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)
    started = time.monotonic()
    timer.start()
    report = run_workload(db, threads=2, seconds=60.0, stop=stop)
    timer.join()
    assert time.monotonic() - started < 10
    assert report.interrupted and report.seconds < 10
    assert report.writes.count > 0 and report.lost_writes == 0


def test_a_run_that_lasts_its_time_is_not_interrupted(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    report = run_workload(open_storage(), threads=2, seconds=0.3, stop=threading.Event())
    assert not report.interrupted and report.seconds >= 0.3


def test_the_columns_it_checks_are_those_of_its_schema() -> None:
    connection = apsw.Connection(":memory:")
    assert schema_conflicts(connection) == []  # no tables: nothing in the way
    connection.execute(SCHEMA)
    for table, columns in COLUMNS.items():
        names = tuple(row[1] for row in connection.execute(f"PRAGMA table_info({table})"))
        assert names == columns
    assert schema_conflicts(connection) == []


def test_a_table_of_the_same_name_with_other_columns_is_a_conflict() -> None:
    connection = apsw.Connection(":memory:")
    connection.execute("CREATE TABLE projects(id INTEGER PRIMARY KEY, title TEXT)")
    assert schema_conflicts(connection) == ["projects: no column name"]


def test_chaos_crashes_the_writer_and_each_reader_in_turn(tmp_path: Path) -> None:
    """``--chaos`` promises "the writer or a reader": never the cache, every reader."""
    with atlas.open(tmp_path / "chaos.db", readers=2, max_readers=2) as db:
        crashed: list[str] = []
        for kills in range(4):
            before = {c.role: c.restarts for c in db.supervisor.status().children}
            assert _inject_crash(db, kills) == 1

            def restarted(before: dict[str, int] = before) -> list[str]:
                children = db.supervisor.status().children
                return [
                    c.role
                    for c in children
                    if c.restarts > before.get(c.role, 0) and c.state == "running"
                ]

            assert wait_until(restarted)
            crashed += restarted()
        assert crashed == ["writer", "reader-0", "writer", "reader-1"]


def test_latency_percentiles_are_nearest_rank() -> None:
    """The q-th percentile is the smallest value with at least q of them at or below it:
    of 1..100 ms, p99 is 99 ms (it was the maximum, one rank up), of [1, 100] p50 is 1."""
    summary = LatencySummary.of([ms / 1000 for ms in range(100, 0, -1)])
    picked = (summary.p50, summary.p95, summary.p99, summary.max)
    assert picked == pytest.approx((50.0, 95.0, 99.0, 100.0))
    assert LatencySummary.of([0.1, 0.001]).p50 == pytest.approx(1.0)
    assert LatencySummary.of([0.007]).p99 == pytest.approx(7.0)


def test_a_lost_insert_is_counted_even_when_its_id_was_taken_again(tmp_path: Path) -> None:
    """A row lost from the file frees its id, which the next insert takes: checked by id
    alone, the lost write was found (and an id acknowledged twice counted twice)."""
    with atlas.open(tmp_path / "a.db", cache=False) as db:
        create_schema(db)
        insert = "INSERT INTO tasks(project_id, title, updated_at) VALUES (1, ?, 0)"
        first = db.write(insert, ["task 0.0"]).lastrowid
        second = db.write(insert, ["task 0.1"]).lastrowid
        assert first is not None and second is not None
        db.write("DELETE FROM tasks WHERE id = ?", [second])  # the acknowledged row is lost
        reused = db.write(insert, ["task 1.0"]).lastrowid
        assert reused == second  # (INTEGER PRIMARY KEY: the largest id + 1)
        created = [(first, "task 0.0"), (second, "task 0.1"), (reused, "task 1.0")]
        assert len(created) - _count_present(db, created) == 1


def test_a_run_whose_threads_cannot_all_start_fails_typed_and_stops_the_others(
    tmp_path: Path,
) -> None:
    """Threads were started before the run's try: one that could not start raised a raw
    RuntimeError, and the started ones looped for ever (the process never exited)."""
    script = textwrap.dedent(
        """
        import resource, sys
        import atlas_actors as atlas
        from atlas_actors.errors import AtlasError
        from atlas_actors.workload import run_workload
        db = atlas.open(sys.argv[1], cache=False)
        status = open("/proc/self/status").read().split("VmSize:")[1]
        used = int(status.split()[0]) * 1024
        # Room for a few threads' stacks (8 MiB each), not for 1024 of them.
        resource.setrlimit(resource.RLIMIT_AS, (used + 256 * 2**20, resource.RLIM_INFINITY))
        try:
            run_workload(db, threads=1024, seconds=60)
        except AtlasError as error:
            print(error)
        db.close()
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "a.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "of 1024 worker threads" in run.stdout and "run with fewer threads" in run.stdout


@pytest.mark.parametrize(
    ("schema", "conflict"),
    [
        (
            "CREATE TABLE projects(id INTEGER PRIMARY KEY, name TEXT, owner TEXT NOT NULL)",
            "projects: NOT NULL constraint failed: projects.owner",
        ),
        (
            f"{SCHEMA}; CREATE TRIGGER closed BEFORE INSERT ON comments "
            "BEGIN SELECT RAISE(ABORT, 'comments are closed'); END",
            "comments: comments are closed",
        ),
        (
            "CREATE TABLE tasks(id TEXT PRIMARY KEY, project_id, title, status, assignee, "
            "priority, updated_at)",
            "tasks: its id column is not the rowid (INTEGER PRIMARY KEY)",
        ),
    ],
)
def test_a_table_with_every_column_that_the_writes_fail_on_is_a_conflict(
    tmp_path: Path, schema: str, conflict: str
) -> None:
    """Tried on an empty copy of the schema in memory: the database is only read."""
    path = tmp_path / "app.db"
    connection = apsw.Connection(str(path))
    connection.execute(schema)
    connection.close()
    before = path.read_bytes()
    reader = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert schema_conflicts(reader) == [conflict]
    finally:
        reader.close()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]


def test_the_report_counts_the_restarts_of_crashes_injected_at_the_end_of_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``supervisor.kill()`` only queues the crash: the actor takes it when done with
    what it is doing, and the restart is counted then. The report read the count at
    once, so a crash injected in the run's last tick was missing from it: chaos.py
    FAILed and ``demo --chaos`` printed fewer restarts than crashes. Here every crash is
    taken 0.3 s after its kill, as a busy actor would take it."""
    with atlas.open(tmp_path / "chaos.db", restart_max=1000) as db:
        kill, timers = db.supervisor.kill, list[threading.Timer]()

        def queued_kill(role: str, how: Any = "crash") -> int:
            timers.append(threading.Timer(0.3, kill, (role, how)))
            timers[-1].start()
            return 1

        monkeypatch.setattr(db.supervisor, "kill", queued_kill)
        report = run_workload(db, threads=1, seconds=0.2, kill_every=0.1)
        for timer in timers:
            timer.join()
    assert report.kills >= 1 and report.restarts == report.kills, report

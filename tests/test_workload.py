"""The task-manager workload: ending a run early."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import apsw

import atlas_actors as atlas
from atlas_actors.workload import COLUMNS, SCHEMA, run_workload, schema_conflicts


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

"""The task-manager workload: ending a run early."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import atlas_actors as atlas
from atlas_actors.workload import run_workload


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

"""Metrics: failing gauges are logged once, reads create no counters; a storage's gauges."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import atlas_actors as atlas
from atlas_actors.connection import SAMPLE_EVERY
from atlas_actors.telemetry.metrics import Metrics

LOGGER = "atlas_actors.telemetry.metrics"


def test_a_failing_gauge_is_reported_unavailable_and_logged_once_until_it_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    metrics, broken = Metrics(), [True]

    def read() -> dict[str, float]:
        if broken[0]:
            raise RuntimeError("pool is gone")
        return {"idle": 2}

    metrics.gauge("pool", read)
    metrics.gauge("writer", lambda: {"queued": 0})

    def warnings() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]

    for _ in range(3):
        assert metrics.snapshot() == {"pool.unavailable": 1, "writer.queued": 0}
    assert len(warnings()) == 1
    record = warnings()[0]
    assert "'pool'" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)

    broken[0] = False
    assert metrics.snapshot() == {"pool.idle": 2, "writer.queued": 0}
    assert len(warnings()) == 1

    broken[0] = True  # failing again after a success is news again
    metrics.snapshot()
    metrics.snapshot()
    assert len(warnings()) == 2


def test_reading_a_missing_counter_returns_zero_without_creating_it() -> None:
    metrics = Metrics()
    assert metrics.get("never_bumped") == 0
    assert "never_bumped" not in metrics.snapshot()
    metrics.add("errors")
    metrics.add("errors", 2)
    assert metrics.get("errors") == 3
    assert metrics.snapshot() == {"errors": 3}


def test_a_storage_reports_wal_latency_and_cache_gauges(tmp_path: Path) -> None:
    with atlas.open(tmp_path / "m.db") as db:
        db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        for i in range(SAMPLE_EVERY * 2):  # (statements are timed one run in a few)
            db.write("INSERT INTO t(v) VALUES (?)", [str(i)])
            db.query("SELECT v FROM t WHERE id = ?", [1])
        before = db.metrics.snapshot()
        db.query("SELECT v FROM t WHERE id = ?", [1])
        after = db.metrics.snapshot()
    assert before["wal.frames"] > 0 and before["wal.bytes"] > 0
    assert before["wal.checkpoints"] >= 0
    assert before["latency.writer_seconds"] > 0 and before["latency.readers_seconds"] > 0
    assert after["cache.hits"] == before["cache.hits"] + 1  # the repeated read was cached
    assert before["cache.size"] >= 1 and before["cache.memory_usage"] > 0
    assert "restarts" not in before  # none yet (counted by the supervision tests)


def test_a_storage_without_a_cache_reports_no_cache_gauge(tmp_path: Path) -> None:
    with atlas.open(tmp_path / "m.db", cache=False) as db:
        assert not any(name.startswith("cache.") for name in db.metrics.snapshot())

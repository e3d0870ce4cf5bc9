"""Metrics on their own: failing gauges are logged once, reads create no counters."""

from __future__ import annotations

import logging

import pytest

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

"""db.alerts on real storages: the ticker evaluates, events and logs announce, bad rules
are refused, a failing rule stops nothing."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import threading
from collections.abc import Callable

import pytest

import atlas_actors as atlas
from atlas_actors import errors
from atlas_actors.connection import SAMPLE_EVERY
from atlas_actors.events import LifecycleEvent
from atlas_actors.telemetry.metrics import CATALOGUE
from tests.helpers import wait_until

LOGGER = "atlas_actors.alerts"

Open = Callable[..., atlas.Storage]


class Transitions:
    """Every ``alert`` event of a storage, to wait on one by rule and state."""

    def __init__(self, db: atlas.Storage) -> None:
        self.events: queue.Queue[LifecycleEvent] = queue.Queue()
        self.seen: list[LifecycleEvent] = []
        db.events.on("alert", self.events.put)

    def wait(self, alert: str, state: str, timeout: float = 5.0) -> LifecycleEvent:
        for event in self.seen:
            if (event.detail["alert"], event.detail["state"]) == (alert, state):
                return event
        while True:
            event = self.events.get(timeout=timeout)  # queue.Empty: never came
            self.seen.append(event)
            if (event.detail["alert"], event.detail["state"]) == (alert, state):
                return event


def always(name: str = "always", severity: str = "warning") -> atlas.AlertRule:
    return atlas.AlertRule(
        name=name,
        severity=severity,  # type: ignore[arg-type]
        metrics=("pool.total",),
        comparison=">=",
        threshold=1,
        description="a storage with readers (a test rule)",
    )


def test_a_full_disk_fires_the_disk_full_alert_through_the_ticker_and_resolves(
    open_storage: Open, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    db = open_storage(max_page_count=60, disk_full_probe_interval=0.05, alert_interval=0.05)
    transitions = Transitions(db)
    db.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, data BLOB)")
    with pytest.raises(errors.DiskFullError):
        for i in range(1000):
            db.write("INSERT INTO blobs VALUES (?, zeroblob(2000))", [i])
    fired = transitions.wait("disk_full", "firing")
    assert fired.role == "alerts"
    assert fired.detail["severity"] == "critical" and fired.detail["value"] == 1
    assert "Free space" in fired.detail["description"]
    assert [a.name for a in db.alerts.firing()] == ["disk_full"]
    records = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]
    assert len(records) == 1
    assert records[0].atlas == {  # type: ignore[attr-defined]
        "alert": "disk_full",
        "severity": "critical",
        "state": "firing",
        "previous": "inactive",
        "value": 1.0,
        "threshold": 1,
        "metrics": ["storage.disk_full"],
        "db": "atlas.db",
    }
    # Space comes back (rows deleted; a probe finds out): the alert resolves.
    assert wait_until(lambda: _try(db, "DELETE FROM blobs WHERE id % 2 = 0"))
    transitions.wait("disk_full", "resolved")
    assert db.alerts.firing() == []


def test_a_restarted_actor_fires_actor_restarts(open_storage: Open) -> None:
    db = open_storage(alert_interval=0.05)
    transitions = Transitions(db)
    db.supervisor.kill("writer")
    event = transitions.wait("actor_restarts", "firing")
    assert event.detail["severity"] == "critical" and event.detail["value"] >= 1


def test_a_failed_storage_fires_storage_failed_although_the_ticker_stopped(
    open_storage: Open,
) -> None:
    db = open_storage(readers=1, restart_max=1, alert_interval=0)  # the tick never evaluates
    transitions = Transitions(db)
    db.supervisor.kill("reader-0")
    assert wait_until(lambda: db.supervisor.status().restarts == 1)
    db.supervisor.kill("writer")  # past restart_max: the storage fails
    transitions.wait("storage_failed", "firing")
    assert "storage_failed" in [a.name for a in db.alerts.firing()]


def test_a_failing_rule_is_logged_once_skipped_and_the_tick_goes_on(
    open_storage: Open, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    db = open_storage(alert_interval=0.02)
    transitions = Transitions(db)
    reads, evaluated = itertools.count(1), threading.Event()

    def broken() -> dict[str, float]:
        if next(reads) >= 5:
            evaluated.set()
        return {"value": "not a number"}  # type: ignore[dict-item]

    db.metrics.gauge("broken", broken)
    db.alerts.add_rule(
        atlas.AlertRule(
            name="broken_rule",
            severity="critical",
            metrics=("broken.value",),
            threshold=0,
            description="reads a gauge that returns text",
        )
    )
    db.alerts.add_rule(always())
    assert evaluated.wait(5)  # five evaluations by the ticker, each meeting the broken rule
    transitions.wait("always", "firing")
    failures = [r for r in caplog.records if r.name == LOGGER and "broken_rule" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].levelno == logging.WARNING and failures[0].exc_info is not None
    # The supervisor's other work goes on: a crashed reader is still noticed and restarted.
    db.supervisor.kill("reader-0")
    assert wait_until(lambda: db.supervisor.status().restarts == 1)


def test_check_evaluates_now_and_rules_can_be_added_and_removed(open_storage: Open) -> None:
    db = open_storage(alert_interval=0)
    defaults = [r.name for r in db.alerts.rules()]
    assert "disk_full" in defaults and "wal_growth" in defaults
    assert db.alerts.check() == []
    db.alerts.add_rule(always(severity="critical"))
    (alert,) = db.alerts.check()
    assert (alert.name, alert.severity, alert.state, alert.value) == (
        "always",
        "critical",
        "firing",
        db.pool.status().total,
    )
    assert db.alerts.firing() == [alert]
    removed = db.alerts.remove_rule("always")
    assert removed.name == "always" and db.alerts.firing() == []
    assert [r.name for r in db.alerts.rules()] == defaults


def test_bad_rules_are_refused_with_a_typed_error(open_storage: Open) -> None:
    db = open_storage(alert_interval=0)
    with pytest.raises(errors.ValidationError, match="an alert rule named 'disk_full' exists"):
        db.alerts.add_rule(always(name="disk_full"))
    with pytest.raises(errors.ValidationError, match="severity='urgent'"):
        always(severity="urgent")
    with pytest.raises(errors.ValidationError, match="threshold=nan"):
        atlas.AlertRule(
            name="x", severity="warning", metrics=("a",), threshold=float("nan"), description="d"
        )
    with pytest.raises(errors.ValidationError, match="no alert rule named 'nope'"):
        db.alerts.remove_rule("nope")


def test_a_handler_may_read_the_alerts_while_one_is_announced(open_storage: Open) -> None:
    db = open_storage(alert_interval=0)
    seen: list[list[str]] = []
    db.events.on("alert", lambda _: seen.append([a.name for a in db.alerts.firing()]))
    db.alerts.add_rule(always())
    db.alerts.check()
    assert seen == [["always"]]


def test_with_alert_interval_off_no_snapshot_is_taken_and_writes_take_none(
    open_storage: Open,
) -> None:
    db = open_storage(alert_interval=None)
    reads = itertools.count()
    read = threading.Event()

    def counted() -> dict[str, float]:
        next(reads)
        read.set()
        return {"value": 1}

    db.metrics.gauge("counted", counted)
    db.execute("CREATE TABLE t(x)")
    for i in range(50):
        db.write("INSERT INTO t VALUES (?)", [i])
    db.query("SELECT count(*) FROM t")
    assert not read.wait(0.3)  # six alert intervals' worth of ticks had they been on
    assert db.alerts.interval is None
    db.alerts.check()
    assert next(reads) == 1  # check(): one snapshot


def test_every_reported_metric_is_in_the_catalogue_and_every_gauge_is_reported(
    open_storage: Open,
) -> None:
    db = open_storage(alert_interval=0)
    db.execute("CREATE TABLE t(x)")
    with pytest.raises(errors.SQLError):
        db.write("INSERT INTO nowhere VALUES (1)")
    db.supervisor.kill("reader-0")
    assert wait_until(lambda: db.supervisor.status().restarts == 1)
    snapshot = db.metrics.snapshot()
    assert set(snapshot) <= set(CATALOGUE), set(snapshot) - set(CATALOGUE)
    always_there = {name for name, info in CATALOGUE.items() if not info.bumped}
    assert always_there <= set(snapshot), always_there - set(snapshot)


def _try(db: atlas.Storage, sql: str) -> bool:
    try:
        db.write(sql)
    except errors.DiskFullError:
        return False
    return True


@pytest.mark.parametrize(
    ("raw", "expected"), [("0.5", 0.5), ("0", 0.0), ("off", None), ("none", None)]
)
def test_alert_interval_is_read_from_the_environment(raw: str, expected: float | None) -> None:
    config = atlas.StorageConfig.from_env({"ATLAS_ALERT_INTERVAL": raw})
    assert config.alert_interval == expected


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), True])
def test_a_bad_alert_interval_is_refused(value: float) -> None:
    with pytest.raises(errors.ConfigError, match="alert_interval="):
        atlas.StorageConfig(alert_interval=value)
    assert atlas.StorageConfig().alert_interval == 10.0


_SLOW_READ = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) "
    "SELECT count(*) FROM c"
)


def test_slow_queries_weighs_every_read_and_forgets_old_ones(open_storage: Open) -> None:
    """A mean of per-connection means let one slow read on one reader outweigh
    thousands of fast reads on another, and kept the alert firing until a recycle."""
    db = open_storage(cache=False, readers=2, max_readers=2, alert_interval=0)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    db.write_many("INSERT INTO t(v) VALUES (?)", [[str(i)] for i in range(100)])
    rule = next(r for r in db.alerts.rules() if r.name == "slow_queries")
    # 0.2 ms: above the mean of one slow read among 5,000 fast ones (~0.05 ms), below the
    # mean once a dozen more slow ones come; the old mean of means was ~100 ms at once.
    db.alerts.add_rule(dataclasses.replace(rule, name="slow_now", for_=0.0, threshold=0.0002))
    db.alerts.check()  # the window's start

    def slow() -> None:
        db.query(_SLOW_READ)  # well over the threshold, alone on its reader

    def fast() -> None:
        for i in range(5000):
            db.query("SELECT v FROM t WHERE id = ?", [i % 100 + 1])

    threads = [threading.Thread(target=slow), threading.Thread(target=fast)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    snapshot = db.metrics.snapshot()
    # (sampled runs count those since the sample before: short by less than one gap)
    assert 5000 - SAMPLE_EVERY < snapshot["latency.reads"] <= 5001
    assert snapshot["latency.readers_seconds"] < 0.0002  # the mean over every read
    assert "slow_now" not in [alert.name for alert in db.alerts.check()]
    for i in range(12):  # now most reads of the window are slow (each text's first runs
        # are each timed; a statement's later runs count when a sample stands for them)
        db.query(_SLOW_READ.replace("2000000", str(2_000_000 + i)))
    assert "slow_now" in [alert.name for alert in db.alerts.check()]
    db.pool.resize(2)  # (recycling keeps the sums: they only grow)
    assert db.metrics.snapshot()["latency.reads"] >= snapshot["latency.reads"]


_BIG_WRITE = (
    "INSERT INTO t SELECT randomblob(1000) FROM "
    "(WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 5000) "
    "SELECT i FROM c)"
)


def test_wal_growth_fires_for_a_wal_checkpoints_cannot_finish_not_for_an_idle_one(
    open_storage: Open,
) -> None:
    """The rule read the file's size, which stays large after a checkpoint that copied
    everything until the next write starts the WAL over: it fired on idle storages."""
    db = open_storage(wal_size_limit=1 << 20, alert_interval=0, cache=False)
    db.execute("CREATE TABLE t(x)")
    rule = next(r for r in db.alerts.rules() if r.name == "wal_growth")
    db.alerts.add_rule(dataclasses.replace(rule, name="wal_growth_now", for_=0.0))
    db.write(_BIG_WRITE)  # ~5 MB of frames, all checkpointed after the commit
    assert wait_until(lambda: db.metrics.snapshot()["wal.checkpoints"] >= 1)
    snapshot = db.metrics.snapshot()
    assert snapshot["wal.bytes"] > 1 << 20  # the file is still large, yet
    assert snapshot["wal.pending_bytes"] == 0  # nothing waits for a checkpoint
    assert "wal_growth_now" not in [alert.name for alert in db.alerts.check()]
    with db.transaction(isolation="repeatable_read") as tx:
        tx.query("SELECT count(*) FROM t")  # a snapshot the checkpoint cannot pass
        db.write(_BIG_WRITE)
        db.write(_BIG_WRITE)
        assert db.metrics.snapshot()["wal.pending_bytes"] > 1 << 20
        assert "wal_growth_now" in [alert.name for alert in db.alerts.check()]

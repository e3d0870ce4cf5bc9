"""Read faults: a fault every reader shares is one fault, reopened with backoff; a lasting
one fails the storage.

The faults are real: an apsw VFS (:class:`~atlas_actors.faults.FaultyVFS`) fails every
read of the WAL, which a reader must read to see the last committed row, so a health
check, a read and the open of a new connection all fail while it lasts.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors import StorageConfig
from atlas_actors.errors import AtlasError, ConfigError, OperationTimeout, StorageUnavailable
from atlas_actors.faults import FaultyVFS
from tests.helpers import GatedOpenVFS, wait_until


@pytest.fixture
def vfs() -> Iterator[FaultyVFS]:
    """A VFS that fails reads of the WAL on demand."""
    faulty = FaultyVFS()
    faulty.only = "atlas.db-wal"
    yield faulty
    faulty.unregister()


def _open(
    open_storage: Callable[..., atlas.Storage], vfs: FaultyVFS, **options: object
) -> atlas.Storage:
    """A storage on ``vfs`` whose readers must read the WAL to see its one row."""
    options = {
        "readers": 8,
        "max_readers": 8,
        "cache": False,
        "health_check_interval": 0.05,
    } | options
    db = open_storage(vfs=vfs.name, **options)
    db.execute("CREATE TABLE t(x)")
    db.write("INSERT INTO t VALUES (1)")
    assert db.query("SELECT x FROM t") == [(1,)]
    return db


def _readers_down(db: atlas.Storage) -> bool:
    return db.pool.status().total == 0


def test_a_short_read_fault_every_reader_sees_does_not_fail_the_storage(
    open_storage: Callable[..., atlas.Storage], vfs: FaultyVFS
) -> None:
    # 8 readers fail their health checks on the same tick: one fault, not 8 restarts
    # (restart_max=5 was exceeded at once before).
    db = _open(open_storage, vfs)
    escalated = threading.Event()
    db.events.on("escalate", lambda e: escalated.set())
    failed = threading.Event()
    db.events.on("health_check_failed", lambda e: failed.set())
    vfs.fail_reads = apsw.IOError
    assert failed.wait(5)
    time.sleep(0.2)
    vfs.fail_reads = None
    assert wait_until(lambda: db.pool.status().total == 8, 10)
    assert not escalated.is_set()
    assert db.query("SELECT x FROM t") == [(1,)]
    assert db.health().status == "ok"
    assert db.supervisor.status().restarts == 0  # a failed check is no crash


def test_health_metrics_and_alerts_tell_of_the_fault_while_it_lasts(
    open_storage: Callable[..., atlas.Storage], vfs: FaultyVFS
) -> None:
    # No restart is counted for a connection fault, so actor_restarts stays quiet: the
    # health report, pool.readers_down and its own alert rule must tell instead.
    db = _open(open_storage, vfs, readers=2, max_readers=2)
    vfs.fail_reads = apsw.IOError
    db.write("INSERT INTO t VALUES (2)")  # (the reader that read the first has it cached)
    assert wait_until(lambda: _readers_down(db), 5)
    health = db.health()
    assert health.status == "degraded"
    assert health.failure is not None and "reconnecting" in health.failure
    assert db.metrics.snapshot()["pool.readers_down"] >= 1
    rule = next(r for r in db.alerts.rules() if r.name == "readers_down")
    assert rule.compute([(time.monotonic(), db.metrics.snapshot())]) == 2
    vfs.fail_reads = None
    assert wait_until(lambda: db.pool.status().total == 2, 10)
    assert db.health().status == "ok"
    assert db.metrics.snapshot()["pool.readers_down"] == 0


def test_reads_during_a_shared_fault_fail_typed_or_time_out_and_resume_after_it(
    open_storage: Callable[..., atlas.Storage], vfs: FaultyVFS
) -> None:
    db = _open(open_storage, vfs)
    stop = threading.Event()
    outcomes: list[object] = []

    def read() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                outcomes.append(db.query("SELECT x FROM t", timeout=0.3))
            except AtlasError as error:
                outcomes.append(error)
            assert time.monotonic() - started < 2.0  # bounded by the deadline

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    vfs.fail_reads = apsw.IOError
    time.sleep(0.3)
    vfs.fail_reads = None
    assert wait_until(lambda: db.pool.status().total == 8, 10)
    stop.set()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert all(isinstance(e, AtlasError) for e in errors)
    assert not isinstance(outcomes[-1], BaseException)
    assert db.query("SELECT x FROM t") == [(1,)]
    assert db.health().status == "ok"


def test_a_read_waiting_for_a_connection_during_the_fault_keeps_its_deadline(
    open_storage: Callable[..., atlas.Storage], vfs: FaultyVFS
) -> None:
    db = _open(open_storage, vfs, readers=2, max_readers=2)
    vfs.fail_reads = apsw.IOError
    db.write("INSERT INTO t VALUES (2)")  # (the reader that read the first has it cached)
    assert wait_until(lambda: _readers_down(db), 5)
    started = time.monotonic()
    with pytest.raises(OperationTimeout, match="reconnecting") as caught:
        db.query("SELECT x FROM t", timeout=0.2)
    assert time.monotonic() - started < 1.5
    assert caught.value.applied is False
    assert "injected read failure" in str(caught.value)
    vfs.fail_reads = None
    assert wait_until(lambda: db.pool.status().total == 2, 10)
    assert db.query("SELECT x FROM t") == [(1,), (2,)]


def test_reopening_backs_off_exponentially_while_the_fault_lasts(
    open_storage: Callable[..., atlas.Storage], vfs: FaultyVFS
) -> None:
    db = _open(
        open_storage,
        vfs,
        reader_reconnect_backoff_initial=0.05,
        reader_reconnect_backoff_max=1.0,
        restart_backoff_jitter=0.0,
    )
    attempts: list[float] = []
    db.events.on(
        "health_check_failed",
        lambda e: attempts.append(time.monotonic()) if e.detail.get("reopening") else None,
    )
    vfs.fail_reads = apsw.IOError
    time.sleep(1.3)
    vfs.fail_reads = None
    assert wait_until(lambda: db.pool.status().total == 8, 10)
    # One reader tries at a time, 0.1, 0.2, 0.4 s apart after the first: a handful of
    # tries in 1.3 s, not one per reader per tick. (Lower bounds on the gaps: a loaded
    # machine only makes them longer.)
    assert 2 <= len(attempts) <= 6, attempts
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert all(gap >= 0.05 * 2 ** (k + 1) * 0.95 for k, gap in enumerate(gaps)), gaps
    assert db.query("SELECT x FROM t") == [(1,)]


def test_a_lasting_read_fault_fails_the_storage_with_the_readers_error(
    open_storage: Callable[..., atlas.Storage], vfs: FaultyVFS
) -> None:
    db = _open(open_storage, vfs, reader_fault_timeout=0.5)
    escalated = threading.Event()
    db.events.on("escalate", lambda e: escalated.set())
    vfs.fail_reads = apsw.IOError
    started = time.monotonic()
    assert escalated.wait(5)
    assert time.monotonic() - started >= 0.5
    with pytest.raises(StorageUnavailable, match="could not reconnect") as caught:
        db.query("SELECT x FROM t")
    assert "injected read failure" in str(caught.value)
    health = db.health()
    assert health.status == "failed" and "reader_fault_timeout" in (health.failure or "")
    vfs.fail_reads = None


def test_a_recycle_that_cannot_reopen_during_a_fault_waits_for_it_instead_of_crashing(
    open_storage: Callable[..., atlas.Storage], vfs: FaultyVFS
) -> None:
    db = _open(
        open_storage,
        vfs,
        readers=4,
        max_readers=4,
        health_check_interval=0,
        recycle_after_seconds=0.2,
    )
    vfs.fail_reads = apsw.IOError
    assert wait_until(lambda: _readers_down(db), 5)
    time.sleep(0.2)
    vfs.fail_reads = None
    assert wait_until(lambda: db.pool.status().total == 4, 10)
    assert db.supervisor.status().restarts == 0
    assert db.query("SELECT x FROM t") == [(1,)]


def test_reader_crash_storms_still_escalate(open_storage: Callable[..., atlas.Storage]) -> None:
    # Crashes (bugs) keep the restart intensity: only connection faults are the pool's.
    db = open_storage(readers=2, restart_max=2, restart_window=30)
    escalated = threading.Event()
    db.events.on("escalate", lambda e: escalated.set())
    for _ in range(3):
        restarted = threading.Event()
        db.events.on("restart", lambda e, done=restarted: done.set())
        db.supervisor.kill("reader-0")
        if not restarted.wait(2):
            break
    assert escalated.wait(5)
    with pytest.raises(StorageUnavailable, match="restart intensity"):
        db.query("SELECT 1")


def test_a_reader_restarted_during_a_fault_waits_for_it_instead_of_crash_looping(
    open_storage: Callable[..., atlas.Storage], vfs: FaultyVFS
) -> None:
    # Its new incarnation cannot open a connection while the fault lasts: that is the
    # fault again, not another crash (each failed start was a restart, 5 ms apart).
    db = _open(open_storage, vfs, readers=2, max_readers=2, health_check_interval=0)
    vfs.fail_reads = apsw.IOError
    db.write("INSERT INTO t VALUES (2)")  # (a reader that read the first has it cached)
    restarted = threading.Event()
    db.events.on("restart", lambda e: restarted.set())
    db.supervisor.kill("reader-0")
    assert restarted.wait(5)
    assert wait_until(lambda: db.pool.fault() is not None)
    time.sleep(0.3)
    assert db.supervisor.status().restarts == 1 and db.health().status != "failed"
    vfs.fail_reads = None
    assert wait_until(lambda: db.pool.fault() is None and db.pool.status().total == 2, 10)
    assert db.query("SELECT x FROM t") == [(1,), (2,)]


def test_shrinking_the_pool_during_a_fault_retires_readers_without_a_connection(
    open_storage: Callable[..., atlas.Storage], vfs: FaultyVFS
) -> None:
    db = _open(open_storage, vfs, readers=4, max_readers=4)
    vfs.fail_reads = apsw.IOError
    db.write("INSERT INTO t VALUES (2)")
    assert wait_until(lambda: _readers_down(db), 5)
    db.pool.resize(1)

    def readers() -> int:
        return sum(c.role.startswith("reader") for c in db.supervisor.status().children)

    assert wait_until(lambda: readers() == 1)
    vfs.fail_reads = None
    assert wait_until(lambda: db.pool.status().total == 1, 10)
    assert db.query("SELECT x FROM t") == [(1,), (2,)]
    assert readers() == 1 and db.supervisor.status().restarts == 0


@pytest.fixture
def gated_vfs() -> Iterator[GatedOpenVFS]:
    """A :class:`GatedOpenVFS` that fails reads of the WAL on demand."""
    vfs = GatedOpenVFS()
    vfs.only = "atlas.db-wal"
    yield vfs
    vfs.gate.set()
    vfs.unregister()


def _reader_roles(db: atlas.Storage) -> list[str]:
    return [c.role for c in db.supervisor.status().children if c.role.startswith("reader")]


def test_a_reader_retired_while_it_reopens_is_not_counted_by_the_pool_any_more(
    open_storage: Callable[..., atlas.Storage], gated_vfs: GatedOpenVFS
) -> None:
    # resize() retires the reader whose (slow) reopen is under way: once its open
    # succeeds it must not join the pool again, or the pool counts a reader the
    # supervisor no longer has, and a later resize(2) never starts the second one.
    db = _open(open_storage, gated_vfs, readers=2, max_readers=2, reader_idle_timeout=600)
    gated_vfs.fail_reads = apsw.IOError
    db.write("INSERT INTO t VALUES (2)")  # (the reader that read the first has it cached)
    assert wait_until(lambda: _readers_down(db), 5)
    gated_vfs.gate.clear()  # the next try to reopen waits in its open ...
    assert gated_vfs.waiting.wait(10)
    gated_vfs.fail_reads = None  # ... and then succeeds
    db.pool.resize(1)  # retires the reader down longest: the one reopening
    assert wait_until(lambda: len(_reader_roles(db)) == 1)
    gated_vfs.gate.set()
    assert wait_until(lambda: db.pool.fault() is None and db.pool.status().total == 1, 10)
    db.pool.resize(2)
    assert wait_until(lambda: len(_reader_roles(db)) == 2 and db.pool.status().total == 2, 10)
    assert db.query("SELECT x FROM t") == [(1,), (2,)]


def test_a_reader_retired_while_it_recycles_its_connection_does_not_lend_the_new_one(
    open_storage: Callable[..., atlas.Storage], gated_vfs: GatedOpenVFS
) -> None:
    # A reader in the middle of a recycle has no connection for resize() to mark
    # unusable: once its new one is open it must see it is retiring, or that connection
    # joins the pool and the reader is never retired.
    db = _open(
        open_storage,
        gated_vfs,
        readers=2,
        max_readers=2,
        health_check_interval=0,
        recycle_after_queries=50,
        reader_idle_timeout=600,
    )
    leases = [db.pool.acquire() for _ in range(2)]
    for lease in leases:
        for _ in range(50):
            lease.query("SELECT 1")  # due for a recycle when released
    gated_vfs.gate.clear()
    for lease in leases:
        lease.release()
    assert wait_until(lambda: gated_vfs.opens_waiting == 2)  # both reopening
    db.pool.resize(1)  # neither has a connection: the first is marked retiring
    gated_vfs.gate.set()
    assert wait_until(lambda: len(_reader_roles(db)) == 1 and db.pool.status().total == 1)
    assert db.query("SELECT x FROM t") == [(1,)]


def test_a_reader_marked_retiring_after_it_lost_its_connection_is_retired(
    open_storage: Callable[..., atlas.Storage], vfs: FaultyVFS
) -> None:
    # A reader that loses its connection while resize() is under way (after it looked
    # for readers without a connection) is marked retiring like a busy one; it has no
    # connection to give back, so the pool must retire it itself, or it stays down for
    # good and its fault, never closed, fails the storage after reader_fault_timeout.
    db = _open(
        open_storage,
        vfs,
        readers=3,
        max_readers=3,
        health_check_interval=0,
        recycle_after_queries=50,
        reader_idle_timeout=600,
    )
    first, _, last = list(db.pool._readers)  # the order the busy ones are picked in
    leases = {}
    for _ in range(3):
        lease = db.pool.acquire()
        leases[lease.id.partition("#")[0]] = lease
    losing, kept = leases.pop(first), leases.pop(last)
    retired_first = next(iter(leases))
    for _ in range(50):
        losing.query("SELECT 1")  # due for a recycle when released
    escalated = threading.Event()
    db.events.on("escalate", lambda e: escalated.set())
    hooked = threading.Event()

    def lose_a_connection(event: Any) -> None:
        # Runs in resize()'s thread, between its passes over the readers: the reader
        # `first` now cannot reopen its connection (a fault) and waits without one.
        if event.role != retired_first or hooked.is_set():
            return
        hooked.set()
        vfs.fail_reads = apsw.IOError
        losing.release()
        assert wait_until(lambda: (f := db.pool.fault()) is not None and f.readers_down == 1)

    db.events.on("disconnect", lose_a_connection)
    leases[retired_first].release()
    db.pool.resize(1)  # retires `retired_first` (free), then marks `first` retiring
    assert hooked.is_set()
    vfs.fail_reads = None
    assert wait_until(lambda: db.pool.fault() is None, 5)
    assert wait_until(lambda: _reader_roles(db) == [last])
    kept.release()
    assert db.query("SELECT x FROM t") == [(1,)]
    assert db.health().status == "ok" and not escalated.is_set()


def test_a_fault_whose_readers_were_all_retired_ends_with_a_recovered_event(
    open_storage: Callable[..., atlas.Storage], vfs: FaultyVFS
) -> None:
    db = _open(open_storage, vfs, readers=3, max_readers=3, reader_idle_timeout=600)
    events: list[tuple[str, str, dict[str, Any]]] = []
    recovered = threading.Event()
    db.events.on("degraded", lambda e: events.append(("degraded", e.role, e.detail)))

    def on_recovered(event: Any) -> None:
        events.append(("recovered", event.role, event.detail))
        recovered.set()

    db.events.on("recovered", on_recovered)
    lent = db.pool.acquire()  # in use: not health-checked, so it keeps its connection
    vfs.fail_reads = apsw.IOError
    db.write("INSERT INTO t VALUES (2)")
    assert wait_until(lambda: (f := db.pool.fault()) is not None and f.readers_down == 2)
    db.pool.resize(1)  # retires both readers without a connection: nothing is down
    assert recovered.wait(5)
    assert db.pool.fault() is None
    vfs.fail_reads = None
    lent.release()
    assert db.query("SELECT x FROM t") == [(1,), (2,)]
    assert db.health().status == "ok"
    pool_events = [(name, detail) for name, role, detail in events if role == "pool"]
    assert [name for name, _ in pool_events] == ["degraded", "recovered"]
    detail = pool_events[1][1]
    assert detail["reason"] == "reader_fault" and detail["retired"] is True


def test_a_database_file_gone_for_good_fails_the_storage_once_readers_must_reopen(
    open_storage: Callable[..., atlas.Storage], vfs: FaultyVFS
) -> None:
    # Connections open on a file keep reading it after it is renamed away; a reader that
    # must reopen (a recycle) cannot, and that lasts: the storage fails, it does not hang.
    db = _open(
        open_storage,
        vfs,
        readers=2,
        max_readers=2,
        health_check_interval=0,
        recycle_after_seconds=0.2,
        reader_fault_timeout=0.5,
    )
    escalated = threading.Event()
    db.events.on("escalate", lambda e: escalated.set())
    path = db.path
    os.rename(path, path + ".moved")
    try:
        assert escalated.wait(5)
        with pytest.raises(StorageUnavailable, match="could not reconnect"):
            db.query("SELECT x FROM t")
        assert db.supervisor.status().restarts == 0
    finally:
        os.rename(path + ".moved", path)


def test_the_reconnect_settings_take_environment_overrides_and_are_validated() -> None:
    env = {
        "ATLAS_READER_FAULT_TIMEOUT": "30",
        "ATLAS_READER_RECONNECT_BACKOFF_INITIAL": "0.1",
        "ATLAS_READER_RECONNECT_BACKOFF_MAX": "5",
    }
    config = StorageConfig.from_env(env)
    assert config.reader_fault_timeout == 30.0
    assert config.reader_reconnect_backoff_initial == 0.1
    assert config.reader_reconnect_backoff_max == 5.0
    for bad in (
        {"reader_fault_timeout": 0},
        {"reader_reconnect_backoff_max": 0},
        {"reader_reconnect_backoff_initial": -1},
        {"reader_fault_timeout": float("nan")},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            StorageConfig(**bad)  # type: ignore[arg-type]

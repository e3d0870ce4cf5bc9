"""The reader pool: leases, status, growth, resize under load, recycling, health checks."""

from __future__ import annotations

import concurrent.futures
import ctypes
import inspect
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors.actors.pool import _RECHECK_AT, _RECHECK_PHASE, _TIMED_AT, PoolStatus
from atlas_actors.connection import (
    _RECHECK_EVERY,
    _TIME_FIRST,
    SAMPLE_EVERY,
    Claim,
    TrackedConnection,
    recheck_due,
    sample_weight,
)
from atlas_actors.errors import OperationTimeout, StorageClosedError, ValidationError
from atlas_actors.faults import FaultyVFS
from tests.helpers import wait_until


def test_acquire_lends_a_connection_until_release(db: atlas.Storage) -> None:
    db.write("INSERT INTO tasks(title) VALUES ('a')")
    before = db.pool.status()
    lease = db.pool.acquire()
    assert lease.state is atlas.ConnectionState.ACTIVE
    for _ in range(8):  # bytes are measured on one statement in eight
        assert lease.execute("SELECT title FROM tasks") == [("a",)]
    assert lease.metrics.queries >= 8 and lease.metrics.bytes_transferred > 0
    during = db.pool.status()
    assert during.active == before.active + 1 and during.idle == before.idle - 1
    lease.release()
    lease.release()  # twice is harmless
    with pytest.raises(ValidationError, match="released"):
        lease.execute("SELECT 1")
    assert db.pool.status() == before


def test_a_connection_claim_lets_one_user_in_at_a_time() -> None:
    claim = Claim()
    assert not claim.locked() and claim.acquire(False) and claim.locked()
    assert not claim.acquire(False)
    with pytest.raises(KeyError):
        claim.token.pop()  # the hot path's claim fails while another holds it
    started = time.monotonic()
    assert not claim.acquire(timeout=0.05)
    assert time.monotonic() - started >= 0.05
    threading.Timer(0.05, claim.release).start()
    assert claim.acquire(timeout=5.0)  # given back by another thread meanwhile
    claim.release()
    with pytest.raises(RuntimeError, match="not held"):
        claim.release()
    claim.token.add(True)  # a stray give-back on the hot path: still one token
    assert claim.acquire(False) and not claim.acquire(False)


def test_pool_release_takes_back_what_acquire_lent(db: atlas.Storage) -> None:
    before = db.pool.status()
    lease = db.pool.acquire()
    assert db.pool.status().active == before.active + 1
    db.pool.release(lease)
    db.pool.release(lease)  # twice is harmless
    assert db.pool.status() == before


def test_a_waiting_caller_is_served_before_threads_that_keep_reading(
    open_storage: object,
) -> None:
    # One connection, four threads reading back to back: a caller that has to wait is
    # handed the connection in turn, never starved until its deadline.
    db: atlas.Storage = open_storage(  # type: ignore[operator]
        readers=1, max_readers=1, cache=False, default_timeout=1.0
    )
    db.execute("CREATE TABLE t(x)")
    db.write("INSERT INTO t VALUES (1)")
    stop = time.monotonic() + 2.5
    calls, failures = [0] * 4, []

    def reader(index: int) -> None:
        while time.monotonic() < stop:
            try:
                assert db.query("SELECT x FROM t") == [(1,)]
            except OperationTimeout as error:
                failures.append(error)
            calls[index] += 1

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == [] and min(calls) > 10


def test_the_context_manager_releases_even_on_error(db: atlas.Storage) -> None:
    before = db.pool.status()
    with pytest.raises(ZeroDivisionError), db.pool.connection() as lease:
        lease.query("SELECT 1")
        _ = 1 / 0
    assert db.pool.status() == before


def test_the_pool_grows_when_callers_wait_and_the_ceiling_holds(open_storage: object) -> None:
    db: atlas.Storage = open_storage(readers=2, max_readers=4)  # type: ignore[operator]
    leases = [db.pool.acquire(timeout=5) for _ in range(4)]
    assert db.pool.status().total == 4
    with pytest.raises(OperationTimeout, match="waiting for a reader connection") as raised:
        db.pool.acquire(timeout=0.1)
    assert "within 0.100s" in str(raised.value)  # the caller's timeout, not the default
    for lease in leases:
        lease.release()
    assert db.pool.status().idle == 4


def _refuse_new_readers(
    db: atlas.Storage, monkeypatch: pytest.MonkeyPatch, times: float = float("inf")
) -> list[float]:
    """Make the next ``times`` readers fail to start, as when no thread can be started;
    returns the times of the failed tries."""
    build = db._make_reader
    refused: list[float] = []

    def refusing(*args: Any) -> Any:
        if len(refused) < times:
            refused.append(time.monotonic())
            raise RuntimeError("can't start new thread")
        return build(*args)

    monkeypatch.setattr(db, "_make_reader", refusing)
    return refused


def test_a_reader_that_cannot_start_does_not_stop_the_pool_growing(
    open_storage: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    db: atlas.Storage = open_storage(readers=2, max_readers=3)  # type: ignore[operator]
    refused = _refuse_new_readers(db, monkeypatch, times=1)
    leases = [db.pool.acquire(timeout=5) for _ in range(2)]
    # The first reader started for growth fails; the waiting caller's next check starts
    # another. Counted as still starting, the failed one would block growth for good.
    third = db.pool.acquire(timeout=2)
    assert len(refused) == 1
    assert db.pool.status().total == 3
    for lease in [*leases, third]:
        lease.release()
    assert db.query("SELECT 1") == [(1,)]


def test_a_reader_that_never_starts_is_retried_with_backoff(
    open_storage: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    db: atlas.Storage = open_storage(readers=2, max_readers=3)  # type: ignore[operator]
    attempts = _refuse_new_readers(db, monkeypatch)
    leases = [db.pool.acquire(timeout=5) for _ in range(2)]
    with pytest.raises(OperationTimeout):
        db.pool.acquire(timeout=1.6)
    # 0.1, 0.2, 0.4, 0.8 s apart (give or take a 0.1 s check): about 5 tries in 1.6 s,
    # not one per check (16).
    assert 2 <= len(attempts) <= 7, attempts
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[-1] > gaps[0], gaps
    for lease in leases:
        lease.release()
    monkeypatch.undo()
    assert db.query("SELECT 1") == [(1,)]


def test_while_growth_backs_off_idle_connections_of_other_threads_are_shared(
    open_storage: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    db: atlas.Storage = open_storage(readers=2, max_readers=3)  # type: ignore[operator]
    _refuse_new_readers(db, monkeypatch)
    hold, adopted = threading.Event(), threading.Barrier(3)

    def owner() -> None:  # reads once (adopting a connection), then stays idle
        db.query("SELECT 1")
        adopted.wait()
        hold.wait()

    owners = [threading.Thread(target=owner) for _ in range(2)]
    for thread in owners:
        thread.start()
    adopted.wait()
    try:
        # Below its ceiling the pool would rather grow than take an adopted connection;
        # growth fails, and the caller must not wait out its timeout beside 2 idle ones.
        started = time.monotonic()
        assert db.query("SELECT 2", timeout=3) == [(2,)]
        assert time.monotonic() - started < 1.5
    finally:
        hold.set()
        for thread in owners:
            thread.join()


def test_a_new_reader_that_cannot_open_does_not_fail_the_storage(
    open_storage: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    db: atlas.Storage = open_storage(  # type: ignore[operator]
        readers=2, max_readers=3, restart_max=1, restart_window=30
    )
    connect = db._connect
    refused = [0]

    def no_more_files(*, writer: bool) -> Any:
        if not writer:
            refused[0] += 1
            raise apsw.CantOpenError("unable to open database file")  # as with EMFILE
        return connect(writer=writer)

    monkeypatch.setattr(db, "_connect", no_more_files)
    leases = [db.pool.acquire(timeout=5) for _ in range(2)]
    with pytest.raises(OperationTimeout):
        db.pool.acquire(timeout=1.5)
    # Several growth attempts failed to open, more than the restart intensity allows,
    # yet the storage still serves with the readers it has.
    assert refused[0] >= 2
    for lease in leases:
        lease.release()
    assert db.health().status != "failed"
    assert db.query("SELECT 1") == [(1,)]
    assert db.pool.status().total == 2
    monkeypatch.undo()
    leases = [db.pool.acquire(timeout=5) for _ in range(3)]  # and it grows once it can
    for lease in leases:
        lease.release()


def test_a_retiring_reader_that_crashes_is_not_taken_for_a_reader_growth_asked_for(
    open_storage: object,
) -> None:
    db: atlas.Storage = open_storage(readers=3, max_readers=3)  # type: ignore[operator]
    pool = db.pool
    leases = [pool.acquire(timeout=5) for _ in range(3)]  # all busy
    pool.resize(2)  # one busy reader is marked retiring
    retiring = next(r for r in ("reader-0", "reader-1", "reader-2") if r not in pool._readers)
    with pool._cond:
        pool._starting += 1  # as if a reader asked for by growth were starting
    restarted = threading.Event()
    db.events.on("restart", lambda e: restarted.set() if e.role == retiring else None)
    db.supervisor.kill(retiring)
    assert restarted.wait(5)
    # Its new incarnation is no reader that growth asked for: still one starting.
    assert wait_until(lambda: retiring in pool._readers)  # (it rejoins: left alone)
    assert pool._starting == 1
    with pool._cond:
        pool._starting -= 1
    for lease in leases:
        lease.release()
    assert db.query("SELECT 1") == [(1,)]


def test_growing_while_the_storage_stops_gives_up_without_waiting_on_the_pool(
    open_storage: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pool asks to grow holding its own lock; the answer must not need that lock.
    db: atlas.Storage = open_storage(readers=2, max_readers=3)  # type: ignore[operator]
    monkeypatch.setattr(db, "_state", "stopping")
    pool = db.pool
    done = threading.Event()

    def grow() -> None:
        with pool._cond:
            pool._waiting += 1
            pool._maybe_grow()
            pool._waiting -= 1
        done.set()

    thread = threading.Thread(target=grow, daemon=True)
    thread.start()
    assert done.wait(5), "growing while stopping hung on the pool's lock"
    assert pool.size == 2


def test_readers_above_the_floor_retire_when_idle(open_storage: object) -> None:
    db: atlas.Storage = open_storage(readers=2, max_readers=4, reader_idle_timeout=0.1)  # type: ignore[operator]
    leases = [db.pool.acquire(timeout=5) for _ in range(4)]
    for lease in leases:
        lease.release()
    assert wait_until(lambda: db.pool.status().total == 2)
    assert db.query("SELECT 1") == [(1,)]


def test_resize_up_and_down_under_load_loses_no_call(open_storage: object) -> None:
    db: atlas.Storage = open_storage(readers=2, max_readers=2, reader_idle_timeout=0.2)  # type: ignore[operator]
    db.execute("CREATE TABLE t(x)")
    db.write("INSERT INTO t VALUES (1)")
    stop = threading.Event()
    failures: list[BaseException] = []
    done = [0]

    def read() -> None:
        while not stop.is_set():
            try:
                assert db.query("SELECT x FROM t") == [(1,)]
                assert db.submit_query("SELECT x FROM t").get(5) == [(1,)]
                done[0] += 1
            except BaseException as error:
                failures.append(error)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        for size in (6, 1, 4, 2, 8, 1):
            db.pool.resize(size)
            # Down, the retired readers' connections stay open (and counted) until the
            # reads on them end, and the 8 callers grow the pool back towards its ceiling.
            assert wait_until(lambda size=size: db.pool.status().total >= size)
            time.sleep(0.05)
    finally:
        stop.set()  # (else the readers spin on the closed storage's errors)
        for thread in threads:
            thread.join(10)
    assert not failures, failures[:3]
    assert done[0] > 0
    assert wait_until(lambda: db.pool.status().total == 1)  # the last size, once idle
    with pytest.raises(ValidationError):
        db.pool.resize(0)


def test_concurrent_resizes_never_take_the_pool_below_its_floor(open_storage: object) -> None:
    # Each call counted the same surplus and retired it: three resize(2) of a pool of
    # 6 retired every reader, and nothing started one again.
    db: atlas.Storage = open_storage(readers=6, max_readers=8, cache=False)  # type: ignore[operator]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # (the threads interleave inside resize, as under load)
    try:
        for _ in range(5):
            db.pool.resize(6)
            assert wait_until(lambda: db.pool.status().total == 6)
            gate = threading.Barrier(3)

            def shrink(gate: threading.Barrier = gate) -> None:
                gate.wait(5)
                db.pool.resize(2)

            threads = [threading.Thread(target=shrink) for _ in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(10)
            assert len(db.pool._readers) == 2, db.pool.status()
    finally:
        sys.setswitchinterval(switch)
    assert wait_until(lambda: db.pool.status().total == 2)
    assert db.pool.size == 2


def test_readers_still_starting_when_the_pool_shrinks_retire_once_ready(
    open_storage: object,
) -> None:
    # resize(2) right after resize(6) found 4 readers not ready yet: they joined the
    # pool after it and idled above the floor until reader_idle_timeout (30 s).
    db: atlas.Storage = open_storage(readers=2, max_readers=8, cache=False)  # type: ignore[operator]
    db.pool.resize(6)
    db.pool.resize(2)
    assert wait_until(lambda: db.pool.size == 2 and db.pool.status().total == 2, timeout=3), (
        db.pool.status()
    )
    assert db.pool._unwanted == 0
    # Growth on demand still goes past the floor, up to the ceiling.
    leases = [db.pool.acquire(timeout=5) for _ in range(4)]
    assert db.pool.status().total == 4
    for lease in leases:
        lease.release()
    assert db.query("SELECT 1") == [(1,)]


def test_a_pool_below_its_floor_starts_readers_on_the_tick_with_backoff(
    open_storage: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The readers resize(4) asked for could not open: the pool stayed at 2 for good
    # (only callers waiting grew it), and nothing retried.
    db: atlas.Storage = open_storage(readers=2, max_readers=4, cache=False)  # type: ignore[operator]
    connect = db._connect
    refused: list[float] = []

    def no_more_files(*, writer: bool) -> Any:
        if not writer:
            refused.append(time.monotonic())
            raise apsw.CantOpenError("unable to open database file")  # as with EMFILE
        return connect(writer=writer)

    monkeypatch.setattr(db, "_connect", no_more_files)
    db.pool.resize(4)
    time.sleep(1.0)
    # Retried, but backing off: not two starts per 0.05 s tick (40).
    assert 2 <= len(refused) <= 12, len(refused)
    assert db.pool.status().total == 2
    assert db.health().status != "failed"
    monkeypatch.undo()
    assert wait_until(lambda: db.pool.status().total == 4, timeout=15), db.pool.status()
    assert db.pool.size == 4


def test_status_counts_lent_connections_whose_readers_retired(open_storage: object) -> None:
    # A lease's connection stays open and in use after resize() retired its reader,
    # until released: status() counted only usable connections (total=1 of 3 open).
    db: atlas.Storage = open_storage(readers=3, max_readers=3, cache=False)  # type: ignore[operator]
    leases = [db.pool.acquire(timeout=5) for _ in range(3)]
    db.pool.resize(1)
    assert [lease.execute("SELECT 1") for lease in leases] == [[(1,)]] * 3
    status = db.pool.status()
    readers = [c for c in db.connections() if c.role != "writer"]
    assert (status.total, status.active, status.idle) == (3, 3, 0)
    assert status.total == len(readers) == status.active + status.idle
    for lease in leases:
        lease.release()
    assert wait_until(lambda: db.pool.status().total == 1)
    assert db.pool.status() == PoolStatus(total=1, active=0, idle=1, waiting_requests=0)


def test_connections_are_recycled_after_their_query_budget(open_storage: object) -> None:
    db: atlas.Storage = open_storage(readers=2, recycle_after_queries=5)  # type: ignore[operator]
    recycled = threading.Event()
    db.events.on("recycle", lambda e: recycled.set())
    ids = set()
    for _ in range(30):
        with db.pool.connection() as lease:
            ids.add(lease.id)
            lease.query("SELECT 1")
    assert recycled.wait(5)
    assert len(ids) > 2  # fresh connections replaced the used ones


def test_a_failing_health_check_reopens_the_connection_without_a_restart(
    db_path: Path, open_storage: object
) -> None:
    # A failed check is a fault of the file, not a crash: the pool reopens the
    # connection (with backoff) and the supervisor counts no restart.
    vfs = FaultyVFS()
    try:
        db: atlas.Storage = open_storage(  # type: ignore[operator]
            readers=2, health_check_interval=0.05, vfs=vfs.name
        )
        db.execute("CREATE TABLE t(x)")
        failed: list[str | None] = []
        reopened: list[atlas.LifecycleEvent] = []
        states: list[str] = []
        db.events.on("health_check_failed", lambda e: failed.append(e.connection_id))
        db.events.on("recycle", reopened.append)
        db.events.on("degraded", lambda e: states.append(f"degraded:{e.role}"))
        db.events.on("recovered", lambda e: states.append(f"recovered:{e.role}"))
        vfs.only = "atlas.db-wal"
        db.write("INSERT INTO t VALUES (1)")  # readers must read the WAL to see it
        vfs.fail_reads = apsw.IOError
        assert wait_until(lambda: failed and db.pool.fault() is not None)
        fault = db.pool.fault()
        assert fault is not None and "injected read failure" in fault.error
        vfs.fail_reads = None
        assert wait_until(lambda: db.pool.fault() is None and db.pool.status().total == 2)
        assert db.query("SELECT x FROM t") == [(1,)]
        assert {e.detail["replaced"] for e in reopened} <= set(failed)
        assert failed[0] in {e.detail["replaced"] for e in reopened}
        assert states[0] == "degraded:pool" and states[-1] == "recovered:pool"
        status = db.supervisor.status()
        assert status.restarts == 0
        assert all(c.incarnation == 1 for c in status.children)
    finally:
        vfs.unregister()


def test_queued_reads_are_served_by_reader_actors(db: atlas.Storage) -> None:
    db.write_many("INSERT INTO tasks(title) VALUES (?)", [[f"t{i}"] for i in range(100)])
    futures = [
        db.submit_query("SELECT id FROM tasks WHERE title = ?", [f"t{i}"]) for i in range(100)
    ]
    assert [f.get(5)[0].id for f in futures] == list(range(1, 101))


def test_every_connection_reports_metrics(db: atlas.Storage) -> None:
    db.write("INSERT INTO tasks(title) VALUES ('a')")
    db.query("SELECT * FROM tasks")
    metrics = db.connection_metrics()
    writer = [m for cid, m in metrics.items() if cid.startswith("writer")]
    assert len(writer) == 1 and writer[0].queries >= 2 and writer[0].latency > 0
    assert sum(m.queries for cid, m in metrics.items() if cid.startswith("reader")) >= 1


# -- the fast read path (a thread's own connection, a statement read often) -------------

_POINT = "SELECT id, title FROM tasks WHERE id = ?"


def _uncached(open_storage: object, **options: object) -> atlas.Storage:
    """A storage whose db.query goes straight to the pool (the read cache is off)."""
    db: atlas.Storage = open_storage(cache=False, **options)  # type: ignore[operator]
    db.execute("CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT)")
    db.write("INSERT INTO tasks(title) VALUES ('a')")
    return db


def _warm(db: atlas.Storage, times: int = 40) -> None:
    for _ in range(times):
        db.query(_POINT, [1])


def test_a_failing_read_on_the_fast_path_fails_alone_and_is_counted(
    open_storage: object,
) -> None:
    db = _uncached(open_storage)
    _warm(db)
    errors_before = sum(m.errors for m in db.connection_metrics().values())
    with pytest.raises(atlas.errors.ParameterError):
        db.query(_POINT, [1, 2])  # one parameter too many
    with pytest.raises(atlas.errors.ParameterError):
        db.query(_POINT, {"nope": 1})
    assert sum(m.errors for m in db.connection_metrics().values()) == errors_before + 2
    assert db.query(_POINT, [1]) == [(1, "a")]  # the connection was given back
    assert db.pool.status().active == 0


def test_db_query_without_cache_keeps_the_storage_contract(
    open_storage: object, caplog: pytest.LogCaptureFixture
) -> None:
    # Without a span to open or a cache to ask, db.query is the pool's read function:
    # what Storage.query does around the pool must still happen there.
    caplog.set_level(logging.INFO, logger="atlas_actors.errors")
    db = _uncached(open_storage)
    _warm(db)
    with pytest.raises(atlas.errors.ParameterError):
        db.query(_POINT, [1, 2])  # fails on the fast path: reported as a query's error
    with pytest.raises(atlas.errors.SQLError):
        db.query("SELECT nope FROM tasks")  # fails on the general path
    records = [r for r in caplog.records if r.name == "atlas_actors.errors"]
    assert [r.atlas["operation"] for r in records] == ["query", "query"]  # type: ignore[attr-defined]
    assert db.metrics.snapshot()["errors"] == 2
    built = atlas.Query().select(["id", "title"]).from_("tasks").where([("id", "eq", 1)])
    assert db.query(built) == [(1, "a")]  # a built query is served too
    # help(db.query) documents the public method, not the pool's function.
    assert db.query.__doc__ == atlas.Storage.query.__doc__
    assert str(inspect.signature(db.query)).startswith("(sql: 'str | Buildable'")
    with pytest.raises(TypeError):
        db.query(_POINT, [1], 5.0)  # type: ignore[misc]  # timeout is keyword-only
    db.close()
    with pytest.raises(StorageClosedError):
        db.query(_POINT, [1])
    assert db.metrics.snapshot()["errors"] == 2  # refusing a closed storage is no error


def test_a_storage_subclass_overriding_query_is_called(db_path: Path) -> None:
    class Counting(atlas.Storage):
        calls = 0

        def query(self, *args: Any, **kwargs: Any) -> list[atlas.Row]:
            Counting.calls += 1
            return super().query(*args, **kwargs)

    with Counting(db_path, atlas.StorageConfig(cache=False)) as db:
        assert db.query("SELECT 1") == [(1,)] and Counting.calls == 1


def test_the_fast_path_recycles_connections_after_their_query_budget(
    open_storage: object,
) -> None:
    db = _uncached(open_storage, readers=2, recycle_after_queries=20)
    recycled = threading.Event()
    db.events.on("recycle", lambda e: recycled.set())  # not a checkout listener
    for _ in range(200):
        assert db.query(_POINT, [1]) == [(1, "a")]
    assert recycled.wait(5)


def test_the_fast_path_leaves_a_connection_whose_reader_failed(open_storage: object) -> None:
    db = _uncached(open_storage)
    _warm(db)
    restarted = threading.Event()
    db.events.on("restart", lambda e: restarted.set() if e.role.startswith("reader") else None)
    for child in db.supervisor.status().children:
        if child.role.startswith("reader"):
            db.supervisor.kill(child.role)
    assert restarted.wait(5)
    for _ in range(40):  # the thread's remembered connection is gone: it takes another
        assert db.query(_POINT, [1]) == [(1, "a")]


def test_a_statement_whose_columns_changed_is_learned_again(open_storage: object) -> None:
    db = _uncached(open_storage)
    db.execute("CREATE TABLE wide(a)")
    db.write("INSERT INTO wide VALUES (1)")
    for _ in range(40):
        assert db.query("SELECT * FROM wide")[0].keys() == ("a",)
    # Change the table behind the storage's back (as another process would): the
    # pool has not heard of it, the width of the rows tells.
    other = apsw.Connection(db.path)
    other.execute("ALTER TABLE wide ADD COLUMN b DEFAULT 2")
    other.close()
    row = db.query("SELECT * FROM wide")[0]
    assert row.keys() == ("a", "b") and row.b == 2


def test_a_failure_while_rows_are_built_gives_the_connection_back(
    open_storage: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Anything raised on the fast path after the statement ran (a MemoryError or a
    # KeyboardInterrupt while rows are built or measured) must not leave the
    # connection claimed: with one reader, every later read would time out.
    db = _uncached(open_storage, readers=1, max_readers=1)
    _warm(db)

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(TrackedConnection, "count_timed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        for _ in range(2 * SAMPLE_EVERY):  # one run in SAMPLE_EVERY is timed
            db.query(_POINT, [1])
    monkeypatch.undo()
    assert db.pool.status().active == 0
    assert db.query(_POINT, [1], timeout=2) == [(1, "a")]


def test_alternating_statements_are_each_sampled_at_their_own_rate(
    open_storage: object,
) -> None:
    # Runs are sampled per statement: with one counter per connection, a thread
    # alternating two reads would time only one of them, recorded for both.
    db = _uncached(open_storage)
    by_title = "SELECT id FROM tasks WHERE title = ?"
    db.workload.reset()
    runs = 16 * SAMPLE_EVERY + _TIME_FIRST + 1  # (its last run is a sample: exact)
    for _ in range(runs):
        db.query(_POINT, [1])
        db.query(by_title, ["a"])
    calls = {s.example: s.calls for s in db.workload.snapshot()}
    for sql in (_POINT, by_title):
        assert abs(calls[sql] - runs) <= 0.05 * runs, calls


def test_mean_latency_weighs_each_sample_by_the_runs_it_stands_for() -> None:
    connection = TrackedConnection(apsw.Connection(":memory:"), "reader")
    for _ in range(4):  # a statement's first runs: timed, standing for themselves
        connection.count_timed(0.001, 1, None, [])
    for _ in range(4):  # later samples, each standing for SAMPLE_EVERY runs
        connection.count_timed(0.0001, SAMPLE_EVERY, None, [])
    runs = 4 + 4 * SAMPLE_EVERY
    expected = (4 * 0.001 + 4 * SAMPLE_EVERY * 0.0001) / runs
    assert connection.metrics().latency == pytest.approx(expected)


def test_bytes_of_alternating_reads_on_a_borrowed_connection_are_each_counted() -> None:
    # query() (leases, transactions) samples bytes by each statement's own runs: with
    # one counter per connection, every sample fell on the second, empty statement.
    connection = TrackedConnection(apsw.Connection(":memory:"), "reader")
    runs = 16 * SAMPLE_EVERY + _TIME_FIRST + 1  # (its last run is a sample: exact)
    for n in range(runs):
        assert connection.query("SELECT ?", [n]) == [(n,)]  # 8 bytes sent, 8 received
        assert connection.query("SELECT 1 WHERE 0") == []  # nothing either way
    assert connection.metrics().bytes_transferred == pytest.approx(16 * runs, rel=0.05)


def test_a_write_statement_is_sampled_by_its_own_runs() -> None:
    # One INSERT with an 8-byte value, one UPDATE without parameters, alternating:
    # the bytes sent are the INSERTs' alone, however the two interleave.
    connection = TrackedConnection(apsw.Connection(":memory:"), "writer")
    connection.connection.execute("CREATE TABLE t(a); CREATE TABLE c(n); INSERT INTO c VALUES (0)")
    runs = 16 * SAMPLE_EVERY + _TIME_FIRST + 1  # (its last run is a sample: exact)
    for n in range(runs):
        connection.write("INSERT INTO t VALUES (?)", [n])
        connection.write("UPDATE c SET n = n + 1")
    assert connection.metrics().bytes_transferred == pytest.approx(8 * runs, rel=0.05)


def test_write_learns_a_statement_once_and_refuses_transaction_control_every_time() -> None:
    connection = TrackedConnection(apsw.Connection(":memory:"), "writer")
    connection.connection.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a)")
    for _ in range(2):  # refused again: a refused statement is never remembered as safe
        with pytest.raises(ValidationError, match="controls a transaction"):
            connection.write("BEGIN")
    assert connection.write("INSERT INTO t(a) VALUES (?)", [1])[:2] == (1, 1)
    returned = connection.write("INSERT INTO t(a) VALUES (?) RETURNING id, a", [2])
    assert (returned.rowcount, returned.lastrowid) == (1, 2)
    assert [(row.id, row.a) for row in returned.rows] == [(2, 2)]
    for n in range(3):
        assert connection.write("UPDATE t SET a = ? WHERE id = 1", [n])[:2] == (1, None)
    assert connection.queries == 5  # each run counted, the refused ones not


def test_the_fast_path_names_the_rows_of_results_of_every_size(
    open_storage: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One row is built on its own (point reads), several by mapping: all answer to names.
    db = _uncached(open_storage)
    db.write_many("INSERT INTO tasks(title) VALUES (?)", [["b"], ["c"]])
    from_id = "SELECT id, title FROM tasks WHERE id >= ? ORDER BY id"
    cases = {1: ["a", "b", "c"], 3: ["c"], 4: []}
    for _ in range(8):  # past a statement's first runs, which take the general path
        for first in cases:
            db.query(from_id, [first])

    def general(*_: object) -> None:
        raise AssertionError("the fast path was expected")

    monkeypatch.setattr(db.pool, "_query_general", general)
    for first, titles in cases.items():
        rows = db.query(from_id, [first])
        assert [row.title for row in rows] == titles
        assert [row["id"] for row in rows] == list(range(first, 4))


def test_the_fast_paths_remainders_time_and_recheck_the_runs_the_rules_name() -> None:
    for uses in range(_TIME_FIRST, 3 * _RECHECK_EVERY):
        phase = uses % SAMPLE_EVERY
        assert (phase == _TIMED_AT) == (sample_weight(uses) > 0), uses
        if phase == _TIMED_AT:  # (the fast path's weight: the first sample stands for itself)
            assert sample_weight(uses) == (SAMPLE_EVERY if uses != _TIME_FIRST else 1), uses
        rechecks = phase == _RECHECK_PHASE and uses % _RECHECK_EVERY == _RECHECK_AT
        assert rechecks == recheck_due(uses), uses


def test_a_statement_that_found_no_rows_for_long_names_its_first_rows(
    open_storage: object,
) -> None:
    # Known to the fast path without a row class (it never returned a row): its
    # first rows must still get their names, not fail or come back unnamed.
    db = _uncached(open_storage)
    later = "SELECT id, title FROM tasks WHERE title = ?"
    for _ in range(2 * _TIME_FIRST):
        assert db.query(later, ["b"]) == []
    db.write("INSERT INTO tasks(title) VALUES ('b')")
    assert [row.title for row in db.query(later, ["b"])] == ["b"]


def test_renamed_columns_are_learned_at_the_next_recheck(open_storage: object) -> None:
    # Same width, new names: only the periodic check against SQLite's names tells.
    db = _uncached(open_storage)
    star = "SELECT * FROM tasks WHERE id = ?"
    assert db.query(star, [1])[0].keys() == ("id", "title")
    other = apsw.Connection(db.path)
    other.execute("ALTER TABLE tasks RENAME COLUMN title TO name")
    other.close()
    keys = [db.query(star, [1])[0].keys() for _ in range(_RECHECK_EVERY + _TIME_FIRST)]
    assert keys[-1] == ("id", "name")


def test_readers_map_the_file_and_the_writer_does_not(open_storage: object) -> None:
    # Readers share the OS cache of the file through read-only mappings; 0 turns it off.
    db = _uncached(open_storage)
    mapped = db.config.reader_mmap_bytes
    assert mapped > 0
    assert db.pool.run_function(lambda c: c.pragma("mmap_size")) == mapped
    assert db.run_in_writer(lambda c: c.pragma("mmap_size")) == 0
    assert db.query("SELECT title FROM tasks") == [("a",)]  # read through the mapping
    unmapped = _uncached(open_storage, path=db.path + "-b", reader_mmap_bytes=0)
    assert unmapped.pool.run_function(lambda c: c.pragma("mmap_size")) == 0


def test_reads_on_a_held_connection_are_sampled_and_recorded_by_the_runs_they_stand_for(
    open_storage: object,
) -> None:
    # query() (held connections, transactions) times a statement's first runs, then one
    # in SAMPLE_EVERY: the workload must still count every run (each timed one
    # standing for those in between), and the connection every run too.
    db = _uncached(open_storage)
    db.workload.reset()
    runs = 16 * SAMPLE_EVERY + _TIME_FIRST + 1  # (its last run is a sample: exact)
    lease = db.pool.acquire()
    try:
        connection = lease._live()
        queries = connection.queries
        timed = 0
        for _ in range(runs):
            assert lease.query(_POINT, [1]) == [(1, "a")]
            timed += connection.last_latency > 0
        metrics = connection.metrics()
    finally:
        lease.release()
    assert timed < runs // 8  # sampled, not every run timed
    assert metrics.queries - queries == runs and metrics.latency > 0
    calls = {s.example: s.calls for s in db.workload.snapshot()}
    assert abs(calls[_POINT] - runs) <= 0.05 * runs, calls


def test_a_transaction_left_open_on_a_lent_connection_ends_when_it_goes_back(
    open_storage: object,
) -> None:
    # With one reader, the next read gets that very connection: it must see the write
    # acknowledged after the borrower's snapshot, not the snapshot.
    db = _uncached(open_storage, readers=1, max_readers=1)
    with db.pool.connection() as lent:
        lent.execute("BEGIN")
        assert lent.execute("SELECT count(*) FROM tasks") == [(1,)]
    db.write("INSERT INTO tasks(title) VALUES ('b')")
    assert db.query("SELECT count(*) FROM tasks") == [(2,)]
    assert db.pool.status().total == 1


def test_a_waiter_interrupted_as_a_connection_reaches_it_gives_the_connection_back(
    open_storage: object,
) -> None:
    # The release hands the only connection to the waiting thread, which is interrupted
    # (an asynchronous KeyboardInterrupt, as Ctrl-C is for the main thread) as it wakes.
    db = _uncached(open_storage, readers=1, max_readers=1)
    held = db.pool.acquire()
    outcome: list[object] = []

    def wait_for_a_read() -> None:
        try:
            outcome.append(db.query("SELECT count(*) FROM tasks", timeout=10))
        except BaseException as error:  # the interrupt, caught to end the thread quietly
            outcome.append(error)

    waiter = threading.Thread(target=wait_for_a_read)
    waiter.start()
    assert wait_until(lambda: db.pool.status().waiting_requests == 1, timeout=5)
    held.release()  # hands the connection over to the waiter, still claimed
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(waiter.ident or 0), ctypes.py_object(KeyboardInterrupt)
    )
    waiter.join(5)
    assert len(outcome) == 1 and isinstance(outcome[0], KeyboardInterrupt), outcome
    assert db.query("SELECT count(*) FROM tasks", timeout=2) == [(1,)]
    assert db.pool.status().active == 0


def test_readers_retired_by_a_shrink_while_reading_close_when_their_reads_end(
    open_storage: object,
) -> None:
    # Both connections are busy when the pool shrinks to one: the reader marked retiring
    # must close once its read ends, whichever path gave the connection back (first
    # round: the general one; second: the fast path of threads with a connection of
    # their own and a statement they know).
    db = _uncached(open_storage, readers=2, max_readers=2)
    count = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
        "SELECT count(*) FROM c"
    )

    def running() -> list[str]:
        children = db.supervisor.status().children
        return [c.role for c in children if c.role.startswith("reader") and c.state == "running"]

    with concurrent.futures.ThreadPoolExecutor(2) as threads:
        for warm in (False, True):
            if warm:  # each thread learns the statement on a connection of its own
                gate = threading.Barrier(2)

                def learn(_: int, gate: threading.Barrier = gate) -> None:
                    gate.wait(5)
                    for _ in range(8):
                        db.query(count, [1])

                list(threads.map(learn, range(2)))
            # Both at once: one thread must not take both reads (a loaded machine may
            # wake the other late), and each lasts long enough for the other to start.
            both = threading.Barrier(2)

            def read(_: int, both: threading.Barrier = both) -> list[Any]:
                both.wait(5)
                return db.query(count, [1_000_000])

            reads = [threads.submit(read, i) for i in range(2)]
            assert wait_until(lambda: db.pool.status().active == 2, timeout=5)
            db.pool.resize(1)
            assert [r.result(10) for r in reads] == [[(1_000_000,)]] * 2
            assert wait_until(lambda: len(running()) == 1, timeout=5), running()
            assert db.pool.status().total == 1
            db.pool.resize(2)
            assert wait_until(lambda: db.pool.status().total == 2, timeout=5)


def test_a_waiter_queueing_as_the_pool_closes_is_told_at_once(open_storage: object) -> None:
    # close() lands between the caller's check and its joining the queue of waiters
    # (injected where the deadlock check runs): it must not wait out its timeout.
    db = _uncached(open_storage, readers=1, max_readers=1)
    pool = db.pool
    held = pool.acquire()
    pool._check_wait = lambda: pool.close()  # type: ignore[assignment,func-returns-value]
    started = time.monotonic()
    with pytest.raises(atlas.errors.AtlasError):
        pool.run_function(lambda _: 1, timeout=3.0)
    assert time.monotonic() - started < 1
    held.release()


def test_shrinking_while_queued_reads_run_leaves_no_reader_behind(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    """A reader retired while a batch of reads was on its way to it closed its
    connection but was never retired: its actor and thread lived on (331 after 100
    shrinks in a review's repro)."""
    db = open_storage(
        readers=2, max_readers=32, cache=False, health_check_interval=0, reader_idle_timeout=0.5
    )
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    db.write("INSERT INTO t(v) VALUES ('x')")
    stop = threading.Event()
    failures: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            try:
                db.submit_query("SELECT v FROM t").get()
            except BaseException as error:
                failures.append(error)

    threads = [threading.Thread(target=read) for _ in range(12)]
    for thread in threads:
        thread.start()
    for _ in range(25):
        db.pool.resize(16)
        time.sleep(0.02)
        db.pool.resize(2)
        time.sleep(0.02)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert failures == []

    def readers_left() -> int:
        children = db.supervisor.status().children
        return sum(1 for child in children if child.role.startswith("reader"))

    assert wait_until(lambda: readers_left() == 2, timeout=5), readers_left()
    assert wait_until(
        lambda: sum(t.name.startswith("reader-") for t in threading.enumerate()) == 2, timeout=5
    )


def _read_in_loops(db: atlas.Storage, seconds: float) -> None:
    """Four threads reading their own connections in a loop for ``seconds``."""
    db.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)")
    db.write("INSERT OR REPLACE INTO t VALUES (1, 'x')")
    stop = threading.Event()
    failures: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            try:
                assert db.query("SELECT v FROM t WHERE id = 1") == [("x",)]
            except BaseException as error:
                failures.append(error)
                return

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert failures == []


# Maintenance acted only on a connection it found free at a tick: a thread reading in a
# loop gets its own back first, so under load nothing was ever recycled by age or
# health-checked (0 recycles in 5 s in a review's repro).


def test_readers_busy_in_a_loop_are_still_recycled_by_age(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    db = open_storage(readers=2, cache=False, recycle_after_seconds=0.3)
    recycled: list[object] = []
    db.events.on("recycle", recycled.append)
    _read_in_loops(db, 1.5)
    assert len(recycled) >= 4  # each busy connection, every 0.3 s or so


def test_queued_reads_keeping_readers_busy_do_not_keep_them_from_age(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    # A reader's check-in after its batch of queued reads reset the flag maintenance set.
    db = open_storage(readers=2, max_readers=2, cache=False, recycle_after_seconds=0.3)
    db.execute("CREATE TABLE t(x)")
    recycled: list[object] = []
    db.events.on("recycle", recycled.append)
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            db.submit_query("SELECT count(*) FROM t").get(10)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert len(recycled) >= 2


def test_frequent_maintenance_under_steady_reads_does_not_grow_the_pool(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    # Taking a thread's own busy connection away for a health check made that thread
    # wait, and the pool grew a reader for it (13 readers for 4 threads in a review).
    db = open_storage(readers=4, cache=False, health_check_interval=0.05)
    _read_in_loops(db, 1.5)
    assert db.pool.status().total <= 4 + 1


def test_queued_reads_given_up_neither_count_as_waiting_nor_fill_the_queue(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    """With the only connection lent, 50 queued reads timed out; they stayed in the
    queue until a reader ran them: waiting_requests said 50, and the next read was
    refused at once as "the read queue is full" while nothing waited."""
    db = open_storage(readers=1, max_readers=1, mailbox_size=50, cache=False)
    with db.pool.connection():
        given_up = [db.submit_query("SELECT 1", timeout=0.2) for _ in range(25)]
        for future in given_up:
            with pytest.raises(OperationTimeout):
                future.get()  # withdrawn by its caller
        forgotten = [db.submit_query("SELECT 1", timeout=0.2) for _ in range(25)]
        time.sleep(0.3)  # past their deadline; nobody asked for them
        assert db.pool.status().waiting_requests == 0
        live = db.submit_query("SELECT 2 AS x", timeout=10)
        assert db.pool.status().waiting_requests == 1
        for future in forgotten:
            assert isinstance(future.exception(0), OperationTimeout)  # failed when dropped
    assert live.get(10)[0].x == 2
    assert db.pool.status().waiting_requests == 0

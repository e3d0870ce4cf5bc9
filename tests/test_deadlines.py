"""Every wait has a deadline: OperationTimeout, never a hang."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors.errors import OperationTimeout, ValidationError


def _hold_the_writer(db: atlas.Storage, release: threading.Event) -> threading.Event:
    started = threading.Event()

    def hold(connection: apsw.Connection) -> None:
        started.set()
        release.wait(10)

    db.writer.run(hold)
    assert started.wait(5)
    return started


def test_a_write_that_waits_past_its_deadline_times_out_and_is_never_applied(
    db: atlas.Storage,
) -> None:
    release = threading.Event()
    _hold_the_writer(db, release)
    started = time.monotonic()
    with pytest.raises(OperationTimeout) as caught:
        db.write("INSERT INTO tasks(title) VALUES ('late')", timeout=0.1)
    assert time.monotonic() - started < 1.0
    assert caught.value.applied is False
    release.set()
    db.write("INSERT INTO tasks(title) VALUES ('after')")
    assert db.query("SELECT title FROM tasks") == [("after",)]


def test_future_get_with_a_short_timeout_does_not_withdraw_a_started_write(
    db: atlas.Storage,
) -> None:
    release = threading.Event()
    started = threading.Event()

    def slow(connection: apsw.Connection) -> str:
        connection.execute("INSERT INTO tasks(title) VALUES ('slow')")
        started.set()
        release.wait(10)
        return "done"

    future = db.writer.run(slow)
    assert started.wait(5)
    with pytest.raises(OperationTimeout) as caught:
        future.get(timeout=0.05)
    assert caught.value.applied is None  # it had started: outcome unknown
    release.set()
    assert future.get(5) == "done"
    assert db.query("SELECT title FROM tasks") == [("slow",)]


def test_a_full_mailbox_applies_backpressure_with_a_deadline(open_storage: object) -> None:
    db: atlas.Storage = open_storage(mailbox_size=4)  # type: ignore[operator]
    db.execute("CREATE TABLE t(x)")
    release = threading.Event()
    _hold_the_writer(db, release)
    queued = [db.writer.execute("INSERT INTO t VALUES (?)", [i]) for i in range(4)]
    started = time.monotonic()
    with pytest.raises(OperationTimeout, match="mailbox is full") as caught:
        db.write("INSERT INTO t VALUES (99)", timeout=0.1)
    assert caught.value.applied is False
    assert time.monotonic() - started < 1.0
    release.set()
    assert [f.get(5).rowcount for f in queued] == [1, 1, 1, 1]
    assert db.query("SELECT count(*) FROM t") == [(4,)]


def test_waiting_for_a_reader_times_out_when_all_are_lent(open_storage: object) -> None:
    db: atlas.Storage = open_storage(readers=2, max_readers=2)  # type: ignore[operator]
    leases = [db.pool.acquire() for _ in range(2)]
    started = time.monotonic()
    with pytest.raises(OperationTimeout, match="waiting for a reader"):
        db.query("SELECT 1", timeout=0.1)
    assert time.monotonic() - started < 1.0
    assert db.pool.status().waiting_requests == 0
    for lease in leases:
        lease.release()
    assert db.query("SELECT 1") == [(1,)]


def test_a_queued_read_times_out_when_no_reader_is_free(open_storage: object) -> None:
    db: atlas.Storage = open_storage(readers=1, max_readers=1)  # type: ignore[operator]
    lease = db.pool.acquire()
    future = db.submit_query("SELECT 1", timeout=0.1)
    with pytest.raises(OperationTimeout):
        future.get()
    lease.release()
    assert db.submit_query("SELECT 2").get(5) == [(2,)]


def test_a_write_all_that_times_out_names_its_statements(db: atlas.Storage) -> None:
    release = threading.Event()
    _hold_the_writer(db, release)
    with pytest.raises(OperationTimeout) as caught:
        db.write_all(
            [("INSERT INTO tasks(title) VALUES ('late')", None), ("DELETE FROM tasks", None)],
            timeout=0.1,
        )
    release.set()
    assert caught.value.applied is False
    assert "write_all \"INSERT INTO tasks(title) VALUES ('late'); DELETE FROM tasks\"" in str(
        caught.value
    )


@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize("timeout", [float("nan"), 1e12, "5", True])
def test_a_timeout_that_cannot_work_is_refused_at_the_call(
    open_storage: Callable[..., atlas.Storage], cache: bool, timeout: object
) -> None:
    """A NaN deadline never expired (the write ran, its caller got a raw ValueError);
    one past a lock's longest timeout raised a raw OverflowError after queuing."""
    db = open_storage(cache=cache)
    db.execute("CREATE TABLE t(x)")
    calls: list[Callable[[], object]] = [
        lambda: db.write("INSERT INTO t VALUES (1)", timeout=timeout),  # type: ignore[arg-type]
        lambda: db.write_all([("INSERT INTO t VALUES (1)", None)], timeout=timeout),  # type: ignore[arg-type]
        lambda: db.writer.execute("INSERT INTO t VALUES (1)", timeout=timeout),  # type: ignore[arg-type]
        lambda: db.query("SELECT x FROM t", timeout=timeout),  # type: ignore[arg-type]
        lambda: db.submit_query("SELECT x FROM t", timeout=timeout),  # type: ignore[arg-type]
    ]
    db.query("SELECT x FROM t")  # (cached: a hit must not skip the check)
    for call in calls:
        with pytest.raises(ValidationError, match="timeout="):
            call()
    assert db.query("SELECT count(*) FROM t", timeout=5) == [(0,)]  # nothing was queued
    assert db.supervisor.status().restarts == 0


def test_a_negative_timeout_too_large_for_a_float_is_refused(db: atlas.Storage) -> None:
    with pytest.raises(ValidationError, match="timeout="):
        db.write("INSERT INTO tasks(title) VALUES ('x')", timeout=-(10**400))
    assert db.write("INSERT INTO tasks(title) VALUES ('x')", timeout=5).rowcount == 1

"""A read's deadline bounds its running statement, not only the wait for a connection.

Each slow read here counts a recursive CTE that runs for seconds unbounded; stopped at
its deadline, it takes its timeout (0.3 s) and a few milliseconds more.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors.errors import OperationTimeout, TransactionConflict
from tests.helpers import wait_until

COUNT = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
    "SELECT count(*) AS n FROM c"
)
"""Counts to its parameter: 30,000,000 takes seconds, 1,000,000 a tenth of one."""
SLOW = [30_000_000]
MEDIUM = [1_000_000]
TIMEOUT = 0.3


def _open(open_storage: Callable[..., atlas.Storage], **options: Any) -> atlas.Storage:
    """One reader connection: the read after a timeout must be served by the same one."""
    options.setdefault("readers", 1)
    options.setdefault("max_readers", 1)
    db = open_storage(**options)
    db.execute("CREATE TABLE t(v)")
    db.write("INSERT INTO t VALUES (1)")
    return db


def _stopped_in_time(read: Callable[[], object], timeout: float = TIMEOUT) -> OperationTimeout:
    """Run ``read``: it must raise OperationTimeout about ``timeout`` seconds in."""
    started = time.monotonic()
    with pytest.raises(OperationTimeout) as caught:
        read()
    took = time.monotonic() - started
    assert timeout * 0.8 <= took < timeout + 0.7, took
    return caught.value


def _connection_ids(db: atlas.Storage) -> set[str]:
    return set(db.pool.connection_metrics())


@pytest.mark.parametrize(
    ("cache", "warm"),
    [
        (False, False),  # a statement's first runs: the pool's general path
        (False, True),  # a known statement: the pool's hot path
        (True, False),  # a cache miss: analyzed and run by the pool
        (True, True),
    ],
)
def test_a_read_past_its_timeout_is_stopped_and_its_connection_serves_the_next(
    open_storage: Callable[..., atlas.Storage],
    monkeypatch: pytest.MonkeyPatch,
    cache: bool,
    warm: bool,
) -> None:
    db = _open(open_storage, cache=cache)
    if warm:
        for n in range(10):  # past the first (timed) runs, with a row class known
            assert db.query(COUNT, [n + 2]) == [(n + 2,)]
    before = _connection_ids(db)
    general: list[str] = []
    original = db.pool._query_general

    def spy(sql: str, params: Any, timeout: float | None) -> Any:
        general.append(sql)
        return original(sql, params, timeout)

    monkeypatch.setattr(db.pool, "_query_general", spy)

    error = _stopped_in_time(lambda: db.query(COUNT, SLOW, timeout=TIMEOUT))
    if warm and not cache:
        assert general == []  # it ran on the hot path
    assert error.applied is False  # a read stopped changes nothing: safe to retry
    assert error.timeout == TIMEOUT
    assert "stopped at its deadline and changed nothing" in str(error)
    assert "before it started" not in str(error)  # (it ran, and was stopped)

    # The same connection, free and with no statement left open, serves the next reads.
    assert db.pool.status().active == 0
    assert db.query("SELECT v FROM t") == [(1,)]
    assert db.query(COUNT, MEDIUM, timeout=5.0) == [(MEDIUM[0],)]
    assert _connection_ids(db) == before
    assert db.pool.connection_metrics()[next(iter(before))].errors >= 1
    db.write("INSERT INTO t VALUES (2)")
    assert db.query("SELECT count(*) FROM t") == [(2,)]  # no stale snapshot kept


def test_a_read_naming_no_timeout_is_stopped_at_the_default_timeout(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    db = _open(open_storage, default_timeout=TIMEOUT)
    error = _stopped_in_time(lambda: db.query(COUNT, SLOW))
    assert error.timeout == TIMEOUT
    assert db.query("SELECT v FROM t") == [(1,)]


def test_the_bound_is_the_calls_own_deadline(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    """The same read passes with a deadline it fits in, and is stopped with one it
    does not; reads that fit are not disturbed by the checks."""
    db = _open(open_storage, cache=False)
    for _ in range(6):  # the general path, then the hot one
        assert db.query(COUNT, MEDIUM, timeout=5.0) == [(MEDIUM[0],)]
    _stopped_in_time(lambda: db.query(COUNT, [MEDIUM[0] * 50], timeout=0.05), timeout=0.05)
    for i in range(2000):  # point reads with a tight deadline never reach a second check
        assert db.query("SELECT v FROM t WHERE rowid = ?", [1], timeout=0.001) == [(1,)], i
    # A deadline fixed for an earlier read (long past now) stops nothing later.
    assert db.query(COUNT, MEDIUM, timeout=0.5) == [(MEDIUM[0],)]
    time.sleep(0.6)
    assert db.pool.run_function(lambda c: c.execute(COUNT, MEDIUM).fetchall()) == [(MEDIUM[0],)]


def test_a_queued_read_is_stopped_at_its_deadline_and_frees_its_reader(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    db = _open(open_storage)
    assert db.submit_query("SELECT v FROM t").get(5) == [(1,)]  # still works
    future = db.submit_query(COUNT, SLOW, timeout=TIMEOUT)
    _stopped_in_time(lambda: future.get())
    # The reader stopped the statement too: its connection is back, not busy for seconds.
    assert wait_until(lambda: db.pool.status().active == 0, timeout=0.5)
    assert isinstance(future.exception(0), OperationTimeout)
    assert db.submit_query("SELECT v FROM t").get(1) == [(1,)]


def test_a_borrowed_connection_and_run_function_bound_their_statements(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    db = _open(open_storage)
    with db.pool.connection() as lent:
        _stopped_in_time(lambda: lent.execute(COUNT, SLOW, timeout=TIMEOUT))
        assert lent.execute("SELECT v FROM t") == [(1,)]

    def count(connection: apsw.Connection) -> list[Any]:
        return connection.execute(COUNT, SLOW).fetchall()

    _stopped_in_time(lambda: db.pool.run_function(count, timeout=TIMEOUT))
    assert db.pool.status().active == 0
    assert db.query("SELECT v FROM t") == [(1,)]


def test_a_read_in_a_repeatable_read_snapshot_is_stopped_and_the_snapshot_kept(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    """The read fails like any failed read of the transaction (the transaction goes on);
    the snapshot it pinned stays, so what it saw and its conflict rule are unchanged."""
    db = _open(open_storage, default_timeout=TIMEOUT, transaction_timeout=30.0)
    tx = db.transactions.begin("repeatable_read")
    assert tx.query("SELECT count(*) AS n FROM t")[0].n == 1  # pins the snapshot
    db.write("INSERT INTO t VALUES (2)")

    error = _stopped_in_time(lambda: tx.query(COUNT, SLOW))
    assert error.applied is False
    assert tx.state == "active"
    assert tx.query("SELECT count(*) AS n FROM t")[0].n == 1  # the same snapshot
    assert tx.query(COUNT, [1000]) == [(1000,)]
    with pytest.raises(TransactionConflict):
        tx.execute("INSERT INTO t VALUES (3)")  # a write committed since its snapshot
    tx.rollback()
    assert db.pool.status().active == 0
    assert db.query("SELECT count(*) FROM t") == [(2,)]


def test_a_snapshot_read_that_times_out_leaves_a_transaction_that_commits(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    db = _open(open_storage, default_timeout=TIMEOUT, transaction_timeout=30.0)
    with db.transaction("repeatable_read") as tx:
        assert tx.query("SELECT count(*) AS n FROM t")[0].n == 1
        _stopped_in_time(lambda: tx.query(COUNT, SLOW))
        tx.execute("INSERT INTO t VALUES (2)")  # nothing committed since: no conflict
    assert db.query("SELECT count(*) FROM t") == [(2,)]
    assert db.pool.status().active == 0


@pytest.mark.parametrize("cache", [True, False])
def test_a_read_committed_read_is_stopped_at_the_default_timeout(
    open_storage: Callable[..., atlas.Storage], cache: bool
) -> None:
    db = _open(open_storage, default_timeout=TIMEOUT, cache=cache)
    tx = db.transactions.begin("read_committed")
    _stopped_in_time(lambda: tx.query(COUNT, SLOW))
    assert tx.state == "active"
    db.write("INSERT INTO t VALUES (2)")
    assert tx.query("SELECT count(*) AS n FROM t")[0].n == 2  # the latest committed
    tx.commit()
    assert db.pool.status().active == 0

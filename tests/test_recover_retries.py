"""recover() never runs work again whose COMMIT may still apply, and probes a full disk.

Real parts throughout: an apsw VFS whose fsync is slow (a COMMIT outlasting its wait),
``max_page_count`` for a full disk, a second apsw connection for another process that
frees space.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors import errors
from tests.helpers import wait_until


class _SlowSyncVFS(apsw.VFS):
    """The default VFS, but the next ``slow`` fsyncs take ``delay`` seconds each."""

    def __init__(self, name: str, delay: float) -> None:
        self.name = name
        self.delay = delay
        self.slow = 0
        self.lock = threading.Lock()
        super().__init__(name, "")

    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:
        return _SlowSyncFile(self, name, flags)


class _SlowSyncFile(apsw.VFSFile):
    def __init__(self, vfs: _SlowSyncVFS, name: Any, flags: list[int]) -> None:
        self._vfs = vfs
        super().__init__("", name, flags)

    def xSync(self, flags: int) -> None:
        with self._vfs.lock:
            slow, self._vfs.slow = self._vfs.slow > 0, max(0, self._vfs.slow - 1)
        if slow:
            time.sleep(self._vfs.delay)
        super().xSync(flags)


@pytest.fixture
def slow_vfs() -> Iterator[_SlowSyncVFS]:
    vfs = _SlowSyncVFS(f"slowsync{id(object())}", delay=0.6)
    yield vfs
    vfs.unregister()


def _paid(tx: atlas.Transaction) -> str:
    tx.execute("INSERT INTO log(what) VALUES ('paid invoice 17')")
    return "done"


def _times_paid(db: atlas.Storage) -> int:
    return int(db.query("SELECT count(*) FROM log WHERE what = 'paid invoice 17'")[0][0])


def _conflicted(db: atlas.Storage) -> atlas.Transaction:
    """A repeatable_read transaction that failed with a (transient) TransactionConflict."""
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    db.execute("CREATE TABLE log(id INTEGER PRIMARY KEY AUTOINCREMENT, what TEXT)")
    db.write("INSERT INTO t VALUES (1, 'a')")
    tx = db.transaction(isolation="repeatable_read")
    tx.query("SELECT * FROM t")
    db.write("UPDATE t SET v = 'b' WHERE id = 1")  # another session commits meanwhile
    with pytest.raises(errors.TransactionConflict):
        tx.execute("INSERT INTO log(what) VALUES ('x')")
    return tx


# -- a COMMIT whose acknowledgement timed out is not run again ----------------------------


def test_recover_does_not_run_again_a_retry_whose_commit_was_not_acknowledged(
    open_storage: Callable[..., atlas.Storage], slow_vfs: _SlowSyncVFS
) -> None:
    db = open_storage(vfs=slow_vfs.name, default_timeout=0.2, cache=False)
    tx = _conflicted(db)
    slow_vfs.slow = 1  # the first retry's COMMIT outlasts its wait (0.6 s > 0.2 s)
    result = db.errors.recover(tx, retry=_paid)
    assert (result.strategy, result.recovered, result.attempts) == (
        "retry_with_backoff",
        False,
        1,
    ), result
    assert "may still be applied" in result.detail
    assert "check its effect before retrying" in result.detail
    # Until the writer answers, recover() says the same and runs nothing again; then
    # it reports the retry's outcome (committed): the work applied once.
    assert wait_until(lambda: db.errors.recover(tx, retry=_paid).recovered)
    again = db.errors.recover(tx, retry=_paid)
    assert (again.recovered, again.result) == (True, "done"), again
    assert "committed (its acknowledgement came late)" in again.detail
    assert _times_paid(db) == 1


def test_recover_does_not_run_again_a_transaction_whose_own_commit_was_not_acknowledged(
    open_storage: Callable[..., atlas.Storage], slow_vfs: _SlowSyncVFS
) -> None:
    db = open_storage(vfs=slow_vfs.name, default_timeout=0.2, cache=False)
    db.execute("CREATE TABLE log(id INTEGER PRIMARY KEY AUTOINCREMENT, what TEXT)")
    tx = db.transaction()
    _paid(tx)
    slow_vfs.slow = 1
    with pytest.raises(errors.OperationTimeout) as timed_out:
        tx.commit()
    assert timed_out.value.applied is None
    assert db.errors.analyze(timed_out.value).context["strategy"] == "check_then_retry"
    result = db.errors.recover(tx, retry=_paid)
    assert (result.strategy, result.recovered, result.attempts) == (
        "check_then_retry",
        False,
        0,
    ), result
    assert "outcome is uncertain" in result.detail
    assert wait_until(lambda: db.errors.recover(tx, retry=_paid).recovered)
    assert _times_paid(db) == 1


# -- a full disk, in an application that writes only through transactions ----------------


def _fill(db: atlas.Storage) -> atlas.Transaction:
    """Insert blobs in transactions until one fails on the full disk; that one."""
    db.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, data BLOB)")
    for i in range(1000):
        tx = db.transaction()
        try:
            with tx:
                tx.execute("INSERT INTO blobs VALUES (?, zeroblob(2000))", [i])
        except errors.DiskFullError:
            return tx
    raise AssertionError("the disk never filled")


def _blob(tx: atlas.Transaction) -> str:
    tx.execute("INSERT INTO blobs VALUES (100000, zeroblob(2000))")
    return "stored"


def test_recover_probes_a_full_disk_with_its_retry_once_per_interval(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    interval = 0.3
    db = open_storage(max_page_count=60, disk_full_probe_interval=interval, cache=False)
    failed = _fill(db)
    assert wait_until(lambda: db.disk_full)
    retried: list[int] = []

    def not_yet() -> None:  # a retry before the interval is over is not made
        early = db.errors.recover(failed, retry=lambda tx: retried.append(1))
        assert (early.strategy, early.recovered, early.attempts) == ("read_only", False, 0)
        assert "writes are refused until disk space returns" in early.detail, early
        assert (retried, db.disk_full) == ([], True)

    not_yet()  # (just found full: the first probe is one interval later, as the writer's)
    time.sleep(interval)
    # Still full: the retry probes, and finds out.
    result = db.errors.recover(failed, retry=_blob)
    assert (result.strategy, result.recovered, result.attempts) == ("read_only", False, 1)
    assert "the disk is still full" in result.detail, result
    # Another process frees space; no plain write probes (this application makes none).
    other = apsw.Connection(db.path)
    other.set_busy_timeout(5000)
    other.execute("DELETE FROM blobs WHERE id % 2 = 0")
    other.close()
    not_yet()
    # The next due retry probes, finds space, and its commit ends the mode.
    time.sleep(interval)
    result = db.errors.recover(failed, retry=_blob)
    assert (result.strategy, result.recovered, result.attempts, result.result) == (
        "read_only",
        True,
        1,
        "stored",
    ), result
    assert not db.disk_full
    assert db.query("SELECT count(*) FROM blobs WHERE id = 100000")[0][0] == 1

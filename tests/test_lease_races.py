"""A transaction handing the lease on, or giving it back, while the writer stops or crashes.

A committing transaction passes the connection straight to the next one waiting, in its
own thread (``WriterActor._hand_over``), and gives it back after its RELEASE. A writer
crash, a stop (``kill(how="stop")``) or ``close()`` may come at any point of that. The
outcome must be the truth: a commit that raised was not committed, one that returned
was, no thread is left registered as holding a lease it lost, and nobody waits past the
crash. Each test pauses the committing thread at one point (as a thread switch there
would) so that the writer's stop or crash lands exactly there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors.actors import writer as writer_module
from atlas_actors.actors.writer_ops import in_writer_thread
from atlas_actors.errors import AtlasError, TransactionAborted
from atlas_actors.transaction import lease as lease_module
from tests.helpers import gate_writer, wait_until


def _rows(path: Path) -> list[str]:
    connection = apsw.Connection(str(path))
    try:
        return [v for (v,) in connection.execute("SELECT v FROM t ORDER BY id")]
    finally:
        connection.close()


def _incarnation(db: atlas.Storage) -> int:
    return next(c.incarnation for c in db.supervisor.status().children if c.role == "writer")


def _pause_after_release(
    monkeypatch: pytest.MonkeyPatch, until: Callable[[], bool], then: Callable[[], None]
) -> None:
    """Pause a committing transaction right after its RELEASE: ``then()``, until ``until()``."""
    give_back = lease_module.Lease.give_back

    def paused(self: lease_module.Lease, sql: str) -> None:
        give_back(self, sql)
        if sql.startswith("RELEASE"):
            then()
            deadline = time.monotonic() + 10
            while not until() and time.monotonic() < deadline:
                time.sleep(0.002)

    monkeypatch.setattr(lease_module.Lease, "give_back", paused)


def _commit_one(db: atlas.Storage, outcome: list[object]) -> None:
    """Insert a row in a transaction and commit; note "committed" or the error."""
    tx = db.transactions.begin()
    try:
        tx.execute("INSERT INTO t(v) VALUES ('tx')")
        tx.commit()
        outcome.append("committed")
    except AtlasError as error:
        outcome.append(error)


def test_a_crash_during_a_hand_over_fails_both_transactions_and_frees_their_threads(
    open_storage: Callable[..., atlas.Storage], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The crash comes while the committing thread opens the next transaction's savepoint.
    db = open_storage(cache=False, default_timeout=5.0, max_batch_delay=10.0)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    handing_over = threading.Event()
    make_lease = writer_module.Lease

    def slow_lease(*args: object) -> lease_module.Lease:
        if not in_writer_thread():  # only a hand-over makes a lease outside the writer
            handing_over.set()
            time.sleep(0.3)
        return make_lease(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(writer_module, "Lease", slow_lease)
    first = db.transactions.begin()
    first.execute("INSERT INTO t(v) VALUES ('first')")  # holds the lease
    outcome: dict[str, object] = {}

    def second_thread() -> None:
        tx = db.transactions.begin()
        try:
            tx.execute("INSERT INTO t(v) VALUES ('second')")  # waits for the lease
            tx.commit()
            outcome["second"] = "committed"
        except AtlasError as error:
            outcome["second"] = error
        monkeypatch.undo()
        db.write("INSERT INTO t(v) VALUES ('later plain')", timeout=3)  # no false deadlock
        with db.transaction() as again:
            again.execute("INSERT INTO t(v) VALUES ('later tx')")

    second = threading.Thread(target=second_thread)
    second.start()
    time.sleep(0.3)  # the second transaction's request waits behind the lease
    killer = threading.Thread(target=lambda: handing_over.wait(5) and db.supervisor.kill("writer"))
    killer.start()
    started = time.monotonic()
    with pytest.raises(TransactionAborted):
        first.commit()
    assert time.monotonic() - started < 3  # told at the crash, not at its deadline
    killer.join(5)
    second.join(10)
    assert isinstance(outcome["second"], AtlasError), outcome
    assert db.lease_owners == {}
    assert sorted(v for (v,) in db.query("SELECT v FROM t")) == ["later plain", "later tx"]


def test_close_after_a_release_never_commits_a_transaction_told_it_failed(
    open_storage: Callable[..., atlas.Storage],
    monkeypatch: pytest.MonkeyPatch,
    db_path: Path,
) -> None:
    db = open_storage(cache=False)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    _pause_after_release(monkeypatch, until=lambda: db._state != "running", then=lambda: None)
    outcome: list[object] = []

    committer = threading.Thread(target=_commit_one, args=(db, outcome))
    committer.start()
    assert wait_until(lambda: db.transactions.status().lease_holder is not None)
    time.sleep(0.05)
    db.close()
    committer.join(10)
    committed = _rows(db_path) == ["tx"]
    assert (outcome == ["committed"]) == committed, (outcome, _rows(db_path))


def test_a_stop_after_a_release_never_commits_a_transaction_told_it_failed(
    open_storage: Callable[..., atlas.Storage], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = open_storage(cache=False, default_timeout=5.0, liveness_interval=0.05)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    before = _incarnation(db)
    _pause_after_release(
        monkeypatch,
        until=lambda: _incarnation(db) != before,
        then=lambda: threading.Thread(target=db.supervisor.kill, args=("writer", "stop")).start(),
    )
    tx = db.transactions.begin()
    tx.execute("INSERT INTO t(v) VALUES ('tx')")
    try:
        tx.commit()
        committed_said = True
    except AtlasError:
        committed_said = False
    monkeypatch.undo()
    assert committed_said == (db.query("SELECT v FROM t") == [("tx",)])
    assert db.lease_owners == {}  # this thread holds no lease any more
    assert db.write("INSERT INTO t(v) VALUES ('plain')", timeout=3).rowcount == 1


def test_close_after_a_release_fails_the_batchs_other_units_as_rolled_back(
    open_storage: Callable[..., atlas.Storage],
    monkeypatch: pytest.MonkeyPatch,
    db_path: Path,
) -> None:
    # The batch a returned transaction's changes are in is rolled back at the close:
    # a run_in_writer function of that batch is told so (not that the writer crashed).
    db = open_storage(cache=False, max_batch_delay=5.0)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    _pause_after_release(monkeypatch, until=lambda: db._state != "running", then=lambda: None)
    _, gate = gate_writer(db)
    unit = db.writer.run(lambda c: c.execute("INSERT INTO t(v) VALUES ('unit')"))
    outcome: list[object] = []

    committer = threading.Thread(target=_commit_one, args=(db, outcome))
    committer.start()
    time.sleep(0.1)
    gate.set()  # the unit runs, then the transaction gets the lease and releases
    assert wait_until(lambda: db.transactions.status().lease_holder is not None)
    time.sleep(0.1)
    db.close()
    committer.join(10)
    with pytest.raises(TransactionAborted, match="rolled back"):
        unit.get(5)
    assert isinstance(outcome[0], AtlasError)
    assert _rows(db_path) == []

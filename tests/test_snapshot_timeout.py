"""A snapshot kept past its transaction's timeout is ended, so the WAL stays bounded.

A ``repeatable_read`` transaction pins a reader with an open read transaction; SQLite
cannot checkpoint past the oldest snapshot, so one left open would let the WAL grow
without bound (DESIGN.md's WAL policy: recycle readers that pin old snapshots). Past
the transaction's ``timeout`` the tick rolls the snapshot back, gives the reader back
to the pool, and the owner's next call raises ``TransactionTimeout``.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import atlas_actors as atlas
from atlas_actors.errors import DeadlockError, TransactionTimeout, ValidationError
from atlas_actors.transaction.transaction import Transaction
from tests.helpers import wait_until


@pytest.fixture
def db(tmp_path: Path) -> Any:
    with atlas.open(
        tmp_path / "snap.db", cache=False, wal_size_limit=128 * 1024, readers=2
    ) as storage:
        storage.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        yield storage


def _wal_size(db: atlas.Storage) -> int:
    return os.path.getsize(f"{db.path}-wal")


def _write_for(db: atlas.Storage, seconds: float) -> int:
    written = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        db.write_all([("INSERT INTO t(v) VALUES (?)", ["x" * 500])] * 20)
        written += 20
    return written


def test_an_idle_snapshot_past_its_timeout_is_ended_and_the_wal_shrinks(
    db: atlas.Storage,
) -> None:
    tx = db.transactions.begin("repeatable_read", timeout=0.5)
    assert tx.query("SELECT count(*) AS n FROM t")[0].n == 0
    assert db.pool.status().active == 1  # the pinned reader

    _write_for(db, 0.4)  # within the timeout: the snapshot holds the WAL back
    assert tx.state == "active"
    assert tx.query("SELECT count(*) AS n FROM t")[0].n == 0  # still the same snapshot
    assert _wal_size(db) > 128 * 1024

    assert wait_until(lambda: tx.state == "failed", timeout=5)
    assert db.pool.status().active == 0  # the reader went back to the pool
    with pytest.raises(TransactionTimeout, match="kept its snapshot"):
        tx.query("SELECT count(*) AS n FROM t")
    with pytest.raises(TransactionTimeout):
        tx.commit()
    tx.rollback()  # harmless once ended
    assert db.transactions.status().active == ()

    # Nothing pins the WAL now: the writer truncates it back under its limit.
    assert wait_until(lambda: (_write_for(db, 0.1), _wal_size(db) <= 128 * 1024)[1], timeout=10)


def test_a_read_running_past_the_timeout_finishes_and_the_next_call_fails(
    db: atlas.Storage,
) -> None:
    """The tick never ends a snapshot under a running statement (the first read's
    included): the read returns, the owner's next call ends the snapshot."""
    slow = (
        "SELECT (SELECT count(*) FROM t) AS n, (WITH RECURSIVE c(x) AS (SELECT 1 "
        "UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) SELECT count(*) FROM c) AS m"
    )
    tx = db.transactions.begin("repeatable_read", timeout=0.1)
    started = time.monotonic()
    assert tx.query(slow)[0].n == 0  # the first read pins the snapshot
    assert time.monotonic() - started > 0.1  # (slow enough to outlast the timeout)
    db.write("INSERT INTO t(v) VALUES ('later')")
    with pytest.raises(TransactionTimeout, match="kept its snapshot"):
        tx.query("SELECT count(*) AS n FROM t")  # never a new snapshot seeing 'later'
    assert tx.state == "failed"
    assert db.pool.status().active == 0
    with pytest.raises(TransactionTimeout):
        tx.commit()
    assert db.transactions.graph.holders("pool:readers") == {}


def test_a_snapshot_within_its_timeout_is_left_alone(db: atlas.Storage) -> None:
    with db.transaction("repeatable_read", timeout=30) as tx:
        before = tx.query("SELECT count(*) AS n FROM t")[0].n
        db.write("INSERT INTO t(v) VALUES ('later')")
        time.sleep(0.3)  # several ticks
        assert tx.query("SELECT count(*) AS n FROM t")[0].n == before
    assert tx.state == "committed"


def test_a_transaction_that_goes_on_to_write_keeps_its_lease_timeout_only(
    db: atlas.Storage,
) -> None:
    """Once it writes, the lease replaces the snapshot: the tick no longer looks at it."""
    tx = db.transactions.begin("repeatable_read", timeout=5)
    tx.query("SELECT count(*) AS n FROM t")
    tx.execute("INSERT INTO t(v) VALUES ('mine')")
    assert db.pool.status().active == 0  # the reader was given back at the first write
    tx.commit()
    assert db.query("SELECT count(*) AS n FROM t")[0].n == 1


def test_the_owner_racing_the_tick_never_loses_a_reader(db: atlas.Storage) -> None:
    """Owners committing, reading and rolling back while the tick ends their snapshots:
    every reader comes back to the pool exactly once, and the pool keeps serving."""
    errors: list[BaseException] = []

    timed_out = [0]

    def owner(index: int) -> None:
        try:
            for round_ in range(30):
                tx = db.transactions.begin("repeatable_read", timeout=0.001 + 0.01 * (round_ % 4))
                try:
                    tx.query("SELECT count(*) AS n FROM t")
                    time.sleep(0.002 * (index % 3))
                    tx.query("SELECT count(*) AS n FROM t")
                    if round_ % 2:
                        tx.commit()
                    else:
                        tx.rollback()
                except TransactionTimeout:
                    timed_out[0] += 1
                    tx.rollback()
        except BaseException as error:  # pragma: no cover (the assertion says)
            errors.append(error)

    threads = [threading.Thread(target=owner, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert timed_out[0] > 0  # (the race happened)
    assert wait_until(lambda: db.pool.status().active == 0)
    status = db.pool.status()
    assert status.idle == status.total  # (the pool may have grown for the pinned ones)
    assert db.transactions.status().active == ()
    assert db.query("SELECT count(*) AS n FROM t")[0].n == 0


def test_a_thread_that_ends_with_its_snapshot_open_leaves_nothing_behind(
    db: atlas.Storage,
) -> None:
    """Its reader comes back and its hold leaves the wait-for graph (thread ids are
    reused: a new thread must not inherit a hold on the readers)."""
    pinned: list[int] = []

    def forgetful() -> None:
        tx = db.transactions.begin("repeatable_read", timeout=0.2)
        tx.query("SELECT count(*) AS n FROM t")
        pinned.append(threading.get_ident())  # and the thread ends, tx still open

    thread = threading.Thread(target=forgetful)
    thread.start()
    thread.join(10)
    graph = db.transactions.graph
    assert pinned and graph.holders("pool:readers") == {}  # forgotten as the thread ended
    assert wait_until(lambda: db.pool.status().active == 0, timeout=5)
    assert graph.holders("pool:readers") == {}
    assert db.transactions.status().active == ()


def test_the_owner_racing_the_tick_sees_one_truth(tmp_path: Path) -> None:
    """Reads, first writes and commits right at the timeout, with the tick every 5 ms:
    whatever the owner is told holds (a call that succeeded did so on an active
    transaction, a commit that returned committed), and nothing is left held."""
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # thread switches everywhere: the windows open often
    try:
        with atlas.open(
            tmp_path / "race.db", cache=False, readers=2, liveness_interval=0.005
        ) as db:
            db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
            rng = random.Random(7)
            deadline = time.monotonic() + 2.0
            outcomes: dict[str, int] = {}
            while time.monotonic() < deadline:
                tx = db.transactions.begin("repeatable_read", timeout=0.003)
                step = "read"
                try:
                    tx.query("SELECT count(*) AS n FROM t")
                    time.sleep(rng.uniform(0.0, 0.006))
                    if rng.random() < 0.5:
                        step = "write"
                        tx.execute("INSERT INTO t(v) VALUES ('w')")
                        assert tx.state == "active"
                    step = "commit"
                    tx.commit()
                    assert tx.state == "committed" and tx._error is None
                except TransactionTimeout:
                    assert tx.state == "failed" and tx._lease is None
                    tx.rollback()
                    step += " timed out"
                outcomes[step] = outcomes.get(step, 0) + 1
            assert db.transactions.status().lease_holder is None
            assert db.transactions.status().active == ()
            assert wait_until(lambda: db.pool.status().active == 0)
            assert db.transactions.graph.holders("pool:readers") == {}
            timed_out = sum(n for step, n in outcomes.items() if step.endswith("timed out"))
            assert outcomes.get("commit", 0) > 0 and timed_out > 0  # both sides of the race
    finally:
        sys.setswitchinterval(switch)


def test_a_nested_block_inside_an_expired_transaction_fails_instead_of_committing(
    db: atlas.Storage,
) -> None:
    """Outside its transaction a nested block would commit alone what it computed from
    the expired snapshot, over a write committed since (a lost update)."""
    db.execute("INSERT INTO t(id, v) VALUES (1, '0')")
    with pytest.raises(TransactionTimeout), db.transaction("repeatable_read", timeout=0.1) as tx:
        seen = int(tx.query("SELECT v FROM t WHERE id = 1")[0].v)
        db.write("UPDATE t SET v = '100' WHERE id = 1")  # committed after the snapshot
        assert wait_until(lambda: tx.state == "failed", timeout=5)  # the tick ended it
        with db.transaction() as nested:
            nested.execute("UPDATE t SET v = ? WHERE id = 1", [str(seen + 1)])
    assert db.query("SELECT v FROM t WHERE id = 1")[0].v == "100"
    assert db.transactions.status().active == ()


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf"), "5", True, 10**400])
def test_a_transaction_timeout_must_be_a_positive_number(db: atlas.Storage, timeout: Any) -> None:
    with pytest.raises(ValidationError, match="positive number of seconds"):
        db.transactions.begin("repeatable_read", timeout=timeout)
    with (
        pytest.raises(ValidationError, match="positive number of seconds"),
        db.transaction(timeout=timeout),
    ):
        pass  # pragma: no cover (never entered)
    assert db.transactions.status().active == ()
    with db.transaction(timeout=2) as tx:  # the runtime keeps serving
        tx.execute("INSERT INTO t(v) VALUES ('ok')")


def test_a_snapshot_that_cannot_be_ended_stops_no_lease_deadline(
    db: atlas.Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tick ends leases past their timeout whatever happens to a snapshot."""

    def broken(self: Any, now: float) -> bool:
        raise RuntimeError("a bug in ending a snapshot")

    monkeypatch.setattr(Transaction, "expire_snapshot", broken)
    reader = db.transactions.begin("repeatable_read", timeout=0.05)
    reader.query("SELECT count(*) AS n FROM t")  # pinned: the tick tries it each time

    def hold() -> None:  # another thread takes the lease and idles with it
        db.transactions.begin(timeout=0.2).execute("INSERT INTO t(v) VALUES ('held')")

    holder = threading.Thread(target=hold)
    holder.start()
    holder.join(5)
    started = time.monotonic()
    db.write("INSERT INTO t(v) VALUES ('waited')", timeout=5)
    assert time.monotonic() - started < 3  # the lease was revoked at its timeout
    assert db.transactions.status().lease_holder is None
    monkeypatch.undo()
    reader.rollback()


def test_two_snapshots_of_one_thread_keep_its_hold_until_both_end(db: atlas.Storage) -> None:
    first = db.transactions.begin("repeatable_read", timeout=0.1)
    second = db.transactions.begin("repeatable_read", timeout=30)
    first.query("SELECT count(*) AS n FROM t")
    second.query("SELECT count(*) AS n FROM t")
    graph = db.transactions.graph
    assert wait_until(lambda: first.state == "failed", timeout=5)  # the tick ended one
    assert list(graph.holders("pool:readers")) == [threading.get_ident()]  # still holds one
    second.rollback()
    assert graph.holders("pool:readers") == {}


def test_a_thread_pinning_every_reader_twice_over_is_refused_a_third(tmp_path: Path) -> None:
    with atlas.open(tmp_path / "d.db", readers=2, max_readers=2, default_timeout=5) as db:
        pinned = [db.transactions.begin("repeatable_read") for _ in range(2)]
        for tx in pinned:
            tx.query("SELECT 1 AS one")  # this thread pins both readers
        third = db.transactions.begin("repeatable_read")
        started = time.monotonic()
        with pytest.raises(DeadlockError):
            third.query("SELECT 1 AS one")  # would wait for a reader only it can free
        assert time.monotonic() - started < 1
        for tx in (*pinned, third):
            tx.rollback()


def test_a_failed_transaction_never_entered_as_a_block_does_not_refuse_later_ones(
    db: atlas.Storage,
) -> None:
    """Only open with-blocks make a nested db.transaction() a savepoint (or refuse it)."""
    stray = db.transaction(timeout=0.1)  # used without `with`
    stray.execute("INSERT INTO t(v) VALUES ('stray')")
    time.sleep(0.3)  # past its lease's timeout: revoked
    with pytest.raises(TransactionTimeout):
        stray.execute("INSERT INTO t(v) VALUES ('too late')")
    assert stray.state == "failed"
    stray.rollback()
    for i in range(2):
        with db.transaction() as tx:
            tx.execute("INSERT INTO t(v) VALUES (?)", [f"later {i}"])
    assert [r.v for r in db.query("SELECT v FROM t ORDER BY id")] == ["later 0", "later 1"]

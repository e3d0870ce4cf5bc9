"""How a transaction ends when its ending is interrupted, or comes from another thread.

* A commit interrupted (a real SIGINT: ``KeyboardInterrupt``) while it waits for its
  acknowledgement has sent its lease back: the writer commits it with its batch. It must
  say ``committing`` until the writer's answer makes it ``committed``, and the rollback
  on the way out (``with``, ``transactions.run``) must leave it alone: a transaction
  counted rolled back whose write is visible is a lie.
* A commit or rollback from another thread while the owner waits for the lease must
  leave no lease held by the ended transaction: the request is withdrawn, or the lease,
  if the writer had taken the request already, goes straight back.

Real threads throughout; the interrupts are real signals sent to the main thread.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors.errors import TransactionError
from atlas_actors.transaction.transaction import Transaction
from tests.helpers import wait_until


@pytest.fixture
def store(open_storage: Callable[..., atlas.Storage]) -> atlas.Storage:
    # max_batch_delay: the committing transaction hands the lease straight to the one
    # waiting, so its acknowledgement waits for that one to end.
    db = open_storage(max_batch_delay=5.0, transaction_timeout=4.0)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
    db.write("INSERT INTO t VALUES (1, 100), (2, 100)")
    return db


def _value(db: atlas.Storage, row: int) -> int:
    value: int = db.query("SELECT v FROM t WHERE id = ?", [row])[0].v
    return value


# -- a commit interrupted while it waits for its acknowledgement ------------------------


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in the main thread (Python's default), for the test."""
    assert threading.current_thread() is threading.main_thread()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _SlowSuccessor:
    """A transaction in another thread that queues for the lease, then holds it.

    Started while the main thread's transaction holds the lease: that one's commit hands
    the lease on to it, and is acknowledged only once it ends (``release``).
    """

    def __init__(self, db: atlas.Storage) -> None:
        self.db = db
        self.release = threading.Event()
        self.outcome: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with self.db.transaction() as tx:
                tx.execute("UPDATE t SET v = 222 WHERE id = 2")
                self.release.wait(10)
            self.outcome.append("committed")
        except Exception as error:  # (reported by the test)
            self.outcome.append(repr(error))

    def start_queued(self) -> None:
        """Start it, and return once its request for the lease waits in the writer."""
        self.thread.start()
        assert wait_until(lambda: self.db.transactions.status().queued >= 1)

    def finish(self) -> None:
        self.release.set()
        self.thread.join(10)
        assert self.outcome == ["committed"]


def _interrupt_main_thread_in(seconds: float) -> threading.Timer:
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(seconds, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    return timer


def _end_explicitly(db: atlas.Storage, successor: _SlowSuccessor) -> Transaction:
    """begin(), commit() interrupted, then rollback() as a caller's clean-up would."""
    tx = db.transactions.begin()
    tx.execute("UPDATE t SET v = 111 WHERE id = 1")
    successor.start_queued()
    timer = _interrupt_main_thread_in(0.3)
    try:
        with pytest.raises(KeyboardInterrupt):
            tx.commit()
        assert tx.state == "committing"  # sent: the writer's answer decides
        tx.rollback()  # (what a caller's `except BaseException` does)
        assert tx.state == "committing"
    finally:
        timer.cancel()
    return tx


def _end_in_with_block(db: atlas.Storage, successor: _SlowSuccessor) -> Transaction:
    """Leaving a ``with`` block commits: interrupted there."""
    box: list[Transaction] = []
    timer: threading.Timer | None = None
    try:
        with pytest.raises(KeyboardInterrupt), db.transaction() as tx:
            box.append(tx)
            tx.execute("UPDATE t SET v = 111 WHERE id = 1")
            successor.start_queued()
            timer = _interrupt_main_thread_in(0.3)
        assert box[0].state == "committing"
    finally:
        if timer is not None:
            timer.cancel()
    return box[0]


def _end_in_run(db: atlas.Storage, successor: _SlowSuccessor) -> Transaction:
    """``transactions.run`` commits after fn, and rolls back on any exception: interrupted."""
    box: list[Transaction] = []
    timers: list[threading.Timer] = []

    def fn(tx: Transaction) -> None:
        box.append(tx)
        tx.execute("UPDATE t SET v = 111 WHERE id = 1")
        successor.start_queued()
        timers.append(_interrupt_main_thread_in(0.3))

    try:
        with pytest.raises(KeyboardInterrupt):
            db.transactions.run(fn)
        assert len(box) == 1  # (never run again)
        assert box[0].state == "committing"
    finally:
        for timer in timers:
            timer.cancel()
    return box[0]


@pytest.mark.usefixtures("sigint_raises")
@pytest.mark.parametrize(
    "end", [_end_explicitly, _end_in_with_block, _end_in_run], ids=["commit", "with", "run"]
)
def test_a_commit_interrupted_while_waiting_for_its_acknowledgement_settles_committed(
    store: atlas.Storage, end: Callable[[atlas.Storage, _SlowSuccessor], Transaction]
) -> None:
    successor = _SlowSuccessor(store)
    try:
        tx = end(store, successor)
    finally:
        successor.finish()  # the chain ends: the writer commits the batch
    assert wait_until(lambda: tx.state == "committed"), tx.state
    assert _value(store, 1) == 111 and _value(store, 2) == 222
    tx.rollback()  # harmless once ended: nothing to undo, nothing counted
    assert tx.state == "committed"
    status = store.transactions.status()
    assert (status.committed, status.rolled_back, status.active) == (2, 0, ())
    assert status.lease_holder is None


# -- ended from another thread while its owner waits for the lease ----------------------


class _Waiter:
    """A transaction in its own thread whose first statement waits for the lease.

    The thread lives on until ``leave()``: a thread's end lets go of what it held, which
    would hide a lease left with its transaction.
    """

    def __init__(self, db: atlas.Storage) -> None:
        self.db = db
        self.began = threading.Event()
        self.done = threading.Event()
        self._leave = threading.Event()
        self.outcome: BaseException | str | None = None
        self.tx: Transaction | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.began.wait(5)

    def _run(self) -> None:
        self.tx = self.db.transactions.begin()
        self.began.set()
        try:
            self.tx.execute("UPDATE t SET v = 2 WHERE id = 2")
            self.outcome = "ran"
        except BaseException as error:
            self.outcome = error
        finally:
            self.done.set()
        self._leave.wait(10)

    def leave(self) -> None:
        self._leave.set()
        self.thread.join(10)
        assert not self.thread.is_alive()

    @property
    def transaction(self) -> Transaction:
        assert self.tx is not None
        return self.tx


def _no_lease_left(db: atlas.Storage) -> None:
    """Nobody holds the lease, nothing is active, and a plain write goes through at once."""
    status = db.transactions.status()
    assert status.lease_holder is None
    assert status.active == ()
    started = time.monotonic()
    db.write("UPDATE t SET v = v WHERE id = 1", timeout=2.0)
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("ending", ["rollback", "commit"])
def test_ended_from_another_thread_while_waiting_for_the_lease_the_request_is_withdrawn(
    store: atlas.Storage, ending: str
) -> None:
    holder = store.transactions.begin()
    holder.execute("UPDATE t SET v = 1 WHERE id = 1")
    waiter = _Waiter(store)
    try:
        assert wait_until(lambda: store.transactions.status().queued >= 1)
        getattr(waiter.transaction, ending)()
        assert waiter.transaction.state == ("rolled_back" if ending == "rollback" else "committed")
        # Withdrawn: the owner's wait ends now, not when the holder lets the lease go.
        assert waiter.done.wait(2), "the owner still waits for the lease of an ended transaction"
        assert isinstance(waiter.outcome, TransactionError), waiter.outcome
        assert store.transactions.status().lease_holder == holder.id
        holder.commit()
        assert waiter.done.wait(5)
        _no_lease_left(store)
    finally:
        holder.rollback()  # (harmless once committed)
        waiter.leave()
    with pytest.raises(TransactionError):
        waiter.transaction.execute("UPDATE t SET v = 99 WHERE id = 2")
    assert (_value(store, 1), _value(store, 2)) == (1, 100)
    status = store.transactions.status()
    expected = (2, 0) if ending == "commit" else (1, 1)
    assert (status.committed, status.rolled_back) == expected


def test_rolled_back_after_the_writer_took_the_request_the_lease_goes_straight_back(
    store: atlas.Storage, db_path: Path
) -> None:
    # Another process holds the write lock: the writer takes the lease request and waits
    # for the lock. The rollback can no longer withdraw it; the grant must come back.
    other = apsw.Connection(str(db_path))
    other.execute("BEGIN IMMEDIATE")
    locked = True
    waiter: _Waiter | None = None
    try:
        waiter = _Waiter(store)
        assert wait_until(lambda: store.metrics.snapshot().get("busy_retries", 0) > 0)
        waiter.transaction.rollback()  # from this thread, while the writer has the request
        assert waiter.transaction.state == "rolled_back"
        assert not waiter.done.is_set()  # (still waiting: the writer will grant it)
        other.execute("ROLLBACK")
        locked = False
        assert waiter.done.wait(5)
        assert isinstance(waiter.outcome, TransactionError), waiter.outcome
        _no_lease_left(store)
    finally:
        if locked:
            other.execute("ROLLBACK")
        other.close()
        if waiter is not None:
            waiter.leave()
    assert _value(store, 2) == 100
    status = store.transactions.status()
    assert (status.committed, status.rolled_back) == (0, 1)


@pytest.mark.parametrize("ending", ["rollback", "commit"])
def test_ended_from_another_thread_as_the_lease_is_handed_to_it_no_lease_is_left(
    store: atlas.Storage, ending: str
) -> None:
    # The end races the holder's commit, which hands the lease straight to the waiting
    # transaction: before the hand-over, during it, or after the owner stored the lease
    # (and maybe ran its statement). Whatever the order, no lease stays with it.
    rng = random.Random(ending)
    for _ in range(20):
        holder = store.transactions.begin()
        holder.execute("UPDATE t SET v = v + 1 WHERE id = 1")
        waiter = _Waiter(store)
        assert wait_until(lambda: store.transactions.status().queued >= 1)
        go = threading.Barrier(2)
        committed: list[object] = []
        # Which goes first, and by how much (up to 2 ms either way).
        lag = rng.uniform(-0.002, 0.002)

        def commit_holder(
            holder: Transaction = holder,
            go: threading.Barrier = go,
            committed: list[object] = committed,
            lag: float = lag,
        ) -> None:
            go.wait(5)
            if lag < 0:
                time.sleep(-lag)
            holder.commit()
            committed.append(True)

        committer = threading.Thread(target=commit_holder, daemon=True)
        committer.start()
        go.wait(5)
        if lag > 0:
            time.sleep(lag)
        tx = waiter.transaction
        getattr(tx, ending)()  # (nobody else ends it: never refused)
        # The holder's commit is acknowledged once the chain after it ends: at once,
        # unless the ended transaction kept the lease (until transaction_timeout, 4 s).
        committer.join(3)
        assert committed == [True], "a lease stayed with the ended transaction"
        assert waiter.done.wait(5)
        assert tx.state == ("rolled_back" if ending == "rollback" else "committed")
        # Its statement ran before the end took the lease (and the end ended it with the
        # rest, below), or was refused as one on an ended transaction.
        if not isinstance(waiter.outcome, TransactionError):
            assert waiter.outcome == "ran", waiter.outcome
        _no_lease_left(store)
        waiter.leave()
    # A rolled-back transaction's write never shows; a committed one's may (it ran first).
    if ending == "rollback":
        assert _value(store, 2) == 100
    assert _value(store, 1) == 120

"""Lease requests that queue themselves behind the lease out (``queue_lease_request``)."""

from __future__ import annotations

import threading
import time

import atlas_actors as atlas
from atlas_actors.actors.writer_ops import WriteOp
from atlas_actors.handles import WriterFuture
from tests.helpers import wait_until


def _hold_lease(db: atlas.Storage) -> tuple[threading.Thread, threading.Event, threading.Event]:
    """A thread whose transaction holds the writer lease until ``release`` is set."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with db.transaction() as tx:
            tx.execute("INSERT INTO tasks(title) VALUES ('holder')")
            holding.set()
            assert release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(5)
    return thread, holding, release


def test_a_request_behind_a_lease_queues_itself_and_gets_the_lease_handed_over(
    db: atlas.Storage,
) -> None:
    holder, _, release = _hold_lease(db)
    before = db.writer.stats()
    committed = threading.Event()

    def second() -> None:
        with db.transaction() as tx:
            tx.execute("INSERT INTO tasks(title) VALUES ('second')")
        committed.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert wait_until(lambda: db.transactions.status().queued == 1)
    assert db.writer._mailbox.qsize() == 0  # queued behind the lease, not sent
    release.set()
    holder.join(5)
    thread.join(5)
    assert committed.is_set()
    assert db.writer.stats().handovers - before.handovers == 1
    titles = [row.title for row in db.query("SELECT title FROM tasks ORDER BY id")]
    assert titles == ["holder", "second"]


def test_a_threads_write_runs_before_its_transaction_queued_behind_the_same_lease(
    db: atlas.Storage,
) -> None:
    # The thread sends a write without waiting, then begins a transaction, while
    # another transaction holds the lease: the write waits behind the lease, so the
    # request must too (a request queuing itself would overtake it).
    holder, _, release = _hold_lease(db)
    seen: list[object] = []

    def write_then_transact() -> None:
        db.writer.execute("INSERT INTO tasks(title) VALUES ('mine')")
        with db.transaction() as tx:
            seen.append(tx.query("SELECT count(*) FROM tasks WHERE title = 'mine'")[0][0])

    thread = threading.Thread(target=write_then_transact)
    thread.start()
    assert wait_until(lambda: db.transactions.status().queued == 2)
    release.set()
    holder.join(5)
    thread.join(5)
    assert seen == [1]


def test_a_write_created_before_a_queued_request_runs_before_it_whatever_arrived_first(
    db: atlas.Storage,
) -> None:
    # The race queue_lease_request must survive: the writer takes a write off the
    # mailbox, and before it stashes it behind the lease, the same thread's next
    # message, a lease request, finds nothing waiting and queues itself. Played here
    # by creating the write first and sending it after the request queued itself.
    holder, _, release = _hold_lease(db)
    handle = db.writer
    future: WriterFuture[object] = WriterFuture(time.monotonic() + 5, "write")
    write = WriteOp(
        future, threading.get_ident(), None, "INSERT INTO tasks(title) VALUES ('w')", None
    )
    seen: list[object] = []
    requested = threading.Event()

    def transact() -> None:
        tx = db.transactions.begin()
        requested.set()
        seen.append(tx.query("SELECT count(*) FROM tasks WHERE title = 'w'")[0][0])
        tx.commit()

    thread = threading.Thread(target=transact)
    thread.start()
    assert requested.wait(5)
    assert wait_until(lambda: db.transactions.status().queued == 1)
    assert handle._mailbox.qsize() == 0  # the request queued itself
    handle._mailbox.send(write)  # the write, older than the request, arrives now
    assert wait_until(lambda: db.transactions.status().queued == 2)
    release.set()
    holder.join(5)
    thread.join(5)
    assert future.get(5).rowcount == 1
    assert seen == [1]

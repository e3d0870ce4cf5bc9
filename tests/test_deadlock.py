"""The deadlock guard: a call that would wait on itself fails at once."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors.actors.writer_ops import _writer_threads, in_writer_thread
from atlas_actors.errors import DeadlockError
from atlas_actors.transaction.lease import Lease
from atlas_actors.transaction.transaction import LEASE
from tests.helpers import wait_until


def test_a_function_in_the_writer_that_writes_through_the_storage_gets_deadlock_error(
    db: atlas.Storage,
) -> None:
    def nested(connection: apsw.Connection) -> None:
        db.write("INSERT INTO tasks(title) VALUES ('inner')")

    started = time.monotonic()
    with pytest.raises(DeadlockError, match="use the connection it was given"):
        db.run_in_writer(nested)
    assert time.monotonic() - started < 1.0  # at once, not after a timeout
    assert db.write("INSERT INTO tasks(title) VALUES ('outer')").rowcount == 1


def test_waiting_on_a_writer_future_inside_the_writer_gets_deadlock_error(
    db: atlas.Storage,
) -> None:
    def waits(connection: apsw.Connection) -> None:
        db.writer.execute("INSERT INTO tasks(title) VALUES ('x')").get(timeout=5)

    with pytest.raises(DeadlockError) as caught:
        db.run_in_writer(waits)
    assert caught.value.cycle[0] == "writer thread"


def test_the_writer_thread_mark_covers_other_storages_and_ends_with_the_thread(
    db: atlas.Storage, open_storage: Callable[..., atlas.Storage], tmp_path: Path
) -> None:
    # The guard knows writer threads by ident; an ident is reused once its thread ends.
    other = open_storage(tmp_path / "other.db")
    other.execute("CREATE TABLE t(x)")

    def waits(connection: apsw.Connection) -> int:
        with pytest.raises(DeadlockError):
            other.writer.execute("INSERT INTO t VALUES (1)").get(timeout=5)
        return threading.get_ident()

    ident = db.run_in_writer(waits)
    assert in_writer_thread() is False
    db.close()
    deadline = time.monotonic() + 5
    while ident in _writer_threads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ident not in _writer_threads


def test_reads_from_inside_the_writer_are_allowed(db: atlas.Storage) -> None:
    db.write("INSERT INTO tasks(title) VALUES ('a')")
    assert db.run_in_writer(lambda c: db.query("SELECT title FROM tasks")) == [("a",)]


def test_a_plain_write_from_the_thread_holding_a_transaction_gets_deadlock_error(
    db: atlas.Storage,
) -> None:
    with db.transaction() as tx:
        tx.execute("INSERT INTO tasks(title) VALUES ('in tx')")
        started = time.monotonic()
        with pytest.raises(DeadlockError, match="holds the writer lease"):
            db.write("INSERT INTO tasks(title) VALUES ('plain')")
        with pytest.raises(DeadlockError) as caught:
            db.write_all([("DELETE FROM tasks", None), ("DELETE FROM kv", None)])
        assert "write_all 'DELETE FROM tasks; DELETE FROM kv'" in caught.value.cycle
        with pytest.raises(DeadlockError):
            db.run_in_writer(lambda c: None)
        # Through the proxy: submitting is fine, waiting on it from here is not.
        queued = db.writer.execute("INSERT INTO tasks(title) VALUES ('queued')")
        with pytest.raises(DeadlockError, match="holds the writer lease"):
            queued.get(timeout=30)
        assert time.monotonic() - started < 1.0
        assert db.metrics.snapshot()["errors.deadlock"] == 4  # each refusal reported
    assert queued.get(timeout=5).rowcount == 1  # it ran once the transaction committed
    assert sorted(r.title for r in db.query("SELECT title FROM tasks")) == ["in tx", "queued"]
    assert db.write("INSERT INTO tasks(title) VALUES ('after')").rowcount == 1


def test_a_second_transaction_waiting_for_the_lease_its_thread_holds_is_refused(
    db: atlas.Storage,
) -> None:
    first = db.transactions.begin()
    first.execute("INSERT INTO tasks(title) VALUES ('first')")
    second = db.transactions.begin()
    with pytest.raises(DeadlockError, match="its own thread holds"):
        second.execute("INSERT INTO tasks(title) VALUES ('second')")
    assert second.state == "active"  # refused before it waited: usable after first ends
    first.commit()
    second.execute("INSERT INTO tasks(title) VALUES ('second')")
    second.commit()
    assert len(db.query("SELECT * FROM tasks")) == 2


def test_a_cycle_through_the_reader_pool_is_detected(open_storage: object) -> None:
    db: atlas.Storage = open_storage(readers=1, max_readers=1)  # type: ignore[operator]
    db.execute("CREATE TABLE t(x)")
    holder_has_lease, reader_pinned = threading.Event(), threading.Event()
    other_waiting = threading.Event()
    outcome: list[BaseException | None] = []

    def pins_a_reader_then_wants_the_lease() -> None:
        tx = db.transactions.begin("repeatable_read")
        tx.query("SELECT count(*) FROM t")  # pins the only reader
        reader_pinned.set()
        holder_has_lease.wait(5)
        other_waiting.set()
        try:
            tx.execute("INSERT INTO t VALUES (1)")  # waits for the lease
            tx.commit()
        except BaseException as error:
            outcome.append(error)
            tx.rollback()

    other = threading.Thread(target=pins_a_reader_then_wants_the_lease)
    holder = db.transactions.begin("serializable")
    holder.execute("INSERT INTO t VALUES (0)")  # holds the lease
    other.start()
    assert reader_pinned.wait(5)
    holder_has_lease.set()
    assert other_waiting.wait(5)
    time.sleep(0.05)  # let the other thread block on the lease
    snapshot = db.transactions.begin("repeatable_read")
    with pytest.raises(DeadlockError, match="pool:readers"):
        snapshot.query("SELECT count(*) FROM t")  # would wait for the pinned reader
    holder.commit()
    other.join(10)
    assert outcome and type(outcome[0]).__name__ == "TransactionConflict"  # x changed


@pytest.mark.parametrize("cache", [False, True], ids=["uncached", "cached"])
def test_a_plain_read_by_the_lease_holder_closing_a_cycle_is_refused(
    open_storage: object, cache: bool
) -> None:
    # As above, but the holder's wait is a plain db.query: it needs a reader, the only
    # one pinned by a snapshot that waits for the holder's lease.
    db: atlas.Storage = open_storage(  # type: ignore[operator]
        readers=1, max_readers=1, cache=cache, default_timeout=10.0
    )
    db.execute("CREATE TABLE t(x)")
    reader_pinned, other_waiting = threading.Event(), threading.Event()
    outcome: list[BaseException | None] = []

    def pins_a_reader_then_wants_the_lease() -> None:
        tx = db.transactions.begin("repeatable_read")
        tx.query("SELECT count(*) FROM t")  # pins the only reader
        reader_pinned.set()
        other_waiting.set()
        try:
            tx.execute("INSERT INTO t VALUES (1)")  # waits for the lease
            tx.commit()
        except BaseException as error:
            outcome.append(error)
            tx.rollback()

    holder = db.transactions.begin("serializable")
    holder.execute("INSERT INTO t VALUES (0)")  # holds the lease
    other = threading.Thread(target=pins_a_reader_then_wants_the_lease)
    other.start()
    assert reader_pinned.wait(5) and other_waiting.wait(5)
    assert wait_until(lambda: bool(db.transactions.graph.waits()))  # it waits for the lease
    started = time.monotonic()
    with pytest.raises(DeadlockError, match="pool:readers"):
        db.query("SELECT count(*) FROM t WHERE x >= 0")
    assert time.monotonic() - started < 2  # at once, not at a deadline
    holder.commit()
    other.join(10)
    assert outcome and type(outcome[0]).__name__ == "TransactionConflict"


def test_a_reader_busy_with_an_ordinary_read_is_no_deadlock(open_storage: object) -> None:
    # As above, but a second reader is only borrowed for a moment (no transaction): it
    # comes free, so the lease holder's read waits for it instead of being refused.
    db: atlas.Storage = open_storage(  # type: ignore[operator]
        readers=2, max_readers=2, cache=False, default_timeout=10.0
    )
    db.execute("CREATE TABLE t(x)")
    pinned = threading.Event()

    def pins_a_reader_then_wants_the_lease() -> None:
        tx = db.transactions.begin("repeatable_read")
        tx.query("SELECT count(*) FROM t")
        pinned.set()
        try:
            tx.execute("INSERT INTO t VALUES (1)")
            tx.commit()
        except atlas.errors.AtlasError:
            tx.rollback()

    holder = db.transactions.begin("serializable")
    holder.execute("INSERT INTO t VALUES (0)")
    borrowed = db.pool.acquire()
    other = threading.Thread(target=pins_a_reader_then_wants_the_lease)
    other.start()
    assert pinned.wait(5)
    assert wait_until(lambda: bool(db.transactions.graph.waits()))
    threading.Timer(0.3, borrowed.release).start()
    assert db.query("SELECT count(*) FROM t") == [(0,)]  # after the borrower is done
    holder.commit()
    other.join(10)


def test_a_plain_read_by_a_thread_whose_snapshot_pins_the_only_reader_is_refused(
    open_storage: object,
) -> None:
    db: atlas.Storage = open_storage(  # type: ignore[operator]
        readers=1, max_readers=1, cache=False, default_timeout=10.0
    )
    db.execute("CREATE TABLE t(x)")
    me = threading.get_ident()
    tx = db.transactions.begin("repeatable_read")
    tx.query("SELECT count(*) FROM t")  # pins the only reader
    assert me in db.guarded_threads
    started = time.monotonic()
    with pytest.raises(DeadlockError, match="pins a reader for its snapshot") as caught:
        db.query("SELECT count(*) FROM t WHERE x >= 0")  # would wait for its own reader
    assert time.monotonic() - started < 2  # at once, not at the deadline
    assert caught.value.cycle[-1].startswith(f"held by thread {me}")
    assert db.transactions.graph.waits() == {}  # the refused wait was not recorded
    db.write("INSERT INTO t VALUES (1)")  # nobody holds the lease: a plain write is fine
    assert tx.query("SELECT count(*) FROM t") == [(0,)]  # (its snapshot)
    tx.rollback()
    assert me not in db.guarded_threads  # holds nothing any more: the fast path again
    assert db.query("SELECT count(*) FROM t") == [(1,)]


@pytest.mark.parametrize("order", ["write first", "read first"])
@pytest.mark.parametrize("how", ["db.write", "writer future"])
def test_a_snapshot_holders_plain_write_and_the_lease_holders_plain_read_close_a_cycle(
    open_storage: object, order: str, how: str
) -> None:
    # A pins the only reader; C holds the lease. A's plain write waits behind C's lease,
    # C's plain read waits for A's reader: whichever comes second is refused at once.
    db: atlas.Storage = open_storage(  # type: ignore[operator]
        readers=1, max_readers=1, cache=False, default_timeout=10.0
    )
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
    db.write("INSERT INTO t VALUES (1, 0), (2, 0)")
    pinned, lease_held = threading.Event(), threading.Event()
    c_may_read, c_done = threading.Event(), threading.Event()
    a_outcome: list[object] = []
    c_outcome: list[object] = []

    def a() -> None:
        tx = db.transactions.begin("repeatable_read")
        tx.query("SELECT v FROM t WHERE id = 1")  # pins the only reader
        pinned.set()
        lease_held.wait(5)
        if order == "read first":
            assert wait_until(lambda: bool(db.transactions.graph.waits()))  # C waits
        started = time.monotonic()
        queued = None
        try:
            if how == "db.write":
                db.write("UPDATE t SET v = 7 WHERE id = 1", timeout=5)
            else:  # (a future's wait was once checked, not recorded: C's read waited)
                queued = db.writer.execute("UPDATE t SET v = 7 WHERE id = 1", timeout=5)
                queued.get()
            a_outcome.append(time.monotonic() - started)
        except BaseException as error:
            a_outcome.append(error)
            a_outcome.append(time.monotonic() - started)
        finally:
            tx.rollback()  # gives the reader back
        if queued is not None and not queued.done():
            queued.get(5)  # refused to wait while pinning, not withdrawn: it runs after C

    def c() -> None:
        with db.transaction() as tx:
            tx.execute("UPDATE t SET v = 5 WHERE id = 2")  # holds the lease
            lease_held.set()
            c_may_read.wait(5)
            started = time.monotonic()
            try:
                c_outcome.append(db.query("SELECT count(*) FROM t", timeout=5))
            except BaseException as error:
                c_outcome.append(error)
            c_outcome.append(time.monotonic() - started)
        c_done.set()

    a_thread = threading.Thread(target=a)
    a_thread.start()
    assert pinned.wait(5)
    c_thread = threading.Thread(target=c)
    c_thread.start()
    assert lease_held.wait(5)
    if order == "write first":
        assert wait_until(lambda: bool(db.transactions.graph.waits()))  # A waits
    c_may_read.set()
    a_thread.join(15)
    c_thread.join(15)
    assert c_done.is_set()
    if order == "write first":
        # C's read is refused at once; C commits, and A's write goes through after it.
        assert isinstance(c_outcome[0], DeadlockError), c_outcome
        assert "pool:readers" in str(c_outcome[0]) and c_outcome[1] < 2  # type: ignore[operator]
        assert isinstance(a_outcome[0], float), a_outcome
        assert db.query("SELECT v FROM t ORDER BY id") == [(7,), (5,)]
    else:
        # A's write is refused at once; A ends its snapshot, so C's read gets a reader.
        assert isinstance(a_outcome[0], DeadlockError), a_outcome
        assert "waits behind the writer lease" in str(a_outcome[0])
        assert a_outcome[1] < 2  # type: ignore[operator]
        assert c_outcome[0] == [(2,)], c_outcome
        # A refused db.write was never queued; a refused wait on a future leaves the
        # write queued (as for a lease holder): it ran once C committed.
        a_value = 0 if how == "db.write" else 7
        assert db.query("SELECT v FROM t ORDER BY id") == [(a_value,), (5,)]
    assert db.transactions.graph.waits() == {}
    assert db.guarded_threads <= db.writer_threads


def test_a_snapshot_holders_plain_write_behind_a_lease_is_no_deadlock_with_free_readers(
    open_storage: object,
) -> None:
    # As above, with a second reader: the lease holder's read takes it, so nobody is
    # refused, and the write waits for the lease, then goes through.
    db: atlas.Storage = open_storage(  # type: ignore[operator]
        readers=2, max_readers=2, cache=False, default_timeout=10.0
    )
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
    db.write("INSERT INTO t VALUES (1, 0), (2, 0)")
    pinned, a_done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def a() -> None:
        try:
            tx = db.transactions.begin("repeatable_read")
            tx.query("SELECT v FROM t WHERE id = 1")
            pinned.set()
            db.write("UPDATE t SET v = 7 WHERE id = 1", timeout=5)  # behind the lease
            assert db.query("SELECT v FROM t WHERE id = 1") == [(7,)]  # a free reader
            tx.rollback()
        except BaseException as error:  # pragma: no cover (the failure this is for)
            errors.append(error)
        a_done.set()

    holder = db.transactions.begin("serializable")
    holder.execute("UPDATE t SET v = 5 WHERE id = 2")
    a_thread = threading.Thread(target=a)
    a_thread.start()
    assert pinned.wait(5)
    assert wait_until(lambda: bool(db.transactions.graph.waits()))  # A waits for the lease
    assert db.query("SELECT count(*) FROM t") == [(2,)]  # the other reader: no cycle
    holder.commit()
    a_thread.join(10)
    assert a_done.is_set() and errors == []
    assert db.guarded_threads <= db.writer_threads


def test_a_thread_that_ends_pinning_a_reader_is_guarded_no_more(open_storage: object) -> None:
    # Its ident may be given to the next thread, which holds nothing.
    db: atlas.Storage = open_storage(readers=2, max_readers=2)  # type: ignore[operator]
    db.execute("CREATE TABLE t(x)")
    kept: list[atlas.Transaction] = []
    idents: list[int] = []

    def pins_and_ends() -> None:
        tx = db.transactions.begin("repeatable_read")
        tx.query("SELECT count(*) FROM t")
        idents.append(threading.get_ident())
        assert threading.get_ident() in db.guarded_threads
        kept.append(tx)  # still open, its reader still pinned, after the thread ends

    thread = threading.Thread(target=pins_and_ends)
    thread.start()
    thread.join(5)
    assert idents and wait_until(lambda: idents[0] not in db.guarded_threads)
    assert not db.transactions.graph.holds(idents[0])
    kept[0].rollback()
    assert db.guarded_threads <= db.writer_threads


class _Owners(dict[int, int]):
    """Lease owners whose reading lets another thread act in the middle of a search."""

    def __init__(self) -> None:
        super().__init__()
        self.during_read: Callable[[], None] | None = None

    def items(self) -> Any:
        snapshot = list(super().items())
        if self.during_read is not None:
            act, self.during_read = self.during_read, None
            worker = threading.Thread(target=act)
            worker.start()
            worker.join(0.3)  # lets it run now, unless it waits for the search's lock
        return snapshot


def test_a_cycle_search_sees_one_state_while_a_lease_ends(db: atlas.Storage) -> None:
    """Thread 2 ends its lease, then waits for a reader, while thread 1 (holding the
    reader) searches for a cycle: thread 1 must not join the two moments into one."""
    graph = db.transactions.graph
    owners = _Owners()
    db.lease_owners = owners  # the runtime changes it, the graph reads it
    graph.track(LEASE, owners, "transaction {}")
    assert db.writer_connection is not None
    lease = Lease(7, "tx7", db.writer_connection, owner=2, timeout=10.0)
    db._lease_granted(lease)
    graph.hold(1, "pool:readers", "transaction 8")
    moved_on = threading.Event()

    def thread_2_moves_on() -> None:
        db._lease_ended(lease)
        graph.waiting(2, "pool:readers")
        moved_on.set()

    owners.during_read = thread_2_moves_on
    graph.check(1, LEASE)  # 2 held the lease and waited for nothing: no cycle
    assert moved_on.wait(5)
    graph.check(1, LEASE)  # nobody holds the lease now
    graph.done_waiting(2)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_inherits_no_writer_threads(db: atlas.Storage) -> None:
    # The child runs none of its parent's writers, and its own threads may be given
    # their idents: a stale one would refuse a plain wait there as a deadlock.
    db.write("INSERT INTO tasks(title) VALUES ('before the fork')")
    assert _writer_threads  # the writer's thread, at least
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child: reports through its exit status)
        os._exit(0 if not _writer_threads else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_wait_for_a_reader_that_will_come_free_is_no_link_of_a_cycle(
    open_storage: object,
) -> None:
    """T pins a reader; U holds the lease and waits for a reader, which an ordinary
    borrower is about to give back. T's plain write (behind U's lease) was refused as a
    deadlock: mid-search, a wait for the pool was taken as one no unit would end."""
    db: atlas.Storage = open_storage(  # type: ignore[operator]
        readers=2, max_readers=2, cache=False, default_timeout=10.0
    )
    db.execute("CREATE TABLE t(x)")
    db.write("INSERT INTO t VALUES (1)")
    borrowed, give_back = threading.Event(), threading.Event()

    def v() -> None:  # an ordinary borrower, in a thread of its own: not in the graph
        with db.pool.connection():
            borrowed.set()
            give_back.wait(10)

    v_thread = threading.Thread(target=v)
    v_thread.start()
    assert borrowed.wait(5)
    u_waits, u_read = threading.Event(), []

    def u() -> None:
        with db.transaction() as tx:
            tx.execute("INSERT INTO t VALUES (2)")  # holds the lease
            u_waits.set()
            u_read.append(db.query("SELECT count(*) AS n FROM t")[0].n)  # waits for a reader

    u_thread = threading.Thread(target=u)
    with db.transaction(isolation="repeatable_read") as tx:
        tx.query("SELECT * FROM t")  # pins the other reader
        u_thread.start()
        assert u_waits.wait(5)
        assert wait_until(lambda: bool(db.transactions.graph.waits()))  # U waits
        threading.Timer(0.3, give_back.set).start()
        started = time.monotonic()
        assert db.write("INSERT INTO t VALUES (3)").rowcount == 1  # after U commits
        assert time.monotonic() - started < 5
    u_thread.join(10)
    v_thread.join(10)
    assert u_read == [1]  # (U's own insert is outside its read: no snapshot of the lease)
    assert db.query("SELECT count(*) AS n FROM t")[0].n == 3


def test_a_reader_the_lease_holder_borrowed_itself_is_no_reader_that_comes_free(
    open_storage: object,
) -> None:
    """T pins one reader; U holds the lease, has borrowed the other reader itself, and
    waits for a reader. T's plain write behind U's lease closes a cycle: U's own lease
    comes free only once U goes on. Counted as one that comes free, both waited out
    their deadlines."""
    db: atlas.Storage = open_storage(  # type: ignore[operator]
        readers=2, max_readers=2, cache=False, default_timeout=4.0
    )
    db.execute("CREATE TABLE t(x)")
    db.write("INSERT INTO t VALUES (1)")
    u_waits, u_done = threading.Event(), threading.Event()
    u_outcome: list[object] = []

    def u() -> None:
        with db.transaction() as tx, db.pool.connection():
            tx.execute("INSERT INTO t VALUES (2)")  # holds the lease
            u_waits.set()
            try:
                u_outcome.append(db.query("SELECT count(*) AS n FROM t")[0].n)
            except BaseException as error:
                u_outcome.append(error)
        u_done.set()

    with db.transaction(isolation="repeatable_read") as tx:
        tx.query("SELECT * FROM t")  # pins one reader
        u_thread = threading.Thread(target=u)
        u_thread.start()
        assert u_waits.wait(5)
        assert wait_until(lambda: bool(db.transactions.graph.waits()))  # U waits
        started = time.monotonic()
        with pytest.raises(DeadlockError, match="pool:readers"):
            db.write("INSERT INTO t VALUES (3)")
        assert time.monotonic() - started < 1
    assert u_done.wait(5)  # T ended its snapshot: U got a reader
    u_thread.join(5)
    assert u_outcome == [1]


@pytest.mark.parametrize("call", ["writer.execute", "checkpoint"])
def test_the_lease_holder_finding_the_writer_mailbox_full_gets_deadlock_error(
    open_storage: Callable[..., atlas.Storage], call: str
) -> None:
    """Its call waited for room that only the end of its own transaction makes: until
    the transaction's timeout rolled it back (or, past default_timeout, for ever)."""
    db = open_storage(mailbox_size=2, transaction_timeout=4.0, cache=False)
    db.execute("CREATE TABLE t(x)")
    tx = db.transactions.begin()
    tx.execute("INSERT INTO t VALUES ('tx')")  # this thread holds the writer lease
    writers = [
        threading.Thread(target=db.write, args=("INSERT INTO t VALUES (?)", [f"w{i}"]))
        for i in range(4)
    ]
    for writer in writers:
        writer.start()
    assert wait_until(lambda: db.writer._mailbox.qsize() + db.writer._mailbox.held >= 2)
    started = time.monotonic()
    with pytest.raises(atlas.errors.DeadlockError, match="the writer's queue is full"):
        if call == "checkpoint":
            db.wal.checkpoint()
        else:
            db.writer.execute("INSERT INTO t VALUES ('future')")
    assert time.monotonic() - started < 1.0  # at once
    tx.commit()
    for writer in writers:
        writer.join(10)
    assert sorted(row.x for row in db.query("SELECT x FROM t")) == ["tx", "w0", "w1", "w2", "w3"]


def test_a_write_after_close_from_a_thread_whose_lease_was_lost_says_closed(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    """A thread whose commit failed as the storage closed stayed recorded as a lease
    holder in some races: its next plain write got a DeadlockError advising to commit
    first, instead of the closed error every other thread got."""
    db = open_storage(cache=False)
    db.execute("CREATE TABLE t(x)")
    db.lease_owners[threading.get_ident()] = 999  # (what such a race left behind)
    db.guarded_threads.add(threading.get_ident())
    db.close()
    with pytest.raises(atlas.errors.StorageClosedError):
        db.write("INSERT INTO t VALUES (1)")
    with pytest.raises(atlas.errors.StorageClosedError):
        db.run_in_writer(lambda connection: None)


def test_code_in_the_writer_sending_to_its_full_mailbox_gets_deadlock_error(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    """It waited for room only the writer itself makes: every write stopped until the
    call's deadline."""
    db = open_storage(mailbox_size=2, default_timeout=4.0, cache=False)
    db.execute("CREATE TABLE t(x)")
    busy, queued = threading.Event(), threading.Event()
    outcome: list[str] = []

    def fn(connection: apsw.Connection) -> None:
        busy.set()
        queued.wait(5)
        started = time.monotonic()
        try:
            db.writer.execute("INSERT INTO t VALUES ('from the writer')")
            outcome.append("queued")
        except atlas.errors.AtlasError as error:
            outcome.append(type(error).__name__)
        assert time.monotonic() - started < 1.0

    running = db.writer.run(fn)
    assert busy.wait(5)
    others = [db.writer.execute("INSERT INTO t VALUES (?)", [i]) for i in range(2)]
    queued.set()
    running.get(5)
    assert outcome == ["DeadlockError"]
    for other in others:
        other.get(5)


def test_write_all_waits_for_room_behind_a_lease_like_every_call(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    """Its inlined queueing counted only the mailbox's queue, not what the writer holds
    back behind a lease: 200 calls were taken with mailbox_size=4."""
    db = open_storage(mailbox_size=4, cache=False)
    db.execute("CREATE TABLE t(x)")
    tx = db.transactions.begin()
    tx.execute("INSERT INTO t VALUES ('tx')")
    taken: list[object] = []

    def sends() -> None:
        for i in range(20):
            taken.append(db.writer.write_all([("INSERT INTO t VALUES (?)", [i])], timeout=10))

    sender = threading.Thread(target=sends)
    sender.start()
    time.sleep(0.5)
    assert len(taken) <= 5  # (the bound, and one racing it: the rest wait for room)
    with pytest.raises(DeadlockError):
        db.writer.write_all([("INSERT INTO t VALUES ('holder')", None)])
    tx.commit()
    sender.join(10)
    assert len(taken) == 20


def test_code_in_one_writer_waits_for_room_in_another_storages_writer(
    open_storage: Callable[..., atlas.Storage], tmp_path: Path
) -> None:
    # Another storage's writer makes the room: a wait, not a deadlock (the refusal took
    # any writer thread of the process for this storage's own).
    a = open_storage(cache=False)
    b = open_storage(tmp_path / "b.db", mailbox_size=2, cache=False)
    b.execute("CREATE TABLE t(x)")
    busy, release = threading.Event(), threading.Event()

    def hold(_: apsw.Connection) -> None:
        busy.set()
        release.wait(5)

    held = b.writer.run(hold)
    assert busy.wait(5)
    fillers = [b.writer.execute("INSERT INTO t VALUES (?)", [i]) for i in range(2)]
    threading.Timer(0.3, release.set).start()
    forwarded = a.run_in_writer(lambda _: b.write("INSERT INTO t VALUES ('from a')").rowcount)
    assert forwarded == 1
    held.get(5)
    for filler in fillers:
        filler.get(5)
    assert b.metrics.snapshot().get("errors.deadlock") is None


def test_the_lease_holder_is_refused_while_held_writes_still_wait(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    # Held writes that give up later would leave room, but senders already waiting may
    # take it first, and a wait past the lease's timeout loses the transaction: refused
    # at once. Once they have given up they take no room (count_held): the same call is
    # queued, not refused as a wait that could never end.
    db = open_storage(mailbox_size=4, cache=False)
    db.execute("CREATE TABLE t(x)")
    tx = db.transactions.begin()
    tx.execute("INSERT INTO t VALUES ('tx')")
    others = [threading.Thread(target=_write_quietly, args=(db, i)) for i in range(4)]
    for other in others:
        other.start()
    assert wait_until(lambda: db.writer._mailbox.held == 4)
    with pytest.raises(DeadlockError):
        db.writer.execute("INSERT INTO t VALUES ('holder')", timeout=5.0)
    for other in others:
        other.join(5)
    future = db.writer.execute("INSERT INTO t VALUES ('holder')", timeout=5.0)
    tx.commit()
    assert future.get(5).rowcount == 1


def _write_quietly(db: atlas.Storage, i: int) -> None:
    """A write that gives up after 0.5 s (held behind a lease, it does)."""
    with contextlib.suppress(atlas.errors.OperationTimeout):
        db.write("INSERT INTO t VALUES (?)", [i], timeout=0.5)

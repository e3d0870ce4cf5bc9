"""The transaction API: commit, rollback, savepoints, nesting, timeouts, status."""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import atlas_actors as atlas
from atlas_actors.errors import (
    AtlasError,
    ConstraintError,
    DeadlockError,
    OperationTimeout,
    TransactionAborted,
    TransactionConflict,
    TransactionError,
    TransactionTimeout,
    ValidationError,
)
from atlas_actors.transaction.transaction import Transaction
from tests.helpers import wait_until


@pytest.fixture
def counter(db: atlas.Storage) -> atlas.Storage:
    db.execute("CREATE TABLE counter(id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
    db.write("INSERT INTO counter VALUES (1, 0)")
    return db


def _n(db: atlas.Storage) -> int:
    return int(db.query("SELECT n FROM counter WHERE id = 1")[0].n)


def test_leaving_the_block_commits_and_an_exception_rolls_back(counter: atlas.Storage) -> None:
    with counter.transaction() as tx:
        tx.execute("UPDATE counter SET n = 1")
        assert tx.query("SELECT n FROM counter")[0].n == 1  # sees its own write
        assert _n(counter) == 0  # others do not, yet
    assert _n(counter) == 1 and tx.state == "committed"
    with pytest.raises(RuntimeError), counter.transaction() as tx:
        tx.execute("UPDATE counter SET n = 2")
        raise RuntimeError("abort")
    assert _n(counter) == 1 and tx.state == "rolled_back"


def test_explicit_begin_commit_and_rollback(counter: atlas.Storage) -> None:
    tx = counter.transactions.begin("serializable")
    assert tx.isolation == "serializable" and tx.start_time <= time.time()
    tx.execute("UPDATE counter SET n = 5")
    tx.execute("UPDATE counter SET n = n + 1")
    assert tx.operations == 2
    tx.commit()
    assert _n(counter) == 6
    with pytest.raises(TransactionError, match="is committed"):
        tx.execute("UPDATE counter SET n = 0")
    other = counter.transactions.begin()
    other.execute("UPDATE counter SET n = 0")
    other.rollback()
    other.rollback()  # harmless twice
    assert _n(counter) == 6


def test_savepoints_roll_back_and_release(counter: atlas.Storage) -> None:
    with counter.transaction() as tx:
        tx.execute("UPDATE counter SET n = 1")
        tx.create_savepoint("a")
        tx.execute("UPDATE counter SET n = 2")
        tx.savepoint("b")
        tx.execute("UPDATE counter SET n = 3")
        tx.rollback_to("a")
        assert tx.query("SELECT n FROM counter")[0].n == 1
        with pytest.raises(ValidationError, match="no savepoint 'b'"):
            tx.rollback_to("b")  # rolling back to a discarded b
        tx.execute("UPDATE counter SET n = 4")
        tx.release("a")
        with pytest.raises(ValidationError, match="savepoint name"):
            tx.savepoint("bad name; DROP TABLE counter")
    assert _n(counter) == 4


def test_a_savepoint_may_not_take_the_name_of_a_transactions_own(counter: atlas.Storage) -> None:
    """Named tx<id>, rolling the transaction back would undo only what followed it."""
    with pytest.raises(RuntimeError, match="undo"), counter.transaction() as tx:
        tx.execute("UPDATE counter SET n = 1")
        for name in (f"tx{tx.id}", f"TX{tx.id}", "tx12345"):
            with pytest.raises(ValidationError, match="reserved"):
                tx.savepoint(name)
        for name in ("tx0", "tx05", "tx_1", "txn1"):  # never a transaction's (no id 0, no 0s)
            tx.savepoint(name)
        tx.execute("UPDATE counter SET n = 2")
        raise RuntimeError("undo the whole transaction")
    assert _n(counter) == 0


def test_nested_blocks_in_one_thread_become_savepoints(counter: atlas.Storage) -> None:
    with counter.transaction() as outer:
        outer.execute("UPDATE counter SET n = 1")
        with pytest.raises(KeyError), counter.transaction() as inner:
            assert inner is outer
            inner.execute("UPDATE counter SET n = 2")
            raise KeyError("undo only the inner block")
        assert outer.query("SELECT n FROM counter")[0].n == 1
        with counter.transaction() as inner:
            inner.execute("UPDATE counter SET n = n + 10")
    assert _n(counter) == 11


def test_a_failing_statement_fails_alone_and_the_transaction_goes_on(
    counter: atlas.Storage,
) -> None:
    counter.execute("CREATE TABLE u(x UNIQUE)")
    with counter.transaction() as tx:
        tx.execute("INSERT INTO u VALUES (1)")
        with pytest.raises(ConstraintError):
            tx.execute("INSERT INTO u VALUES (1)")
        tx.execute("INSERT INTO u VALUES (2)")
    assert counter.query("SELECT x FROM u ORDER BY x") == [(1,), (2,)]


def test_32_threads_times_100_serializable_increments_give_exactly_3200(
    counter: atlas.Storage,
) -> None:
    guarded: list[bool] = []
    noop = "UPDATE counter SET n = n WHERE id = 1"

    def increments() -> None:
        for i in range(100):
            with counter.transaction(isolation="serializable") as tx:
                n = tx.query("SELECT n FROM counter WHERE id = 1")[0].n
                tx.execute("UPDATE counter SET n = ? WHERE id = 1", [n + 1])
                if i == 50:  # most leases come by hand-over: the guard knows the holder
                    for plain in (
                        lambda: counter.write(noop, timeout=5),
                        lambda: counter.write_all([(noop, None)], timeout=5),
                    ):
                        try:
                            plain()
                        except DeadlockError:
                            guarded.append(True)
                        else:  # pragma: no cover (the failure this test is for)
                            guarded.append(False)

    threads = [threading.Thread(target=increments) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert _n(counter) == 3200
    assert guarded == [True] * 64
    status = counter.transactions.status()
    assert status.committed >= 3200 and not status.active and status.lease_holder is None
    assert counter.writer.stats().mean_batch > 1  # transactions were group-committed
    assert counter.writer.stats().handovers > 0  # and passed the lease on directly
    # Every lease given back: no thread is left recorded as holding one.
    assert counter.lease_owners == {}
    assert counter.guarded_threads <= counter.writer_threads


def test_handed_over_leases_keep_transactions_whole_among_plain_writes_and_rollbacks(
    db: atlas.Storage,
) -> None:
    db.execute("CREATE TABLE pairs(tx INTEGER NOT NULL, half INTEGER NOT NULL)")
    db.execute("CREATE TABLE plain(n INTEGER NOT NULL)")
    committed: list[int] = []
    lock = threading.Lock()

    def transactions(worker: int) -> None:
        for i in range(60):
            tag = worker * 1000 + i
            tx = db.transactions.begin()
            tx.execute("INSERT INTO pairs VALUES (?, 1)", [tag])
            tx.execute("INSERT INTO pairs VALUES (?, 2)", [tag])
            if i % 7 == 3:
                tx.rollback()
                continue
            tx.commit()
            with lock:
                committed.append(tag)

    def plain_writes() -> None:
        for n in range(150):
            db.write("INSERT INTO plain VALUES (?)", [n])

    threads = [threading.Thread(target=transactions, args=(w,)) for w in range(8)]
    threads += [threading.Thread(target=plain_writes) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    rows = db.query("SELECT tx, count(*) AS n FROM pairs GROUP BY tx ORDER BY tx")
    assert [(r.tx, r.n) for r in rows] == [(tag, 2) for tag in sorted(committed)]
    assert db.query("SELECT count(*) FROM plain") == [(300,)]
    assert db.writer.stats().handovers > 0


def test_a_writer_crash_during_handed_over_transactions_keeps_each_all_or_nothing(
    open_storage: object,
) -> None:
    db: atlas.Storage = open_storage(restart_max=100)  # type: ignore[operator]
    db.execute("CREATE TABLE pairs(tx INTEGER NOT NULL, half INTEGER NOT NULL)")
    outcomes: dict[int, bool] = {}
    stop = threading.Event()

    def transactions(worker: int) -> None:
        i = 0
        while not stop.is_set():
            tag = worker * 100_000 + i
            i += 1
            try:
                with db.transaction() as tx:
                    tx.execute("INSERT INTO pairs VALUES (?, 1)", [tag])
                    tx.execute("INSERT INTO pairs VALUES (?, 2)", [tag])
            except atlas.errors.AtlasError:
                outcomes[tag] = False
            else:
                outcomes[tag] = True

    threads = [threading.Thread(target=transactions, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for _ in range(3):
        time.sleep(0.3)
        restarted = threading.Event()
        db.events.on("restart", lambda e, done=restarted: done.set())
        db.supervisor.kill("writer")
        assert restarted.wait(10)
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join(30)
    counts = {r.tx: r.n for r in db.query("SELECT tx, count(*) AS n FROM pairs GROUP BY tx")}
    assert all(n == 2 for n in counts.values())  # never half a transaction
    assert all(counts.get(tag) == 2 for tag, ok in outcomes.items() if ok)  # nothing lost
    assert sum(outcomes.values()) > 100 and db.writer.stats().handovers > 0


def test_a_lease_held_past_its_timeout_is_rolled_back_and_writes_resume(
    counter: atlas.Storage,
) -> None:
    tx = counter.transactions.begin(timeout=0.1)
    tx.execute("UPDATE counter SET n = 99")
    waited = counter.writer.execute("UPDATE counter SET n = n + 1")  # queues behind the lease
    # Waiting for it here would wait on our own lease (refused: see the deadlock
    # tests); another thread waits, and the timeout frees the writer.
    results: list[int] = []
    waiter = threading.Thread(target=lambda: results.append(waited.get(timeout=5).rowcount))
    waiter.start()
    waiter.join(10)
    assert results == [1]
    with pytest.raises(TransactionTimeout, match="past its timeout") as info:
        tx.execute("UPDATE counter SET n = 100")
    assert "db.transaction(timeout=" in str(info.value)  # its own timeout= set the bound
    with pytest.raises(TransactionTimeout):
        tx.commit()
    assert _n(counter) == 1


def test_a_statement_that_makes_sqlite_roll_back_everything_gives_the_lease_back_at_once(
    open_storage: object,
) -> None:
    db: atlas.Storage = open_storage(transaction_timeout=5.0)  # type: ignore[operator]
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    db.write("INSERT INTO t VALUES (1)")
    with pytest.raises(TransactionAborted), db.transaction() as tx:
        tx.execute("INSERT INTO t VALUES (2)")
        tx.execute("INSERT OR ROLLBACK INTO t VALUES (1)")  # SQLite ends the batch
    started = time.monotonic()
    db.write("INSERT INTO t VALUES (4)")
    # Not after the lease's 5 s timeout: the transaction gave the writer back itself.
    assert time.monotonic() - started < 2.0
    assert [row.id for row in db.query("SELECT id FROM t ORDER BY id")] == [1, 4]
    assert db.supervisor.status().restarts == 0  # no writer crash on the way


def test_status_shows_the_lease_holder_and_what_waits_behind_it(counter: atlas.Storage) -> None:
    tx = counter.transactions.begin()
    tx.execute("UPDATE counter SET n = 1")
    queued = counter.writer.execute("UPDATE counter SET n = n + 1")
    deadline = time.monotonic() + 5
    while counter.transactions.status().queued == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    status = counter.transactions.status()
    assert status.lease_holder == tx.id and status.queued == 1 and status.longest_wait > 0
    assert [info.id for info in status.active] == [tx.id] and status.active[0].holds_lease
    tx.commit()
    assert queued.get(5).rowcount == 1 and _n(counter) == 2


def test_run_retries_a_conflicting_repeatable_read_transaction(counter: atlas.Storage) -> None:
    attempts = []

    def bump(tx: atlas.Transaction) -> int:
        n = tx.query("SELECT n FROM counter")[0].n
        if not attempts:
            counter.write("UPDATE counter SET n = n + 10")  # a concurrent commit, once
        attempts.append(n)
        tx.execute("UPDATE counter SET n = ?", [n + 1])
        return n + 1

    assert counter.transactions.run(bump, isolation="repeatable_read") == 11
    assert attempts == [0, 10] and _n(counter) == 11
    with pytest.raises(TransactionConflict):

        def always_conflicts(tx: atlas.Transaction) -> None:
            tx.query("SELECT n FROM counter")
            counter.write("UPDATE counter SET n = n + 1")
            tx.execute("UPDATE counter SET n = 0")

        counter.transactions.run(always_conflicts, isolation="repeatable_read", retries=2)


@pytest.mark.parametrize("retries", [-1, "x", 1.5, True, None])
def test_run_refuses_a_retry_count_that_is_not_a_whole_number_at_its_start(
    counter: atlas.Storage, retries: object
) -> None:
    calls: list[int] = []

    def conflicts(tx: atlas.Transaction) -> None:
        calls.append(1)
        raise TransactionConflict("a transient error: run() would retry it")

    with pytest.raises(ValidationError, match="retries"):
        counter.transactions.run(conflicts, retries=retries)  # type: ignore[arg-type]
    assert calls == []  # refused before fn ran
    assert counter.transactions.status().active == ()
    with pytest.raises(TransactionConflict):
        counter.transactions.run(conflicts, retries=0)  # (none: the first error is raised)
    assert calls == [1]


def test_unknown_isolation_levels_are_rejected(counter: atlas.Storage) -> None:
    with pytest.raises(ValidationError, match="isolation='snapshot'"):
        counter.transaction(isolation="snapshot")
    with pytest.raises(ValidationError, match=r"isolation=\['serializable'\]"):
        counter.transaction(isolation=["serializable"])  # type: ignore[arg-type]


def test_after_a_lost_batch_earlier_writes_run_before_those_stashed_behind_the_lease(
    open_storage: object,
) -> None:
    """Write A (in the batch) was sent before write B (stashed behind the lease)."""
    db: atlas.Storage = open_storage(transaction_timeout=5.0)  # type: ignore[operator]
    db.execute("CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT)")
    db.write("INSERT INTO kv VALUES (1, 'start')")
    gate = threading.Event()
    blocker = db.writer.run(lambda _: gate.wait(10))
    mailbox = db._writer_mailbox
    wait_until(lambda: mailbox.qsize() == 0)
    first = db.writer.execute("UPDATE kv SET v = 'A' WHERE k = 1")
    leased, go = threading.Event(), threading.Event()

    def transaction() -> None:
        with contextlib.suppress(AtlasError), db.transaction() as tx:
            tx.query("SELECT 1")  # takes the lease (serializable)
            leased.set()
            go.wait(10)
            tx.execute("INSERT OR ROLLBACK INTO kv VALUES (1, 'x')")  # SQLite ends the batch

    worker = threading.Thread(target=transaction)
    worker.start()
    wait_until(lambda: mailbox.qsize() == 2)  # A, then the lease request
    gate.set()
    assert leased.wait(10)
    second = db.writer.execute("UPDATE kv SET v = 'B' WHERE k = 1")  # stashed behind it
    assert wait_until(lambda: db.transactions.status().queued == 1)
    go.set()
    worker.join(10)
    first.get(10)
    second.get(10)
    blocker.get(10)
    assert db.query("SELECT v FROM kv WHERE k = 1")[0][0] == "B"


class _SlowLog(logging.Handler):
    """A log sink that takes ``delay`` seconds over messages containing ``word``."""

    def __init__(self, word: str, delay: float) -> None:
        super().__init__()
        self.word, self.delay = word, delay

    def emit(self, record: logging.LogRecord) -> None:
        if self.word in record.getMessage():
            time.sleep(self.delay)


@contextlib.contextmanager
def _slow_logging(word: str, delay: float) -> Iterator[None]:
    """atlas's log goes through a slow sink (a network or a full disk, say) meanwhile."""
    logger = logging.getLogger("atlas_actors")
    handler, level = _SlowLog(word, delay), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_a_lost_batch_whose_lease_expires_meanwhile_does_not_crash_the_writer(
    open_storage: object,
) -> None:
    db: atlas.Storage = open_storage(transaction_timeout=0.3)  # type: ignore[operator]
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    db.write("INSERT INTO t VALUES (1)")
    # The lease expires while the statement's error is logged.
    with _slow_logging("Constraint", 1.0), pytest.raises(AtlasError), db.transaction() as tx:
        tx.execute("INSERT OR ROLLBACK INTO t VALUES (1)")
    db.write("INSERT INTO t VALUES (2)")
    assert db.supervisor.status().restarts == 0


def test_a_statement_interrupted_past_the_lease_timeout_does_not_crash_the_writer(
    open_storage: object,
) -> None:
    db: atlas.Storage = open_storage(transaction_timeout=0.3)  # type: ignore[operator]
    db.execute("CREATE TABLE t(x INTEGER)")
    with pytest.raises(AtlasError), db.transaction() as tx:
        tx.execute(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
            "WHERE x < 100000000) INSERT INTO t SELECT x FROM c"
        )
    db.write("INSERT INTO t VALUES (2)")
    assert db.supervisor.status().restarts == 0
    assert db.query("SELECT x FROM t") == [(2,)]


class _Level(enum.StrEnum):
    SERIALIZABLE = "serializable"


def test_an_isolation_level_may_be_a_str_subclass(counter: atlas.Storage) -> None:
    with counter.transaction(isolation=_Level.SERIALIZABLE) as tx:
        assert tx.query("SELECT n FROM counter")[0].n == 0


def _count_to(n: int, table: str) -> str:
    return (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
        f"WHERE x < {n}) INSERT INTO {table} SELECT x FROM c"
    )


def test_a_statement_interrupted_by_its_lease_timeout_raises_the_timeout(
    open_storage: object,
) -> None:
    """The writer revokes the lease, finds the batch lost and runs it again meanwhile:
    the transaction must not touch the connection it no longer holds."""
    db: atlas.Storage = open_storage(  # type: ignore[operator]
        transaction_timeout=0.3, max_batch_delay=30.0
    )
    db.execute("CREATE TABLE a(x)")
    db.execute("CREATE TABLE big(x)")
    slow = db.writer.execute(_count_to(1_000_000, "a"))  # runs again after the loss
    time.sleep(0.05)
    # The writer replays the lost batch while the interruption is logged.
    with (
        _slow_logging("interrupted", 0.3),
        pytest.raises(TransactionTimeout),
        db.transaction() as tx,
    ):
        tx.query("SELECT 1")  # the lease, in the slow write's batch
        tx.execute(_count_to(100_000_000, "big"))  # interrupted past the timeout
    assert slow.get(30).rowcount == 1_000_000
    assert db.supervisor.status().restarts == 0
    assert db.query("SELECT count(*) FROM big") == [(0,)]


def test_a_commit_whose_wait_times_out_says_it_may_have_been_applied(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    # The lease goes straight to the next transaction, which holds it past the first
    # one's deadline: the first one's commit is acknowledged only with the batch, after
    # its wait ran out. It is committed then, so its timeout must not say "not applied".
    db = open_storage(default_timeout=0.3, max_batch_delay=5.0)
    db.execute("CREATE TABLE t(x INTEGER)")
    second_holds = threading.Event()

    def second() -> None:
        with db.transaction() as tx:
            tx.execute("INSERT INTO t VALUES (2)")
            second_holds.set()
            time.sleep(0.8)

    tx = db.transactions.begin()
    tx.execute("INSERT INTO t VALUES (1)")
    thread = threading.Thread(target=second)
    thread.start()
    assert wait_until(lambda: db.transactions.status().queued >= 1, timeout=2)
    with pytest.raises(OperationTimeout) as caught:
        tx.commit()  # hands the lease to second(), then waits for the batch
    assert second_holds.is_set()
    assert caught.value.applied is None
    # Neither committed nor rolled back yet: the writer's answer settles it.
    assert tx.state == "committing"
    with pytest.raises(TransactionError, match="committing"):
        tx.execute("INSERT INTO t VALUES (3)")
    thread.join(5)
    assert sorted(r.x for r in db.query("SELECT x FROM t")) == [1, 2]
    assert wait_until(lambda: tx.state == "committed", timeout=2)
    status = db.transactions.status()
    assert (status.committed, status.rolled_back, status.active) == (2, 0, ())


def test_run_does_not_retry_a_commit_that_may_still_be_applied(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    # As above, through run(): retrying the timed-out commit committed fn's writes twice.
    db = open_storage(default_timeout=0.3, max_batch_delay=5.0)
    db.execute("CREATE TABLE t(x INTEGER)")
    second_holds = threading.Event()
    release_second = threading.Event()

    def second() -> None:
        with db.transaction() as tx:
            tx.execute("INSERT INTO t VALUES (2)")
            second_holds.set()
            release_second.wait(5)
            time.sleep(0.5)

    attempts: list[atlas.Transaction] = []

    def fn(tx: atlas.Transaction) -> None:
        attempts.append(tx)
        tx.execute("INSERT INTO t VALUES (1)")
        if len(attempts) == 1:
            thread.start()
            assert wait_until(lambda: db.transactions.status().queued >= 1, timeout=2)
            release_second.set()

    thread = threading.Thread(target=second)
    with pytest.raises(OperationTimeout) as caught:
        db.transactions.run(fn, retries=3)
    assert caught.value.applied is None
    assert len(attempts) == 1
    thread.join(5)
    assert wait_until(lambda: attempts[0].state == "committed", timeout=2)
    assert sorted(r.x for r in db.query("SELECT x FROM t")) == [1, 2]


def test_run_does_not_retry_a_commit_that_settled_just_after_its_timeout(
    open_storage: Callable[..., atlas.Storage], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The acknowledgement lands between the timeout and run()'s decision (a slow log
    # handler, say): the state reads 'committed' then, and was taken as retryable.
    db = open_storage(default_timeout=0.3, max_batch_delay=5.0)
    db.execute("CREATE TABLE t(x INTEGER)")
    settle = Transaction._settle_later

    def settle_then_wait(tx: Transaction, future: Any) -> None:
        settle(tx, future)
        # The writer acknowledges (the callback settles the state); get() would not
        # wait, the future's deadline having passed.
        assert future._done.acquire(True, 5)
        future._done.release()

    monkeypatch.setattr(Transaction, "_settle_later", settle_then_wait)
    release_second = threading.Event()

    def second() -> None:
        with db.transaction() as tx:
            tx.execute("INSERT INTO t VALUES (2)")
            release_second.wait(5)
            time.sleep(0.5)

    thread = threading.Thread(target=second)
    runs: list[int] = []

    def fn(tx: atlas.Transaction) -> str:
        runs.append(1)
        tx.execute("INSERT INTO t VALUES (1)")
        if len(runs) == 1:
            thread.start()
            assert wait_until(lambda: db.transactions.status().queued >= 1, timeout=2)
            release_second.set()
        return "done"

    assert db.transactions.run(fn, retries=3) == "done"  # its commit is known to hold
    assert runs == [1]
    thread.join(5)
    assert sorted(r.x for r in db.query("SELECT x FROM t")) == [1, 2]


@pytest.mark.parametrize("mode", ["passive", "full", "restart", "truncate"])
def test_a_repeatable_read_write_after_a_checkpoint_does_not_conflict(
    open_storage: Callable[..., atlas.Storage], mode: str
) -> None:
    """A checkpoint commits nothing. A TRUNCATE one (the snapshot read the database file
    alone, so it could finish) moves the pinned reader's data_version, which alone was
    taken for a commit."""
    db = open_storage(cache=False)
    db.execute("CREATE TABLE c(id INTEGER PRIMARY KEY, n INTEGER)")
    db.write("INSERT INTO c VALUES (1, 0)")
    db.wal.checkpoint("truncate")  # (the WAL is empty: the snapshot reads the file)
    with db.transaction(isolation="repeatable_read") as tx:
        n = tx.query("SELECT n FROM c WHERE id = 1")[0].n
        checkpoint = threading.Thread(target=db.wal.checkpoint, args=(mode,))
        checkpoint.start()
        checkpoint.join(10)
        tx.execute("UPDATE c SET n = ? WHERE id = 1", [n + 1])
    assert db.query("SELECT n FROM c")[0].n == 1


@pytest.mark.parametrize("cache", [False, True])
def test_a_repeatable_read_write_after_a_rolled_back_transaction_does_not_conflict(
    open_storage: Callable[..., atlas.Storage], cache: bool
) -> None:
    # A try this stop (ce44682, backed out) stamped snapshots with the wal-index change
    # counter: SQLite moves it without a commit too (at the next BEGIN after a rolled
    # back write), and every repeatable_read transaction after a rollback conflicted.
    db = open_storage(cache=cache)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v UNIQUE)")
    for n in range(3):
        with pytest.raises(KeyError), db.transaction() as tx:
            tx.execute("INSERT INTO t(v) VALUES (?)", [100 + n])
            raise KeyError("rolled back")
        explicit = db.transactions.begin()
        explicit.execute("INSERT INTO t(v) VALUES (?)", [200 + n])
        explicit.rollback()
        with db.transaction(isolation="repeatable_read") as tx:
            tx.query("SELECT count(*) FROM t")
            tx.execute("INSERT INTO t(v) VALUES (?)", [n])  # nothing committed since
    assert [row.v for row in db.query("SELECT v FROM t ORDER BY v")] == [0, 1, 2]

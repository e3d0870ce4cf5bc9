"""Group commit under many threads: exactly once, failure isolation, batching."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import atlas_actors as atlas
from atlas_actors.actors.writer import _RUN_MAX
from atlas_actors.errors import AtlasError, ConstraintError, OperationTimeout
from tests.helpers import gate_writer, wait_until


def test_64_threads_times_200_writes_all_land_exactly_once(db: atlas.Storage) -> None:
    threads, per_thread = 64, 200
    db.execute("CREATE TABLE log(thread INTEGER, seq INTEGER, PRIMARY KEY (thread, seq))")
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for seq in range(per_thread):
                db.write("INSERT INTO log(thread, seq) VALUES (?, ?)", [thread, seq])
        except BaseException as error:
            errors.append(error)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert not errors
    count, distinct = db.query("SELECT count(*), count(DISTINCT thread * 1000 + seq) FROM log")[0]
    assert count == distinct == threads * per_thread
    stats = db.writer.stats()
    # Group commit happened: far fewer commits than writes.
    assert stats.mean_batch > 2, stats


def test_a_constraint_violation_inside_a_busy_batch_fails_only_its_own_call(
    db: atlas.Storage,
) -> None:
    db.write("INSERT INTO tasks(title) VALUES ('taken')")

    def insert(i: int) -> str:
        title = "taken" if i % 10 == 0 else f"t{i}"
        try:
            db.write("INSERT INTO tasks(title) VALUES (?)", [title])
        except ConstraintError:
            return "constraint"
        return "ok"

    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(insert, range(400)))
    assert outcomes.count("constraint") == 40
    assert outcomes.count("ok") == 360
    assert db.query("SELECT count(*) FROM tasks")[0][0] == 361
    assert db.writer.stats().mean_batch > 1


def test_futures_of_one_batch_resolve_only_after_its_commit(db: atlas.Storage) -> None:
    # Queue many writes without waiting: they share batches; each resolved future's row
    # must be visible to a reader at once (acknowledged means committed).
    futures = [
        db.writer.execute("INSERT INTO tasks(title) VALUES (?)", [f"t{i}"]) for i in range(300)
    ]
    for i, future in enumerate(futures):
        future.get(timeout=10)
        assert db.query("SELECT 1 FROM tasks WHERE title = ?", [f"t{i}"]) == [(1,)]


def _unique_t(
    open_storage: Callable[..., atlas.Storage], taken: int, max_batch_delay: float = 5.0
) -> atlas.Storage:
    """A storage whose table ``t(a UNIQUE)`` holds ``taken`` (a long batch delay: what
    is queued together commits together)."""
    db = open_storage(max_batch_delay=max_batch_delay)
    db.execute("CREATE TABLE t(a INTEGER UNIQUE)")
    db.write("INSERT INTO t(a) VALUES (?)", [taken])
    return db


def test_a_failure_among_writes_sharing_a_savepoint_undoes_only_its_own_writes(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    # Consecutive writes share one savepoint. INSERT OR FAIL keeps the rows it inserted
    # before failing (https://sqlite.org/lang_conflict.html), so only rolling the shared
    # savepoint back and running the writes again alone leaves none of them behind.
    db = _unique_t(open_storage, taken=3)
    before = db.writer.stats()
    started_before = db.writer_counters.started
    _, release = gate_writer(db)
    first = db.writer.execute("INSERT INTO t(a) VALUES (1)")
    partial = db.writer.execute("INSERT OR FAIL INTO t(a) VALUES (10), (11), (3), (12)")
    many = db.writer.executemany("INSERT INTO t(a) VALUES (?)", [(20,), (21,)])
    script = db.writer.execute("INSERT INTO t(a) VALUES (30); INSERT INTO t(a) VALUES (31)")
    failing_script = db.writer.execute("INSERT INTO t(a) VALUES (40); INSERT INTO t(a) VALUES (1)")
    last = db.writer.execute("INSERT INTO t(a) VALUES (50)")
    release.set()
    assert first.get(5).rowcount == 1
    with pytest.raises(ConstraintError):
        partial.get(5)
    assert many.get(5).rowcount == 2
    script.get(5)
    with pytest.raises(ConstraintError):
        failing_script.get(5)
    assert last.get(5).lastrowid is not None
    rows = [a for (a,) in db.query("SELECT a FROM t ORDER BY a")]
    assert rows == [1, 3, 20, 21, 30, 31, 50]
    after = db.writer.stats()
    assert after.failed - before.failed == 2
    assert after.writes - before.writes == 4 + 1  # the four that succeed, and the gate
    assert after.batches - before.batches == 1, "the writes shared one batch"
    # The group held `first` and `partial` when `partial` failed: both ran again alone.
    assert after.regrouped - before.regrouped == 2
    # Each op counts once in the queue-wait figures, however often it ran.
    assert db.writer_counters.started - started_before == 7


def test_write_all_units_in_a_shared_group_fail_alone_and_keep_their_results(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    # The writer runs a write_all's statements in place, in the group's savepoint: a
    # unit failing in its second statement undoes its first, the units grouped with it
    # run again alone, and the results they report are those of the run that committed.
    db = _unique_t(open_storage, taken=3)
    before = db.writer.stats()
    _, release = gate_writer(db)
    insert = "INSERT INTO t(a) VALUES (?)"
    ok = db.writer.write_all([(insert, [60]), (insert, [61])])
    bad = db.writer.write_all([(insert, [70]), (insert, [3])])  # 3 is taken
    last = db.writer.write_all([(insert, [80])])
    release.set()
    results = ok.get(5)
    with pytest.raises(ConstraintError):
        bad.get(5)
    assert [r.rowcount for r in last.get(5)] == [1]
    rowids = {a: rowid for rowid, a in db.query("SELECT rowid, a FROM t")}
    assert sorted(rowids) == [3, 60, 61, 80]  # nothing of the failed unit
    assert [r.lastrowid for r in results] == [rowids[60], rowids[61]]
    assert db.writer.stats().regrouped - before.regrouped >= 1


def test_queued_write_alls_run_together_fail_alone_and_keep_mailbox_order(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    # Behind the first write, the writer runs the write and write_all calls it finds
    # queued with one call. A failing one among them must still fail alone; those
    # taken after it, and the executemany that ended the run, must run after it in
    # mailbox order; calls whose deadline passed in the queue must not run at all.
    db = _unique_t(open_storage, taken=3)
    before = db.writer.stats()
    _, release = gate_writer(db)
    insert = "INSERT INTO t(a) VALUES (?)"
    first = db.writer.write_all([(insert, [10])])  # opens the group
    grouped = [db.writer.write_all([(insert, [a]), (insert, [a + 1])]) for a in (20, 30)]
    expired = db.writer.write_all([(insert, [35])], timeout=0.05)
    withdrawn = db.writer.write_all([(insert, [36])], timeout=0.05)
    bad = db.writer.write_all([(insert, [40]), (insert, [3])])  # 3 is taken
    after_bad = db.writer.write_all([(insert, [50])])
    single = db.writer.execute("INSERT INTO t(a) VALUES (55)")
    many = db.writer.executemany(insert, [[60]])
    last = db.writer.write_all([(insert, [70]), (insert, [71])])
    with pytest.raises(OperationTimeout) as timed_out:
        withdrawn.get()
    assert timed_out.value.applied is False
    time.sleep(0.06)  # expired's deadline passes while it waits in the queue
    release.set()
    first.get(5)
    for future in grouped:
        future.get(5)
    with pytest.raises(OperationTimeout) as timed_out:
        expired.get(5)
    assert timed_out.value.applied is False
    with pytest.raises(ConstraintError):
        bad.get(5)
    after_bad.get(5)
    assert single.get(5).lastrowid == db.query("SELECT rowid FROM t WHERE a = 55")[0][0]
    many.get(5)
    results = last.get(5)
    in_order = [a for (a,) in db.query("SELECT a FROM t ORDER BY rowid")]
    assert in_order == [3, 10, 20, 21, 30, 31, 50, 55, 60, 70, 71]
    rowids = dict(db.query("SELECT a, rowid FROM t"))
    assert [r.lastrowid for r in results] == [rowids[70], rowids[71]]
    after = db.writer.stats()
    assert after.regrouped - before.regrouped == 4  # first, grouped and bad ran alone
    assert after.failed - before.failed == 2  # bad, and expired


def test_a_failing_write_after_a_transaction_in_the_same_batch_leaves_the_transaction(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    # A transaction's work is not replayable: the writes' shared savepoint is closed
    # before the transaction's own opens, so a later failure cannot roll it back.
    db = _unique_t(open_storage, taken=3)
    before = db.writer.stats()
    _, release = gate_writer(db)
    mailbox = db.writer._mailbox
    first = db.writer.execute("INSERT INTO t(a) VALUES (1)")
    committed = threading.Event()

    def transaction() -> None:
        with db.transaction() as tx:
            tx.execute("INSERT INTO t(a) VALUES (100)")
        committed.set()

    worker = threading.Thread(target=transaction)
    worker.start()
    assert wait_until(lambda: mailbox.qsize() >= 2), "the lease request is queued"
    failing = db.writer.execute("INSERT INTO t(a) VALUES (3)")
    last = db.writer.execute("INSERT INTO t(a) VALUES (4)")
    release.set()
    first.get(5)
    with pytest.raises(ConstraintError):
        failing.get(5)
    last.get(5)
    worker.join(5)
    assert committed.is_set()
    assert [a for (a,) in db.query("SELECT a FROM t ORDER BY a")] == [1, 3, 4, 100]
    assert db.writer.stats().batches - before.batches == 1, "all of it in one batch"


SLOW_FAILING_INSERT = (
    "INSERT INTO t(a) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
    "WHERE x < 300000) SELECT x FROM c UNION ALL SELECT -1"
)
"""Inserts 300,000 rows (far longer than max_batch_delay), then fails on a duplicate."""


@pytest.mark.parametrize("max_batch_delay", [0.0, 0.010])
def test_writes_sent_back_by_a_failed_group_run_alone_even_in_the_next_batch(
    open_storage: Callable[..., atlas.Storage], max_batch_delay: float
) -> None:
    # The batch may commit before the writes a failed group sent back run again (at once
    # with max_batch_delay=0; after a slow statement with the default); they must still
    # run alone, or the failing one fails its group again, and again, until deadlines.
    db = _unique_t(open_storage, taken=-1, max_batch_delay=max_batch_delay)
    before = db.writer.stats()
    _, release = gate_writer(db)
    innocent = db.writer.execute("INSERT INTO t(a) VALUES (-2)", timeout=5.0)
    failing = db.writer.execute(SLOW_FAILING_INSERT, timeout=5.0)
    quick_failure = db.writer.execute("INSERT INTO t(a) VALUES (-1)", timeout=5.0)
    release.set()
    assert innocent.get(6).rowcount == 1
    with pytest.raises(ConstraintError):
        failing.get(6)
    with pytest.raises(ConstraintError):
        quick_failure.get(6)
    assert [a for (a,) in db.query("SELECT a FROM t ORDER BY a")] == [-2, -1]
    # The group (innocent, failing) went back once, not again and again; with no batch
    # delay each write may be a batch of its own (nothing went back). quick_failure ran
    # alone after them, or (in a new batch) failed in a group of its own: its own run.
    assert db.writer.stats().regrouped - before.regrouped in (0, 2)


def test_closing_during_a_lease_runs_the_writes_queued_behind_it(
    open_storage: Callable[..., atlas.Storage], db_path: Path
) -> None:
    # close() revokes the lease; the writes that waited behind it were accepted before
    # the close, so they run (one failing alone) instead of failing as "closed".
    db = _unique_t(open_storage, taken=3)
    holding, done = threading.Event(), threading.Event()

    def transaction() -> None:
        with contextlib.suppress(AtlasError), db.transaction() as tx:
            tx.execute("INSERT INTO t(a) VALUES (100)")
            holding.set()
            done.wait(5)

    worker = threading.Thread(target=transaction)
    worker.start()
    assert holding.wait(5)
    mailbox = db.writer._mailbox
    futures = {
        a: db.writer.execute("INSERT INTO t(a) VALUES (?)", [a]) for a in (1, 2, 3, 4)
    }  # 3 is taken: it fails alone
    assert wait_until(lambda: mailbox.qsize() == 0), "stashed behind the lease"
    db.close()
    done.set()
    worker.join(5)
    outcomes = {}
    for a, future in futures.items():
        try:
            future.get(1)
            outcomes[a] = "ok"
        except AtlasError as error:
            outcomes[a] = type(error).__name__
    assert outcomes == {1: "ok", 2: "ok", 3: "ConstraintError", 4: "ok"}
    again = open_storage(db_path)
    assert [a for (a,) in again.query("SELECT a FROM t ORDER BY a")] == [1, 2, 3, 4]


def test_a_drained_batch_stops_at_a_transaction_and_keeps_mailbox_order(
    db: atlas.Storage,
) -> None:
    """The writer runs queued writes in one go, but never past another kind of message.

    Queued: write A, a transaction's lease request, write B. The transaction must see A
    and not B: B is queued behind it, as the mailbox's order says.
    """
    db.execute("CREATE TABLE seen(x INTEGER)")
    gate = threading.Event()
    blocker = db.writer.run(lambda _: gate.wait(10))
    mailbox = db._writer_mailbox
    wait_until(lambda: mailbox.qsize() == 0)  # the writer holds the blocker
    first = db.writer.execute("INSERT INTO seen VALUES (1)")
    counted: list[int] = []

    def transaction() -> None:
        with db.transaction() as tx:
            counted.append(tx.query("SELECT count(*) FROM seen")[0][0])
            tx.execute("INSERT INTO seen VALUES (2)")

    worker = threading.Thread(target=transaction)
    worker.start()
    wait_until(lambda: mailbox.qsize() == 2)  # write A, then the lease request
    second = db.writer.execute("INSERT INTO seen VALUES (3)")
    gate.set()
    blocker.get(10)
    first.get(10)
    second.get(10)
    worker.join(10)
    assert counted == [1]
    assert [row[0] for row in db.query("SELECT x FROM seen ORDER BY rowid")] == [1, 2, 3]


def test_a_write_sent_back_by_a_failed_group_invalidates_the_cache_when_it_commits(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    # The tables a batch changed are worked out from the writes it commits, as it
    # commits: a write the failed group sent back into the next batch counts there.
    db = _unique_t(open_storage, taken=-1, max_batch_delay=0.010)
    db.execute("CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT)")
    db.write("INSERT INTO kv VALUES (1, 'old')")
    read = "SELECT v FROM kv WHERE k = 1"
    db.query(read)
    assert db.query(read) == [("old",)]
    hits = db.cache.stats().hits
    assert db.query(read) == [("old",)]
    assert db.cache.stats().hits == hits + 1, "the read is cached"
    before = db.writer.stats()
    _, release = gate_writer(db)
    update = db.writer.execute("UPDATE kv SET v = 'new' WHERE k = 1", timeout=5.0)
    failing = db.writer.execute(SLOW_FAILING_INSERT, timeout=5.0)
    release.set()
    assert update.get(6).rowcount == 1
    with pytest.raises(ConstraintError):
        failing.get(6)
    assert db.writer.stats().regrouped - before.regrouped == 2
    assert db.query(read) == [("new",)]


SLOW_INSERT = (
    "INSERT INTO t(a) SELECT ? + 0 * count(*) FROM (WITH RECURSIVE c(x) AS "
    "(SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000) SELECT x FROM c)"
)
"""Inserts one row after counting to 20,000 (a few milliseconds)."""


def test_a_run_of_queued_writes_stops_at_the_batch_delay(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    # The writer runs the writes it finds queued together, but never more than
    # _RUN_MAX at a time: between runs it checks max_batch_delay, so a queue of slow
    # writes does not keep a batch open (and its writes unacknowledged) for long.
    db = _unique_t(open_storage, taken=-1, max_batch_delay=0.05)
    _, release = gate_writer(db)
    futures = [db.writer.write_all([(SLOW_INSERT, [a])]) for a in range(100)]
    release.set()
    assert [f.get(10)[0].rowcount for f in futures] == [1] * 100
    # Not all 100 (and the gate) in one batch: a run stops at _RUN_MAX, then the delay.
    assert _RUN_MAX < 100
    assert 1 < db.writer.stats().max_batch < 100


class _Bail(BaseException):
    """No Exception: the writer dies of it."""


def test_writes_taken_up_before_a_callback_crashes_the_writer_still_run(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    # A done-callback runs in the thread that resolves the future: here the writer,
    # failing an expired write among those it takes from the queue. An Exception from
    # a callback is only logged, but the writer dies of a BaseException that is no
    # Exception (test_escaped_exceptions.py); the writes it had taken must run anyway.
    db = _unique_t(open_storage, taken=-1)
    _, release = gate_writer(db)
    insert = "INSERT INTO t(a) VALUES (?)"
    first = db.writer.write_all([(insert, [1])])  # opens the group
    taken = db.writer.write_all([(insert, [2])])
    expired = db.writer.write_all([(insert, [3])], timeout=0.05)

    def explode(_: object) -> None:
        raise _Bail("a callback that fails")

    expired.add_done_callback(explode)
    after = db.writer.write_all([(insert, [4])])
    time.sleep(0.06)
    release.set()
    for future in (first, taken, after):
        assert future.get(5)[0].rowcount == 1
    with pytest.raises(OperationTimeout):
        expired.get(5)
    assert [a for (a,) in db.query("SELECT a FROM t ORDER BY a")] == [-1, 1, 2, 4]


def test_a_batch_whose_every_write_failed_is_no_group_commit(db: atlas.Storage) -> None:
    """It was counted one: ten failed writes, each alone, drew writer.mean_batch to 0.18
    with two writes acknowledged."""
    db.execute("CREATE TABLE u(k INTEGER PRIMARY KEY)")
    db.write("INSERT INTO u VALUES (1)")
    before = db.writer.stats()
    for _ in range(10):
        with pytest.raises(atlas.errors.ConstraintError):
            db.write("INSERT INTO u VALUES (1)")
    after = db.writer.stats()
    assert (after.batches, after.writes) == (before.batches, before.writes)
    assert after.failed == before.failed + 10
    assert after.mean_batch >= 1.0


def test_a_batch_with_nothing_to_acknowledge_rolls_back_and_writes_nothing(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    """Its COMMIT wrote the pages a rolled-back transaction or a failed write had
    dirtied: WAL frames (and an fsync) for nothing, and a commit that a
    repeatable_read snapshot begun meanwhile took for another transaction's."""
    db = open_storage(cache=False)
    db.execute("CREATE TABLE t(x UNIQUE)")
    db.write("INSERT INTO t VALUES (1)")
    frames = db.wal.monitor().frames
    batches = db.writer.stats().batches
    for _ in range(3):
        with pytest.raises(KeyError), db.transaction() as tx:
            tx.execute("INSERT INTO t VALUES (2)")
            raise KeyError("rolled back")
        with pytest.raises(ConstraintError):
            db.write("INSERT INTO t VALUES (1)")
    assert db.wal.monitor().frames == frames
    assert db.writer.stats().batches == batches  # (none committed)
    assert [row.x for row in db.query("SELECT x FROM t")] == [1]

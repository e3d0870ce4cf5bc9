"""Several processes on one database: busy handling with backoff, nothing lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import atlas_actors as atlas
from atlas_actors.actors.base import Envelope
from atlas_actors.actors.writer_ops import LeaseExpired
from atlas_actors.errors import TransientError
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent

WORKER = textwrap.dedent(
    """
    import json, sys, threading
    from collections import Counter
    import atlas_actors as atlas
    path, proc, per_thread = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    errors, acked = Counter(), [0]
    lock = threading.Lock()
    with atlas.open(path, readers=2) as db:
        db.execute("CREATE TABLE IF NOT EXISTS log(proc, thread, seq, "
                   "PRIMARY KEY (proc, thread, seq))")
        def work(thread):
            for seq in range(per_thread):
                try:
                    db.write("INSERT INTO log VALUES (?, ?, ?)", [proc, thread, seq])
                except Exception as error:
                    errors[f"{type(error).__name__}: {error}"] += 1
                else:
                    with lock:
                        acked[0] += 1
        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        metrics = db.metrics.snapshot()
    print(json.dumps({"acked": acked[0], "errors": dict(errors),
                      "busy_retries": metrics.get("busy_retries", 0)}))
    """
)


def test_four_processes_times_eight_threads_all_land_without_database_is_locked(
    db_path: Path,
) -> None:
    per_thread = 150
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with atlas.open(db_path) as db:  # create the file and the table first
        db.execute("CREATE TABLE log(proc, thread, seq, PRIMARY KEY (proc, thread, seq))")
    children = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(db_path), str(proc), str(per_thread)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for proc in range(4)
    ]
    reports = []
    for child in children:
        out, err = child.communicate(timeout=240)
        assert child.returncode == 0, err
        reports.append(json.loads(out))
    assert all(not r["errors"] for r in reports), [r["errors"] for r in reports]
    assert sum(r["acked"] for r in reports) == 4 * 8 * per_thread
    assert sum(r["busy_retries"] for r in reports) > 0  # they did contend, and waited
    with atlas.open(db_path) as db:
        assert db.query("SELECT count(*) FROM log") == [(4 * 8 * per_thread,)]


HOLDER = textwrap.dedent(
    """
    import sqlite3, sys, time
    connection = sqlite3.connect(sys.argv[1], isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    connection.execute("INSERT INTO t VALUES (-1)")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    connection.execute("COMMIT")
    """
)


def _hold_write_lock(db_path: Path, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db_path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_a_write_waits_out_another_process_holding_the_lock(
    open_storage: object, db_path: Path
) -> None:
    db: atlas.Storage = open_storage(busy_timeout=5)  # type: ignore[operator]
    db.execute("CREATE TABLE t(x)")
    holder = _hold_write_lock(db_path, 0.3)
    started = time.monotonic()
    assert db.write("INSERT INTO t VALUES (1)").rowcount == 1
    assert time.monotonic() - started >= 0.2  # it waited for the other process
    holder.wait(10)
    assert db.metrics.get("busy_retries") > 0
    assert sorted(r.x for r in db.query("SELECT x FROM t")) == [-1, 1]


def test_a_lock_held_past_the_busy_timeout_is_waited_out_until_the_writes_deadline(
    open_storage: object, db_path: Path
) -> None:
    """busy_timeout bounds one wait, not the write: another process's transaction may
    hold the lock longer (up to its transaction_timeout), and no 'database is locked'
    may reach a caller whose deadline has not passed."""
    db: atlas.Storage = open_storage(busy_timeout=0.2)  # type: ignore[operator]
    db.execute("CREATE TABLE t(x)")
    holder = _hold_write_lock(db_path, 1.0)
    started = time.monotonic()
    assert db.write("INSERT INTO t VALUES (1)").rowcount == 1
    assert time.monotonic() - started >= 0.7  # several busy waits, one write
    holder.wait(10)
    assert db.metrics.get("busy_retries") > 1 and db.metrics.get("errors") == 0


def test_a_lock_held_past_the_writes_deadline_gives_a_typed_transient_error(
    open_storage: object, db_path: Path
) -> None:
    db: atlas.Storage = open_storage(busy_timeout=0.2)  # type: ignore[operator]
    db.execute("CREATE TABLE t(x)")
    holder = _hold_write_lock(db_path, 2.0)
    with pytest.raises(TransientError) as caught:  # SQLITE_BUSY, or the deadline itself
        db.write("INSERT INTO t VALUES (1)", timeout=0.6)
    diagnostics = db.errors.analyze(caught.value)
    assert diagnostics.recoverable and diagnostics.context["strategy"] == "retry_with_backoff"
    holder.wait(10)
    assert db.write("INSERT INTO t VALUES (2)").rowcount == 1  # serving again
    assert db.metrics.get("errors.transient") >= 1


def test_a_write_waiting_out_another_process_lets_a_close_or_a_crash_through(
    db_path: Path,
) -> None:
    """The writer's wait for the lock (up to a call's deadline) must not hold up a
    close(), nor an injected crash: it gives up, and the write fails, not applied."""
    db = atlas.open(db_path, busy_timeout=0.2, cache=False)
    db.execute("CREATE TABLE t(x)")
    holder = _hold_write_lock(db_path, 3.0)
    try:
        crashed = db.writer.execute("INSERT INTO t VALUES (1)", timeout=20)
        time.sleep(0.4)  # the writer waits for the lock
        restarts = db.supervisor.status().restarts
        db.supervisor.kill("writer", how="crash")
        with pytest.raises(TransientError):  # (SQLITE_BUSY: it gave up for the crash)
            crashed.get(5)
        assert wait_until(lambda: db.supervisor.status().restarts > restarts, timeout=2)
        waiting = db.writer.execute("INSERT INTO t VALUES (2)", timeout=20)
        time.sleep(0.4)
        started = time.monotonic()
        db.close(timeout=2.0)
        assert time.monotonic() - started < 1.5  # not until the other process let go
        with pytest.raises(atlas.errors.AtlasError):
            waiting.get(5)
    finally:
        holder.wait(10)
    with atlas.open(db_path, cache=False) as again:
        assert again.query("SELECT x FROM t WHERE x > 0") == []  # neither was applied


def test_a_notice_in_front_of_the_writers_mailbox_does_not_end_its_wait_for_the_lock(
    db_path: Path,
) -> None:
    """A stop or a crash ends the writer's wait for another process's lock; a notice
    (a lease expired, a full disk found) is no reason to give a write up as busy."""
    db = atlas.open(db_path, busy_timeout=0.2, cache=False)
    try:
        db.execute("CREATE TABLE t(x)")
        holder = _hold_write_lock(db_path, 1.0)
        waiting = db.writer.execute("INSERT INTO t VALUES (1)", timeout=20)
        time.sleep(0.4)  # the writer waits for the lock
        # A notice as the runtime sends one: in front of everything (no such lease).
        db._writer_mailbox.replay_control(Envelope(LeaseExpired(tx_id=-1)))
        assert waiting.get(10).rowcount == 1  # waited the lock out
        holder.wait(10)
        assert sorted(r.x for r in db.query("SELECT x FROM t")) == [-1, 1]
    finally:
        db.close()


RENAMES_A_COLUMN = textwrap.dedent(
    """
    import sys, apsw
    connection = apsw.Connection(sys.argv[1])
    connection.set_busy_timeout(5000)
    connection.execute("ALTER TABLE t RENAME COLUMN x TO renamed")
    connection.close()
    """
)


@pytest.mark.parametrize("cache", [True, False])
def test_a_column_renamed_by_another_process_is_named_anew_without_a_write_here(
    db_path: Path, cache: bool
) -> None:
    """The storage re-read the schema only at its own writer's next write: a storage
    that only read kept naming the renamed column as before (with the cache, for good:
    each miss stored rows under the old names; without it, for 256 reads)."""
    with atlas.open(db_path, cache=cache, readers=1) as db:
        db.execute("CREATE TABLE t(x, y)")
        db.write("INSERT INTO t VALUES (3, 4)")
        for _ in range(10):
            assert db.query("SELECT * FROM t")[0].x == 3
        subprocess.run(
            [sys.executable, "-c", RENAMES_A_COLUMN, str(db_path)], check=True, timeout=30
        )
        # With the cache, the next read; without it, within a tick of the supervisor
        # (well before the 256th read, when a statement's names are checked anyway).
        for _ in range(100):
            if db.query("SELECT * FROM t")[0]._fields == ("renamed", "y"):
                break
            time.sleep(0.01)
        assert db.query("SELECT * FROM t")[0].renamed == 3


def test_a_statement_that_skips_the_cache_still_learns_another_processs_rename(
    db_path: Path,
) -> None:
    """A statement whose results are never asked for again skips the cache, and so
    skipped its check of other processes' commits: the rename went unnoticed (the
    supervisor's tick watches only without the cache)."""
    with atlas.open(db_path, readers=1) as db:
        db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, x)")
        db.write(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 5000) "
            "INSERT INTO t SELECT i, i FROM s"
        )
        read = "SELECT * FROM t WHERE id = ?"
        for i in range(1, 4200):  # each id once: the cache stops keeping its results
            db.query(read, [i])
        assert db.cache.stats().skipped > 0
        subprocess.run(
            [sys.executable, "-c", RENAMES_A_COLUMN, str(db_path)], check=True, timeout=30
        )
        assert db.query(read, [4500])[0]._fields == ("id", "renamed")


ADDS_ONE = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
connection.execute("UPDATE counter SET n = n + 1")
connection.close()
"""


@pytest.mark.parametrize("cache", [False, True])
def test_repeatable_read_after_another_processs_commit_conflicts_only_if_one_came_later(
    db_path: Path, cache: bool
) -> None:
    """The writer learns of another process's commit only at its next BEGIN, so a
    snapshot begun after such a commit looked stale: its first write conflicted
    although nothing was committed since (every time while another process wrote)."""
    with atlas.open(db_path, cache=cache, readers=1) as db:
        db.execute("CREATE TABLE counter(n INTEGER)")
        db.write("INSERT INTO counter VALUES (0)")

        def add_one_elsewhere() -> None:
            subprocess.run([sys.executable, "-c", ADDS_ONE, str(db_path)], check=True, timeout=30)

        for expected in range(1, 4):
            add_one_elsewhere()  # committed before the snapshot: no conflict
            with db.transaction(isolation="repeatable_read") as tx:
                n = tx.query("SELECT n FROM counter")[0].n
                assert n == 2 * expected - 1
                tx.execute("UPDATE counter SET n = ?", [n + 1])
        with (
            pytest.raises(atlas.errors.TransactionConflict),
            db.transaction(isolation="repeatable_read") as tx,
        ):
            n = tx.query("SELECT n FROM counter")[0].n
            add_one_elsewhere()  # committed after it: its update would be lost
            tx.execute("UPDATE counter SET n = ?", [n + 1])
        assert db.query("SELECT n FROM counter")[0].n == 7


@pytest.mark.parametrize("committed_elsewhere", [True, False])
def test_repeatable_read_across_a_writer_restart_conflicts_only_after_a_commit(
    db_path: Path, committed_elsewhere: bool
) -> None:
    """A restarted writer's new connection counts data_version afresh, from a state that
    includes another process's commit made after the snapshot: its version looked
    unchanged, and the transaction's update overwrote that commit (a lost update)."""
    with atlas.open(db_path, cache=False, readers=1) as db:
        db.execute("CREATE TABLE counter(n INTEGER)")
        db.write("INSERT INTO counter VALUES (0)")
        tx = db.transactions.begin("repeatable_read")
        n = tx.query("SELECT n FROM counter")[0].n
        if committed_elsewhere:
            subprocess.run([sys.executable, "-c", ADDS_ONE, str(db_path)], check=True, timeout=30)

        def writer() -> tuple[int, str]:
            (child,) = [c for c in db.supervisor.status().children if c.role == "writer"]
            return child.incarnation, child.state

        db.supervisor.kill("writer")
        assert wait_until(lambda: writer() == (2, "running"), timeout=10)
        if committed_elsewhere:
            with pytest.raises(atlas.errors.TransactionConflict):
                tx.execute("UPDATE counter SET n = ?", [n + 1])
            tx.rollback()
            assert db.query("SELECT n FROM counter")[0].n == 1
        else:  # (a restart alone commits nothing)
            tx.execute("UPDATE counter SET n = ?", [n + 1])
            tx.commit()
            assert db.query("SELECT n FROM counter")[0].n == 1

"""Error classes driven for real: diagnostics, logging once, recovery strategies."""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors import errors
from atlas_actors.faults import FaultyVFS
from tests.helpers import wait_until


def test_disk_full_degrades_to_read_only_and_recovers_by_itself(open_storage: object) -> None:
    db: atlas.Storage = open_storage(  # type: ignore[operator]
        max_page_count=60, disk_full_probe_interval=0.1
    )
    db.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, data BLOB)")
    degraded, recovered = threading.Event(), threading.Event()
    db.events.on("degraded", lambda e: degraded.set())
    db.events.on("recovered", lambda e: recovered.set())
    acknowledged = []
    with pytest.raises(errors.DiskFullError) as caught:
        for i in range(1000):
            db.write("INSERT INTO blobs VALUES (?, zeroblob(2000))", [i])
            acknowledged.append(i)
    assert degraded.wait(2)
    diagnostics = db.errors.analyze(caught.value)
    assert (diagnostics.severity, diagnostics.context["strategy"]) == ("high", "read_only")
    # Reads go on; further writes fail at once with a message that says what to do.
    assert db.query("SELECT count(*) FROM blobs") == [(len(acknowledged),)]
    started = time.monotonic()
    with pytest.raises(errors.DiskFullError, match="writes are refused until space returns"):
        db.write("INSERT INTO blobs VALUES (-1, x'00')")
    assert time.monotonic() - started < 1.0  # not after the 5 s busy timeout
    assert db.health().status == "degraded"
    # Space comes back (rows deleted: their pages are reused); a probe finds out.
    assert wait_until(lambda: _try(db, "DELETE FROM blobs WHERE id % 2 = 0"))
    assert recovered.wait(2)
    db.write("INSERT INTO blobs VALUES (5000, zeroblob(2000))")
    assert db.health().status == "ok"
    stored = {r.id for r in db.query("SELECT id FROM blobs")}
    assert {i for i in acknowledged if i % 2} <= stored  # nothing acknowledged lost


def test_while_the_disk_stays_full_one_write_per_interval_is_tried(open_storage: object) -> None:
    db = _full_disk(open_storage, probe_interval=0.3)
    time.sleep(0.4)  # a probe is due
    refused = []
    for i in range(5):
        with pytest.raises(errors.DiskFullError) as caught:
            db.write("INSERT INTO blobs VALUES (?, zeroblob(2000))", [10_000 + i])
        refused.append("writes are refused" in str(caught.value))
    # The first is the probe (tried, and the disk is still full); the next four come
    # within the interval after it and are refused without touching the disk.
    assert refused == [False, True, True, True, True]


def test_writes_refused_while_the_disk_is_full_are_counted_not_each_logged_as_errors(
    open_storage: object, caplog: pytest.LogCaptureFixture
) -> None:
    """The mode's start is one ERROR; each write it refuses (a thousand a second, under
    load) was another ERROR line with the same advice. They are counted, logged at
    DEBUG, and their number is told when space returns."""
    db = _full_disk(open_storage, probe_interval=0.5)
    before = db.metrics.snapshot()["errors.disk_full"]
    with caplog.at_level(logging.DEBUG, logger="atlas_actors"):
        for i in range(30):
            with pytest.raises(errors.DiskFullError, match="writes are refused"):
                db.write("INSERT INTO blobs VALUES (?, zeroblob(2000))", [10_000 + i])
        refusals = [r for r in caplog.records if "writes are refused" in r.getMessage()]
        assert len(refusals) == 30 and {r.levelno for r in refusals} == {logging.DEBUG}
        assert db.metrics.snapshot()["errors.disk_full"] == before + 30
        assert wait_until(lambda: _try(db, "DELETE FROM blobs"))  # space comes back
        told = [
            int(found[1])
            for r in caplog.records
            if (found := re.search(r"\((\d+) refused meanwhile\)", r.getMessage()))
        ]
        assert len(told) == 1 and told[0] >= 30  # (and the tries of the DELETE until then)


def test_a_transaction_finding_the_disk_full_degrades_the_storage_as_a_write_does(
    open_storage: object,
) -> None:
    """A transaction's statement hit SQLITE_FULL and the storage went on as if nothing
    had: not degraded, every plain write after it trying the disk again, and recover()
    retrying at once."""
    db: atlas.Storage = open_storage(  # type: ignore[operator]
        max_page_count=60, disk_full_probe_interval=30, cache=False
    )
    db.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, data BLOB)")
    degraded, recovered = threading.Event(), threading.Event()
    db.events.on("degraded", lambda _: degraded.set())
    db.events.on("recovered", lambda _: recovered.set())
    with pytest.raises(errors.DiskFullError):
        for i in range(1000):
            with db.transaction() as tx:
                tx.execute("INSERT INTO blobs VALUES (?, zeroblob(2000))", [i])
    assert degraded.wait(2) and db.disk_full and db.health().status == "degraded"
    with pytest.raises(errors.DiskFullError, match="writes are refused until space returns"):
        db.write("INSERT INTO blobs VALUES (-1, x'00')")  # refused without trying
    with db.transaction() as tx:  # a transaction that frees space, and commits
        tx.execute("DELETE FROM blobs WHERE id % 2 = 0")
    assert recovered.wait(2) and not db.disk_full
    assert db.write("INSERT INTO blobs VALUES (-1, x'00')").rowcount == 1


def test_a_probe_that_fails_for_its_own_reason_reports_that_reason(open_storage: object) -> None:
    db = _full_disk(open_storage, probe_interval=0.3)
    time.sleep(0.4)  # a probe is due
    # The probe is a duplicate key (it needs no page): it fails in its group, runs
    # again alone, and reports its own error, not a refusal.
    with pytest.raises(errors.ConstraintError):
        db.write("INSERT INTO blobs VALUES (0, x'00')")


def test_a_transaction_that_writes_nothing_does_not_end_disk_full(open_storage: object) -> None:
    recovered = threading.Event()
    db = _full_disk(open_storage, probe_interval=30, on_recovered=recovered.set)
    with db.transaction() as tx:
        tx.query("SELECT count(*) FROM blobs")
    assert not recovered.wait(0.5)
    assert db.health().status == "degraded"


def test_the_batch_that_finds_the_disk_full_does_not_end_the_mode_by_committing_the_rest(
    open_storage: object,
) -> None:
    """A statement that hits SQLITE_FULL fails alone; the batch commits its other
    writes, which fit. That commit wrote frames, and was taken for a probe that found
    space: the mode ended at once ("recovered", health ok) with the disk still full."""
    db: atlas.Storage = open_storage(  # type: ignore[operator]
        max_page_count=40, disk_full_probe_interval=30
    )
    db.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, data BLOB)")
    events: list[str] = []
    db.events.on("degraded", lambda e: events.append("degraded"))
    db.events.on("recovered", lambda e: events.append("recovered"))
    big = (
        "INSERT INTO blobs(data) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 "
        "FROM s WHERE i < 100) SELECT zeroblob(3000) FROM s"
    )
    gate = threading.Event()
    held = db.writer.run(lambda connection: gate.wait(2))  # the next two share a batch
    small = db.writer.execute("INSERT INTO blobs(id, data) VALUES (-1, zeroblob(100))")
    too_big = db.writer.execute(big)
    gate.set()
    held.get(5)
    assert small.get(5).rowcount == 1
    with pytest.raises(errors.DiskFullError):
        too_big.get(5)
    assert wait_until(lambda: events == ["degraded"])
    time.sleep(0.1)
    assert events == ["degraded"] and db.disk_full and db.health().status == "degraded"
    with pytest.raises(errors.DiskFullError, match="writes are refused"):
        db.write(big)  # refused, not tried on the full disk again


def test_a_writer_restarted_while_the_disk_is_full_carries_on_and_recovers(
    open_storage: object,
) -> None:
    # Space comes back while the storage is degraded, and the writer restarts before
    # any probe: the new incarnation must still tell the storage once a commit succeeds
    # (its first write is a probe), or health says degraded for ever.
    vfs = FaultyVFS()
    db: atlas.Storage = open_storage(  # type: ignore[operator]
        vfs=vfs.name, cache=False, disk_full_probe_interval=30
    )
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    recovered = threading.Event()
    db.events.on("recovered", lambda _: recovered.set())
    vfs.fail_writes = apsw.FullError
    with pytest.raises(errors.DiskFullError):
        db.write("INSERT INTO t DEFAULT VALUES")
    assert db.health().status == "degraded"
    vfs.fail_writes = None  # space is back
    db.supervisor.kill("writer")
    assert db.write("INSERT INTO t DEFAULT VALUES").rowcount == 1
    assert recovered.wait(2)
    assert db.health().status == "ok"


def _full_disk(
    open_storage: object, *, probe_interval: float, on_recovered: Callable[[], None] | None = None
) -> atlas.Storage:
    """A storage whose database has hit its page limit (writes refused, reads go on)."""
    db: atlas.Storage = open_storage(  # type: ignore[operator]
        max_page_count=60, disk_full_probe_interval=probe_interval
    )
    db.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, data BLOB)")
    if on_recovered is not None:
        db.events.on("recovered", lambda _: on_recovered())
    with pytest.raises(errors.DiskFullError):
        for i in range(1000):
            db.write("INSERT INTO blobs VALUES (?, zeroblob(2000))", [i])
    return db


def _try(db: atlas.Storage, sql: str) -> bool:
    try:
        db.write(sql)
    except errors.DiskFullError:
        return False
    return True


def _corrupt_copy(source: Path, target: Path) -> None:
    connection = apsw.Connection(str(source))
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    root = connection.execute("SELECT rootpage FROM sqlite_schema WHERE name = 'notes'").fetchall()
    page_size = connection.pragma("page_size")
    connection.close()
    shutil.copy(source, target)
    data = bytearray(target.read_bytes())
    page = root[0][0] + 3  # a leaf page of the table, past its root
    start = (page - 1) * page_size
    data[start : start + 64] = b"\xff" * 64  # smash the page header and cell pointers
    target.write_bytes(bytes(data))


def test_corruption_stops_writes_verifies_and_reports(tmp_path: Path) -> None:
    original = tmp_path / "original.db"
    with atlas.open(original) as db:
        db.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
        db.write_many("INSERT INTO notes(body) VALUES (?)", [["x" * 200] for _ in range(500)])
    copy = tmp_path / "copy.db"
    _corrupt_copy(original, copy)
    with atlas.open(copy, verify_on_restart=False) as db:
        events: list[str] = []
        db.events.on("degraded", lambda e: events.append(e.detail["reason"]))
        with pytest.raises(errors.CorruptionError) as caught:
            db.query("SELECT count(*), sum(length(body)) FROM notes")
        diagnostics = db.errors.analyze(caught.value)
        assert diagnostics.severity == "high" and not diagnostics.recoverable
        assert diagnostics.context["strategy"] == "stop_and_verify"
        assert events == ["corruption"]
        with pytest.raises(errors.CorruptionError, match=r"verified|damaged"):
            db.write("INSERT INTO notes(body) VALUES ('more')")
        assert wait_until(lambda: "damaged" in str(db.write_block))
        health = db.health()
        assert health.status == "degraded" and "integrity_check" in (health.failure or "")
    with atlas.open(original) as db:  # the original is untouched
        assert db.query("SELECT count(*) FROM notes") == [(500,)]


def test_a_writer_restart_that_finds_the_file_damaged_stops_writes_but_not_reads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The restart's quick_check fails: the corruption strategy, not a crash loop.

    Before, the check failed the writer's start until the restart intensity failed
    the whole storage, reads of undamaged tables included.
    """
    path = tmp_path / "damaged.db"
    with atlas.open(path, cache=False, restart_backoff_initial=0.3) as db:
        db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        db.execute("CREATE TABLE u(id INTEGER PRIMARY KEY, v TEXT)")
        db.write_many("INSERT INTO t(v) VALUES (?)", [["x" * 100]] * 3000)
        db.write("INSERT INTO u(v) VALUES ('kept')")
        db.wal.checkpoint("truncate")
        with path.open("r+b") as file:  # a page of t's b-tree, from outside
            file.seek(4096 * 20 + 200)
            file.write(b"\x55" * 2000)
        db.supervisor.kill("writer", how="crash")
        # Writes sent during the restart's backoff pass the call's check (nothing is
        # known yet) and wait in the mailbox: the failed check must refuse them too.
        queued = [db.writer.execute("INSERT INTO u(v) VALUES (?)", [n]) for n in range(5)]
        for future in queued:
            with pytest.raises(errors.CorruptionError):
                future.get(10)
        assert wait_until(lambda: "damaged" in str(db.write_block), timeout=10)
        writer = next(c for c in db.supervisor.status().children if c.role == "writer")
        assert writer.state == "running" and writer.incarnation == 2  # no crash loop
        assert db.query("SELECT v FROM u") == [("kept",)]  # reads go on
        with pytest.raises(errors.CorruptionError, match="damaged"):
            db.write("INSERT INTO u(v) VALUES ('more')")
        assert db.health().status == "degraded"
        assert db.metrics.snapshot()["errors.corruption"] >= 1
        # Each write refused from now on is counted, and logged at DEBUG, not as a new
        # ERROR: the stop was logged once (a thousand refusals a second otherwise).
        counted = db.metrics.get("errors.corruption")
        with caplog.at_level(logging.DEBUG, logger="atlas_actors"):
            caplog.clear()
            for n in range(5):
                with pytest.raises(errors.CorruptionError):
                    db.write("INSERT INTO u(v) VALUES (?)", [n])
        assert db.metrics.get("errors.corruption") >= counted + 5
        refusals = [r for r in caplog.records if "writes stay stopped" in r.getMessage()]
        assert len([r for r in refusals if r.levelno == logging.DEBUG]) >= 5
        assert [r for r in refusals if r.levelno > logging.DEBUG] == []


def test_recover_resumes_writes_once_the_file_checks_out(open_storage: object) -> None:
    # A read fault (FaultyVFS) passes for corruption, and the automatic check, run while
    # it lasts, finds the file "damaged". Once it is gone, recover() checks again: when
    # it says "writes resumed", writes must resume.
    vfs = FaultyVFS()
    db: atlas.Storage = open_storage(  # type: ignore[operator]
        vfs=vfs.name, cache=False, readers=1, max_readers=1, cache_size_kib=16
    )
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    db.write_many("INSERT INTO t(v) VALUES (randomblob(2000))", [[]] * 300)
    db.wal.checkpoint("truncate")  # the rows live in the main file now
    vfs.only = Path(db.path).name
    vfs.fail_reads = apsw.CorruptError
    tx = db.transactions.begin()
    with pytest.raises(errors.CorruptionError):
        tx.query("SELECT * FROM t")
    assert wait_until(lambda: "damaged" in str(db.write_block))
    vfs.fail_reads = None
    tx.rollback()
    failed = db.transactions.begin()
    with pytest.raises(errors.CorruptionError):
        failed.execute("INSERT INTO t(v) VALUES (1)")
    result = db.errors.recover(failed)
    assert (result.strategy, result.recovered) == ("stop_and_verify", True), result
    assert db.write("INSERT INTO t(v) VALUES (1)").rowcount == 1
    assert db.health().status == "ok"


def test_every_error_is_logged_once_with_structured_context(
    db: atlas.Storage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="atlas_actors.errors")
    db.write("INSERT INTO tasks(title) VALUES ('a')")
    with pytest.raises(errors.ConstraintError):
        db.write("INSERT INTO tasks(title) VALUES ('a')")
    with pytest.raises(errors.SQLError):
        db.query("SELECT nope FROM tasks")
    records = [r for r in caplog.records if r.name == "atlas_actors.errors"]
    assert [r.atlas["type"] for r in records] == ["ConstraintError", "SQLError"]  # type: ignore[attr-defined]
    assert records[0].atlas["code_name"] == "SQLITE_CONSTRAINT_UNIQUE"  # type: ignore[attr-defined]
    assert records[0].atlas["operation"] == "write"  # type: ignore[attr-defined]
    snapshot = db.metrics.snapshot()
    assert snapshot["errors"] == 2
    assert snapshot["errors.constraint"] == 1 and snapshot["errors.validation"] == 1


def test_a_failed_commit_is_logged_once(
    open_storage: object, caplog: pytest.LogCaptureFixture
) -> None:
    """The write's structured record says it; the writer adds no second warning."""
    vfs = FaultyVFS()
    db: atlas.Storage = open_storage(vfs=vfs.name, cache=False)  # type: ignore[operator]
    db.execute("CREATE TABLE t(v)")
    caplog.set_level(logging.INFO, logger="atlas_actors")
    vfs.only = f"{Path(db.path).name}-wal"
    vfs.fail_writes = apsw.IOError
    with pytest.raises(errors.DiskIOError):
        db.write("INSERT INTO t VALUES (1)")
    vfs.fail_writes = None
    logged = [
        r for r in caplog.records if r.levelno >= logging.WARNING and "injected" in r.getMessage()
    ]
    assert [r.name for r in logged] == ["atlas_actors.errors"], [r.getMessage() for r in logged]


def test_recover_retries_a_transient_failure_with_backoff(db: atlas.Storage) -> None:
    db.execute("CREATE TABLE c(n INTEGER)")
    db.write("INSERT INTO c VALUES (0)")
    tx = db.transactions.begin("repeatable_read")
    tx.query("SELECT n FROM c")
    db.write("UPDATE c SET n = 10")
    with pytest.raises(errors.TransactionConflict):
        tx.execute("UPDATE c SET n = n + 1")

    def again(t: atlas.Transaction) -> int:
        t.execute("UPDATE c SET n = n + 1")
        return int(t.query("SELECT n FROM c")[0].n)

    result = db.errors.recover(tx, again)
    assert (result.strategy, result.recovered, result.result) == ("retry_with_backoff", True, 11)
    assert tx.state == "failed"
    assert db.query("SELECT n FROM c") == [(11,)]


def test_a_writer_crash_aborts_the_open_transaction_and_recover_reports_it(
    db: atlas.Storage,
) -> None:
    tx = db.transactions.begin()
    tx.execute("INSERT INTO tasks(title) VALUES ('doomed')")
    restarted = threading.Event()
    db.events.on("restart", lambda e: restarted.set())
    db.supervisor.kill("writer")
    assert restarted.wait(5)
    with pytest.raises(errors.TransactionAborted, match="nothing of it was committed"):
        tx.execute("INSERT INTO tasks(title) VALUES ('x')")
    result = db.errors.recover(tx)
    assert result.strategy == "retry" and not result.recovered  # no work given to retry
    assert "run the transaction again" in result.detail
    assert db.write("INSERT INTO tasks(title) VALUES ('after')").rowcount == 1
    assert [r.title for r in db.query("SELECT title FROM tasks")] == ["after"]


def test_analyze_classifies_every_category() -> None:
    cases = {
        errors.ConstraintError("x"): ("low", True, "fix_input"),
        errors.SQLError("x"): ("low", True, "fix_input"),
        errors.BusyError("x"): ("medium", True, "retry_with_backoff"),
        errors.OperationTimeout("op", 1.0, applied=False): ("medium", True, "retry_with_backoff"),
        errors.DeadlockError(["a", "a"], "end it"): ("medium", True, "release_and_retry"),
        errors.ActorCrashedError("writer", "op"): ("high", True, "restart"),
        errors.StorageUnavailable("gone"): ("high", False, "reopen"),
        errors.DiskFullError("x"): ("high", True, "read_only"),
        errors.DiskIOError("x"): ("high", True, "retry_then_verify"),
        errors.CorruptionError("x"): ("high", False, "stop_and_verify"),
        errors.ReadOnlyError("x"): ("medium", False, "check_permissions"),
    }
    for error, (severity, recoverable, strategy) in cases.items():
        diagnostics = errors.analyze(error)
        assert (diagnostics.severity, diagnostics.recoverable, diagnostics.context["strategy"]) == (
            severity,
            recoverable,
            strategy,
        ), type(error).__name__
    assert errors.analyze(apsw.BusyError("locked")).type == "BusyError"
    assert errors.analyze(KeyError("x")).context["category"] == "unknown"


def test_a_built_query_refused_before_it_runs_is_logged_and_counted(db: atlas.Storage) -> None:
    """db.query(Query) with an unknown column, or db.query(None), raised before the code
    that reports errors: neither logged nor counted, unlike every other refusal."""
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    before = db.metrics.get("errors")
    with pytest.raises(errors.QueryValidationError):
        db.query(atlas.Query().select(["nope"]).from_("t"))
    with pytest.raises(errors.StatementTypeError):
        db.query(None)  # type: ignore[arg-type]
    assert db.metrics.get("errors") == before + 2

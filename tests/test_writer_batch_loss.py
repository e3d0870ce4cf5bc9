"""What a batch's other callers hear when one op makes SQLite drop the whole batch.

Some failures roll back SQLite's whole transaction, not just the failing statement
(``ON CONFLICT ROLLBACK``, ``RAISE(ROLLBACK)``), and a ``run_in_writer`` function can end
it itself (``COMMIT``, ``ROLLBACK``) or leave a statement running so that its savepoint
cannot be released. None of that may commit or lose another caller's acknowledged
write, duplicate one, or tell the others that the writer crashed when it did not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors.errors import ConstraintError, TransactionAborted, ValidationError
from tests.helpers import gate_writer


@pytest.fixture
def db(open_storage: Callable[..., atlas.Storage]) -> atlas.Storage:
    db = open_storage(cache=False, max_batch_delay=2.0)
    db.execute("CREATE TABLE t(v TEXT)")
    db.execute("CREATE TABLE rb(k INT UNIQUE ON CONFLICT ROLLBACK)")
    db.execute("INSERT INTO rb VALUES (1)")
    return db


def _values(db: atlas.Storage) -> list[str]:
    return sorted(str(row.v) for row in db.query("SELECT v FROM t"))


def test_a_write_rolling_back_the_batch_fails_a_unit_of_work_as_rolled_back(
    db: atlas.Storage,
) -> None:
    _, release = gate_writer(db)  # what follows runs as one batch
    unit = db.writer.run(lambda c: c.execute("INSERT INTO t VALUES ('unit')"))
    bad = db.writer.execute("INSERT INTO rb VALUES (1)")  # rolls SQLite's transaction back
    plain = db.writer.execute("INSERT INTO t VALUES ('plain')")
    release.set()
    with pytest.raises(ConstraintError):
        bad.get(5)
    assert plain.get(5).rowcount == 1  # a write runs again in a fresh transaction
    with pytest.raises(TransactionAborted, match="rolled back with the writer's batch") as info:
        unit.get(5)  # not "the writer crashed ... may or may not have taken effect"
    assert "INSERT INTO rb" in str(info.value)  # says whose statement did it
    assert db.errors.analyze(info.value).context["strategy"] == "retry"
    assert _values(db) == ["plain"]
    assert db.supervisor.status().restarts == 0


def test_a_write_rolling_back_the_batch_fails_a_returned_transaction_as_rolled_back(
    db: atlas.Storage,
) -> None:
    _, release = gate_writer(db)
    outcome: list[object] = []

    def commit_one() -> None:
        try:
            with db.transaction() as tx:
                tx.execute("INSERT INTO t VALUES ('tx')")
            outcome.append("committed")
        except Exception as error:
            outcome.append(error)

    committer = threading.Thread(target=commit_one)
    committer.start()
    time.sleep(0.2)  # its lease request waits in the mailbox, before the bad write
    bad = db.writer.execute("INSERT INTO rb VALUES (1)")
    release.set()
    committer.join(10)
    with pytest.raises(ConstraintError):
        bad.get(5)
    assert len(outcome) == 1 and isinstance(outcome[0], TransactionAborted), outcome
    assert "crashed" not in str(outcome[0])
    assert "rolled back with the writer's batch" in str(outcome[0])
    assert _values(db) == []
    assert db.supervisor.status().restarts == 0


@pytest.mark.parametrize("control", ["COMMIT", "END", "COMMIT; BEGIN"])
def test_a_unit_of_work_cannot_commit_the_batch(db: atlas.Storage, control: str) -> None:
    _, release = gate_writer(db)
    mine = db.writer.execute("INSERT INTO t VALUES ('acknowledged once')")
    unit = db.writer.run(lambda c: c.execute(control))
    after = db.writer.execute("INSERT INTO t VALUES ('after')")
    release.set()
    assert mine.get(5).rowcount == 1
    assert after.get(5).rowcount == 1
    with pytest.raises(ValidationError, match="ended the writer's transaction or savepoint"):
        unit.get(5)
    # Committed once: the unit's COMMIT did not commit the batch (which then ran again).
    assert _values(db) == ["acknowledged once", "after"]
    assert db.supervisor.status().restarts == 0


def test_a_unit_of_work_catching_its_refused_commit_still_fails(db: atlas.Storage) -> None:
    def sneaky(c: apsw.Connection) -> str:
        c.execute("INSERT INTO t VALUES ('unit')")
        try:
            c.execute("COMMIT")
        except apsw.Error:
            c.execute("BEGIN")  # as if nothing happened
        return "done"

    _, release = gate_writer(db)
    mine = db.writer.execute("INSERT INTO t VALUES ('mine')")
    unit = db.writer.run(sneaky)
    release.set()
    assert mine.get(5).rowcount == 1
    with pytest.raises(ValidationError, match="ended the writer's transaction or savepoint"):
        unit.get(5)
    assert _values(db) == ["mine"]
    assert db.write("INSERT INTO t VALUES ('later')").rowcount == 1
    assert db.supervisor.status().restarts == 0


@pytest.mark.parametrize("control", ["ROLLBACK", "RELEASE op", "ROLLBACK TO op; RELEASE op"])
def test_a_unit_of_work_rolling_back_the_batch_fails_alone(db: atlas.Storage, control: str) -> None:
    _, release = gate_writer(db)
    mine = db.writer.execute("INSERT INTO t VALUES ('mine')")
    unit = db.writer.run(lambda c: c.execute(f"INSERT INTO t VALUES ('unit'); {control}"))
    release.set()
    assert mine.get(5).rowcount == 1  # ran again after the unit's ROLLBACK
    with pytest.raises(ValidationError, match="ended the writer's transaction or savepoint"):
        unit.get(5)
    assert _values(db) == ["mine"]
    assert db.supervisor.status().restarts == 0


def _returning(c: apsw.Connection) -> apsw.Cursor:
    cursor = c.execute("INSERT INTO t VALUES ('r1'), ('r2'), ('r3') RETURNING v")
    next(cursor)  # a writing statement left running
    return cursor


def test_a_unit_of_work_raising_mid_statement_fails_alone(db: atlas.Storage) -> None:
    def raises(c: apsw.Connection) -> None:
        cursor = _returning(c)
        raise KeyError(repr(cursor))  # still running: the traceback's frame holds it

    _, release = gate_writer(db)
    mine = db.writer.execute("INSERT INTO t VALUES ('mine')")
    unit = db.writer.run(raises)
    after = db.writer.execute("INSERT INTO t VALUES ('after')")
    release.set()
    with pytest.raises(KeyError):
        unit.get(5)
    assert mine.get(5).rowcount == 1
    assert after.get(5).rowcount == 1
    assert _values(db) == ["after", "mine"]
    assert db.supervisor.status().restarts == 0


def test_a_unit_of_work_returning_a_running_statement_fails_alone(db: atlas.Storage) -> None:
    _, release = gate_writer(db)
    mine = db.writer.execute("INSERT INTO t VALUES ('mine')")
    unit = db.writer.run(_returning)
    release.set()
    with pytest.raises(ValidationError, match="left a statement running"):
        unit.get(5)
    assert mine.get(5).rowcount == 1
    assert _values(db) == ["mine"]
    assert db.supervisor.status().restarts == 0


def test_a_statement_kept_running_is_closed_and_the_unit_fails_alone(db: atlas.Storage) -> None:
    # Nothing could commit on the writer's connection while the statement ran: it
    # restarted the writer (and a handful of such calls in ten seconds failed the
    # whole storage, past the restart intensity). The cursor is closed instead.
    kept: list[Any] = []

    def keeps(c: apsw.Connection) -> str:
        kept.append(_returning(c))  # out of the writer's reach but for the connection
        return "kept"

    for _ in range(8):  # (more than restart_max)
        _, release = gate_writer(db)
        mine = db.writer.execute("INSERT INTO t VALUES ('mine')")
        innocent = db.writer.run(lambda c: c.execute("INSERT INTO t VALUES ('innocent')"))
        unit = db.writer.run(keeps)
        release.set()
        with pytest.raises(ValidationError, match="left a statement running"):
            unit.get(5)
        assert innocent.get(5) is not None
        assert mine.get(5).rowcount == 1
    with pytest.raises(apsw.CursorClosedError):
        next(kept[0])
    assert db.write("INSERT INTO t VALUES ('later')").rowcount == 1
    assert _values(db) == ["innocent"] * 8 + ["later"] + ["mine"] * 8
    assert db.supervisor.status().restarts == 0


def test_a_unit_of_work_keeping_a_statement_and_raising_fails_with_its_own_error(
    db: atlas.Storage,
) -> None:
    kept: list[Any] = []

    def keeps_and_raises(c: apsw.Connection) -> None:
        kept.append(_returning(c))
        raise LookupError("its own")

    unit = db.writer.run(keeps_and_raises)
    with pytest.raises(LookupError, match="its own"):
        unit.get(5)
    assert db.write("INSERT INTO t VALUES ('later')").rowcount == 1
    assert _values(db) == ["later"]
    assert db.supervisor.status().restarts == 0

"""Nested ``with db.transaction()`` blocks (savepoints of the outer transaction).

A nested block is all or nothing within its transaction: leaving it by an exception
undoes exactly what ran inside it, and it runs at the outer transaction's level.
"""

from __future__ import annotations

import threading

import pytest

import atlas_actors as atlas
from atlas_actors.errors import DiskIOError, TransactionConflict, ValidationError
from atlas_actors.transaction.transaction import Transaction
from tests.helpers import xy

# -- savepoints opened before a nested block, from inside it ------------------------------


@pytest.mark.parametrize("call", ["rollback_to", "release"])
def test_a_savepoint_opened_before_a_nested_block_is_refused_inside_it(
    kv: atlas.Storage, call: str
) -> None:
    with kv.transaction() as tx:
        tx.execute("UPDATE kv SET v = 1 WHERE k = 'x'")
        tx.savepoint("a")
        with kv.transaction() as inner:
            inner.execute("UPDATE kv SET v = 2 WHERE k = 'y'")
            with pytest.raises(ValidationError, match="before the nested") as caught:
                getattr(inner, call)("a")
            assert "nested_" not in str(caught.value)  # (no internal name)
            assert tx.state == "active"  # refused: nothing changed
            inner.execute("UPDATE kv SET v = 3 WHERE k = 'y'")
        # After the block, the savepoint is the caller's again.
        getattr(tx, call)("a")
    assert xy(kv) == ((1, 50) if call == "rollback_to" else (1, 3))


def test_a_nested_block_that_raises_after_a_refused_rollback_to_undoes_all_it_did(
    kv: atlas.Storage,
) -> None:
    with kv.transaction() as tx:
        tx.execute("UPDATE kv SET v = 1 WHERE k = 'x'")
        tx.savepoint("a")
        with pytest.raises(RuntimeError), kv.transaction() as inner:
            inner.execute("UPDATE kv SET v = 2 WHERE k = 'y'")
            with pytest.raises(ValidationError):
                inner.rollback_to("a")
            inner.execute("UPDATE kv SET v = 3 WHERE k = 'x'")
            raise RuntimeError("the block fails")
        assert tx.query("SELECT v FROM kv ORDER BY k") == [(1,), (50,)]
    assert xy(kv) == (1, 50)


def test_savepoints_opened_inside_a_nested_block_work_there(kv: atlas.Storage) -> None:
    with kv.transaction() as tx:
        tx.savepoint("a")
        tx.execute("UPDATE kv SET v = 1 WHERE k = 'x'")
        with kv.transaction() as inner:
            inner.savepoint("a")  # the same name: the most recent one is this block's
            inner.execute("UPDATE kv SET v = 2 WHERE k = 'y'")
            inner.rollback_to("a")
            inner.savepoint("b")
            inner.execute("UPDATE kv SET v = 3 WHERE k = 'y'")
            inner.release("b")
            inner.release("a")  # this block's "a"; the outer "a" stays
            with pytest.raises(ValidationError, match="before the nested"):
                inner.rollback_to("a")  # ... which is the outer one now
        tx.rollback_to("a")
        tx.execute("UPDATE kv SET v = 4 WHERE k = 'x'")
    assert xy(kv) == (4, 50)


def test_a_savepoint_of_an_enclosing_nested_block_is_refused_in_a_deeper_one(
    kv: atlas.Storage,
) -> None:
    with kv.transaction() as tx, kv.transaction():
        tx.execute("UPDATE kv SET v = 1 WHERE k = 'x'")
        tx.savepoint("mid")
        with kv.transaction():
            tx.execute("UPDATE kv SET v = 2 WHERE k = 'y'")
            with pytest.raises(ValidationError, match="before the nested"):
                tx.rollback_to("mid")
        tx.rollback_to("mid")  # in its own block: fine
    assert xy(kv) == (1, 50)


# -- a nested block inside a transaction that holds no lease ------------------------------


def _write_from_another_thread(db: atlas.Storage) -> str:
    outcome: list[str] = []

    def write() -> None:
        try:
            db.write("UPDATE kv SET v = v + 1 WHERE k = 'y'", timeout=2.0)
            outcome.append("written")
        except Exception as error:
            outcome.append(type(error).__name__)

    thread = threading.Thread(target=write)
    thread.start()
    thread.join(10)
    return outcome[0] if outcome else "hung"


def test_a_read_only_nested_block_in_a_repeatable_read_reader_never_conflicts(
    kv: atlas.Storage,
) -> None:
    with kv.transaction("repeatable_read") as tx:
        before = tx.query("SELECT v FROM kv WHERE k = 'x'")[0].v
        kv.write("UPDATE kv SET v = 99 WHERE k = 'x'")  # another commit meanwhile
        with kv.transaction("repeatable_read") as inner:
            # Its level is the outer one's: the same snapshot, no lease, no conflict.
            assert inner.query("SELECT v FROM kv WHERE k = 'x'")[0].v == before
        with pytest.raises(RuntimeError), kv.transaction():  # (one left by an exception)
            assert tx.query("SELECT v FROM kv WHERE k = 'x'")[0].v == before
            raise RuntimeError("nothing to undo")
        assert tx.state == "active"
        assert tx.query("SELECT v FROM kv WHERE k = 'x'")[0].v == before
    assert tx.state == "committed"
    assert xy(kv) == (99, 50)


@pytest.mark.parametrize("isolation", ["repeatable_read", "read_committed", "read_uncommitted"])
def test_a_read_only_nested_block_does_not_block_writers(kv: atlas.Storage, isolation: str) -> None:
    with kv.transaction(isolation) as tx:
        tx.query("SELECT v FROM kv WHERE k = 'x'")
        with kv.transaction(isolation), kv.transaction(isolation) as inner:
            inner.query("SELECT v FROM kv WHERE k = 'x'")
            assert kv.transactions.status().lease_holder is None
            assert _write_from_another_thread(kv) == "written"
        assert not tx.info().holds_lease
    assert xy(kv) == (50, 51)


@pytest.mark.parametrize("isolation", ["repeatable_read", "read_committed", "serializable"])
def test_a_nested_block_whose_first_write_takes_the_lease_still_undoes_only_itself(
    kv: atlas.Storage, isolation: str
) -> None:
    with kv.transaction(isolation) as tx:
        if isolation != "serializable":
            tx.query("SELECT v FROM kv WHERE k = 'x'")
        with pytest.raises(RuntimeError), kv.transaction(isolation) as inner:
            inner.execute("UPDATE kv SET v = 1 WHERE k = 'x'")  # the transaction's first
            assert tx.info().holds_lease
            raise RuntimeError("undo the block")
        assert tx.query("SELECT v FROM kv ORDER BY k") == [(50,), (50,)]
        with kv.transaction(isolation) as inner:
            inner.execute("UPDATE kv SET v = 2 WHERE k = 'y'")
        tx.execute("UPDATE kv SET v = 3 WHERE k = 'x'")
    assert xy(kv) == (3, 2)


def test_nested_blocks_opened_before_the_lease_are_each_undone_alone(
    kv: atlas.Storage,
) -> None:
    with kv.transaction("repeatable_read") as tx:
        tx.query("SELECT count(*) FROM kv")
        with kv.transaction() as middle:  # no lease yet
            middle.query("SELECT count(*) FROM kv")
            with pytest.raises(RuntimeError), kv.transaction() as inner:
                inner.execute("UPDATE kv SET v = 1 WHERE k = 'x'")  # opens both
                raise RuntimeError("undo the inner block only")
            middle.execute("UPDATE kv SET v = 2 WHERE k = 'y'")
            with kv.transaction() as inner:
                inner.execute("UPDATE kv SET v = 3 WHERE k = 'x'")
        with pytest.raises(RuntimeError), kv.transaction() as other:
            with kv.transaction() as deeper:  # inside one opened before the lease
                deeper.execute("UPDATE kv SET v = 4 WHERE k = 'x'")
            other.execute("UPDATE kv SET v = 5 WHERE k = 'y'")
            raise RuntimeError("undo this block and the one inside it")
        assert tx.query("SELECT v FROM kv ORDER BY k") == [(3,), (2,)]
    assert xy(kv) == (3, 2)


def test_a_savepoint_inside_a_nested_block_opened_before_the_lease(kv: atlas.Storage) -> None:
    with kv.transaction("read_committed") as tx:
        tx.query("SELECT count(*) FROM kv")
        with pytest.raises(RuntimeError), kv.transaction("read_committed") as inner:
            inner.savepoint("s")  # takes the lease: the block's savepoint first
            inner.execute("UPDATE kv SET v = 1 WHERE k = 'x'")
            inner.rollback_to("s")
            inner.execute("UPDATE kv SET v = 2 WHERE k = 'y'")
            raise RuntimeError("undo the block")
        assert tx.query("SELECT v FROM kv ORDER BY k") == [(50,), (50,)]
        tx.execute("UPDATE kv SET v = 3 WHERE k = 'x'")
    assert xy(kv) == (3, 50)


def test_a_nested_write_in_a_stale_repeatable_read_snapshot_conflicts(kv: atlas.Storage) -> None:
    with pytest.raises(TransactionConflict), kv.transaction("repeatable_read") as tx:
        tx.query("SELECT v FROM kv WHERE k = 'x'")
        kv.write("UPDATE kv SET v = 99 WHERE k = 'x'")
        with kv.transaction() as inner:
            inner.execute("UPDATE kv SET v = 1 WHERE k = 'y'")  # its first write
    assert tx.state == "failed"
    assert xy(kv) == (99, 50)


def test_a_nested_block_whose_savepoint_cannot_be_opened_rolls_the_transaction_back(
    kv: atlas.Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = DiskIOError("injected: SAVEPOINT refused")

    def refuse(self: Transaction, name: str) -> None:
        raise refused

    with kv.transaction("read_committed") as tx:
        tx.query("SELECT count(*) FROM kv")
        with pytest.raises(DiskIOError), kv.transaction("read_committed") as inner:
            monkeypatch.setattr(Transaction, "_open_savepoint", refuse)
            # Run unmarked, the block's writes could not be undone alone: none runs.
            inner.execute("UPDATE kv SET v = 1 WHERE k = 'x'")
        monkeypatch.undo()
        assert tx.state == "rolled_back"
    assert xy(kv) == (50, 50)
    assert kv.write("UPDATE kv SET v = 2 WHERE k = 'x'").rowcount == 1  # the lease went back

"""Nested ``with db.transaction()`` blocks (savepoints of the outer transaction).

A nested block is all or nothing within its transaction: leaving it by an exception
undoes exactly what ran inside it, and it runs at the outer transaction's level.
"""

from __future__ import annotations

import pytest

import atlas_actors as atlas
from atlas_actors.errors import ValidationError


@pytest.fixture
def kv(db: atlas.Storage) -> atlas.Storage:
    db.execute("CREATE TABLE kv(k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
    db.write_many("INSERT INTO kv VALUES (?, ?)", [("x", 50), ("y", 50)])
    return db


def _xy(db: atlas.Storage) -> tuple[int, int]:
    rows = db.query("SELECT v FROM kv ORDER BY k")
    return int(rows[0].v), int(rows[1].v)


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
    assert _xy(kv) == ((1, 50) if call == "rollback_to" else (1, 3))


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
    assert _xy(kv) == (1, 50)


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
    assert _xy(kv) == (4, 50)


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
    assert _xy(kv) == (1, 50)

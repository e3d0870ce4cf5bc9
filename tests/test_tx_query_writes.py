"""``tx.query`` with a statement that writes, before the transaction's first write.

At ``serializable`` every statement runs on the lent write connection. At the other
levels reads run on a reader (or the cache) until the first write: a writing
statement sent through ``tx.query`` (``INSERT ... RETURNING``, a ``DELETE``) must
become that first write, as it would through ``tx.execute``, not fail on the
read-only reader with advice to use ``db.write`` (which runs outside the transaction).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

import atlas_actors as atlas
from atlas_actors.errors import TransactionConflict

LEVELS = ["read_committed", "read_uncommitted", "repeatable_read"]


@pytest.fixture(params=[True, False], ids=["cache", "no-cache"])
def kv(request: pytest.FixtureRequest, open_storage: Callable[..., atlas.Storage]) -> atlas.Storage:
    db = open_storage(cache=request.param)
    db.execute("CREATE TABLE kv(k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
    db.write_many("INSERT INTO kv VALUES (?, ?)", [("x", 1), ("y", 2)])
    return db


def _keys(db: atlas.Storage) -> list[str]:
    return [str(row.k) for row in db.query("SELECT k FROM kv ORDER BY k")]


def _errors(db: atlas.Storage) -> int:
    return int(db.metrics.snapshot().get("errors", 0))


@pytest.mark.parametrize("isolation", LEVELS)
@pytest.mark.parametrize("read_first", [False, True], ids=["first", "after-a-read"])
def test_a_writing_query_before_the_first_write_is_the_first_write(
    kv: atlas.Storage, isolation: str, read_first: bool
) -> None:
    errors = _errors(kv)
    tx = kv.transactions.begin(isolation)
    if read_first:
        assert tx.query("SELECT count(*) AS n FROM kv")[0].n == 2
    assert tx.query("INSERT INTO kv VALUES ('q', 3) RETURNING k") == [("q",)]
    assert tx.info().holds_lease  # the transaction's first write: it holds the lease
    assert tx.operations == (2 if read_first else 1)
    assert tx.query("DELETE FROM kv WHERE k = 'x' RETURNING v") == [(1,)]
    assert tx.query("SELECT k FROM kv ORDER BY k") == [("q",), ("y",)]  # its own writes
    assert _keys(kv) == ["x", "y"]  # nobody else sees them yet
    tx.commit()
    assert _keys(kv) == ["q", "y"]
    assert _errors(kv) == errors  # nothing reported: nothing failed


@pytest.mark.parametrize("isolation", LEVELS)
def test_a_writing_query_is_rolled_back_with_its_transaction(
    kv: atlas.Storage, isolation: str
) -> None:
    with pytest.raises(RuntimeError), kv.transaction(isolation) as tx:
        assert tx.query("DELETE FROM kv WHERE k = 'zz'") == []  # writes nothing, but may
        assert tx.info().holds_lease
        tx.query("UPDATE kv SET v = 10 RETURNING k")
        raise RuntimeError("roll back")
    assert [row.v for row in kv.query("SELECT v FROM kv ORDER BY k")] == [1, 2]


def test_a_writing_query_after_a_snapshot_others_changed_conflicts(kv: atlas.Storage) -> None:
    tx = kv.transactions.begin("repeatable_read")
    assert tx.query("SELECT v FROM kv WHERE k = 'x'") == [(1,)]
    kv.write("UPDATE kv SET v = 5 WHERE k = 'x'")  # committed since its snapshot
    with pytest.raises(TransactionConflict):
        tx.query("UPDATE kv SET v = v + 1 WHERE k = 'x' RETURNING v")  # as execute() would
    assert tx.state == "failed"
    assert kv.query("SELECT v FROM kv WHERE k = 'x'") == [(5,)]

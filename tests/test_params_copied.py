"""A queued write binds the values it was called with, whatever the caller does next.

The future API returns before the write runs, and a caller reusing a row buffer (or a
generator, read once) must not change what is written, nor what a write run again
(after a batch SQLite rolled back) binds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

import atlas_actors as atlas
from tests.helpers import gate_writer


@pytest.fixture
def db(open_storage: Callable[..., atlas.Storage]) -> atlas.Storage:
    db = open_storage(cache=False)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v INTEGER)")
    return db


def _values(db: atlas.Storage, k: str) -> list[int]:
    return [row.v for row in db.query("SELECT v FROM t WHERE k = ? ORDER BY id", [k])]


def test_a_reused_row_buffer_does_not_change_queued_writes(db: atlas.Storage) -> None:
    _, release = gate_writer(db)  # everything below waits in the mailbox meanwhile
    row: list[object] = ["execute", 0]
    futures = []
    for i in range(5):
        row[1] = i
        futures.append(db.writer.execute("INSERT INTO t(k, v) VALUES (?, ?)", row))
    named = {"k": "named", "v": 1}
    futures.append(db.writer.execute("INSERT INTO t(k, v) VALUES (:k, :v)", named))
    named["v"] = 2
    buffer: list[object] = ["executemany", 0]
    futures.append(db.writer.executemany("INSERT INTO t(k, v) VALUES (?, ?)", [buffer]))
    buffer[1] = 99
    pair: list[object] = ["write_all", 7]
    futures.append(db.writer.write_all([("INSERT INTO t(k, v) VALUES (?, ?)", pair)]))
    pair[1] = 77
    release.set()
    for future in futures:
        future.get(5)
    assert _values(db, "execute") == [0, 1, 2, 3, 4]
    assert _values(db, "named") == [1]
    assert _values(db, "executemany") == [0]
    assert _values(db, "write_all") == [7]


def test_generator_params_are_bound_again_when_the_batch_runs_again(
    db: atlas.Storage,
) -> None:
    def values(k: str) -> Iterator[object]:
        yield k
        yield 1

    db.execute("CREATE TABLE u(k INTEGER UNIQUE ON CONFLICT ROLLBACK)")
    db.write("INSERT INTO u VALUES (1)")
    _, release = gate_writer(db)
    first = db.writer.execute("INSERT INTO t(k, v) VALUES (?, ?)", values("gen"))
    pairs = db.writer.write_all([("INSERT INTO t(k, v) VALUES (?, ?)", values("pair"))])
    bad = db.writer.execute("INSERT INTO u VALUES (1)")  # SQLite drops the whole batch
    release.set()
    with pytest.raises(atlas.errors.ConstraintError):
        bad.get(5)
    assert first.get(5).rowcount == 1  # run again, with its values, not an empty iterator
    assert pairs.get(5)[0].rowcount == 1
    assert _values(db, "gen") == [1]
    assert _values(db, "pair") == [1]


@pytest.mark.parametrize("timeout", ["1", True])
def test_a_writer_futures_timeout_that_is_no_number_is_refused(
    db: atlas.Storage, timeout: object
) -> None:
    future = db.writer.execute("INSERT INTO t(k, v) VALUES ('x', 1)")
    with pytest.raises(atlas.errors.ValidationError, match="timeout"):
        future.get(timeout)  # type: ignore[arg-type]
    assert future.get(5).rowcount == 1


def test_a_mapping_other_than_a_dict_binds_as_apsw_binds_it(db: atlas.Storage) -> None:
    # Copied into a plain dict, a defaultdict lost the answers it gives for names it
    # does not hold: "no value for the named parameter :v".
    sql = "INSERT INTO t(k, v) VALUES (:k, :v)"
    values: defaultdict[str, object] = defaultdict(lambda: None, {"k": "dd"})
    assert db.write(sql, values).rowcount == 1
    assert db.writer.execute(sql, values).get(5).rowcount == 1
    assert db.write_all([(sql, values)])[0].rowcount == 1
    assert db.write_many(sql, [values, values]).rowcount == 2
    assert db.query("SELECT count(*) AS n FROM t WHERE k = 'dd' AND v IS NULL")[0].n == 5


@pytest.mark.parametrize("traced", [False, True])
def test_what_an_iterable_of_params_raises_is_raised_as_it_is(
    open_storage: Callable[..., atlas.Storage], traced: bool
) -> None:
    # It was caught by write_all's check of the pairs and said the statements were no
    # (sql, params) pairs (traced, the storage's own check did).
    db = open_storage(cache=False, tracer_provider=TracerProvider() if traced else None)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v INTEGER)")

    def raising(error: Exception) -> Iterator[object]:
        yield "x"
        raise error

    for error in (ValueError("the caller's own"), TypeError("the caller's own")):
        with pytest.raises(type(error), match="the caller's own"):
            db.write_all([("INSERT INTO t(k, v) VALUES (?, ?)", raising(error))])
    with pytest.raises(ValueError, match="the caller's own"):
        db.writer.execute(
            "INSERT INTO t(k, v) VALUES (?, ?)", raising(ValueError("the caller's own"))
        )
    assert db.write("INSERT INTO t(k, v) VALUES ('after', 1)").rowcount == 1

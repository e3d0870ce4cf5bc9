"""Reads through the cache bind their parameters as they would with the cache off.

The cache keys a read by its statement and its parameters before a reader binds them:
the key must neither use up what the reader binds nor mistake one set of parameters
for another. Each test is a reviewer's reproduction, on a real storage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import atlas_actors as atlas
from atlas_actors import errors

_BY_ID = "SELECT v FROM t WHERE id = ?"


def _filled(db: atlas.Storage) -> atlas.Storage:
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    db.write("INSERT INTO t(id, v) VALUES (1, 'one'), (2, 'two')")
    return db


@pytest.fixture
def storage(open_storage: Callable[..., atlas.Storage]) -> atlas.Storage:
    """With the cache (on by default)."""
    return _filled(open_storage())


@pytest.fixture
def uncached(open_storage: Callable[..., atlas.Storage], tmp_path: Path) -> atlas.Storage:
    """The same rows in another database, read with the cache off."""
    return _filled(open_storage(tmp_path / "uncached.db", cache=False))


def _rows(rows: list[atlas.Row]) -> list[tuple[object, ...]]:
    return [tuple(row) for row in rows]


def _outcome(db: atlas.Storage, sql: str, params: object) -> object:
    """The rows of a read, or its error's type and message."""
    try:
        return _rows(db.query(sql, params))  # type: ignore[arg-type]
    except Exception as error:
        return type(error), str(error)


def _generator(value: object) -> Iterator[object]:
    yield value


@pytest.mark.parametrize(
    "one_shot",
    [_generator, lambda value: iter([value])],
    ids=["generator", "iterator"],
)
def test_a_generator_or_iterator_of_values_is_bound_not_used_up_by_the_key(
    storage: atlas.Storage, one_shot: Callable[[object], Iterator[object]]
) -> None:
    """The key read the values out of a generator, then the reader was handed the
    empty generator: "0 supplied" (with the cache off, apsw binds it)."""
    for _ in range(3):  # a miss, the miss that admits it, then a hit
        assert _rows(storage.query(_BY_ID, one_shot(1))) == [("one",)]
    assert _rows(storage.query(_BY_ID, one_shot(2))) == [("two",)]
    assert storage.cache.stats().l1_hits >= 1


def test_warming_with_a_generator_of_values_reads_them(storage: atlas.Storage) -> None:
    assert storage.cache.warm([(_BY_ID, _generator(2))]) == 1
    hits = storage.cache.stats().l1_hits
    assert _rows(storage.query(_BY_ID, [2])) == [("two",)]
    assert storage.cache.stats().l1_hits == hits + 1


def test_an_error_raised_by_a_generator_of_values_is_typed_as_with_the_cache_off(
    storage: atlas.Storage, uncached: atlas.Storage
) -> None:
    def failing() -> Iterator[object]:
        yield 1
        raise TypeError("no second value")

    outcome = _outcome(storage, "SELECT ?, ? FROM t", failing())
    assert outcome == _outcome(uncached, "SELECT ?, ? FROM t", failing())
    assert outcome[0] is errors.ParameterError  # type: ignore[index]

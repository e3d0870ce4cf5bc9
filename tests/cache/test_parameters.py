"""Reads through the cache bind their parameters as they would with the cache off.

The cache keys a read by its statement and its parameters before a reader binds them:
the key must neither use up what the reader binds nor mistake one set of parameters
for another. Each test is a reviewer's reproduction, on a real storage.
"""

from __future__ import annotations

from collections import ChainMap, UserDict, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType

import pytest

import atlas_actors as atlas
from atlas_actors import errors
from tests.helpers import wait_until

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


_BY_NAME = "SELECT v FROM t WHERE id = :a"


@pytest.mark.parametrize("params", [[(1,)], [(1, 2, 3)], [[1]], ((1,),)], ids=repr)
def test_a_tuple_among_the_values_is_refused_as_with_the_cache_off(
    storage: atlas.Storage, uncached: atlas.Storage, params: object
) -> None:
    """The key took a tuple first value for a dict's (name, value) pairs: a builtin
    ValueError ("not enough values to unpack") instead of the ParameterError."""
    outcome = _outcome(storage, _BY_ID, params)
    assert outcome == _outcome(uncached, _BY_ID, params)
    assert outcome[0] is errors.ParameterError  # type: ignore[index]


def test_a_list_of_pairs_is_not_served_the_result_of_the_dict_of_them(
    storage: atlas.Storage, uncached: atlas.Storage
) -> None:
    """[("a", 1)] had the very key of {"a": 1}: once the dict's rows were cached, the
    list (which SQLite refuses) was served them."""
    for _ in range(3):
        assert _rows(storage.query(_BY_NAME, {"a": 1})) == [("one",)]
    outcome = _outcome(storage, _BY_NAME, [("a", 1)])
    assert outcome == _outcome(uncached, _BY_NAME, [("a", 1)])
    assert outcome[0] is errors.ParameterError  # type: ignore[index]


def test_a_dict_with_a_name_that_is_no_str_reads_as_with_the_cache_off(
    storage: atlas.Storage, uncached: atlas.Storage
) -> None:
    """Sorting the names of {"a": 1, 2: 3} raised a TypeError; apsw looks up "a" only."""
    params = {"a": 1, 2: 3}
    expected = _outcome(uncached, _BY_NAME, params)
    assert expected == [("one",)]
    for _ in range(3):
        assert _outcome(storage, _BY_NAME, params) == expected


@pytest.mark.parametrize(
    "mapping",
    [
        MappingProxyType,
        UserDict,
        ChainMap,
        lambda values: defaultdict(lambda: values["a"]),  # (apsw asks it for "a")
    ],
    ids=["mappingproxy", "UserDict", "ChainMap", "defaultdict"],
)
def test_a_mapping_is_read_by_the_values_apsw_binds(
    storage: atlas.Storage, mapping: Callable[[dict[str, object]], object]
) -> None:
    """A mapping other than a dict was keyed by its names alone (a defaultdict by the
    values it held before apsw asked it): every value was served the first's rows."""
    for _ in range(3):
        assert _rows(storage.query(_BY_NAME, mapping({"a": 1}))) == [("one",)]  # type: ignore[arg-type]
    assert _rows(storage.query(_BY_NAME, mapping({"a": 2}))) == [("two",)]  # type: ignore[arg-type]


class _Real(float):
    """A float subclass (as numpy's float64 is): 1.0 == 1, SQLite binds a REAL."""


class _Folded(str):
    """A case-insensitive str: equal to its other cases, which SQLite tells apart."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and self.lower() == other.lower()

    def __hash__(self) -> int:
        return hash(self.lower())


def test_a_float_subclass_is_not_served_the_result_of_the_equal_int(
    storage: atlas.Storage,
) -> None:
    """The key held the types only with a float among the values, found by ``is``."""
    typeof = "SELECT typeof(?) FROM t WHERE id = 1"
    for _ in range(3):
        assert _rows(storage.query(typeof, [1])) == [("integer",)]
    assert _rows(storage.query(typeof, [_Real(1.0)])) == [("real",)]


def test_a_str_subclass_is_not_served_the_result_of_a_value_it_calls_equal(
    storage: atlas.Storage,
) -> None:
    """The key compared values with their own ``==``, which need not be SQLite's."""
    by_value = "SELECT id FROM t WHERE v = ?"
    for _ in range(3):
        assert _rows(storage.query(by_value, [_Folded("one")])) == [(1,)]
    assert _rows(storage.query(by_value, [_Folded("ONE")])) == []


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("SELECT v FROM t WHERE id = 1", None),
        (_BY_ID, [1]),
        (_BY_ID, (1,)),
        (_BY_ID, [True]),
        (_BY_ID, [1.0]),
        (_BY_NAME, {"a": 1}),
        (_BY_NAME, {"a": 1.0}),
        ("SELECT id FROM t WHERE v = ?1 OR v = :b", {"b": b"x", "1": "one"}),
    ],
    ids=repr,
)
def test_plain_values_are_still_served_from_memory(
    storage: atlas.Storage, sql: str, params: object
) -> None:
    first = _rows(storage.query(sql, params))  # type: ignore[arg-type]
    assert first and _rows(storage.query(sql, params)) == first  # type: ignore[arg-type]
    hits = storage.cache.stats().l1_hits
    assert _rows(storage.query(sql, params)) == first  # type: ignore[arg-type]
    assert storage.cache.stats().l1_hits == hits + 1


def test_a_named_read_kept_on_disk_does_not_stop_the_next_open(db_path: Path) -> None:
    """Its pairs came back from the disk level's JSON as lists, which the key could not
    hash: warming memory from disk raised, and so did atlas.open."""
    with _filled(atlas.open(db_path, cache_disk_min_seconds=0)) as db:
        for _ in range(3):
            assert _rows(db.query(_BY_NAME, {"a": 1})) == [("one",)]
        assert wait_until(lambda: db.cache.stats().l2_entries == 1)
    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        assert _rows(db.query(_BY_NAME, {"a": 1})) == [("one",)]
        assert _rows(db.query(_BY_NAME, {"a": 2})) == [("two",)]


def test_a_named_read_is_served_from_disk_after_a_reopen_and_after_memory_lost_it(
    db_path: Path,
) -> None:
    """Its pairs came back from the disk level's JSON as lists: compared with the
    tuples of the key they never matched, and warming could not key them."""
    with _filled(atlas.open(db_path, cache_disk_min_seconds=0)) as db:
        for _ in range(3):
            assert _rows(db.query(_BY_NAME, {"a": 1})) == [("one",)]
        assert wait_until(lambda: db.cache.stats().l2_entries == 1)
    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        assert wait_until(lambda: db.cache.stats().size == 1)  # warmed from disk
        assert _rows(db.query(_BY_NAME, {"a": 1})) == [("one",)]
        assert db.cache.stats().l1_hits == 1 and db.cache.stats().misses == 0
        assert db.cache.l1 is not None
        db.cache.l1.clear()
        assert _rows(db.query(_BY_NAME, {"a": 1})) == [("one",)]
        assert db.cache.stats().l2_hits == 1 and db.cache.stats().misses == 0
        assert _rows(db.query(_BY_NAME, {"a": 2})) == [("two",)]


def test_a_named_bytes_value_bound_for_disk_does_not_crash_the_cache_actor(
    open_storage: Callable[..., atlas.Storage], tmp_path: Path
) -> None:
    """Bytes parameters stay off the disk level (its document is JSON), but the check
    looked at the pairs, not at their values: json.dumps raised in the cache actor,
    which restarted with an empty memory level, at each such read."""
    db = _filled(open_storage(tmp_path / "disk.db", cache_disk_min_seconds=0))
    db.write("INSERT INTO t(id, v) VALUES (3, x'01')")
    by_blob = "SELECT id FROM t WHERE v = :a"
    for _ in range(3):
        assert _rows(db.query(by_blob, {"a": b"\x01"})) == [(3,)]
    for _ in range(2):  # (after it in the cache actor's mailbox: stored once it is done)
        db.query(_BY_ID, [1])
    assert wait_until(lambda: db.cache.stats().l2_entries == 1 or db.supervisor.status().restarts)
    assert db.supervisor.status().restarts == 0
    assert db.cache.stats().l2_entries == 1
    hits = db.cache.stats().l1_hits
    assert _rows(db.query(by_blob, {"a": b"\x01"})) == [(3,)]
    assert db.cache.stats().l1_hits == hits + 1

"""Reads the cache once served stale after an acknowledged write (DESIGN guarantee 3),
and writes it made fail: each test is a reviewer's reproduction, on a real storage."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import atlas_actors as atlas


@pytest.fixture
def storage(open_storage: Callable[..., atlas.Storage]) -> atlas.Storage:
    return open_storage(cache_disk_min_seconds=0)


def _cached(db: atlas.Storage, sql: str) -> list[tuple[object, ...]]:
    """Read ``sql`` until the cache serves it (admitted on the second miss)."""
    for _ in range(3):
        rows = [tuple(row) for row in db.query(sql)]
    return rows


def _truth(db: atlas.Storage, sql: str) -> list[tuple[object, ...]]:
    return [tuple(row) for row in db.pool.query(sql)]


def test_writes_to_a_table_with_a_virtual_generated_column_succeed_and_invalidate(
    storage: atlas.Storage,
) -> None:
    # apsw cannot read such a table's row images in the pre-update hook (RangeError):
    # the hook raised, and every write failed while reads went through the cache.
    storage.execute("CREATE TABLE g(id INTEGER PRIMARY KEY, x INTEGER, y AS (x * 2))")
    storage.write("INSERT INTO g(x) VALUES (1)")
    read = "SELECT y FROM g WHERE id = 1"
    assert _cached(storage, read) == [(2,)]
    storage.write("UPDATE g SET x = 5 WHERE id = 1")
    assert [tuple(r) for r in storage.query(read)] == [(10,)]
    storage.write("INSERT INTO g(x) VALUES (2)")
    assert _cached(storage, "SELECT count(*) FROM g") == [(2,)]
    storage.write("DELETE FROM g WHERE id = 1")
    assert [tuple(r) for r in storage.query(read)] == []
    assert [tuple(r) for r in storage.query("SELECT count(*) FROM g")] == [(1,)]

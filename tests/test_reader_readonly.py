"""Readers are read-only connections: nothing run through db.query can write.

DESIGN guarantee 1 (single writer): exactly one connection writes. Readers used to be
read-write connections with ``PRAGMA query_only = 1``, which a query could turn off.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors import errors


@pytest.mark.parametrize("cache", [False, True])
def test_a_reader_made_writable_by_a_pragma_still_cannot_write(
    open_storage: Callable[..., atlas.Storage], db_path: Path, cache: bool
) -> None:
    # One reader, reopened after every 3 queries: the pragma and the INSERT meet the
    # same connection, and a recycled one too.
    db = open_storage(cache=cache, readers=1, max_readers=1, recycle_after_queries=3)
    db.execute("CREATE TABLE t(x)")
    for _ in range(4):
        with pytest.raises(errors.ValidationError, match="query_only"):
            db.query("PRAGMA query_only = 0")  # refused first (a setting on a shared reader)
        # Past that check, on the raw connection: the open itself still refuses writes.
        db.pool.run_function(lambda connection: connection.execute("PRAGMA query_only = 0"))
        with pytest.raises(errors.ReadOnlyError, match=r"use db\.write or db\.execute"):
            db.query("INSERT INTO t VALUES (1)")
        with pytest.raises(errors.ReadOnlyError):
            db.submit_query("INSERT INTO t VALUES (2)").get(10)
    with pytest.raises(apsw.ReadOnlyError):  # (a function gets the raw connection's errors)
        db.pool.run_function(
            lambda connection: connection.execute("PRAGMA query_only = 0; CREATE TABLE u(y)")
        )
    assert db.query("SELECT count(*) FROM t WHERE 1 = 1") == [(0,)]
    assert db.writer.stats().writes == 1  # the CREATE TABLE
    db.write("INSERT INTO t VALUES (3)")  # the writer still writes
    direct = sqlite3.connect(db_path)
    try:
        assert direct.execute("SELECT x FROM t").fetchall() == [(3,)]
        assert direct.execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]
    finally:
        direct.close()

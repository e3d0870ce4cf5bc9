"""A PRAGMA that would change a pooled reader for later reads is refused on every read path."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import atlas_actors as atlas
from atlas_actors.errors import ValidationError

SETTING = "PRAGMA case_sensitive_like = ON"


def _through_a_snapshot(db: atlas.Storage, sql: str) -> object:
    with db.transaction(isolation="read_committed") as tx:
        return tx.query(sql)


def _through_a_borrowed_connection(db: atlas.Storage, sql: str) -> object:
    with db.pool.acquire() as connection:
        return connection.query(sql)


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize(
    "read",
    [
        pytest.param(lambda db, sql: db.query(sql), id="query"),
        pytest.param(lambda db, sql: [db.query_one(sql)], id="query_one"),
        pytest.param(lambda db, sql: db.submit_query(sql).get(5), id="submit_query"),
        pytest.param(_through_a_snapshot, id="read_committed-tx"),
        pytest.param(_through_a_borrowed_connection, id="pool.acquire"),
    ],
)
def test_a_setting_pragma_is_refused_and_later_reads_are_unchanged(
    open_storage: Callable[..., atlas.Storage],
    cache: bool,
    read: Callable[[atlas.Storage, str], object],
) -> None:
    db = open_storage(cache=cache, readers=1, max_readers=1)  # (one reader: the one reused)
    db.execute("CREATE TABLE t(name TEXT)")
    db.write("INSERT INTO t VALUES ('Apple')")
    like = "SELECT count(*) FROM t WHERE name LIKE 'apple'"
    assert db.query(like) == [(1,)]
    with pytest.raises(ValidationError, match="case_sensitive_like"):
        read(db, SETTING)
    assert db.query(like + " AND 1") == [(1,)]  # (a new text: not a cached result)
    assert read(db, "PRAGMA table_info(t)")  # reading pragmas still work
    assert read(db, "PRAGMA user_version") == [(0,)]

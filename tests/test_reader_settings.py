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


_WRITER_PATHS: dict[str, Callable[[atlas.Storage, str], object]] = {
    "execute": lambda db, sql: db.execute(sql),
    "write": lambda db, sql: db.write(sql),
    "write_all": lambda db, sql: db.write_all([(sql, None)]),
    "writer.execute": lambda db, sql: db.writer.execute(sql).get(10),
    "tx.execute": lambda db, sql: db.transactions.run(lambda tx: tx.execute(sql), retries=0),
    "tx.query": lambda db, sql: db.transactions.run(lambda tx: tx.query(sql), retries=0),
}


@pytest.mark.parametrize("path", sorted(_WRITER_PATHS))
@pytest.mark.parametrize(
    "sql",
    [
        "PRAGMA locking_mode = EXCLUSIVE",  # every later write: "database is locked"
        "PRAGMA query_only = 1",  # every later write: read-only
        "PRAGMA foreign_keys = OFF",  # (a no-op inside the batch's transaction)
        "PRAGMA case_sensitive_like = 1",
    ],
)
def test_the_writers_connection_settings_are_refused_and_writes_go_on(
    open_storage: Callable[..., atlas.Storage], path: str, sql: str
) -> None:
    db = open_storage()
    db.execute("CREATE TABLE t(name TEXT)")
    with pytest.raises(ValidationError, match="changes the writer's connection"):
        _WRITER_PATHS[path](db, sql)
    db.write("INSERT INTO t VALUES ('after')")  # the writer still writes
    assert db.query("SELECT count(*) FROM t WHERE name LIKE 'AFTER'") == [(1,)]
    assert db.run_in_writer(lambda c: (c.pragma("locking_mode"), c.pragma("query_only"))) == (
        "normal",
        0,
    )


@pytest.mark.parametrize(
    "sql", ["PRAGMA user_version = 7", "PRAGMA application_id = 7", "PRAGMA optimize"]
)
def test_the_databases_own_values_and_upkeep_still_run_through_the_writer(
    open_storage: Callable[..., atlas.Storage], sql: str
) -> None:
    db = open_storage()
    db.execute(sql)
    if "=" in sql:
        name = sql.split()[1]
        assert db.query(f"PRAGMA {name}") == [(7,)]

"""Reads the cache once served stale after an acknowledged write (DESIGN guarantee 3),
and writes it made fail: each test is a reviewer's reproduction, on a real storage."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors import errors
from atlas_actors.cache.statements import analyze


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


def _audited(db: atlas.Storage) -> None:
    db.execute("CREATE TABLE a(id INTEGER PRIMARY KEY, x); CREATE TABLE audit(n)")
    db.execute("CREATE TABLE other(x)")


def test_a_temp_trigger_created_after_its_tables_statements_were_analysed_invalidates(
    storage: atlas.Storage,
) -> None:
    # CREATE TEMP TRIGGER changes no cookie of main's: the writer kept its analysis of
    # the INSERT from before the trigger (writes: a alone).
    _audited(storage)
    insert = "INSERT INTO a(x) VALUES (?)"
    storage.write(insert, [0])  # analysed now
    storage.execute(
        "CREATE TEMP TRIGGER tr AFTER INSERT ON main.a "
        "BEGIN INSERT INTO main.audit(n) VALUES (new.x); END"
    )
    count = "SELECT count(*) FROM audit"
    assert _cached(storage, count) == [(0,)]
    # No read since the last batch and no entry that depends on rows: the next batch
    # runs without the pre-update hook, so the analysis alone says what it wrote.
    storage.write("INSERT INTO other VALUES (1)")
    storage.write(insert, [1])
    assert _truth(storage, count) == [(1,)]
    assert [tuple(r) for r in storage.query(count)] == [(1,)]


def test_tables_the_pre_update_hook_saw_change_are_invalidated_even_if_not_analysed(
    storage: atlas.Storage,
) -> None:
    # The hook saw audit's new row, which the reader's analysis does not name.
    insert, count = _analysed_by_a_reader_then_temp_triggered(storage)
    storage.write(insert, [1])
    assert [tuple(r) for r in storage.query(count)] == [(1,)]


def _analysed_by_a_reader_then_temp_triggered(storage: atlas.Storage) -> tuple[str, str]:
    """A reader analyses an INSERT (a read-only connection refuses to run it) without
    the writer's temp trigger, which writes audit; audit's count is cached. Returns the
    INSERT and the count's SQL."""
    _audited(storage)
    storage.execute(
        "CREATE TEMP TRIGGER tr AFTER INSERT ON main.a "
        "BEGIN INSERT INTO main.audit(n) VALUES (new.x); END"
    )
    insert = "INSERT INTO a(x) VALUES (?)"
    with pytest.raises(errors.AtlasError):
        storage.query(insert, [0])
    count = "SELECT count(*) FROM audit"
    assert _cached(storage, count) == [(0,)]
    return insert, count


def test_a_readers_analysis_of_a_write_is_not_what_the_writer_uses(
    storage: atlas.Storage,
) -> None:
    # As above, but the batch runs without the pre-update hook: only the analysis can
    # tell that the writer's temp trigger writes audit, and a reader's cannot.
    insert, count = _analysed_by_a_reader_then_temp_triggered(storage)
    storage.write("INSERT INTO other VALUES (1)")  # (the next batch: no hook)
    storage.write(insert, [1])
    assert [tuple(r) for r in storage.query(count)] == [(1,)]


def test_sqlite_sequence_is_read_afresh_after_an_autoincrement_insert(
    storage: atlas.Storage,
) -> None:
    # SQLite updates sqlite_sequence itself: the authorizer never reports that write.
    storage.execute("CREATE TABLE s(id INTEGER PRIMARY KEY AUTOINCREMENT, x)")
    storage.write("INSERT INTO s(x) VALUES (1)")
    seq = "SELECT seq FROM sqlite_sequence WHERE name = 's'"
    assert _cached(storage, seq) == [(1,)]
    assert storage.write("INSERT INTO s(x) VALUES (2)").lastrowid == 2
    assert [tuple(r) for r in storage.query(seq)] == [(2,)]


def test_pragma_functions_are_read_afresh(storage: atlas.Storage) -> None:
    # No statement writes pragma_page_count or pragma_user_version: nothing would
    # ever invalidate them.
    storage.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT)")
    pages = "SELECT page_count FROM pragma_page_count"
    version = "SELECT user_version FROM pragma_user_version"
    before = _cached(storage, pages)[0][0]
    assert _cached(storage, version) == [(0,)]
    storage.write_many("INSERT INTO t(body) VALUES (?)", [["x" * 3000] for _ in range(50)])
    storage.execute("PRAGMA user_version = 7")
    assert storage.query(pages)[0][0] == _truth(storage, pages)[0][0] > before
    assert [tuple(r) for r in storage.query(version)] == [(7,)]


@pytest.mark.parametrize("name", ["words", "json_each"])
def test_a_vocabulary_table_is_read_afresh_after_its_fts_table_changes(
    storage: atlas.Storage, name: str
) -> None:
    # Writes name the FTS table; the fts5vocab table over it changes all the same. Named
    # like a pure table-valued function, main's own table is what the name reads.
    try:
        storage.execute(
            "CREATE VIRTUAL TABLE docs USING fts5(body); "
            f"CREATE VIRTUAL TABLE {name} USING fts5vocab(docs, row)"
        )
    except errors.AtlasError:
        pytest.skip("fts5 is not available")
    storage.write("INSERT INTO docs VALUES ('alpha')")
    terms = f"SELECT term FROM {name} ORDER BY term"
    assert _cached(storage, terms) == [("alpha",)]
    storage.write("INSERT INTO docs VALUES ('beta')")
    assert [tuple(r) for r in storage.query(terms)] == [("alpha",), ("beta",)]


@pytest.mark.parametrize(
    ("sql", "cacheable"),
    [
        ("SELECT * FROM t", True),
        ("SELECT * FROM v", True),
        ("SELECT name FROM sqlite_schema", True),  # a schema change drops everything
        ("SELECT value FROM t, json_each(t.j)", True),
        ("SELECT * FROM json_tree('[1, [2]]')", True),
        ("SELECT t.j FROM t JOIN json_tree(t.j)", True),
        ("SELECT seq FROM sqlite_sequence", False),
        ("SELECT * FROM sqlite_stat1", False),
        ("SELECT * FROM pragma_page_count", False),
        ("SELECT * FROM main.pragma_freelist_count()", False),
        ("SELECT * FROM pragma_table_info('t')", False),
        ("SELECT * FROM page_count_view", False),
        ("SELECT * FROM t WHERE id IN (SELECT user_version FROM pragma_user_version)", False),
    ],
)
def test_only_reads_the_cache_can_see_change_are_cacheable(sql: str, cacheable: bool) -> None:
    connection = apsw.Connection(":memory:")
    connection.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, j TEXT); "
        "CREATE VIEW v AS SELECT * FROM t; "
        "CREATE VIEW page_count_view AS SELECT * FROM pragma_page_count; "
        "INSERT INTO t(j) VALUES ('[1]'); ANALYZE"
    )
    assert analyze(connection, sql).cacheable is cacheable


@pytest.mark.parametrize("pattern", ["tasks", "TASKS", "tasks:*", "TA?KS", "Tasks"])
def test_invalidate_matches_table_names_in_any_case(storage: atlas.Storage, pattern: str) -> None:
    storage.execute("CREATE TABLE Tasks(id INTEGER PRIMARY KEY, title TEXT)")
    storage.write("INSERT INTO tasks VALUES (1, 'a')")
    _cached(storage, "SELECT title FROM tasks WHERE id = 1")
    assert storage.cache.stats().size == 1
    assert storage.cache.invalidate(pattern) == 1
    assert storage.cache.stats().size == 0


def test_a_table_named_like_the_pragma_the_analysis_asks_breaks_no_read(
    storage: atlas.Storage,
) -> None:
    # It shadowed the pragma_table_list function: every analysis, so every read, failed.
    storage.execute("CREATE TABLE pragma_table_list(x); CREATE TABLE t(v)")
    storage.write("INSERT INTO t VALUES (1)")
    assert _cached(storage, "SELECT v FROM t") == [(1,)]
    assert _cached(storage, "SELECT count(*) FROM pragma_table_list") == [(0,)]
    storage.write("INSERT INTO pragma_table_list VALUES (1)")
    assert [tuple(r) for r in storage.query("SELECT count(*) FROM pragma_table_list")] == [(1,)]


@pytest.mark.parametrize("named", [False, True], ids=["positional", "named"])
def test_an_int_and_an_equal_float_parameter_are_different_reads(
    storage: atlas.Storage, named: bool
) -> None:
    """1 == 1.0 in Python (and both hash alike), so the cache served the result read
    with 1 to a read with 1.0: SQLite binds an INTEGER and a REAL, and text affinity
    stores them as '1' and '1.0'."""
    storage.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT)")
    storage.write_all(
        [("INSERT INTO t(name) VALUES (?)", [1]), ("INSERT INTO t(name) VALUES (?)", [1.0])]
    )
    sql = (
        "SELECT id, typeof(?) FROM t WHERE name = ?"
        if not named
        else ("SELECT id, typeof(:v) FROM t WHERE name = :v")
    )

    def read(value: object) -> list[tuple[object, ...]]:
        params = {"v": value} if named else [value, value]
        return [tuple(row) for _ in range(3) for row in storage.query(sql, params)][-1:]

    for value, expected in [(1, (1, "integer")), (1.0, (2, "real")), (2, None), (2.0, None)]:
        assert read(value) == ([expected] if expected else []), value
    assert read(1) == [(1, "integer")] and read(1.0) == [(2, "real")]  # (now both cached)


def test_zero_and_negative_zero_parameters_are_different_reads(storage: atlas.Storage) -> None:
    """-0.0 == 0.0, same type and hash, but SQLite keeps the sign of what it returns."""
    storage.execute("CREATE TABLE t(x)")
    storage.write("INSERT INTO t VALUES (1)")
    sql = "SELECT ? AS v FROM t"
    for _ in range(3):
        assert [math.copysign(1, r.v) for r in storage.query(sql, [0.0])] == [1.0]
    assert [math.copysign(1, r.v) for r in storage.query(sql, [-0.0])] == [-1.0]


def test_a_float_parameter_survives_the_disk_level_across_a_reopen(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    db = open_storage(cache_disk_min_seconds=0)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v REAL)")
    db.write("INSERT INTO t(v) VALUES (1.5)")
    sql = "SELECT id FROM t WHERE v = ?"
    for _ in range(3):
        assert [tuple(r) for r in db.query(sql, [1.5])] == [(1,)]
    db.close()
    again = open_storage(cache_disk_min_seconds=0)
    assert [tuple(r) for r in again.query(sql, [1.5])] == [(1,)]
    assert [tuple(r) for r in again.query(sql, [1])] == []


_FILL_T = "INSERT INTO t VALUES (1, 'a'), (2, 'b')"
_POINT = "SELECT v FROM t WHERE id = ?"


def _hooked_off_then_on(db: atlas.Storage, *others: str) -> None:
    """``DELETE FROM t`` prepared in a batch without the pre-update hook, then a read
    that depends on t's rows (so the next batch runs with the hook)."""
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    for sql in (_FILL_T, "DELETE FROM t", *others):  # (each text analysed once, here)
        with contextlib.suppress(errors.ConstraintError):
            db.write(sql)
    db.write("DELETE FROM t")  # no read since: no hook, so SQLite may truncate
    db.write(_FILL_T)
    for _ in range(3):
        assert [tuple(r) for r in db.query(_POINT, [1])] == [("a",)]


def test_a_delete_of_every_row_with_a_replace_in_its_batch_invalidates(
    storage: atlas.Storage,
) -> None:
    """The DELETE, prepared without the hook, truncated the table (no hook call); the
    REPLACE's conflict deletions made hook calls SQLite's change count leaves out, so
    the counts matched and t's row-dependent entries survived the acknowledged DELETE."""
    storage.execute("CREATE TABLE u(id INTEGER PRIMARY KEY, k UNIQUE)")
    replace = "REPLACE INTO u(id, k) VALUES (1, 20)"  # deletes two rows, counts one change
    fill_u = "INSERT INTO u VALUES (1, 10), (2, 20)"
    _hooked_off_then_on(storage, fill_u, replace, "DELETE FROM u", fill_u)
    storage.write_all([("DELETE FROM t", None), (replace, None)])
    assert [tuple(r) for r in storage.query(_POINT, [1])] == []
    assert [tuple(r) for r in storage.pool.query(_POINT, [1])] == []


def test_a_delete_of_every_row_beside_a_failing_write_in_its_batch_invalidates(
    storage: atlas.Storage,
) -> None:
    """The same with another caller's UPDATE failing on its third row in the batch:
    its two undone row changes were hook calls that no change count has."""
    storage.execute("CREATE TABLE u(id INTEGER PRIMARY KEY, k UNIQUE)")
    bump = "UPDATE u SET k = k + 1"
    _hooked_off_then_on(storage, "INSERT INTO u VALUES (1, 10), (2, 20), (3, 30), (4, 31)", bump)
    deleted = storage.writer.execute("DELETE FROM t")
    failed = storage.writer.execute(bump)
    assert deleted.get(10).rowcount == 2
    with pytest.raises(errors.ConstraintError):
        failed.get(10)
    assert [tuple(r) for r in storage.query(_POINT, [1])] == []


def test_a_user_function_writing_another_table_invalidates_it(storage: atlas.Storage) -> None:
    """A function registered on the writer's connection ran an UPDATE of b inside an
    INSERT into a: without the hook, only a (what the analysis names) was dropped."""
    storage.execute("CREATE TABLE a(x)")
    storage.execute("CREATE TABLE b(id INTEGER PRIMARY KEY, n)")
    storage.write("INSERT INTO b VALUES (1, 0)")

    def register(connection: apsw.Connection) -> None:
        def bump() -> int:
            connection.execute("UPDATE b SET n = n + 1")
            return 1

        connection.create_scalar_function("bump", bump)

    storage.run_in_writer(register)
    storage.execute("CREATE TABLE other(x)")
    for n in (1, 2):
        assert _cached(storage, "SELECT n FROM b") == [(n - 1,)]
        storage.write("INSERT INTO other VALUES (1)")  # (reads since the last batch: hooked)
        storage.write("INSERT INTO a VALUES (bump())")  # (none since: not hooked)
        assert [tuple(r) for r in storage.query("SELECT n FROM b")] == [(n,)]


def test_a_view_redefined_is_analysed_as_it_is_now(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    """A reader that ran nothing since the schema changed analysed a statement on a view
    with its old copy of the schema (EXPLAIN never checks SQLite's schema cookie): the
    result was tagged with the view's old table, and a write to its new one left it."""
    db = open_storage(readers=1)
    db.execute("CREATE TABLE t1(x); CREATE TABLE t2(x)")
    db.execute("CREATE VIEW v AS SELECT x FROM t1")
    db.write("INSERT INTO t1 VALUES (1)")
    assert db.query("SELECT x FROM v") == [(1,)]
    db.execute("DROP VIEW v")
    db.execute("CREATE VIEW v AS SELECT x FROM t2")
    for _ in range(2):  # (admitted on the second miss)
        assert db.query("SELECT x FROM v") == []
    db.write("INSERT INTO t2 VALUES (2)")
    assert db.query("SELECT x FROM v") == [(2,)]

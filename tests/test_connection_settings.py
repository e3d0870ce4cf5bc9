"""refuse_connection_settings: PRAGMAs that would change a shared connection are refused."""

from __future__ import annotations

import apsw
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from atlas_actors.connection import refuse_connection_settings
from atlas_actors.errors import ValidationError

REFUSED = [
    "PRAGMA case_sensitive_like = ON",
    "pragma case_sensitive_like=1",
    "PRAGMA case_sensitive_like(true)",
    "PRAGMA foreign_keys=0",
    "PRAGMA foreign_keys = OFF;",
    "PRAGMA query_only(0)",
    "PRAGMA main.cache_size = -2000",
    "PRAGMA [main].[synchronous]=OFF",
    'PRAGMA "foreign_keys" = 1',
    "PRAGMA `recursive_triggers` = 1",
    "PRAGMA temp_store = MEMORY",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA user_version = 3",
    "PRAGMA mmap_size(0)",
    "PRAGMA nosuch_pragma = 1",  # SQLite ignores unknown pragmas: a typo of a setter
    "  -- a comment\n  /* another */ PRAGMA writable_schema = 1",
    "SELECT 1; PRAGMA foreign_keys = 0",
    "PRAGMA table_info(t); PRAGMA trusted_schema = 1",
    "PRAGMA optimize",
    "PRAGMA optimize(0x10002)",
    "PRAGMA wal_checkpoint(TRUNCATE)",
    "PRAGMA shrink_memory",
    "PRAGMA incremental_vacuum(10)",
    # Review 18b: a name in single quotes, and EXPLAIN in front (SQLite applies a flag
    # pragma while preparing, so EXPLAIN stops nothing).
    "PRAGMA 'case_sensitive_like' = 1",
    "PRAGMA main.'case_sensitive_like' = 1",
    "EXPLAIN PRAGMA case_sensitive_like = 1",
    "EXPLAIN QUERY PLAN PRAGMA case_sensitive_like = 1",
    "explain /* x */ query plan pragma foreign_keys(0)",
]
ALLOWED = [
    "PRAGMA 'user_version'",
    "EXPLAIN PRAGMA table_info(t)",
    "EXPLAIN SELECT 1",
    "PRAGMA user_version",
    "PRAGMA foreign_keys",
    "PRAGMA main.journal_mode",
    "PRAGMA case_sensitive_like",  # no value: changes nothing
    "PRAGMA table_info(t)",
    "PRAGMA table_info = t",
    "PRAGMA main.table_xinfo('t')",
    "PRAGMA temp . index_list ( t )",
    "PRAGMA index_info(i)",
    "PRAGMA index_xinfo(i)",
    "PRAGMA foreign_key_list(t)",
    "PRAGMA foreign_key_check(t)",
    "PRAGMA foreign_key_check",
    "PRAGMA integrity_check(5)",
    "PRAGMA quick_check(t)",
    "PRAGMA table_list(t)",
    "PRAGMA pragma_list",
    "PRAGMA function_list",
    "PRAGMA collation_list",
    "PRAGMA module_list",
    "PRAGMA database_list",
    "PRAGMA compile_options",
    "PRAGMA page_count",
    "PRAGMA TABLE_INFO(t)",
    "SELECT * FROM pragma_table_info('t')",
    "SELECT 'PRAGMA foreign_keys = 0'",
    'SELECT "pragma" FROM t',
    "SELECT 1 -- PRAGMA foreign_keys = 0",
    "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END",
    "",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_pragmas_that_change_something_are_refused(sql: str) -> None:
    with pytest.raises(ValidationError, match=r"PRAGMA \w+ changes the connection") as info:
        refuse_connection_settings(sql)
    assert "db.execute()" in str(info.value)


@pytest.mark.parametrize("sql", ALLOWED)
def test_reads_are_allowed(sql: str) -> None:
    refuse_connection_settings(sql)  # no error
    refuse_connection_settings(sql)  # (the cached verdict too)


def test_the_refused_pragmas_do_change_a_connection_and_the_allowed_ones_do_not() -> None:
    """The list is checked against SQLite: a setter changes what a bare read returns."""
    conn = apsw.Connection(":memory:")
    conn.execute("CREATE TABLE t(a); CREATE INDEX i ON t(a)")
    names = [n for (n,) in conn.execute("PRAGMA pragma_list")]
    settings = ["foreign_keys", "case_sensitive_like", "cache_size", "query_only", "temp_store"]

    def snapshot() -> list[object]:
        values: list[object] = [conn.execute("SELECT 'a' LIKE 'A'").fetchall()]
        values += [conn.execute(f"PRAGMA {n}").fetchall() for n in settings]
        return values

    before = snapshot()
    for sql in ALLOWED:
        if sql.upper().startswith("PRAGMA") and sql.split()[1].split("(")[0].lower() in names:
            conn.execute(sql).fetchall()
    assert snapshot() == before
    conn.execute("PRAGMA case_sensitive_like = ON")
    assert snapshot() != before


@given(st.text(max_size=40))
@example("\x00;")  # (apsw.complete refuses a NUL: the check may not pass it on)
def test_any_text_gets_an_answer_not_a_crash(sql: str) -> None:
    try:
        refuse_connection_settings(sql)
    except ValidationError as error:
        refused = str(error)
        lowered = sql.lower()
        assert (
            ("pragma" in lowered and "PRAGMA" in refused)
            or (";" in sql and "more than one statement" in refused)
            or any(verb in lowered for verb in ("attach", "detach", "vacuum"))
        ), refused

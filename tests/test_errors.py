"""Error taxonomy: SQLite errors map to typed errors that keep their codes."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

import atlas_actors
from atlas_actors import errors
from atlas_actors.faults import FaultyVFS


def _raise(sql: str, params: tuple[object, ...] | None = None) -> BaseException:
    connection = apsw.Connection(":memory:")
    connection.execute("CREATE TABLE t(a INTEGER PRIMARY KEY, b NOT NULL)")
    connection.execute("INSERT INTO t VALUES (1, 1)")
    try:
        connection.execute(sql, params).fetchall()
    except Exception as error:
        return error
    raise AssertionError(f"{sql} did not fail")


@pytest.mark.parametrize(
    ("sql", "params", "kind", "code"),
    [
        (
            "INSERT INTO t VALUES (1, 2)",
            None,
            errors.ConstraintError,
            "SQLITE_CONSTRAINT_PRIMARYKEY",
        ),
        (
            "INSERT INTO t(b) VALUES (NULL)",
            None,
            errors.ConstraintError,
            "SQLITE_CONSTRAINT_NOTNULL",
        ),
        ("SELEC 1", None, errors.SQLError, "SQLITE_ERROR"),
        ("SELECT * FROM missing", None, errors.SQLError, "SQLITE_ERROR"),
        ("INSERT INTO t VALUES (?, ?)", (5,), errors.ParameterError, None),
        ("SELECT ?", ([1],), errors.ParameterError, None),
    ],
)
def test_apsw_errors_become_typed_errors_with_result_codes(
    sql: str, params: tuple[object, ...] | None, kind: type[errors.SQLiteError], code: str | None
) -> None:
    wrapped = errors.wrap_sqlite_error(_raise(sql, params), sql)
    assert type(wrapped) is kind
    assert isinstance(wrapped, errors.AtlasError)
    assert wrapped.code_name == code
    assert wrapped.sql == sql
    assert sql.split(maxsplit=1)[0] in str(wrapped)


def test_categories_follow_the_taxonomy() -> None:
    assert errors.BusyError("x").transient and errors.BusyError.category == "transient"
    assert errors.DiskFullError.category == "disk_full"
    assert errors.CorruptionError.category == "corruption"
    assert issubclass(errors.OperationTimeout, TimeoutError)
    assert issubclass(errors.QueryValidationError, ValueError)
    assert errors.wrap_sqlite_error(errors.ConfigError("x")).__class__ is errors.ConfigError


def test_query_validation_errors_suggest_the_closest_name() -> None:
    error = errors.QueryValidationError("no column 'titel'", suggestion="title")
    assert str(error) == "no column 'titel'; did you mean 'title'?"
    assert error.suggestion == "title"


def test_errors_are_reachable_after_a_plain_import() -> None:
    assert atlas_actors.errors.StorageUnavailable is errors.StorageUnavailable


def test_long_statements_are_shortened_in_messages() -> None:
    wrapped = errors.wrap_sqlite_error(apsw.SQLError("bad"), "SELECT " + "x, " * 100)
    assert "…" in str(wrapped) and len(str(wrapped)) < 250


def test_analyze_leaves_other_exceptions_unknown() -> None:
    # A TypeError from user code is no bad parameter.
    for error in (TypeError("unsupported operand"), KeyError("x"), ValueError("bad")):
        diagnostics = errors.analyze(error)
        assert diagnostics.type == type(error).__name__
        assert diagnostics.context["category"] == "unknown"
    assert errors.analyze(_raise("SELECT nope FROM t")).type == "SQLError"


@pytest.mark.parametrize(
    ("sql", "params", "says"),
    [
        ("INSERT INTO t VALUES (:a, :b)", {"a": 2}, "named parameter :b"),
        ("INSERT INTO t VALUES (?, ?)", (2, 2**64), "64 bits"),
        ("INSERT INTO t VALUES (?, ?)", (2, object()), "pass values of type"),
    ],
)
def test_apsws_answers_to_bad_parameters_become_parameter_errors(
    sql: str, params: object, says: str
) -> None:
    wrapped = errors.wrap_sqlite_error(_raise(sql, params), sql)  # type: ignore[arg-type]
    assert isinstance(wrapped, errors.ParameterError)
    assert says in str(wrapped)
    assert errors.analyze(wrapped).context["strategy"] == "fix_input"


def test_a_key_error_that_names_no_placeholder_stays_as_it_is() -> None:
    error = KeyError("elsewhere")
    assert errors.wrap_sqlite_error(error, "INSERT INTO t VALUES (:a)") is error


def test_a_file_sqlite_cannot_open_says_what_to_check(tmp_path: object) -> None:
    try:
        apsw.Connection(f"{tmp_path}/missing/dir/db.sqlite")
    except apsw.CantOpenError as error:
        wrapped = errors.wrap_sqlite_error(error, "open")
    assert isinstance(wrapped, errors.DiskIOError)
    assert "existing directory" in str(wrapped)


def test_a_timeout_whose_operation_had_started_is_checked_before_a_retry() -> None:
    started = errors.analyze(errors.OperationTimeout("write 'INSERT ...'", 0.3, applied=None))
    assert started.context["strategy"] == "check_then_retry"
    assert "check its effect" in started.context["advice"]
    withdrawn = errors.analyze(errors.OperationTimeout("write 'INSERT ...'", 0.3, applied=False))
    assert withdrawn.context["strategy"] == "retry_with_backoff"


def test_an_error_raised_through_a_python_vfs_keeps_its_result_code(tmp_path: Path) -> None:
    vfs = FaultyVFS()
    try:
        connection = apsw.Connection(str(tmp_path / "vfs.db"), vfs=vfs.name)
        connection.execute("CREATE TABLE t(a)")
        vfs.fail_writes = apsw.FullError
        try:
            connection.execute("INSERT INTO t VALUES (1)")
        except apsw.FullError as raised:
            error: BaseException = raised
        else:
            raise AssertionError("the write did not fail")
        finally:
            vfs.fail_writes = None
            connection.close()
    finally:
        vfs.unregister()
    assert not hasattr(error, "result")  # (apsw re-raised the VFS's own exception)
    wrapped = errors.wrap_sqlite_error(error, "INSERT INTO t VALUES (1)")
    assert isinstance(wrapped, errors.DiskFullError)
    assert (wrapped.result_code, wrapped.code_name) == (apsw.SQLITE_FULL, "SQLITE_FULL")

"""Bad input gets a clear typed error, and the runtime keeps serving."""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest
from opentelemetry.sdk.trace import TracerProvider

import atlas_actors as atlas
from atlas_actors import errors
from atlas_actors.actors.pool import _read_only
from atlas_actors.connection import _controls_a_transaction


@pytest.mark.parametrize(
    ("call", "kind", "message"),
    [
        (lambda db: db.write("INSRT INTO tasks VALUES (1)"), errors.SQLError, "syntax error"),
        (lambda db: db.query("SELECT * FROM nowhere"), errors.SQLError, "no such table: nowhere"),
        (lambda db: db.query("SELECT nope FROM tasks"), errors.SQLError, "no such column: nope"),
        (
            lambda db: db.write("INSERT INTO tasks(title, n) VALUES (?, ?)", ["only one"]),
            errors.ParameterError,
            "Incorrect number of bindings",
        ),
        (
            lambda db: db.query("SELECT * FROM tasks WHERE id = ?", [1, 2]),
            errors.ParameterError,
            "bindings",
        ),
        (
            lambda db: db.write("INSERT INTO tasks(title) VALUES (?)", [object()]),
            errors.ParameterError,
            "pass values of type",
        ),
        (
            lambda db: db.query("SELECT * FROM tasks WHERE title = ?", [object()]),
            errors.ParameterError,
            "pass values of type",
        ),
        (
            lambda db: db.write("INSERT INTO tasks(title) VALUES (?)", ["x" * 2_000_000]),
            errors.TooBigError,
            "too big.*raise the storage's max_value_bytes option",
        ),
        (
            lambda db: db.query("INSERT INTO tasks(title) VALUES ('sneaky')"),
            errors.ReadOnlyError,
            r"^attempt to write a readonly database in .*: reads \(db.query, "
            r"pool.acquire\(\)\) run on read-only connections: use db.write or db.execute",
        ),
        (
            lambda db: db.write("INSERT INTO tasks(title) VALUES (NULL)"),
            errors.ConstraintError,
            "NOT NULL constraint failed",
        ),
    ],
)
def test_bad_input_fails_that_call_only_and_the_runtime_keeps_serving(
    open_storage: object, call: object, kind: type[Exception], message: str
) -> None:
    db = open_storage(max_value_bytes=1_000_000)  # type: ignore[operator]
    db.execute("CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT NOT NULL, n INTEGER)")
    db.write("INSERT INTO tasks(title) VALUES ('before')")
    with pytest.raises(kind, match=message) as caught:
        call(db)  # type: ignore[operator]
    assert isinstance(caught.value, errors.AtlasError)
    # Nothing lost, and both paths still serve.
    db.write("INSERT INTO tasks(title) VALUES ('after')")
    assert [r.title for r in db.query("SELECT title FROM tasks ORDER BY id")] == [
        "before",
        "after",
    ]
    assert db.health().status == "ok"


def test_sqlite_errors_keep_their_extended_result_code(db: atlas.Storage) -> None:
    db.write("INSERT INTO tasks(title) VALUES ('a')")
    with pytest.raises(errors.ConstraintError) as caught:
        db.write("INSERT INTO tasks(title) VALUES ('a')")
    assert caught.value.result_code == 19
    assert caught.value.code_name == "SQLITE_CONSTRAINT_UNIQUE"


def test_failing_writes_in_the_future_api_fail_their_own_future(db: atlas.Storage) -> None:
    good = db.writer.execute("INSERT INTO tasks(title) VALUES ('a')")
    bad = db.writer.execute("INSERT INTO tasks(title) VALUES ('a')")
    also_good = db.writer.execute("INSERT INTO tasks(title) VALUES ('b')")
    assert good.get(5).rowcount == 1
    assert isinstance(bad.exception(5), errors.ConstraintError)
    assert also_good.get(5).rowcount == 1


@pytest.mark.parametrize(
    "sql",
    [
        "COMMIT",
        "rollback",
        "BEGIN IMMEDIATE",
        "SAVEPOINT a",
        "RELEASE a",
        "END",
        "/* a comment */ COMMIT",
        "-- a comment\n  ROLLBACK",
        "INSERT INTO tasks(title) VALUES ('x'); COMMIT",
        "UPDATE tasks SET title = title;\n/* then */ rollback;",
        "INSERT INTO tasks(title) VALUES ('y'); SAVEPOINT a; INSERT INTO tasks(title) VALUES ('z')",
    ],
)
def test_transaction_control_through_the_writer_is_refused(db: atlas.Storage, sql: str) -> None:
    """It would commit, roll back or leave open the writer's batch of others' writes."""
    db.write("INSERT INTO tasks(title) VALUES ('before')")
    pending = [
        db.writer.execute("INSERT INTO tasks(title) VALUES (?)", [f"t{i}"]) for i in range(20)
    ]
    refused = db.writer.execute(sql)
    pending += [
        db.writer.execute("INSERT INTO tasks(title) VALUES (?)", [f"u{i}"]) for i in range(20)
    ]
    with pytest.raises(errors.ValidationError, match="controls a transaction"):
        refused.get(10)
    for future in pending:
        future.get(10)
    with pytest.raises(errors.ValidationError):
        db.write_many(sql, [None])
    assert db.query("SELECT count(*) FROM tasks")[0][0] == 41
    assert db.supervisor.status().restarts == 0


def test_several_statements_without_transaction_control_run(db: atlas.Storage) -> None:
    """Only a statement of its own counts: not a word in a string, comment or trigger."""
    db.write(
        "CREATE TABLE log(entry TEXT); "
        "CREATE TRIGGER logged AFTER INSERT ON tasks BEGIN "
        "INSERT INTO log(entry) VALUES ('commit'); END;"
    )
    db.write("INSERT INTO tasks(title) VALUES ('a; COMMIT'); -- ROLLBACK\n")
    db.write("INSERT INTO tasks(title) VALUES ('b'); /* END */ INSERT INTO tasks(title) SELECT 'c'")
    titles = [row.title for row in db.query("SELECT title FROM tasks ORDER BY id")]
    assert titles == ["a; COMMIT", "b", "c"]
    assert db.query("SELECT count(*) FROM log")[0][0] == 3


def test_transaction_control_inside_a_transaction_is_refused_and_it_goes_on(
    db: atlas.Storage,
) -> None:
    with db.transaction() as tx:
        tx.execute("INSERT INTO tasks(title) VALUES ('kept')")
        with pytest.raises(errors.ValidationError, match=r"tx\.rollback\(\)"):
            tx.execute("ROLLBACK")
        with pytest.raises(errors.ValidationError):
            tx.query("COMMIT")
        tx.execute("INSERT INTO tasks(title) VALUES ('also kept')")
    db.write("INSERT INTO tasks(title) VALUES ('after')")  # the writer is free
    titles = [row.title for row in db.query("SELECT title FROM tasks ORDER BY id")]
    assert titles == ["kept", "also kept", "after"]


@pytest.mark.parametrize("cache", [False, True])
def test_transaction_control_on_the_readers_is_refused(
    open_storage: Callable[..., atlas.Storage], cache: bool
) -> None:
    """BEGIN would leave a shared reader on an old snapshot: every later read stale."""
    db = open_storage(cache=cache)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
    db.write("INSERT INTO t VALUES (1, 0)")
    with pytest.raises(errors.ValidationError, match="controls a transaction"):
        db.query("BEGIN")
    with pytest.raises(errors.ValidationError):
        db.submit_query("BEGIN").get(10)
    with pytest.raises(errors.ValidationError):
        db.query("SELECT v FROM t; BEGIN")  # the read runs, then pins the snapshot
    for _ in range(20):
        db.query("SELECT v FROM t")
    db.write("UPDATE t SET v = 1")
    assert {db.query("SELECT v FROM t")[0][0] for _ in range(50)} == {1}


@pytest.mark.parametrize("cache", [False, True])
def test_a_read_is_one_statement_that_leaves_the_shared_reader_as_it_was(
    open_storage: Callable[..., atlas.Storage], tmp_path: Path, cache: bool
) -> None:
    """A read ran every statement of its text: a second SELECT's rows came back under
    the first one's column names, and an ATTACH stayed on the pooled connection, so
    every later read on it could see (and read) another database file."""
    other = apsw.Connection(str(tmp_path / "other.db"))
    other.execute("CREATE TABLE secret(x); INSERT INTO secret VALUES ('from the other file')")
    other.close()
    db = open_storage(cache=cache, readers=1, max_readers=1)
    attach = f"ATTACH '{tmp_path / 'other.db'}' AS o"
    refused = {
        "SELECT 1 AS a; SELECT 2 AS b, 3 AS c": "holds more than one statement",
        attach: "ATTACH is not run on reader connections",
        f"SELECT 1; {attach}": "holds more than one statement",
        "DETACH o": "DETACH is not run",
        f"VACUUM INTO '{tmp_path / 'copy.db'}'": "VACUUM is not run",
    }
    for sql, message in refused.items():
        with pytest.raises(errors.ValidationError, match=message):
            db.query(sql)
        with pytest.raises(errors.ValidationError, match=message):
            db.submit_query(sql).get(10)
        with db.pool.connection() as connection, pytest.raises(errors.ValidationError):
            connection.execute(sql)
    assert not (tmp_path / "copy.db").exists()
    assert [r.name for r in db.query("PRAGMA database_list")] == ["main"]
    # One statement, with what may follow it: nothing, comments (the last one may be
    # left open, as SQLite reads it), empty statements.
    assert db.query("SELECT 1 AS a;  -- done") == [(1,)]
    assert db.query("SELECT 1 AS a;; /* end */ ;") == [(1,)]
    assert db.query("SELECT 1 AS a; /* left open") == [(1,)]
    assert db.query("SELECT ';' AS s") == [(";",)]
    with pytest.raises(errors.ValidationError, match="more than one statement"):
        db.query("SELECT 1 AS a; /* a */ SELECT 2 AS b")  # (no comment runs over it)


def test_text_as_parameters_is_refused_once_the_fast_path_serves_the_read(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    """The read path's fast path (a statement past its first runs) bound a str as one
    parameter per character: refused on a statement's first runs, served after."""
    db = open_storage(cache=False)  # (the cache's path checks the parameters itself)
    db.execute("CREATE TABLE t(a)")
    db.write("INSERT INTO t VALUES ('x')")
    read = "SELECT a FROM t WHERE a = ?"
    for _ in range(20):
        assert db.query(read, ["x"]) == [("x",)]
    with pytest.raises(errors.ParameterError, match=_AS_LIST):
        db.query(read, "x")


@pytest.mark.parametrize("prefix", ["$", ":", "@", "#"])
def test_a_statement_hidden_behind_a_tcl_style_parameter_is_seen(
    db: atlas.Storage, prefix: str
) -> None:
    """SQLite reads ``$a('x)`` as one parameter (a TCL-style suffix up to ``)``); the
    checks read a string from ``'`` on, which hid the ``;`` and the PRAGMA after it:
    it ran on the pooled readers and made LIKE case-sensitive for every later read."""
    hidden = f"SELECT {prefix}a('x) ; PRAGMA case_sensitive_like = ON; --'"
    with pytest.raises(errors.ValidationError, match="case_sensitive_like"):
        db.query(hidden, [1])
    with pytest.raises(errors.ValidationError, match="controls a transaction"):
        db.query(f"SELECT {prefix}a('x) ; BEGIN; --'", [1])
    # A $ inside a name is no parameter: taken for one, it swallowed a quote and hid
    # the ';' behind the string the scanner then saw from the closing quote on.
    named = (
        "WITH a$b('c) AS (SELECT 1) SELECT 1 AS ') AS (SELECT 1) SELECT * FROM a$b; "
        "PRAGMA case_sensitive_like = ON; SELECT 1 AS ' AS z'"
    )
    with pytest.raises(errors.ValidationError, match="case_sensitive_like"):
        db.query(named)
    assert {db.query("SELECT 'a' LIKE 'A'")[0][0] for _ in range(20)} == {1}
    with (
        db.transaction(isolation="read_committed") as tx,
        pytest.raises(errors.ValidationError),
    ):
        tx.query(f"SELECT {prefix}a('x) ; BEGIN; --'", [1])


def test_transaction_control_in_a_snapshot_read_is_refused(db: atlas.Storage) -> None:
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
    db.write("INSERT INTO t VALUES (1, 0)")
    with db.transaction(isolation="repeatable_read") as tx:
        assert tx.query("SELECT v FROM t")[0][0] == 0  # the snapshot is pinned
        with pytest.raises(errors.ValidationError):
            tx.query("COMMIT")  # would end the snapshot
        db.write("UPDATE t SET v = 1")
        assert tx.query("SELECT v FROM t")[0][0] == 0


def test_semicolons_in_strings_and_comments_cost_no_sqlite_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The text is scanned once: a big multi-row INSERT must not stall the writer.

    (Checking every ';' with sqlite3_complete on the text before it took seconds for a
    few hundred kilobytes, in the writer's thread.)
    """
    checked: list[int] = []
    complete = apsw.complete

    def counting_complete(sql: str) -> bool:
        checked.append(len(sql))
        return complete(sql)

    monkeypatch.setattr(apsw, "complete", counting_complete)
    rows = ",".join(f"('row {i}; COMMIT /* ; */', '-- ; end')" for i in range(5000))
    assert not _controls_a_transaction(f"INSERT INTO t(a, b) VALUES {rows}")
    assert checked == []
    trigger = "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET a = 1; END"
    assert not _controls_a_transaction(f"{trigger}; INSERT INTO t(a) VALUES (1)")
    assert checked == [trigger.index(";") + 1]  # only the text up to the ";" before END
    assert _controls_a_transaction(f"{trigger}; COMMIT")


@pytest.mark.parametrize(
    "statements",
    [
        [("INSERT INTO tasks(title) VALUES ('x')",)],
        [("INSERT INTO tasks(title) VALUES ('x')", None, None)],
        ["INSERT INTO tasks(title) VALUES ('x')"],
        # The natural mistake: SQL strings instead of pairs (a bare "too many values
        # to unpack" before).
        ["INSERT INTO tasks(title) VALUES ('x')", "INSERT INTO tasks(title) VALUES ('z')"],
        [1],
    ],
)
def test_write_all_refuses_statements_that_are_not_pairs_at_the_call(
    db: atlas.Storage, statements: list[object]
) -> None:
    not_a_pair = r"statement 0: .* is not a \(sql, params\) pair; pass \(sql, params\) pairs"
    for write_all in (db.write_all, db.writer.write_all):
        with pytest.raises(errors.ValidationError, match=not_a_pair) as caught:
            write_all(statements)  # type: ignore[arg-type]
        # Both of what Python raised before (too many values: ValueError; an int:
        # TypeError) still catch it.
        assert isinstance(caught.value, ValueError) and isinstance(caught.value, TypeError)
    assert db.write_all([("INSERT INTO tasks(title) VALUES ('y')", None)])[0].rowcount == 1
    assert db.query("SELECT title FROM tasks") == [("y",)]


@pytest.mark.parametrize("sql", [None, b"INSERT INTO tasks(title) VALUES ('x')", 123])
def test_write_all_refuses_sql_that_is_not_text_at_the_call(db: atlas.Storage, sql: object) -> None:
    """In the writer it failed only after the caller's deadline, and crashed the writer
    with the write lock held, so every later write timed out."""
    for write_all in (db.write_all, db.writer.write_all):
        with pytest.raises(TypeError, match="statement 1: the SQL must be str") as caught:
            write_all([("INSERT INTO tasks(title) VALUES ('ok')", None), (sql, None)])  # type: ignore[list-item]
        assert isinstance(caught.value, errors.ValidationError)
    assert db.write("INSERT INTO tasks(title) VALUES ('after')").rowcount == 1
    assert db.query("SELECT title FROM tasks") == [("after",)]
    assert db.supervisor.status().restarts == 0


@pytest.mark.parametrize("cache", [False, True])
def test_sql_that_is_not_text_is_a_typed_error_at_the_call(
    open_storage: Callable[..., atlas.Storage], cache: bool
) -> None:
    """A bare TypeError ("expected string or bytes-like object") and AttributeError
    ("'int' object has no attribute 'build'") before."""
    db = open_storage(cache=cache)
    db.execute("CREATE TABLE t(x)")
    calls: list[tuple[Callable[[], object], str, object]] = [
        (lambda: db.write(None), "a str", None),  # type: ignore[arg-type]
        (lambda: db.execute(None), "a str", None),  # type: ignore[arg-type]
        (lambda: db.write_many(None, [[1]]), "a str", None),  # type: ignore[arg-type]
        # These crashed the writer (whose clean-up then crashed too, keeping the lock).
        (lambda: db.write(42), "a str", 42),  # type: ignore[arg-type]
        (lambda: db.write(b"INSERT INTO t VALUES (1)"), "a str", b"INSERT INTO t VALUES (1)"),  # type: ignore[arg-type]
        (lambda: db.write_many(42, [[1]]), "a str", 42),  # type: ignore[arg-type]
        (lambda: db.writer.execute(None).get(), "a str", None),  # type: ignore[arg-type]
        (lambda: db.writer.execute(42).get(), "a str", 42),  # type: ignore[arg-type]
        (lambda: db.submit_query(None), "a str", None),  # type: ignore[arg-type]
        (lambda: db.query(None), "a str or a Query", None),  # type: ignore[arg-type]
        (lambda: db.query(42), "a str or a Query", 42),  # type: ignore[arg-type]
        (lambda: db.query_one(42), "a str or a Query", 42),  # type: ignore[arg-type]
    ]
    for call, expected, sql in calls:
        with pytest.raises(errors.ValidationError, match=f"sql must be {expected}") as caught:
            call()
        assert isinstance(caught.value, TypeError)  # (what callers caught before)
        assert f"not {type(sql).__name__} ({sql!r})" in str(caught.value)
    assert db.supervisor.status().restarts == 0
    db.write("INSERT INTO t VALUES (1)")
    assert db.query("SELECT x FROM t") == [(1,)]


def _in_transaction(isolation: str, method: str, sql: str, params: object) -> Callable[..., object]:
    def call(db: atlas.Storage) -> None:
        with db.transaction(isolation=isolation) as tx:  # type: ignore[arg-type]
            getattr(tx, method)(sql, params)

    return call


_BIG = ("SELECT * FROM tasks WHERE n = ?", [2**70])
_MISSING = ("SELECT * FROM tasks WHERE n = :x", {"y": 1})
_OBJECT = ("SELECT * FROM tasks WHERE n = ?", [object()])


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda db: db.query(*_BIG), id="query-big-int"),
        pytest.param(lambda db: db.query(*_MISSING), id="query-missing-name"),
        pytest.param(lambda db: db.query_one(*_MISSING), id="query_one-missing-name"),
        pytest.param(lambda db: db.query(*_OBJECT), id="query-object"),
        pytest.param(_in_transaction("serializable", "query", *_BIG), id="tx-query-big-int"),
        pytest.param(_in_transaction("serializable", "query", *_MISSING), id="tx-query-missing"),
        pytest.param(_in_transaction("serializable", "query", *_OBJECT), id="tx-query-object"),
        pytest.param(_in_transaction("read_committed", "query", *_BIG), id="rc-query-big-int"),
        pytest.param(_in_transaction("read_committed", "query", *_MISSING), id="rc-query-missing"),
        pytest.param(
            _in_transaction("serializable", "execute", "UPDATE tasks SET n = ?", [2**70]),
            id="tx-execute-big-int",
        ),
    ],
)
def test_bad_parameters_are_typed_whether_the_cache_analyses_the_statement_or_not(
    open_storage: Callable[..., atlas.Storage], cache: bool, call: Callable[..., object]
) -> None:
    # With the cache on, a statement's first run is analysed first (bound to the same
    # parameters): apsw's answers there must come out as typed as the run's own.
    db = open_storage(cache=cache)
    db.execute("CREATE TABLE tasks(id INTEGER PRIMARY KEY, n INTEGER)")
    db.write("INSERT INTO tasks(n) VALUES (1)")
    with pytest.raises(errors.ParameterError):
        call(db)
    assert db.query("SELECT n FROM tasks") == [(1,)]
    with db.transaction() as tx:
        tx.execute("UPDATE tasks SET n = 2")
    assert db.query("SELECT n FROM tasks") == [(2,)]


def test_only_a_write_through_the_read_path_is_told_to_use_db_write() -> None:
    wrote = errors.ReadOnlyError(
        "attempt to write a readonly database", result_code=8, extended_result_code=8
    )
    assert "use db.write" in str(_read_only(wrote, "INSERT INTO t VALUES (1)"))
    # A hot journal on a read-only file (SQLITE_READONLY_ROLLBACK): db.write cannot help.
    hot = errors.ReadOnlyError(
        "attempt to write a readonly database",
        result_code=8,
        extended_result_code=apsw.SQLITE_READONLY_ROLLBACK,
    )
    assert _read_only(hot, "SELECT 1") is hot


_ISOLATIONS = ("serializable", "repeatable_read", "read_committed", "read_uncommitted")


def _every_path(
    db: atlas.Storage, write: str, read: str, params: object = None
) -> list[Callable[[], object]]:
    """``write`` (then ``read``) through each entry point, transactions included."""
    calls: list[Callable[[], object]] = [
        functools.partial(db.write, write, params),
        functools.partial(db.query, read, params),
        functools.partial(db.query_one, read, params),
        lambda: db.submit_query(read, params).get(10),
        lambda: db.writer.execute(write, params).get(10),
        functools.partial(db.write_many, write, [params or ()]),
        functools.partial(db.write_all, [(write, params)]),
    ]
    for isolation in _ISOLATIONS:
        for method, sql in (("query", read), ("execute", write)):
            calls.append(functools.partial(_in_transaction(isolation, method, sql, params), db))
    return calls


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
def test_text_apsw_cannot_encode_is_a_typed_error_on_every_path(
    open_storage: Callable[..., atlas.Storage], cache: bool
) -> None:
    """A NUL in the SQL text (ValueError) and a lone surrogate (UnicodeEncodeError) in
    the text or a value escaped raw before: wrap_sqlite_error let them through."""
    db = open_storage(cache=cache)
    db.execute("CREATE TABLE tasks(id INTEGER PRIMARY KEY, n)")
    db.write("INSERT INTO tasks(n) VALUES (1)")
    for write, read, message in [
        ("SELECT 1\x00 2", "SELECT 1\x00 2", "cannot hold a NUL character"),
        ("INSERT INTO tasks(n) VALUES ('\ud800')", "SELECT '\ud800'", "must be valid Unicode"),
    ]:
        for call in _every_path(db, write, read):
            with pytest.raises(errors.SQLError, match=message) as caught:
                call()
            assert caught.value.sql in (write, read)
    for write, read, params in [
        ("INSERT INTO tasks(n) VALUES (?)", "SELECT * FROM tasks WHERE n = ?", ["\ud800"]),
        ("INSERT INTO tasks(n) VALUES (:n)", "SELECT :n", {"n": "\ud800"}),
    ]:
        for call in _every_path(db, write, read, params):
            with pytest.raises(errors.ParameterError, match="text values must be valid Unicode"):
                call()
    assert db.query("SELECT n FROM tasks") == [(1,)]
    db.write("INSERT INTO tasks(n) VALUES (?)", ["\ud800".encode("utf-8", "surrogatepass")])
    assert db.query("SELECT count(*) FROM tasks")[0][0] == 2
    assert db.supervisor.status().restarts == 0
    assert db.health().status == "ok"


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("isolation", _ISOLATIONS)
def test_sql_that_is_not_text_in_a_transaction_is_typed_and_it_goes_on(
    open_storage: Callable[..., atlas.Storage], cache: bool, isolation: str
) -> None:
    """A bare TypeError ("expected string or bytes-like object", "unhashable type")."""
    db = open_storage(cache=cache)
    db.execute("CREATE TABLE tasks(id INTEGER PRIMARY KEY, n)")
    with db.transaction(isolation=isolation) as tx:  # type: ignore[arg-type]
        for sql in (None, 123, ["SELECT 1"], b"SELECT 1"):
            for method in (tx.query, tx.execute):
                with pytest.raises(errors.StatementTypeError, match="sql must be a str") as caught:
                    method(sql)  # type: ignore[arg-type]
                assert f"not {type(sql).__name__}" in str(caught.value)
        tx.execute("INSERT INTO tasks(n) VALUES (1)")
        assert tx.query("SELECT n FROM tasks") == [(1,)]
    assert db.query("SELECT n FROM tasks") == [(1,)]
    assert db.supervisor.status().restarts == 0


_AS_LIST = r"params must be a list or tuple of values \(e\.g\. \['a'\]\)"


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
def test_text_or_bytes_as_the_parameter_container_is_refused(
    open_storage: Callable[..., atlas.Storage], cache: bool
) -> None:
    """apsw binds a str or bytes one character (byte, as an int) per placeholder:
    b"a" stored 97, and "ab" filled two placeholders with 'a' and 'b'."""
    db = open_storage(cache=cache)
    db.execute("CREATE TABLE t(a, b)")
    for params in ("a", b"a", bytearray(b"a")):
        with pytest.raises(errors.ParameterError, match=_AS_LIST):
            db.write("INSERT INTO t(a) VALUES (?)", params)  # type: ignore[arg-type]
    with pytest.raises(errors.ParameterError, match=_AS_LIST):
        db.write("INSERT INTO t(a, b) VALUES (?, ?)", "ab")
    # What fails in SQLite (a length that does not match) says so on every path.
    with db.transaction() as tx:
        with pytest.raises(errors.ParameterError, match=_AS_LIST):
            tx.execute("INSERT INTO t(a) VALUES (?)", "abc")
        with pytest.raises(errors.ParameterError, match=_AS_LIST):
            tx.query("SELECT * FROM t WHERE a = ?", b"abc")
    with pytest.raises(errors.ParameterError, match=_AS_LIST):
        db.writer.execute("INSERT INTO t(a) VALUES (?)", "abc").get(10)
    if cache:  # (the cache keys the read by its parameters)
        with pytest.raises(errors.ParameterError, match=_AS_LIST):
            db.query("SELECT * FROM t WHERE a = ?", "a")
    for sets in ("ab", b"ab"):
        with pytest.raises(errors.ParameterError, match="params must be a list of parameter sets"):
            db.write_many("INSERT INTO t(a) VALUES (?)", sets)  # type: ignore[arg-type]
    assert db.query("SELECT count(*) FROM t") == [(0,)]
    db.write("INSERT INTO t(a) VALUES (?)", ["a"])
    assert db.query("SELECT a FROM t WHERE a = ?", ("a",)) == [("a",)]


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
def test_text_as_parameters_of_the_right_length_is_refused_on_every_path(
    open_storage: Callable[..., atlas.Storage], cache: bool
) -> None:
    """ "ab" for two placeholders bound 'a' and 'b' without a word on every path but
    db.write (writer.execute, write_many's sets, write_all, transactions, reads with
    the cache off, a pooled connection): wrong data stored, or a read of other rows."""
    db = open_storage(cache=cache)
    db.execute("CREATE TABLE t(a, b)")
    write, read = "INSERT INTO t(a, b) VALUES (?, ?)", "SELECT * FROM t WHERE a = ? OR b = ?"
    for params in ("ab", b"ab"):
        calls = _every_path(db, write, read, params)
        calls.append(lambda: db.writer.executemany(write, [params]).get(10))  # noqa: B023
        calls.append(lambda: _on_a_pooled_connection(db, read, params))  # noqa: B023
        for call in calls:
            with pytest.raises(errors.ParameterError, match=_AS_LIST):
                call()
    assert db.query("SELECT count(*) FROM t") == [(0,)]
    db.write(write, ["a", "b"])
    assert db.query(read, ["a", "b"]) == [("a", "b")]
    assert db.supervisor.status().restarts == 0


@pytest.mark.parametrize("tracing", [False, True], ids=["untraced", "traced"])
def test_text_as_parameters_is_refused_once_the_writer_runs_the_statement_itself(
    open_storage: Callable[..., atlas.Storage], tracing: bool
) -> None:
    """Past a statement's first runs the writer runs it in place (write_units), without
    write()'s check, and the untraced write_all checked its pairs' SQL only: "ab" was
    stored as 'a', 'b' again."""
    kwargs: dict[str, object] = {"tracer_provider": TracerProvider()} if tracing else {}
    db = open_storage(cache=False, **kwargs)
    db.execute("CREATE TABLE t(a, b)")
    insert = "INSERT INTO t(a, b) VALUES (?, ?)"
    for _ in range(8):  # (its first runs go through write(): then in place)
        db.write_all([(insert, [1, 2])])
        db.writer.execute(insert, [1, 2]).get(10)
    for call in (
        lambda: db.write_all([(insert, "ab")]),
        lambda: db.writer.write_all([(insert, "ab")]).get(10),
        lambda: db.writer.execute(insert, "ab").get(10),
        lambda: db.write_many(insert, ["ab"]),
    ):
        with pytest.raises(errors.ParameterError, match=_AS_LIST):
            call()
    assert db.query("SELECT count(*) FROM t WHERE a = 'a'") == [(0,)]


def _on_a_pooled_connection(db: atlas.Storage, sql: str, params: object) -> object:
    with db.pool.connection() as connection:
        return connection.query(sql, params)  # type: ignore[arg-type]


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
def test_a_parameter_container_that_is_not_one_is_a_typed_error(
    open_storage: Callable[..., atlas.Storage], cache: bool
) -> None:
    """A bare TypeError ("'int' object is not iterable") from the cache's key, from
    list() in write_many, write_all and executemany."""
    db = open_storage(cache=cache)
    db.execute("CREATE TABLE t(a)")
    with pytest.raises(errors.ParameterError):
        db.query("SELECT * FROM t WHERE a = ?", 5)  # type: ignore[arg-type]
    with pytest.raises(errors.ParameterError, match="params must be a list of parameter sets"):
        db.write_many("INSERT INTO t(a) VALUES (?)", 5)  # type: ignore[arg-type]
    with pytest.raises(errors.ParameterError, match="params must be a list of parameter sets"):
        db.writer.executemany("INSERT INTO t(a) VALUES (?)", None)  # type: ignore[arg-type]
    for write_all in (db.write_all, db.writer.write_all):
        with pytest.raises(errors.StatementTypeError, match=r"list of \(sql, params\) pairs"):
            write_all(5)  # type: ignore[arg-type]
    with db.transaction() as tx:  # (a thread holding the lease: db.write_all checks more)
        tx.execute("INSERT INTO t(a) VALUES (0)")
        with pytest.raises(errors.StatementTypeError, match=r"list of \(sql, params\) pairs"):
            db.write_all(None)  # type: ignore[arg-type]
        tx.rollback()
    db.write_many("INSERT INTO t(a) VALUES (?)", [[1], [2]])
    assert db.query("SELECT count(*) FROM t") == [(2,)]
    assert db.supervisor.status().restarts == 0


def test_the_cache_refuses_what_is_no_pattern_nor_query(db: atlas.Storage) -> None:
    """invalidate(None) and warm([None]) raised bare TypeErrors."""
    db.write("INSERT INTO tasks(title) VALUES ('a')")
    for pattern in (None, 1, b"tasks:*"):
        with pytest.raises(errors.ValidationError, match="pattern must be a str glob"):
            db.cache.invalidate(pattern)  # type: ignore[arg-type]
    for queries, kind in [
        ([None], errors.StatementTypeError),
        ([("SELECT 1", None, None)], errors.StatementTypeError),
        ([(None, None)], errors.StatementTypeError),
        ([("SELECT * FROM tasks WHERE id = ?", [[1]])], errors.ParameterError),
        ([("SELECT * FROM tasks WHERE id = ?", 5)], errors.ParameterError),
        (["SELECT 1\x00 2"], errors.SQLError),
        ([("SELECT ?", ["\ud800"])], errors.ParameterError),
    ]:
        with pytest.raises(kind):
            db.cache.warm(queries)  # type: ignore[arg-type]
    assert db.cache.warm(["SELECT title FROM tasks"]) == 1
    assert db.cache.invalidate("tasks") >= 0
    assert db.query("SELECT title FROM tasks") == [("a",)]


@pytest.mark.parametrize("sql", [None, 123, ["SELECT 1"], b"SELECT 1"])
def test_a_borrowed_connection_refuses_sql_that_is_not_text(db: atlas.Storage, sql: object) -> None:
    """A bare TypeError ("expected string or bytes-like object") before."""
    with db.pool.acquire() as connection:
        for run in (connection.execute, connection.query):
            with pytest.raises(errors.StatementTypeError, match="sql must be a str"):
                run(sql)  # type: ignore[arg-type]
        assert connection.execute("SELECT count(*) FROM tasks") == [(0,)]


@pytest.mark.parametrize("timeout", [float("nan"), "1", [1], 1e20, True])
def test_a_borrowed_connection_checks_its_timeouts(db: atlas.Storage, timeout: object) -> None:
    """acquire(timeout=nan) was taken as is when a connection was free: a deadline
    that never comes (or a TypeError later)."""
    with pytest.raises(errors.ValidationError, match="pass a number of seconds"):
        db.pool.acquire(timeout=timeout)  # type: ignore[arg-type]
    with db.pool.acquire(timeout=5) as connection:
        with pytest.raises(errors.ValidationError, match="pass a number of seconds"):
            connection.execute("SELECT 1", timeout=timeout)  # type: ignore[arg-type]
        assert connection.execute("SELECT 1", timeout=5) == [(1,)]
    assert db.query("SELECT 1") == [(1,)]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda q: q.select(None), r"select\(\) takes a list"),
        (lambda q: q.select(5), r"select\(\) takes a list"),
        (lambda q: q.where(None), r"where\(\) or having\(\) takes a list"),
        (lambda q: q.having(7), r"where\(\) or having\(\) takes a list"),
        (lambda q: q.group_by(None), r"group_by\(\) takes a list"),
        (lambda q: q.order_by(3), r"order_by\(\) takes a list"),
    ],
)
def test_a_query_verb_given_no_list_is_a_typed_error(
    db: atlas.Storage, build: Callable[[atlas.Query], atlas.Query], message: str
) -> None:
    """A bare TypeError ("'NoneType' object is not iterable") before."""
    with pytest.raises(errors.QueryValidationError, match=message):
        build(atlas.Query().select(["id"]).from_("tasks"))
    assert db.query(atlas.Query().select(["id"]).from_("tasks")) == []


def test_the_optimizer_refuses_a_statement_nested_too_deeply(db: atlas.Storage) -> None:
    """Its analyses recurse per level of parentheses: a RecursionError before."""
    deep = "SELECT * FROM tasks WHERE " + "(" * 5000 + "n = 1" + ")" * 5000
    for analyse in (db.optimizer.suggest_indexes, db.optimizer.rewrite, db.optimizer.analyze):
        with pytest.raises(errors.QueryValidationError, match="nests parentheses 5000 levels"):
            analyse(deep)
    nested = "SELECT * FROM tasks WHERE " + "(" * 150 + "n = 1" + ")" * 150
    assert db.optimizer.analyze(nested) is not None
    assert db.optimizer.suggest_indexes(nested) is not None


class _Built:
    def __init__(self, result: object) -> None:
        self.result = result

    def build(self) -> object:
        return self.result


@pytest.mark.parametrize(
    "result", ["SELECT 1", None, ("SELECT 1",), ("SELECT 1", [], 3), (None, []), ("SELECT 1", 5)]
)
def test_a_build_that_returns_no_pair_is_a_typed_error(db: atlas.Storage, result: object) -> None:
    """A bare TypeError or ValueError ("cannot unpack") before."""
    with pytest.raises(errors.StatementTypeError, match=r"_Built.build\(\) must return"):
        db.query(_Built(result))  # type: ignore[arg-type]
    if isinstance(result, tuple) and len(result) == 2:
        return  # (the optimizer checks the text, and takes the parameters as they are)
    with pytest.raises(errors.StatementTypeError, match=r"_Built.build\(\) must return"):
        db.optimizer.analyze(_Built(result))  # type: ignore[arg-type]
    assert db.query(_Built(("SELECT 1", []))) == [(1,)]  # type: ignore[arg-type]


def test_sql_that_is_not_text_is_a_typed_error_with_tracing_on(
    open_storage: Callable[..., atlas.Storage], tracer_provider: object
) -> None:
    """The span's batch attributes took len() of the SQL: a bare TypeError before."""
    db = open_storage(tracer_provider=tracer_provider)
    db.execute("CREATE TABLE t(x)")
    for sql in (None, 123, b"INSERT INTO t VALUES (1)", object()):
        for call in (
            lambda: db.write(sql),  # noqa: B023
            lambda: db.write_many(sql, [[1]]),  # noqa: B023
            lambda: db.writer.execute(sql).get(10),  # noqa: B023
            lambda: db.writer.executemany(sql, [[1]]).get(10),  # noqa: B023
        ):
            with pytest.raises(errors.StatementTypeError, match="sql must be a str"):
                call()
        for isolation in ("serializable", "read_committed"):
            with db.transaction(isolation=isolation) as tx:  # (a traced transaction)
                for tx_call in (tx.execute, tx.query):
                    with pytest.raises(errors.StatementTypeError, match="sql must be a str"):
                        tx_call(sql)  # type: ignore[arg-type]
    db.write("INSERT INTO t VALUES (1)")
    assert db.query("SELECT x FROM t") == [(1,)]


def test_a_text_of_many_comments_is_checked_in_linear_time() -> None:
    """The pattern for the comments before a statement let a comment's lazy body run
    over the next ones: each comment doubled the time of a refused statement's check
    (18 took 30 ms, 40 would take hours), on every read's first sight of a text."""
    code = (
        "from atlas_actors.connection import refuse_connection_settings as check\n"
        "from atlas_actors.connection import changes_schema\n"
        "text = 'SELECT 1;' + ' /* a */' * 2000 + ' x'\n"
        "changes_schema(text)\n"
        "try:\n"
        "    check(text)\n"
        "except Exception as error:\n"
        "    print(type(error).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ValidationError"  # (a second statement: ' x')

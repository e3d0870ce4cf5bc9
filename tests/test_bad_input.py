"""Bad input gets a clear typed error, and the runtime keeps serving."""

from __future__ import annotations

import pytest

import atlas_actors as atlas
from atlas_actors import errors


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
            lambda db: db.write("INSERT INTO tasks(title) VALUES (?)", ["x" * 2_000_000]),
            errors.TooBigError,
            "too big",
        ),
        (
            lambda db: db.query("INSERT INTO tasks(title) VALUES ('sneaky')"),
            errors.ReadOnlyError,
            "use db.write or db.execute",
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

"""Rows: tuples that answer to column names."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable

import pytest

import atlas_actors as atlas
from atlas_actors.rows import Row, make_rows, row_class


def test_a_row_is_a_tuple_with_access_by_position_name_and_attribute() -> None:
    (row,) = make_rows(["id", "title"], [(1, "write docs")])
    assert isinstance(row, tuple) and isinstance(row, Row)
    assert row == (1, "write docs")
    assert row[0] == 1 and row["title"] == "write docs" and row.title == "write docs"
    assert row[:1] == (1,)
    assert row.keys() == ("id", "title")
    assert row.as_dict() == {"id": 1, "title": "write docs"}
    assert repr(row) == "Row(id=1, title='write docs')"


def test_unknown_names_raise_errors_that_list_the_columns() -> None:
    (row,) = make_rows(["id"], [(1,)])
    with pytest.raises(KeyError, match=r"no column 'nope'.*\['id'\]"):
        row["nope"]
    with pytest.raises(AttributeError, match="no column 'nope'"):
        _ = row.nope


def test_duplicate_names_resolve_to_the_first_column() -> None:
    (row,) = make_rows(["n", "n"], [(1, 2)])
    assert row["n"] == 1 and row[1] == 2


def test_row_classes_are_made_once_per_column_list() -> None:
    assert row_class(["a", "b"]) is row_class(("a", "b"))
    assert row_class(["a", "b"]) is not row_class(["b", "a"])


def test_threads_learning_a_statements_columns_at_once_all_get_their_rows(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    # A statement whose first run found no rows has no column names yet; the threads
    # that then get rows at the same moment all learn them, none fails.
    db = open_storage(cache=False)
    db.execute("CREATE TABLE c(id INTEGER PRIMARY KEY, task INTEGER NOT NULL)")
    db.write_many("INSERT INTO c(task) VALUES (?)", [[2]] * 10)
    failures: list[BaseException] = []
    for n in range(40):
        sql = f"SELECT id FROM c WHERE task = ? /* {n} */"
        assert db.query(sql, [1]) == []
        barrier = threading.Barrier(8)

        def read(sql: str = sql, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                rows = db.query(sql, [2])
                assert len(rows) == 10 and rows[0].id == 1
            except BaseException as error:
                failures.append(error)

        threads = [threading.Thread(target=read) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert failures == []


def test_rows_from_a_query_pickle_and_copy_with_their_names(db: atlas.Storage) -> None:
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, title TEXT, data BLOB)")
    db.write("INSERT INTO t(title, data) VALUES (?, ?)", ["write docs", b"\x00\x01"])
    (row,) = db.query("SELECT * FROM t")
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(row, protocol=protocol))
        assert back == row and type(back) is type(row)  # the cached class for the names
        assert back.title == "write docs" and back["data"] == b"\x00\x01"
    for copied in (copy.copy(row), copy.deepcopy(row), copy.deepcopy([row])[0]):
        assert copied == row and copied.keys() == ("id", "title", "data")
        assert copied.as_dict() == row.as_dict()


def test_a_row_pickled_in_one_process_is_read_by_name_in_another() -> None:
    (row,) = make_rows(["id", "title"], [(7, "ship it")])
    code = (
        "import pickle, sys; row = pickle.loads(sys.stdin.buffer.read()); "
        "print(row.title, row['id'], row.keys())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=pickle.dumps(row),
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    assert out.decode().strip() == "ship it 7 ('id', 'title')"


def test_columns_named_like_tuple_methods_are_read_by_subscript() -> None:
    # Documented: attribute access finds the methods first; row["count"] is the column.
    (row,) = make_rows(["status", "count", "index"], [("open", 2, 1)])
    assert row["count"] == 2 and row["index"] == 1 and row.status == "open"
    assert row.count("open") == 1 and row.index(2) == 1  # still a tuple
    assert 'row["count"]' in (Row.__doc__ or "")

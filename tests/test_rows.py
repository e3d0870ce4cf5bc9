"""Rows: tuples that answer to column names."""

from __future__ import annotations

import pytest

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

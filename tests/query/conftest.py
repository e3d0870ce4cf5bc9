"""Fixtures for the query-layer tests: real SQLite files in tmp_path, opened with apsw."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

TASKS_DDL = """
CREATE TABLE projects(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    owner TEXT
);
CREATE TABLE tasks(
    id INTEGER PRIMARY KEY,
    project_id INTEGER REFERENCES projects(id),
    title TEXT COLLATE NOCASE,
    status TEXT NOT NULL,
    assignee TEXT,
    priority INTEGER,
    due INTEGER,
    "order" INTEGER
);
"""


@pytest.fixture
def db(tmp_path: Path) -> Iterator[apsw.Connection]:
    """A fresh database file with the small task schema and a few rows."""
    conn = apsw.Connection(str(tmp_path / "query.db"))
    conn.execute(TASKS_DDL)
    with conn:
        conn.executemany(
            "INSERT INTO projects(id, name, owner) VALUES (?, ?, ?)",
            [(1, "atlas", "ann"), (2, "borealis", None), (3, "comet", "cid")],
        )
        conn.executemany(
            'INSERT INTO tasks(project_id, title, status, assignee, priority, due, "order") '
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (1, "Write docs", "open", "ann", 2, 10, 1),
                (1, "fix bug", "done", "bob", 1, 5, 2),
                (2, "Plan sprint", "open", None, 3, None, 3),
                (2, "review", "open", "ann", 1, 20, 4),
                (None, "orphan", "blocked", "cid", None, 7, 5),
            ],
        )
    yield conn
    conn.close()

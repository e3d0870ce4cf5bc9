"""docs/query.md: every Python example runs, in order, and the SQL it builds runs too."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import apsw

from atlas_actors.query import Schema

DOC = Path(__file__).resolve().parent.parent / "docs" / "query.md"

_TABLES = """
CREATE TABLE projects(id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE tasks(id INTEGER PRIMARY KEY, project_id INTEGER REFERENCES projects(id),
                   title TEXT, status TEXT, assignee TEXT, priority INTEGER);
INSERT INTO projects VALUES (1, 'atlas'), (2, 'docs');
INSERT INTO tasks(project_id, title, status, assignee, priority) VALUES
    (1, 'a', 'open', NULL, 1), (1, 'b', 'open', 'ada', 3), (1, 'c', 'done', NULL, 4),
    (2, 'd', 'open', NULL, 2);
"""
"""The tables the examples name: tasks.project_id refers to projects.id (both have id)."""


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_every_python_example_in_the_query_doc_runs() -> None:
    blocks = _python_blocks()
    assert len(blocks) >= 5
    conn = apsw.Connection(":memory:")
    conn.execute(_TABLES)
    # What the examples take as given: a connection, a read function, and, for the
    # optimizer's signature and the recorder, the names in them.
    namespace: dict[str, Any] = {
        "conn": conn,
        "read": lambda fn: fn(conn),
        "seconds": 0.002,
    }
    for block in blocks:
        if "WorkloadRecorder(max_statements" in block:
            namespace["sql"] = "SELECT * FROM tasks WHERE status = 'open'"
        exec(compile(block, f"{DOC.name} example", "exec"), namespace)
    namespace["optimizer"].close()


def test_the_building_example_builds_sql_that_sqlite_runs() -> None:
    conn = apsw.Connection(":memory:")
    conn.execute(_TABLES)
    namespace: dict[str, Any] = {}
    for block in _python_blocks()[:2]:  # the imports, then "Building queries"
        exec(compile(block, f"{DOC.name} example", "exec"), namespace)
    query = namespace["q"].offset(0)  # the example pages at 40; the data is smaller
    sql, params = query.build()
    assert conn.execute(sql, params).fetchall() == [(1, "atlas", 2)]
    assert query.build(schema=Schema.from_connection(conn)) == (sql, params)

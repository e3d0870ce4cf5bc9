"""A small task-manager database and a set of typical queries, shared by the cost-model,
index-advisor and expert-comparison tests; plus a VM-step counter."""

from __future__ import annotations

import random
from typing import Any

import apsw

SCHEMA = """
CREATE TABLE projects(id INTEGER PRIMARY KEY, name TEXT NOT NULL, owner TEXT, created INTEGER);
CREATE TABLE tasks(
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL,
    title TEXT NOT NULL,
    status TEXT NOT NULL,
    assignee TEXT,
    priority INTEGER NOT NULL,
    due INTEGER,
    updated INTEGER NOT NULL
);
CREATE TABLE tags(id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE task_tags(task_id INTEGER NOT NULL, tag_id INTEGER NOT NULL);
CREATE TABLE comments(id INTEGER PRIMARY KEY, task_id INTEGER NOT NULL, author TEXT, body TEXT,
                      created INTEGER NOT NULL);
"""

STATUSES = ["open", "in_progress", "review", "done", "blocked"]


def populate(conn: apsw.Connection, *, tasks: int = 6000, seed: int = 7) -> None:
    """Fill the schema with skewed, realistic-looking data."""
    rng = random.Random(seed)
    n_projects, n_users, n_tags = max(tasks // 100, 5), 40, 30
    conn.execute(SCHEMA)
    with conn:
        conn.executemany(
            "INSERT INTO projects VALUES (?, ?, ?, ?)",
            [(i, f"project {i}", f"user{i % n_users}", i * 10) for i in range(1, n_projects + 1)],
        )
        conn.executemany(
            "INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    i,
                    rng.randint(1, n_projects),
                    f"{rng.choice(['fix', 'add', 'write', 'review', 'plan'])} item {i}",
                    rng.choices(STATUSES, weights=[30, 15, 10, 40, 5])[0],
                    None if rng.random() < 0.1 else f"user{rng.randint(0, n_users - 1)}",
                    rng.randint(1, 4),
                    None if rng.random() < 0.2 else rng.randint(0, 1000),
                    i * 3 + rng.randint(0, 2),
                )
                for i in range(1, tasks + 1)
            ],
        )
        conn.executemany(
            "INSERT INTO tags VALUES (?, ?)", [(i, f"tag{i}") for i in range(1, n_tags + 1)]
        )
        conn.executemany(
            "INSERT INTO task_tags VALUES (?, ?)",
            [
                (t, rng.randint(1, n_tags))
                for t in range(1, tasks + 1)
                for _ in range(rng.randint(0, 2))
            ],
        )
        conn.executemany(
            "INSERT INTO comments(task_id, author, body, created) VALUES (?, ?, ?, ?)",
            [
                (rng.randint(1, tasks), f"user{rng.randint(0, n_users - 1)}", "lgtm", c)
                for c in range(tasks * 2)
            ],
        )


# (sql, params): typical application queries, written the way an application would.
QUERIES: list[tuple[str, tuple[Any, ...]]] = [
    ("SELECT * FROM tasks WHERE status = ? AND assignee = ?", ("open", "user3")),
    ("SELECT * FROM tasks WHERE assignee = ? ORDER BY due LIMIT 20", ("user5",)),
    ("SELECT * FROM tasks WHERE due < ? AND status <> 'done' ORDER BY due", (50,)),
    ("SELECT id, title FROM tasks WHERE project_id = ? ORDER BY priority DESC", (7,)),
    ("SELECT status, count(*) FROM tasks WHERE project_id = ? GROUP BY status", (3,)),
    ("SELECT project_id, count(*) FROM tasks GROUP BY project_id", ()),
    ("SELECT * FROM tasks ORDER BY updated DESC LIMIT 10", ()),
    ("SELECT * FROM tasks WHERE id = ?", (123,)),
    ("SELECT count(*) FROM tasks", ()),
    ("SELECT count(*) FROM tasks WHERE status = ?", ("blocked",)),
    (
        "SELECT t.* FROM tasks t JOIN task_tags tt ON tt.task_id = t.id "
        "JOIN tags g ON g.id = tt.tag_id WHERE g.name = ?",
        ("tag4",),
    ),
    (
        "SELECT p.name, count(*) FROM projects p JOIN tasks t ON t.project_id = p.id "
        "WHERE t.status = ? GROUP BY p.name",
        ("open",),
    ),
    ("SELECT * FROM comments WHERE task_id = ? ORDER BY created", (42,)),
    ("SELECT * FROM comments ORDER BY created DESC LIMIT 20", ()),
    (
        "SELECT t.title, c.body FROM comments c JOIN tasks t ON t.id = c.task_id "
        "WHERE c.author = ? ORDER BY c.created DESC LIMIT 50",
        ("user9",),
    ),
    ("SELECT * FROM tasks WHERE title LIKE ?", ("fix item 1%",)),
    ("SELECT * FROM tasks WHERE status IN ('review', 'blocked') AND priority = ?", (4,)),
    ("SELECT * FROM projects WHERE owner = ?", ("user2",)),
    (
        "SELECT * FROM tasks WHERE project_id IN (SELECT id FROM projects WHERE owner = ?)",
        ("user1",),
    ),
    (
        "SELECT * FROM tasks t WHERE NOT EXISTS "
        "(SELECT 1 FROM comments c WHERE c.task_id = t.id) AND t.status = ?",
        ("review",),
    ),
    ("SELECT DISTINCT assignee FROM tasks WHERE status = ?", ("in_progress",)),
    ("SELECT max(updated) FROM tasks WHERE project_id = ?", (9,)),
    ("SELECT * FROM tasks WHERE priority = ? AND due BETWEEN ? AND ?", (1, 100, 200)),
    (
        "SELECT assignee, count(*) AS n FROM tasks WHERE status = 'open' "
        "GROUP BY assignee ORDER BY n DESC LIMIT 5",
        (),
    ),
]


def vm_steps(conn: apsw.Connection, sql: str, params: Any = ()) -> int:
    """Run ``sql`` to completion and return the VM steps it took.

    SQLITE_STMTSTATUS_VM_STEP, read by apsw in the SQLITE_TRACE_PROFILE event when the
    statement finishes (https://rogerbinns.github.io/apsw/connection.html#apsw.Connection.trace_v2).
    """
    steps: list[int] = []

    def on_profile(event: dict[str, Any]) -> None:
        if not event.get("trigger"):
            steps.append(int(event["stmt_status"]["SQLITE_STMTSTATUS_VM_STEP"]))

    conn.trace_v2(apsw.SQLITE_TRACE_PROFILE, on_profile, id="vm_steps")
    try:
        conn.execute(sql, params).fetchall()
    finally:
        conn.trace_v2(0, None, id="vm_steps")
    return sum(steps)


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties), computed directly."""

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx) ** 0.5
    vy = sum((b - my) ** 2 for b in ry) ** 0.5
    return cov / (vx * vy)

"""Our index suggestions are at least as good as those of the sqlite3 shell's .expert.

``.expert`` (https://www.sqlite.org/cli.html#index_recommendations_sqlite_expert_) is
SQLite's own advisor. For each query, its indexes and ours are created on separate
copies of the same database, and the query's work is measured in VM steps.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import apsw
import pytest

from atlas_actors.query import Optimizer

from .workload_fixtures import QUERIES, populate, vm_steps

SHELL = shutil.which("sqlite3") or "/usr/bin/sqlite3"

pytestmark = pytest.mark.skipif(
    not Path(SHELL).exists(), reason="the sqlite3 command-line shell is not installed"
)


def expert(db: Path, sql: str) -> list[str]:
    out = subprocess.run(
        [SHELL, str(db)], input=f".expert\n{sql};\n", capture_output=True, text=True, check=True
    ).stdout
    return [line.rstrip(";") for line in out.splitlines() if line.startswith("CREATE INDEX")]


def measure(base: Path, work: Path, ddl: list[str], sql: str, params: Any) -> int:
    shutil.copy(base, work)
    conn = apsw.Connection(str(work))
    try:
        for statement in ddl:
            conn.execute(statement)
        return vm_steps(conn, sql, params)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, int, int, int]]:
    """(sql, VM steps with no new index, with .expert's, with ours) per query."""
    folder = tmp_path_factory.mktemp("expert")
    base = folder / "base.db"
    conn = apsw.Connection(str(base))
    populate(conn, tasks=6000)
    conn.close()
    live = apsw.Connection(str(base), flags=apsw.SQLITE_OPEN_READONLY)
    optimizer = Optimizer(lambda fn: fn(live))
    rows = []
    for sql, params in QUERIES:
        theirs = expert(base, sql)
        ours = [s.create_sql for s in optimizer.suggest_indexes(sql)]
        rows.append(
            (
                sql,
                measure(base, folder / "none.db", [], sql, params),
                measure(base, folder / "theirs.db", theirs, sql, params),
                measure(base, folder / "ours.db", ours, sql, params),
            )
        )
    live.close()
    return rows


def test_expert_is_driven_and_proposes_indexes(comparison: list[tuple[str, int, int, int]]) -> None:
    # guards against comparing with an expert that silently proposed nothing
    assert sum(1 for _s, none, theirs, _o in comparison if theirs < none) >= 15


def test_each_query_is_at_least_as_cheap_with_our_indexes(
    comparison: list[tuple[str, int, int, int]],
) -> None:
    worse = [(sql, theirs, ours) for sql, _n, theirs, ours in comparison if ours > theirs]
    assert worse == []


def test_the_whole_set_is_at_least_as_cheap_with_our_indexes(
    comparison: list[tuple[str, int, int, int]],
) -> None:
    theirs = sum(t for _s, _n, t, _o in comparison)
    ours = sum(o for _s, _n, _t, o in comparison)
    none = sum(n for _s, n, _t, _o in comparison)
    print(
        f"\nVM steps over {len(comparison)} queries: no new index {none}, "
        f".expert {theirs}, ours {ours}"
    )
    assert ours <= theirs < none

"""Isolation levels in SQLite's terms, and the anomalies each one prevents.

SQLite in WAL mode has one writer and snapshot readers. atlas-actors maps the four
levels of the plan onto that (https://sqlite.org/isolation.html):

``serializable``
    The transaction takes the writer lease at its first statement and runs every
    statement on the write connection under ``BEGIN IMMEDIATE`` (a savepoint inside the
    writer's batch). Nobody else writes until it ends, so it runs as if alone.

``repeatable_read``
    Reads run on one reader connection pinned for the transaction: one snapshot for all
    of them. The first write asks for the writer lease; if anything was committed since
    the snapshot, it fails with ``TransactionConflict`` instead (SQLite's own
    ``SQLITE_BUSY_SNAPSHOT`` rule); after that the transaction runs on the writer.

``read_committed``
    Each read sees the latest committed state; the first write takes the writer lease
    (no conflict check) and later statements run on the writer and see its own writes.

``read_uncommitted``
    As ``read_committed``; reads may be served from the cache without a freshness check.
    SQLite never shows one connection another's uncommitted data, so no dirty read.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

from atlas_actors.errors import ValidationError

__all__ = ["ANOMALIES", "PREVENTS", "IsolationLevel", "check_isolation"]

IsolationLevel = Literal["read_uncommitted", "read_committed", "repeatable_read", "serializable"]
"""The four isolation levels ``db.transaction(isolation=...)`` takes (docs/isolation.md)."""

ANOMALIES: Final = (
    "dirty_write",
    "dirty_read",
    "lost_update",
    "read_skew",
    "write_skew",
    "phantom",
)
"""Anomalies the tests reproduce (Berenson et al., "A Critique of ANSI SQL Isolation Levels")."""

PREVENTS: Final[dict[str, frozenset[str]]] = {
    # One writer connection: nobody ever overwrites another's uncommitted write, and
    # readers only ever see committed snapshots.
    "read_uncommitted": frozenset({"dirty_write", "dirty_read"}),
    "read_committed": frozenset({"dirty_write", "dirty_read"}),
    # A snapshot for all reads; a write after a concurrent commit is refused.
    "repeatable_read": frozenset(ANOMALIES),
    "serializable": frozenset(ANOMALIES),
}
"""Which anomalies each level prevents (``tests/test_isolation.py`` reproduces each
anomaly with real threads and checks this table against the one in docs/isolation.md)."""


_LEVELS: Final[frozenset[str]] = frozenset(get_args(IsolationLevel))


def check_isolation(level: str) -> IsolationLevel:
    """Return ``level`` if it names an isolation level, else raise ValidationError."""
    if not isinstance(level, str) or level not in _LEVELS:  # (a list is not hashable)
        raise ValidationError(f"isolation={level!r}; use one of {list(get_args(IsolationLevel))}")
    return level  # type: ignore[return-value]

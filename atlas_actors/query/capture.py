"""Which columns a query constrains and orders by, as SQLite's planner sees them.

The trick is the one of SQLite's own index advisor (``ext/expert/sqlite3expert.c``, behind
the shell's ``.expert``): mirror every table as a virtual table with the same columns and
collations, and prepare the query against them. The planner then calls the virtual
table's ``xBestIndex`` with the constraints it could push into each table (column,
operator, collation, and whether the value is available yet) and the ORDER BY it wants
(https://www.sqlite.org/vtab.html#the_xbestindex_method). That is an exact account of the
WHERE, ON and ORDER BY terms without writing an SQL parser.

A constraint that is sometimes reported "not usable" depends on another table of the
join (a join term); one that is always usable compares with a constant or parameter.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import apsw

from atlas_actors.query._names import fold, quote_catalog_name
from atlas_actors.query._sqlinfo import null_bindings
from atlas_actors.query.schema import Schema, TableInfo

__all__ = ["Capture", "Constraint", "ScanRequest", "Term", "Workbench", "capture"]

# Constraint operators of sqlite3_index_info (https://www.sqlite.org/c3ref/c_index_constraint_eq.html).
_OPS = {
    apsw.SQLITE_INDEX_CONSTRAINT_EQ: "eq",
    apsw.SQLITE_INDEX_CONSTRAINT_GT: "range",
    apsw.SQLITE_INDEX_CONSTRAINT_GE: "range",
    apsw.SQLITE_INDEX_CONSTRAINT_LT: "range",
    apsw.SQLITE_INDEX_CONSTRAINT_LE: "range",
    apsw.SQLITE_INDEX_CONSTRAINT_IS: "is",
    apsw.SQLITE_INDEX_CONSTRAINT_NE: "ne",
    apsw.SQLITE_INDEX_CONSTRAINT_ISNOT: "ne",
    apsw.SQLITE_INDEX_CONSTRAINT_ISNULL: "isnull",
    apsw.SQLITE_INDEX_CONSTRAINT_ISNOTNULL: "notnull",
    apsw.SQLITE_INDEX_CONSTRAINT_LIKE: "like",
    apsw.SQLITE_INDEX_CONSTRAINT_GLOB: "like",
    apsw.SQLITE_INDEX_CONSTRAINT_REGEXP: "like",
    apsw.SQLITE_INDEX_CONSTRAINT_MATCH: "match",
    apsw.SQLITE_INDEX_CONSTRAINT_FUNCTION: "function",
}
_INDEXABLE = frozenset({"eq", "range"})


@dataclass(frozen=True)
class Constraint:
    """One constraint the planner offered a table."""

    column: str
    """The constrained column (``rowid`` for the rowid)."""
    op: str
    """``eq``, ``range``, ``is``, ``ne``, ``isnull``, ``notnull``, ``like``, ``match``, ..."""
    usable: bool
    """False when its value comes from a table not yet available in this join order."""
    collation: str
    """The collating sequence the comparison uses, upper case."""
    in_list: bool = False
    """An ``IN (...)`` term. SQLite also offers these as unusable, to price the plan
    without them, so unusability only marks a join term when this is False."""


@dataclass(frozen=True)
class ScanRequest:
    """One ``xBestIndex`` call: what the planner could use for one scan of a table."""

    table: str
    """The table's name as declared."""
    constraints: tuple[Constraint, ...]
    """The constraints offered."""
    order_by: tuple[tuple[str, bool], ...]
    """ORDER BY / GROUP BY columns the scan could deliver in order: (column, descending)."""


@dataclass(frozen=True)
class Capture:
    """Everything the planner asked for while preparing one statement."""

    requests: tuple[ScanRequest, ...]
    """Every ``xBestIndex`` call, in order."""

    def equality_columns(self) -> dict[str, set[str]]:
        """Return lower-case table → columns compared with ``=`` or ``IS``."""
        out: dict[str, set[str]] = {}
        for req in self.requests:
            for c in req.constraints:
                if c.op in ("eq", "is") and c.column != "rowid":
                    out.setdefault(fold(req.table), set()).add(fold(c.column))
        return out

    def terms(self, table: str) -> dict[str, Term]:
        """Return the constraints on ``table`` grouped by column (lower-case)."""
        out: dict[str, Term] = {}
        for req in self.requests:
            if fold(req.table) != fold(table):
                continue
            ranges: dict[str, int] = {}
            for c in req.constraints:
                key = fold(c.column)
                if c.op == "range":
                    ranges[key] = ranges.get(key, 0) + 1
                old = out.get(key, Term(frozenset(), False, 0, False))
                join = not c.usable and not c.in_list
                out[key] = Term(
                    old.ops | {c.op},
                    old.join or join,
                    max(old.bounds, ranges.get(key, 0)),
                    old.in_list or c.in_list,
                )
        return out


@dataclass(frozen=True)
class Term:
    """The constraints on one column, merged over every scan request."""

    ops: frozenset[str]
    """Operators seen (``eq``, ``range``, ``like``, ...)."""
    join: bool
    """True when some constraint on the column depends on another table."""
    bounds: int
    """Range bounds in one request: 1 for ``x > ?``, 2 for ``x > ? AND x < ?``."""
    in_list: bool = False
    """An ``IN (...)`` term: as a filter, each row probes a temporary index."""


class _Table:
    def __init__(self, info: TableInfo, sink: list[ScanRequest]) -> None:
        self.info = info
        self.sink = sink

    def BestIndexObject(self, index_info: apsw.IndexInfo) -> bool:  # apsw's method name
        columns = self.info.columns
        constraints = []
        used = 0
        for i in range(index_info.nConstraint):
            op = _OPS.get(index_info.get_aConstraint_op(i))
            col = index_info.get_aConstraint_iColumn(i)
            if op is None:
                continue
            usable = bool(index_info.get_aConstraint_usable(i))
            name = "rowid" if col < 0 else columns[col].name
            constraints.append(
                Constraint(
                    name,
                    op,
                    usable,
                    index_info.get_aConstraint_collation(i).upper(),
                    # sqlite3_vtab_in(): https://www.sqlite.org/c3ref/vtab_in.html
                    bool(index_info.get_aConstraintUsage_in(i)),
                )
            )
            if usable and op in _INDEXABLE:
                # Claiming the constraint makes the planner ask again without the join
                # terms, which is how join terms are told apart (as sqlite3expert does).
                used += 1
                index_info.set_aConstraintUsage_argvIndex(i, used)
        order = tuple(
            (
                "rowid"
                if index_info.get_aOrderBy_iColumn(i) < 0
                else columns[index_info.get_aOrderBy_iColumn(i)].name,
                bool(index_info.get_aOrderBy_desc(i)),
            )
            for i in range(index_info.nOrderBy)
        )
        self.sink.append(ScanRequest(self.info.name, tuple(constraints), order))
        index_info.estimatedCost = 1_000_000.0 / (used + 1)
        return True

    def Disconnect(self) -> None:  # apsw's method name
        """Nothing to release."""

    Destroy = Disconnect


class _Module:
    def __init__(self, schema: Schema, sink: list[ScanRequest]) -> None:
        self.schema = schema
        self.sink = sink

    def Create(  # apsw's method name
        self, db: apsw.Connection, modulename: str, dbname: str, tablename: str, *args: str
    ) -> tuple[str, _Table]:
        info = self.schema.table(tablename)
        q = quote_catalog_name
        cols = ", ".join(
            f"{q(c.name)} {c.declared_type} COLLATE {q(c.collation)}" for c in info.columns
        )
        return f"CREATE TABLE x({cols})", _Table(info, self.sink)

    Connect = Create


class Workbench:
    """A private in-memory database mirroring a schema with capturing virtual tables.

    It is owned by the optimizer (it is scratch space, not the user's data) and rebuilt
    when the schema version changes. Methods are serialized by a lock.
    """

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self._lock = threading.Lock()
        self._sink: list[ScanRequest] = []
        self._conn = apsw.Connection(":memory:")
        # _Module implements the part of apsw's VTModule protocol that planning uses.
        module = cast("apsw.VTModule", _Module(schema, self._sink))
        self._conn.create_module("atlas_capture", module, use_bestindex_object=True)
        for table in schema.tables.values():
            # sqlite_* names are reserved for SQLite's own tables.
            if table.kind == "table" and table.columns and not _internal(table.name):
                self._conn.execute(
                    f"CREATE VIRTUAL TABLE {quote_catalog_name(table.name)} USING atlas_capture"
                )
        for table in schema.tables.values():
            if table.kind == "view" and table.sql:
                try:
                    self._conn.execute(table.sql)
                except apsw.Error:  # a view over something not mirrored: skip it
                    continue

    def capture(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> Capture:
        """Prepare ``sql`` and return what the planner asked each table for."""
        with self._lock:
            self._sink.clear()
            bindings = params if params is not None else null_bindings(sql)
            try:
                # can_cache=False: a cached statement is not prepared again, and only
                # preparing calls xBestIndex.
                cursor = self._conn.cursor()
                cursor.execute("EXPLAIN QUERY PLAN " + sql, bindings, can_cache=False)
                cursor.fetchall()
            except apsw.Error:
                # A statement the mirror cannot prepare (e.g. it names a virtual table of
                # the live database) gives no constraints; callers fall back to defaults.
                return Capture(())
            return Capture(tuple(self._sink))

    def close(self) -> None:
        """Close the scratch database."""
        self._conn.close()


def _internal(name: str) -> bool:
    return fold(name).startswith("sqlite_")


def capture(schema: Schema, sql: str) -> Capture:
    """One-off capture (builds and discards a :class:`Workbench`)."""
    bench = Workbench(schema)
    try:
        return bench.capture(sql)
    finally:
        bench.close()

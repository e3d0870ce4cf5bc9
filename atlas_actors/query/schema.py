"""A snapshot of a database schema: tables, columns, collations and indexes.

:meth:`Schema.from_connection` reads it with the ``table_list``, ``table_xinfo``,
``index_list`` and ``index_xinfo`` pragmas (https://www.sqlite.org/pragma.html), used as
table-valued functions so that table names are bound parameters, and
``sqlite3_table_column_metadata`` for each column's collation. Lookups are
case-insensitive, like SQLite's own name resolution, and a miss raises
:class:`QueryValidationError` with the closest known name.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import apsw

from atlas_actors.errors import QueryValidationError
from atlas_actors.query._names import check_name, closest, fold, quote

__all__ = ["ColumnInfo", "IndexColumn", "IndexInfo", "Schema", "TableInfo", "affinity_of"]

Affinity = Literal["TEXT", "NUMERIC", "INTEGER", "REAL", "BLOB"]
ROWID_NAMES = ("rowid", "oid", "_rowid_")
LEGACY_NAMES = {"sqlite_master": "sqlite_schema"}
"""Old names SQLite still accepts for its catalog (https://www.sqlite.org/schematab.html)."""


def affinity_of(declared_type: str, *, strict: bool = False) -> Affinity:
    """Return the column affinity SQLite derives from a declared type.

    The five rules of https://www.sqlite.org/datatype3.html#determination_of_column_affinity,
    in order. In a STRICT table ``ANY`` keeps values as given, which behaves like BLOB
    affinity (https://www.sqlite.org/stricttables.html).
    """
    t = declared_type.upper()
    if "INT" in t:
        return "INTEGER"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return "TEXT"
    if "BLOB" in t or not t or (strict and t == "ANY"):
        return "BLOB"
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "REAL"
    return "NUMERIC"


@dataclass(frozen=True)
class ColumnInfo:
    """One column of a table or view."""

    name: str
    """The column name as declared."""
    declared_type: str
    """The declared type (``""`` when none)."""
    affinity: Affinity
    """The affinity SQLite applies to stored values."""
    not_null: bool
    """Declared NOT NULL (a primary key of a rowid table may still hold NULL otherwise)."""
    primary_key: int
    """Position in the primary key (1-based), 0 when not part of it."""
    collation: str
    """The default collating sequence, upper case (``BINARY``, ``NOCASE``, ``RTRIM``...)."""
    hidden: int = 0
    """``table_xinfo``'s hidden flag: 2 or 3 for generated columns."""


@dataclass(frozen=True)
class IndexColumn:
    """One key column of an index."""

    name: str | None
    """The table column, or ``None`` for an expression (or the rowid)."""
    collation: str
    """The collating sequence the index sorts this column with, upper case."""
    desc: bool
    """Sorted descending."""


@dataclass(frozen=True)
class IndexInfo:
    """One index."""

    name: str
    """The index name (``sqlite_autoindex_*`` for UNIQUE/PRIMARY KEY constraints)."""
    table: str
    """The indexed table."""
    columns: tuple[IndexColumn, ...]
    """The key columns, leftmost first."""
    unique: bool
    """A UNIQUE index."""
    partial: bool
    """A partial index (has a WHERE clause)."""
    origin: str
    """``c`` (CREATE INDEX), ``u`` (UNIQUE constraint) or ``pk`` (PRIMARY KEY)."""
    sql: str | None = None
    """The CREATE INDEX statement (None for indexes made by UNIQUE / PRIMARY KEY)."""


@dataclass(frozen=True)
class TableInfo:
    """One table or view."""

    name: str
    """The table name as declared."""
    kind: str
    """``table``, ``view`` or ``virtual``."""
    columns: tuple[ColumnInfo, ...]
    """The columns in declaration order (hidden and generated ones included)."""
    indexes: tuple[IndexInfo, ...] = ()
    """The indexes on the table."""
    strict: bool = False
    """A STRICT table: values must match the declared types."""
    without_rowid: bool = False
    """A WITHOUT ROWID table, ordinary or virtual (no ``rowid`` column)."""
    sql: str | None = None
    """The CREATE statement from ``sqlite_schema``."""
    _by_name: Mapping[str, ColumnInfo] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        by_name = {fold(c.name): c for c in self.columns}
        object.__setattr__(self, "_by_name", MappingProxyType(by_name))

    @property
    def has_rowid(self) -> bool:
        """True when the table has a rowid (a column of that name still takes its place).

        Ordinary tables do unless WITHOUT ROWID; so do virtual tables (FTS5, R-tree...)
        unless their module declares them WITHOUT ROWID, which ``table_list`` reports
        for them too. Views have none.
        """
        return self.kind in ("table", "virtual") and not self.without_rowid

    def column(self, name: str) -> ColumnInfo | None:
        """Return the column called ``name`` (case-insensitive), or ``None``."""
        return self._by_name.get(fold(name))

    def has_column(self, name: str) -> bool:
        """Return True for a declared column, or a rowid alias on a rowid table."""
        return fold(name) in self._by_name or (self.has_rowid and fold(name) in ROWID_NAMES)

    def require_column(self, name: str) -> None:
        """Raise :class:`QueryValidationError` unless the table has column ``name``."""
        if not self.has_column(name):
            raise QueryValidationError(
                f"table {self.name!r} has no column {name!r}",
                suggestion=closest(name, [c.name for c in self.columns]),
            )


@dataclass(frozen=True)
class Schema:
    """A snapshot of the tables of one database (``main`` by default)."""

    tables: Mapping[str, TableInfo]
    """Tables and views by lower-case name."""
    version: int = 0
    """``PRAGMA schema_version`` when the snapshot was taken."""
    temp: frozenset[str] = frozenset()
    """Names (folded) of the TEMP tables in :attr:`tables`: they shadow main's tables of
    the same name. The rewrite rules treat their columns as unknown."""
    temp_version: int = 0
    """``PRAGMA temp.schema_version`` when the snapshot was taken."""

    @classmethod
    def of(cls, tables: list[TableInfo], version: int = 0) -> Schema:
        """Build a snapshot from table descriptions (tests, hypothetical schemas)."""
        return cls(MappingProxyType({fold(t.name): t for t in tables}), version)

    def table(self, name: str) -> TableInfo:
        """Return the table or view called ``name``; raise with a did-you-mean on a miss."""
        found = self.tables.get(fold(name))
        if found is None and fold(name) in LEGACY_NAMES:
            found = self.tables.get(LEGACY_NAMES[fold(name)])
        if found is None:
            raise QueryValidationError(
                f"no such table: {name!r}",
                suggestion=closest(name, [t.name for t in self.tables.values()]),
            )
        return found

    @classmethod
    def from_connection(cls, conn: apsw.Connection, *, database: str = "main") -> Schema:
        """Read the schema of ``database`` on ``conn`` (one read of the catalog).

        For ``main`` the connection's TEMP tables are read too: SQLite resolves an
        unqualified name in ``temp`` first, so a temp table takes the place of a main
        table of the same name, and its name is listed in :attr:`temp`.
        """
        version = _version(conn, database)
        tables = {fold(t.name): t for t in _read_tables(conn, database)}
        temp: set[str] = set()
        temp_version = 0
        if database == "main":
            temp_version = _version(conn, "temp")
            for table in _read_tables(conn, "temp"):
                tables[fold(table.name)] = table
                temp.add(fold(table.name))
        return cls(MappingProxyType(tables), version, frozenset(temp), temp_version)


def _version(conn: apsw.Connection, database: str) -> int:
    """``PRAGMA schema_version`` of ``database``: it changes with every schema change."""
    return int(conn.execute(f"PRAGMA {_db(database)}.schema_version").fetchall()[0][0])  # type: ignore[arg-type]


def _read_tables(conn: apsw.Connection, database: str) -> list[TableInfo]:
    tables = []
    listed = conn.execute(
        "SELECT name, type, wr, strict FROM pragma_table_list WHERE schema = ? "
        "AND type IN ('table', 'view', 'virtual') ORDER BY name",
        (database,),
    ).fetchall()
    sql_by_name = {
        fold(str(n)): s
        for n, s in conn.execute(f"SELECT name, sql FROM {_db(database)}.sqlite_schema")
    }
    for name, kind, wr, strict in listed:
        sql = sql_by_name.get(fold(str(name)))
        try:
            table = _read_table(
                conn,
                database=database,
                name=str(name),
                kind=str(kind),
                strict=bool(strict),
                sql_by_name=sql_by_name,
            )
        except apsw.SQLError:
            # A view over a table that is gone (SQLite checks views when they are
            # used, not when they are created): listed, with no columns.
            table = TableInfo(str(name), str(kind), ())
        tables.append(
            dataclasses.replace(
                table,
                strict=bool(strict),
                without_rowid=bool(wr),
                sql=sql if isinstance(sql, str) else None,
            )
        )
    return tables


def _db(database: str) -> str:
    # Only schema names the builder's grammar accepts are interpolated.
    return quote(check_name(database, "database"))


def _read_table(
    conn: apsw.Connection,
    *,
    database: str,
    name: str,
    kind: str,
    strict: bool,
    sql_by_name: Mapping[str, object],
) -> TableInfo:
    columns = []
    for _cid, col, ctype, notnull, _default, pk, hidden in conn.execute(
        "SELECT * FROM pragma_table_xinfo(?, ?)", (name, database)
    ):
        collation = "BINARY"
        if kind == "table":
            # generated or unusual columns may have no metadata: keep the default
            with contextlib.suppress(apsw.Error):
                collation = str(conn.column_metadata(database, name, col)[1] or "BINARY")
        declared = str(ctype or "")
        columns.append(
            ColumnInfo(
                name=str(col),
                declared_type=declared,
                affinity=affinity_of(declared, strict=strict),
                not_null=bool(notnull),
                primary_key=int(pk),
                collation=collation.upper(),
                hidden=int(hidden),
            )
        )
    indexes = []
    if kind == "table":
        for _seq, idx, unique, origin, partial in conn.execute(
            "SELECT * FROM pragma_index_list(?, ?)", (name, database)
        ):
            keys = tuple(
                IndexColumn(None if cname is None else str(cname), str(coll).upper(), bool(desc))
                for _seqno, _cid, cname, desc, coll, key in conn.execute(
                    "SELECT * FROM pragma_index_xinfo(?, ?)", (idx, database)
                )
                if key
            )
            ddl = sql_by_name.get(fold(str(idx)))
            indexes.append(
                IndexInfo(
                    str(idx),
                    name,
                    keys,
                    bool(unique),
                    bool(partial),
                    str(origin),
                    ddl if isinstance(ddl, str) else None,
                )
            )
    return TableInfo(name, kind, tuple(columns), tuple(indexes))

"""Row-count statistics: ``sqlite_stat1`` when present, measurements otherwise.

Without ANALYZE, table sizes come from ``count(*)``, indexes are probed and compared
columns sampled; indexes that do not exist yet (the advisor's candidates) are sampled too.

``sqlite_stat1`` (https://www.sqlite.org/fileformat2.html#stat1tab) holds, per index, the
table's row count followed by the average number of rows that share each left prefix of
the index key; a partial index's row counts the rows it holds, so, as in SQLite's
``analyze.c``, only a table row (``idx`` NULL) or a non-partial index's row gives the
table's size. Without an index's row, SQLite guesses 10 rows per key for the first
column, then 9, 8, 7, 6 and 5 (``sqlite3DefaultRowEst`` in ``build.c``), and 1 for a
full unique key; this module makes the same guess so that estimates follow the planner's
view.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import apsw

from atlas_actors.query._names import fold, quote_catalog_name
from atlas_actors.query.sampling import (
    DEFAULT_ROWS_PER_KEY,
    Stat1Row,
    probe_index_stat,
    sample_columns,
)
from atlas_actors.query.schema import IndexInfo, Schema, TableInfo

__all__ = ["Collected", "Stat1Row", "Stats", "TableStats", "collect", "read_stat1"]


UNKNOWN_ROWS = 1000.0
"""Rows assumed for a view or table whose size cannot be read."""


@dataclass(frozen=True)
class TableStats:
    """Estimates for one table."""

    rows: float
    """Estimated row count."""
    indexes: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    """Lower-case index name → rows per key for each left prefix (1 column, 2, ...)."""
    columns: Mapping[str, float] = field(default_factory=dict)
    """Lower-case column → rows per distinct value, when a sample or an index that is not
    partial tells (a partial index describes the rows it holds only)."""
    measured: frozenset[str] = frozenset()
    """Indexes whose figures come from data (stat1 or a sample), not SQLite's guess."""


@dataclass(frozen=True)
class Stats:
    """Estimates for every table of a schema."""

    tables: Mapping[str, TableStats]
    """Lower-case table name → its estimates."""
    analyzed: bool = False
    """True when ``sqlite_stat1`` had rows: estimates come from ANALYZE."""

    @classmethod
    def build(
        cls,
        schema: Schema,
        stat1: Iterable[Stat1Row],
        table_rows: Mapping[str, float],
        *,
        analyzed: bool | None = None,
        column_rows: Mapping[str, Mapping[str, float]] | None = None,
    ) -> Stats:
        """Combine stat1 rows, table sizes and sampled column figures into estimates."""
        stat1 = list(stat1)
        by_index: dict[tuple[str, str | None], list[float]] = {}
        for tbl, idx, stat in stat1:
            numbers = _numbers(stat)
            if numbers:
                by_index[(fold(tbl), None if idx is None else fold(idx))] = numbers
        tables: dict[str, TableStats] = {}
        for key, table in schema.tables.items():
            rows = table_rows.get(key)
            if rows is None:
                rows = _stat1_rows(schema, stat1, key)
            stats = _table_stats(table, max(rows, 1.0), by_index)
            sampled = (column_rows or {}).get(key)
            if sampled:
                merged = {**sampled, **stats.columns}  # index figures win over samples
                stats = dataclasses.replace(stats, columns=MappingProxyType(merged))
            tables[key] = stats
        return cls(
            MappingProxyType(tables), analyzed=bool(by_index) if analyzed is None else analyzed
        )

    @classmethod
    def from_connection(
        cls,
        conn: apsw.Connection,
        schema: Schema,
        *,
        probes: dict[tuple[str, str], tuple[float, str]] | None = None,
        columns: Mapping[str, Iterable[str]] | None = None,
    ) -> Stats:
        """Read the estimates of ``schema``'s tables (see :func:`collect`)."""
        found = collect(conn, schema, probes=probes, columns=columns)
        return cls.build(
            schema,
            [*found.stat1, *found.measured],
            found.sizes,
            analyzed=found.analyzed,
            column_rows=found.column_rows,
        )

    def table(self, name: str) -> TableStats:
        """Return the estimates of ``name`` (a neutral guess for unknown names)."""
        return self.tables.get(fold(name)) or TableStats(UNKNOWN_ROWS)

    def rows_per_key(self, table: str, index: str, n_eq: int) -> float:
        """Return rows one lookup with ``n_eq`` equality columns on ``index`` returns."""
        t = self.table(table)
        prefix = t.indexes.get(fold(index))
        if n_eq <= 0:
            return t.rows
        if prefix is None:
            return min(t.rows, _default_rows_per_key(n_eq - 1))
        return prefix[min(n_eq, len(prefix)) - 1]

    def eq_rows(self, table: str, column: str) -> float | None:
        """Return rows per distinct value of ``column`` if known from data."""
        return self.table(table).columns.get(fold(column))


_MAX_COUNT = float(2**63 - 1)
"""No table holds more rows than there are rowids: larger stat1 counts are clamped."""


def _numbers(stat: str) -> list[float]:
    # Text after the numbers ("unordered", "sz=N", "noskipscan") carries hints, not counts.
    # Like SQLite, only ASCII digits count (str.isdigit() also takes "²"), and a count
    # too large for a row count is clamped (a 400-digit one would be inf, then NaN).
    out = []
    for word in stat.split():
        if not all("0" <= c <= "9" for c in word):
            break
        out.append(min(float(word), _MAX_COUNT))
    return out


def _table_stats(
    table: TableInfo, rows: float, by_index: Mapping[tuple[str, str | None], list[float]]
) -> TableStats:
    indexes: dict[str, tuple[float, ...]] = {}
    columns: dict[str, float] = {}
    measured = set()
    for index in table.indexes:
        numbers = by_index.get((fold(table.name), fold(index.name)))
        if numbers and len(numbers) > 1:
            per_key = tuple(max(n, 1.0) for n in numbers[1:])
            measured.add(fold(index.name))
            first = index.columns[0].name if index.columns and not index.partial else None
            if first is not None:  # a partial index's figures describe its own rows only
                key = fold(first)
                columns[key] = min(columns.get(key, math.inf), per_key[0])
        else:
            per_key = _default_per_key(index, rows)
        indexes[fold(index.name)] = per_key
        full_unique = index.unique and not index.partial and len(index.columns) == 1
        if full_unique and index.columns[0].name is not None:
            columns[fold(index.columns[0].name)] = 1.0  # a unique column: one row per value
    pks = [c for c in table.columns if c.primary_key]
    if table.has_rowid:
        columns["rowid"] = 1.0
        if len(pks) == 1 and pks[0].declared_type.upper() == "INTEGER":
            columns[fold(pks[0].name)] = 1.0  # INTEGER PRIMARY KEY is the rowid
    return TableStats(
        rows, MappingProxyType(indexes), MappingProxyType(columns), frozenset(measured)
    )


def _default_rows_per_key(i: int) -> float:
    """SQLite's guess for the key prefix of ``i + 1`` columns (see the module docstring)."""
    return float(DEFAULT_ROWS_PER_KEY[min(i, len(DEFAULT_ROWS_PER_KEY) - 1)])


def _default_per_key(index: IndexInfo, rows: float) -> tuple[float, ...]:
    n = max(len(index.columns), 1)
    guess = [min(rows, _default_rows_per_key(i)) for i in range(n)]
    if index.unique:
        guess[-1] = 1.0
    return tuple(guess)


def read_stat1(conn: apsw.Connection, database: str = "main") -> list[Stat1Row]:
    """Return the rows of ``sqlite_stat1`` (none when the database was never analyzed)."""
    exists = conn.execute(
        "SELECT 1 FROM pragma_table_list WHERE schema = ? AND name = 'sqlite_stat1'",
        (database,),
    ).fetchall()
    if not exists:
        return []
    rows = conn.execute(
        f"SELECT tbl, idx, stat FROM {quote_catalog_name(database)}.sqlite_stat1"
    ).fetchall()
    return [(str(t), None if i is None else str(i), str(s)) for t, i, s in rows]


@dataclass(frozen=True)
class Collected:
    """Statistics read from a live database, ready to load into another one."""

    stat1: tuple[Stat1Row, ...]
    """The database's own ``sqlite_stat1`` rows (what its planner knows)."""
    measured: tuple[Stat1Row, ...]
    """Measured stand-ins, in stat1 form, for the tables and indexes stat1 does not cover."""
    sizes: Mapping[str, float]
    """Lower-case table → ``count(*)``, for tables stat1 does not cover."""
    column_rows: Mapping[str, Mapping[str, float]]
    """Lower-case table → column → sampled rows per distinct value."""
    analyzed: bool
    """True when the database had real ``sqlite_stat1`` rows."""


def collect(
    conn: apsw.Connection,
    schema: Schema,
    *,
    probes: dict[tuple[str, str], tuple[float, str]] | None = None,
    columns: Mapping[str, Iterable[str]] | None = None,
) -> Collected:
    """Read stat1; for tables it does not cover, ``count(*)`` and index probes.

    A table is covered by a stat1 row that gives its size: not a partial index's row.

    A table stat1 does not cover gets a table row (``tbl, NULL, "N"``) and, for each of
    its indexes, the figures of :func:`~atlas_actors.query.sampling.probe_index_stat`;
    ``probes`` caches those by (table, index) until the table's size changes by more
    than 10%. ``columns`` names, per table, columns worth sampling (the optimizer passes
    the columns a query compares with ``=``).
    """
    # stat1 describes main's tables: not the TEMP tables that shadow some of them
    stat1 = [row for row in read_stat1(conn) if fold(row[0]) not in schema.temp]
    covered = {fold(t) for t, i, _s in stat1 if _counts_table(schema, t, i)}
    sizes: dict[str, float] = {}
    extra: list[Stat1Row] = []
    for key, table in schema.tables.items():
        if table.kind != "table" or key in covered or key.startswith("sqlite_"):
            continue
        sql = f"SELECT count(*) FROM {quote_catalog_name(table.name)}"
        rows = float(conn.execute(sql).fetchall()[0][0])  # type: ignore[arg-type]
        sizes[key] = rows
        extra.append((table.name, None, str(round(rows))))
        for index in table.indexes:
            cache_key = (key, fold(index.name))
            cached = probes.get(cache_key) if probes is not None else None
            if cached is not None and abs(cached[0] - rows) <= 0.1 * max(rows, 1.0):
                stat = cached[1]
            else:
                stat = probe_index_stat(conn, table, index, rows)
                if probes is not None:
                    probes[cache_key] = (rows, stat)
            if stat:
                extra.append((table.name, index.name, stat))
    column_rows: dict[str, dict[str, float]] = {}
    for key, wanted in (columns or {}).items():
        found = schema.tables.get(key)
        if found is not None and found.kind == "table":
            rows = sizes.get(key) or _stat1_rows(schema, stat1, key)
            column_rows[key] = sample_columns(conn, found, sorted(wanted), rows)
    return Collected(tuple(stat1), tuple(extra), sizes, column_rows, bool(stat1))


def _counts_table(schema: Schema, table: str, index: str | None) -> bool:
    """True when SQLite takes ``table``'s row count from this stat1 row.

    That is any row but a partial index's, whose first number counts only the rows the
    index holds (``analysisLoader`` in ``analyze.c``). A row naming no known index is
    read as a table row there too.
    """
    if index is None:
        return True
    info = schema.tables.get(fold(table))
    return info is None or not any(i.partial and fold(i.name) == fold(index) for i in info.indexes)


def _stat1_rows(schema: Schema, stat1: Iterable[Stat1Row], table: str) -> float:
    """Return ``table``'s row count from stat1 (see :func:`_counts_table`), or a guess."""
    for tbl, idx, stat in stat1:
        numbers = _numbers(stat)
        if fold(tbl) == table and numbers and _counts_table(schema, tbl, idx):
            return numbers[0]
    return UNKNOWN_ROWS

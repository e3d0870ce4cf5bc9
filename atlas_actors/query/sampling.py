"""Cheap measurements of live data: index probes and random row samples.

Both are bounded whatever the table's size: a probe is at most ``cap`` index seeks, a
sample at most ``n + 1`` rows read and ``2 * n`` rowid lookups. They stand in for
``ANALYZE`` when a database has not been analyzed, and give statistics to indexes that
do not exist yet.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import apsw

from atlas_actors.query._names import fold, quote_catalog_name
from atlas_actors.query.schema import ROWID_NAMES, IndexInfo, TableInfo

__all__ = [
    "Stat1Row",
    "gee_distinct",
    "index_stat_from_sample",
    "probe_index_stat",
    "sample_columns",
    "sample_rows",
]

Stat1Row = tuple[str, str | None, str]
"""One ``sqlite_stat1`` row: (table, index or None, stat text)."""
DEFAULT_ROWS_PER_KEY = (10, 9, 8, 7, 6, 5)
"""SQLite's guess of rows per key of an index without statistics, for the first column,
the first two, ..., the last one for six columns and more (``sqlite3DefaultRowEst`` in
``build.c``)."""


def gee_distinct(counts: Iterable[int], sample: int, total: float) -> float:
    """Estimate the distinct values of a column from value counts in a random sample.

    The GEE estimator (Charikar et al., "Towards estimation error guarantees for distinct
    values", PODS 2000): a value seen once stands for ``sqrt(N/n)`` values, a value seen
    more often for itself. Exact when the sample is the whole table. An empty sample
    tells nothing: :class:`ValueError`.
    """
    counts = list(counts)
    if sample < 1 or not counts:
        raise ValueError("an empty sample tells nothing about distinct values")
    singles = sum(1 for c in counts if c == 1)
    if sample >= total:
        return float(len(counts))
    return max(math.sqrt(total / sample) * singles + (len(counts) - singles), 1.0)


def sample_rows(
    conn: apsw.Connection, table: TableInfo, columns: Sequence[str], *, n: int = 2000
) -> list[tuple[Any, ...]]:
    """Return ``columns`` of about ``n`` rows of ``table`` picked at random.

    A table of at most ``n`` rows is read whole. Otherwise ``n`` distinct rowids are
    drawn between the smallest and the largest (``rowid IN (SELECT value FROM
    json_each(?))``: one seek each, whatever the table's size; json_each is built into
    SQLite since 3.38, https://www.sqlite.org/json1.html#jeach). Deleted rowids miss, and
    the rows found are a uniform sample. When fewer than half the draws hit a row (sparse
    rowids: random ids, most rows deleted), each of ``n`` draws takes the first row at or
    after it instead (``rowid >= ? ORDER BY rowid LIMIT 1``, rows found twice counted
    once): every draw lands, but a row after a wide gap is likelier to be picked, which
    skews the sample only when gaps follow the sampled values (say, a deleted range that
    left one value's rows alone). The seed depends on the table only, so estimates
    repeat. A WITHOUT ROWID table (or one whose columns hide every rowid name) gives its
    first ``n`` rows instead, in key order.
    """
    t = quote_catalog_name(table.name)
    select = ", ".join(quote_catalog_name(c) for c in columns)
    rowid = next((r for r in ROWID_NAMES if table.column(r) is None), None)
    if not table.has_rowid or rowid is None:
        return conn.execute(f"SELECT {select} FROM {t} LIMIT ?", (n,)).fetchall()
    small = f"SELECT count(*) FROM (SELECT 1 FROM {t} LIMIT ?)"
    if int(conn.execute(small, (n + 1,)).fetchall()[0][0]) <= n:  # type: ignore[arg-type]
        return conn.execute(f"SELECT {select} FROM {t}").fetchall()
    # one seek each (two aggregates in one SELECT would scan the table)
    bounds = f"SELECT (SELECT min({rowid}) FROM {t}), (SELECT max({rowid}) FROM {t})"
    lo, hi = conn.execute(bounds).fetchall()[0]
    if not isinstance(lo, int) or not isinstance(hi, int):
        return []  # emptied meanwhile
    rng = random.Random(f"{table.name}:{hi}")
    if hi - lo < sys.maxsize:  # a longer range cannot be dense (nor be a range())
        ids = rng.sample(range(lo, hi + 1), min(n, hi - lo + 1))
        found = conn.execute(
            f"SELECT {select} FROM {t} WHERE {rowid} IN (SELECT value FROM json_each(?))",
            (_json_list(ids),),
        ).fetchall()
        if 2 * len(found) >= n:
            return found
    starts = sorted(rng.randint(lo, hi) for _ in range(n))
    landed = (
        f"SELECT (SELECT {rowid} FROM {t} WHERE {rowid} >= d.value ORDER BY {rowid} LIMIT 1)"
        " FROM json_each(?) AS d"
    )
    return conn.execute(
        f"SELECT {select} FROM {t} WHERE {rowid} IN ({landed})", (_json_list(starts),)
    ).fetchall()


def _json_list(values: Iterable[int]) -> str:
    return "[" + ",".join(map(str, values)) + "]"


def _fold(value: Any, collation: str) -> Any:
    """Map ``value`` to what ``collation`` compares equal (built-in collations only)."""
    if not isinstance(value, str):
        return value
    if (
        collation == "NOCASE"
    ):  # folds ASCII letters only (https://www.sqlite.org/datatype3.html#collation)
        return value.translate(_ASCII_LOWER)
    if collation == "RTRIM":
        return value.rstrip(" ")
    return value


_MAX_ROWS = 2**63 - 1
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def index_stat_from_sample(
    rows: Sequence[tuple[Any, ...]], collations: Sequence[str], total: float
) -> str:
    """Return a stat1 text for an index whose key columns are the columns of ``rows``.

    Without rows, the text says what SQLite assumes of an index it has no figures for
    (:data:`DEFAULT_ROWS_PER_KEY`), not that the table holds one value.
    """
    # A row count is at most 2**63 - 1 (rowids); clamping also keeps round() off inf/NaN.
    n_total = max(round(total if total < _MAX_ROWS else _MAX_ROWS), 1)
    if not rows:  # no statistic: SQLite's own guess for an index it has no row for
        guess = [min(n_total, DEFAULT_ROWS_PER_KEY[min(k, 5)]) for k in range(len(collations))]
        return " ".join(str(v) for v in [n_total, *guess])
    per_key = []
    for k in range(1, len(collations) + 1):
        counts: dict[tuple[Any, ...], int] = {}
        for row in rows:
            key = tuple(_fold(v, c) for v, c in zip(row[:k], collations[:k], strict=True))
            counts[key] = counts.get(key, 0) + 1
        distinct = gee_distinct(counts.values(), len(rows), n_total)
        per_key.append(max(1, round(n_total / distinct)))
    return " ".join(str(v) for v in [n_total, *per_key])


def sample_columns(
    conn: apsw.Connection, table: TableInfo, columns: Sequence[str], rows: float, *, n: int = 256
) -> dict[str, float]:
    """Return rows per distinct non-NULL value of each of ``columns``, from a sample."""
    cols = [c for c in columns if table.column(c) is not None]
    if not cols or rows < 1:
        return {}
    picked = sample_rows(conn, table, cols, n=n)
    out = {}
    for i, col in enumerate(cols):
        values: dict[object, int] = {}
        for row in picked:
            if row[i] is not None:
                values[row[i]] = values.get(row[i], 0) + 1
        if values:
            out[fold(col)] = max(1.0, rows / gee_distinct(values.values(), len(picked), rows))
    return out


def probe_index_stat(
    conn: apsw.Connection, table: TableInfo, index: IndexInfo, rows: float, *, cap: int = 400
) -> str:
    """Return a stat1 text for ``index`` from its distinct leading values, or ``""``.

    ``SELECT min(c) FROM t WHERE c > ?`` is one index seek (the min/max optimization,
    https://www.sqlite.org/optoverview.html#minmax), so stepping from each value to the
    next counts up to ``cap`` distinct values cheaply. Past the cap, numbers are
    extrapolated over the column's range; other values get the geometric mean of the
    bounds. Columns after the first are assumed to divide by 10 each, as SQLite guesses.
    """
    first = index.columns[0] if index.columns else None
    column = table.column(first.name) if first is not None and first.name else None
    if index.partial or column is None or first is None or column.collation != first.collation:
        return ""  # the seek would not use this index: do not pay for a scan
    c, t = quote_catalog_name(column.name), quote_catalog_name(table.name)
    value = conn.execute(f"SELECT min({c}) FROM {t}").fetchall()[0][0]
    start, distinct = value, 0
    step = f"SELECT min({c}) FROM {t} WHERE {c} > ?"
    while value is not None and distinct < cap:
        distinct += 1
        value = conn.execute(step, (value,)).fetchall()[0][0]
    n = max(rows, 1.0)
    if value is None or distinct == 0:
        estimate = float(max(distinct, 1))
    elif isinstance(value, int | float) and isinstance(start, int | float) and value != start:
        top = conn.execute(f"SELECT max({c}) FROM {t}").fetchall()[0][0]
        span = float(top) - float(start) if isinstance(top, int | float) else 0.0
        estimate = min(n, distinct * max(span / (float(value) - float(start)), 1.0))
    else:
        estimate = math.sqrt(n * distinct)
    per_key = [max(1.0, n / max(estimate, 1.0))]
    for _ in index.columns[1:]:
        per_key.append(max(1.0, per_key[-1] / 10))
    if index.unique:
        per_key[-1] = 1.0
    return " ".join(str(round(v)) for v in [n, *per_key])

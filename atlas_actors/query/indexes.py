"""The index advisor: candidate indexes, tried on a hypothetical copy of the schema.

It follows the design of SQLite's own advisor (``ext/expert``, the shell's ``.expert``):

1. The constraints and ORDER BY each table scan could use are captured through
   virtual tables (:mod:`~atlas_actors.query.capture`).
2. Candidates are built from them: the equality columns (most selective first), then
   each range column, or the ORDER BY columns, in the comparison's collation.
3. An in-memory database gets the schema (tables, views, existing indexes), the
   candidates, and ``sqlite_stat1`` rows: the live ones, measured stand-ins where the live
   database has none, and figures sampled from live data for each candidate. After
   ``ANALYZE sqlite_schema`` the planner believes them
   (https://www.sqlite.org/lang_analyze.html#fixed_results_of_analyze).
4. A candidate is kept only if the planner picks it there, and the plan with it alone
   costs less than the plan without it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import apsw

from atlas_actors.query._names import fold, quote_catalog_name
from atlas_actors.query._sqlinfo import SqlInfo
from atlas_actors.query.capture import Capture
from atlas_actors.query.cost import build_plan
from atlas_actors.query.plan import QueryPlan, parse_rows
from atlas_actors.query.sampling import Stat1Row, index_stat_from_sample, sample_rows
from atlas_actors.query.schema import Schema, TableInfo
from atlas_actors.query.stats import Collected, Stats

__all__ = [
    "Candidate",
    "Hypothetical",
    "IndexSuggestion",
    "Inputs",
    "candidate_stats",
    "candidates",
    "evaluate",
]

_INDEX_OPS = frozenset({"eq", "is"})


@dataclass(frozen=True)
class IndexSuggestion:
    """An index worth creating, with the evidence."""

    table: str
    """The table to index."""
    columns: tuple[str, ...]
    """The key columns, leftmost first."""
    create_sql: str
    """The statement that creates it (pass the suggestion to ``Optimizer.apply``)."""
    plan_before: QueryPlan
    """The plan of the query without the index (same statistics)."""
    plan_after: QueryPlan
    """The plan with the index: the planner chose it."""
    estimated_gain: float
    """Estimated VM steps saved per execution (``plan_before.cost - plan_after.cost``);
    ``advise()`` multiplies it by the number of calls."""
    name: str = ""
    """The index name in ``create_sql``."""
    queries: tuple[str, ...] = ()
    """The statements it speeds up (one for ``suggest_indexes``, several from ``advise``)."""
    keys: tuple[tuple[str, str, bool], ...] = ()
    """(column, collation, descending) for each key column."""

    @property
    def speedup(self) -> float:
        """Return the estimated cost ratio before/after (``inf`` when after is free)."""
        after = self.plan_after.cost
        return self.plan_before.cost / after if after > 0 else float("inf")


@dataclass(frozen=True)
class Candidate:
    """A hypothetical index."""

    table: str
    """The table's name as declared."""
    keys: tuple[tuple[str, str, bool], ...]
    """(column, collation, descending) for each key column."""

    @property
    def columns(self) -> tuple[str, ...]:
        """Return the key column names."""
        return tuple(k[0] for k in self.keys)

    def name(self, taken: Iterable[str]) -> str:
        """Return a readable index name not in ``taken``: ``tasks_status_due_idx``."""
        base = re.sub(r"[^A-Za-z0-9_]", "_", "_".join([self.table, *self.columns]))[:48]
        used = {fold(t) for t in taken}
        name = f"{base}_idx"
        if fold(name) in used:
            digest = hashlib.sha1(repr(self.keys).encode()).hexdigest()[:8]
            name = f"{base}_{digest}_idx"
        return name

    def create_sql(self, name: str, schema: Schema) -> str:
        """Return the CREATE INDEX statement (COLLATE only where it differs)."""
        table = schema.table(self.table)
        parts = []
        for column, collation, desc in self.keys:
            declared = table.column(column)
            part = quote_catalog_name(column)
            if declared is not None and declared.collation != collation:
                part += f" COLLATE {collation}"
            parts.append(part + (" DESC" if desc else ""))
        return (
            f"CREATE INDEX {quote_catalog_name(name)} ON "
            f"{quote_catalog_name(table.name)}({', '.join(parts)})"
        )


def candidates(
    capture: Capture, schema: Schema, rows_per_value: Callable[[str, str], float | None]
) -> list[Candidate]:
    """Build candidate indexes from captured scan requests (sqlite3expert's recipe).

    For each request: the equality columns; the equality columns plus each range column;
    the equality columns plus the ORDER BY columns. Columns already indexed as the rowid
    or a one-column primary key are left out, and candidates an existing index already
    provides (same leading keys) are dropped.
    """
    out: dict[tuple[str, tuple[tuple[str, str, bool], ...]], Candidate] = {}
    for req in capture.requests:
        table = schema.tables.get(fold(req.table))
        if table is None or table.kind != "table":
            continue
        skip = _primary_key_columns(table)
        joins = {col for col, term in capture.terms(table.name).items() if term.join}

        def selectivity(key: tuple[str, str, bool], t: TableInfo = table) -> float:
            found = rows_per_value(t.name, key[0])
            return found if found is not None else 1e18

        eq = _unique(
            (c.column, c.collation, False)
            for c in req.constraints
            if c.usable and c.op in _INDEX_OPS and fold(c.column) not in skip
        )
        eq.sort(key=selectivity)
        # Constant terms first serves both join orders (the prefix works alone); join
        # terms first can be better when the join drives the query: try both.
        const_first = [k for k in eq if fold(k[0]) not in joins]
        const_first += [k for k in eq if fold(k[0]) in joins]
        ranges = _unique(
            (c.column, c.collation, False)
            for c in req.constraints
            if c.usable and c.op == "range" and fold(c.column) not in skip
        )
        eq_names = {fold(k[0]) for k in eq}
        order: list[tuple[str, str, bool]] = []
        for column, desc in req.order_by:
            if fold(column) in skip:
                break  # the rowid ends every index key anyway
            declared = table.column(column)
            if fold(column) not in eq_names and declared is not None:
                order.append((column, declared.collation, desc))
        shapes = [eq, const_first] if eq else []
        shapes += [[*eq, r] for r in ranges if fold(r[0]) not in eq_names]
        if order:
            if len({desc for _c, _coll, desc in order}) == 1:
                # One direction for every key: an index can be walked backwards, so ASC
                # keys serve DESC too (and one index serves both).
                order = [(c, coll, False) for c, coll, _desc in order]
            shapes.append([*eq, *order])
        for keys in shapes:
            cand = Candidate(table.name, tuple(keys))
            if not _provided(table, cand, len(eq)):
                out.setdefault((fold(table.name), cand.keys), cand)
    return list(out.values())


def _unique(keys: Iterable[tuple[str, str, bool]]) -> list[tuple[str, str, bool]]:
    seen: dict[str, tuple[str, str, bool]] = {}
    for k in keys:
        seen.setdefault(fold(k[0]), k)
    return list(seen.values())


def _primary_key_columns(table: TableInfo) -> set[str]:
    pks = [c for c in table.columns if c.primary_key]
    out = {"rowid"} if table.has_rowid else set()
    if len(pks) == 1:
        out.add(fold(pks[0].name))
    return out


def _provided(table: TableInfo, cand: Candidate, n_eq: int) -> bool:
    """Return True if an existing index starts with the candidate's keys (eq in any order)."""
    want = [(fold(c), coll.upper()) for c, coll, _d in cand.keys]
    for index in table.indexes:
        if index.partial or len(index.columns) < len(want):
            continue
        have = [(fold(c.name or ""), c.collation) for c in index.columns[: len(want)]]
        if set(have[:n_eq]) == set(want[:n_eq]) and have[n_eq:] == want[n_eq:]:
            return True
    return False


class Hypothetical:
    """An in-memory database with the live schema, extra indexes and given statistics."""

    def __init__(
        self,
        schema: Schema,
        stat1: Sequence[Stat1Row],
        extra: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Create it; ``extra`` holds (index name, CREATE INDEX statement) pairs."""
        self.conn = apsw.Connection(":memory:")
        ddl = [t for t in schema.tables.values() if t.sql and not _internal(t.name)]
        for table in sorted(ddl, key=lambda t: t.kind != "table"):
            if table.kind in ("table", "view"):
                _try(self.conn, table.sql or "")
        for table in schema.tables.values():
            for sql in _index_sql(table):
                _try(self.conn, sql)
        for _name, sql in extra:
            self.conn.execute(sql)
        if stat1:
            # ANALYZE creates sqlite_stat1; rows written to it are read back by
            # "ANALYZE sqlite_schema" (https://www.sqlite.org/lang_analyze.html).
            self.conn.execute("ANALYZE")
            with self.conn:
                self.conn.execute("DELETE FROM sqlite_stat1")
                self.conn.executemany(
                    "INSERT INTO sqlite_stat1(tbl, idx, stat) VALUES (?, ?, ?)", stat1
                )
            self.conn.execute("ANALYZE sqlite_schema")
        self.schema = Schema.from_connection(self.conn)

    def explain(self, sql: str, bindings: object) -> list[tuple[object, ...]]:
        """Return the EXPLAIN QUERY PLAN rows of ``sql`` here."""
        cursor = self.conn.cursor()
        cursor.execute("EXPLAIN QUERY PLAN " + sql, bindings, can_cache=False)  # type: ignore[arg-type]
        return cursor.fetchall()

    def close(self) -> None:
        """Close the in-memory database."""
        self.conn.close()


def _internal(name: str) -> bool:
    return fold(name).startswith("sqlite_")


def _index_sql(table: TableInfo) -> list[str]:
    # UNIQUE / PRIMARY KEY indexes have no statement: the table's DDL makes them.
    return [i.sql for i in table.indexes if i.sql]


def _try(conn: apsw.Connection, sql: str) -> None:
    try:
        conn.execute(sql)
    except apsw.Error:  # a view or index over something not copied (virtual tables)
        return


def candidate_stats(
    conn: apsw.Connection, schema: Schema, cands: Sequence[Candidate], rows: Callable[[str], float]
) -> list[str]:
    """Return a stat1 text for each candidate, from one random sample per table."""
    wanted: dict[str, list[str]] = {}
    for cand in cands:
        cols = wanted.setdefault(fold(cand.table), [])
        cols.extend(c for c in cand.columns if fold(c) not in {fold(x) for x in cols})
    samples = {key: sample_rows(conn, schema.table(key), cols) for key, cols in wanted.items()}
    out = []
    for cand in cands:
        key = fold(cand.table)
        position = {fold(c): i for i, c in enumerate(wanted[key])}
        projected = [tuple(r[position[fold(c)]] for c in cand.columns) for r in samples[key]]
        out.append(index_stat_from_sample(projected, [k[1] for k in cand.keys], rows(key)))
    return out


@dataclass(frozen=True)
class Inputs:
    """What the advisor read from the live database for one statement."""

    sql: str
    """The statement."""
    bindings: Any
    """Its parameters (NULLs when none were given)."""
    schema: Schema
    """The live schema."""
    collected: Collected
    """Live statistics, with stand-ins where ANALYZE never ran."""
    capture: Capture
    """The constraints the planner offered each table."""
    info: SqlInfo
    """The statement's shape."""
    columns: int
    """Result columns."""


def evaluate(
    inputs: Inputs, cands: Sequence[Candidate], stats: Sequence[str]
) -> list[IndexSuggestion]:
    """Try ``cands`` (with their sampled ``stats``) and keep the set that pays off.

    The planner first sees every candidate at once; those it picks are then added one at
    a time, the most useful first, while each lowers the estimated cost. Indexes that only
    help together (both sides of a join) are kept together when no single one helps.
    """
    taken = [i.name for t in inputs.schema.tables.values() for i in t.indexes]
    taken += list(inputs.schema.tables)
    named: dict[str, tuple[Candidate, str, Stat1Row]] = {}
    for cand, stat in zip(cands, stats, strict=True):
        name = cand.name(taken)
        taken.append(name)
        named[name] = (cand, cand.create_sql(name, inputs.schema), (cand.table, name, stat))

    def plan(names: Iterable[str]) -> QueryPlan:
        return _plan(inputs, [(n, named[n][1], named[n][2]) for n in names])

    before = plan([])
    with_all = plan(named)
    pool = [n for n in with_all.used_indexes if n in named]
    chosen: list[str] = []
    best = before
    while pool:
        trials = [(plan([*chosen, n]), n) for n in pool]
        trial, name = min(trials, key=lambda t: t[0].cost)
        if trial.cost >= best.cost or name not in trial.used_indexes:
            break
        chosen.append(name)
        pool.remove(name)
        best = trial
    if not chosen and pool and with_all.cost < before.cost:
        chosen, best = pool, with_all
    out = []
    for name in chosen:
        without = plan([n for n in chosen if n != name]) if len(chosen) > 1 else before
        cand, sql, _row = named[name]
        out.append(
            IndexSuggestion(
                table=cand.table,
                columns=cand.columns,
                create_sql=sql,
                plan_before=before,
                plan_after=best,
                estimated_gain=max(without.cost - best.cost, 0.0),
                name=name,
                queries=(inputs.sql,),
                keys=cand.keys,
            )
        )
    return sorted(out, key=lambda s: -s.estimated_gain)


def _plan(inputs: Inputs, extra: Sequence[tuple[str, str, Stat1Row]]) -> QueryPlan:
    """Plan ``inputs.sql`` with ``extra`` indexes on a hypothetical copy.

    The copy's planner gets exactly the statistics the live planner will have once the
    indexes are applied: the live ``sqlite_stat1``, plus the new indexes' figures only if
    the database is analyzed (``apply`` then runs ANALYZE on them). So "the planner picks
    it" here means the live planner will pick it too. Costs use every measurement.
    """
    found = inputs.collected
    new_rows = [row for _n, _s, row in extra]
    planner_stat1 = [*found.stat1, *new_rows] if found.analyzed else []
    hypo = Hypothetical(inputs.schema, planner_stat1, [(n, s) for n, s, _r in extra])
    try:
        rows = hypo.explain(inputs.sql, inputs.bindings)
        stats = Stats.build(
            hypo.schema,
            [*found.stat1, *found.measured, *new_rows],
            inputs.collected.sizes,
            analyzed=inputs.collected.analyzed,
            column_rows=inputs.collected.column_rows,
        )
        return build_plan(
            inputs.sql,
            rows,
            parse_rows(rows),
            stats=stats,
            capture=inputs.capture,
            info=inputs.info,
            schema=hypo.schema,
            columns=inputs.columns,
        )
    finally:
        hypo.close()

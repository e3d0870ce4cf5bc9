"""The cost model: rows and work for each step of an EXPLAIN QUERY PLAN tree.

Work is counted in the unit SQLite's virtual machine counts, opcodes executed
(``SQLITE_STMTSTATUS_VM_STEP``, https://www.sqlite.org/c3ref/c_stmtstatus_counter.html),
so the model can be checked against measurements. Per row, a loop advances a cursor (1),
evaluates each remaining WHERE term (2: load the column, compare) and fetches the table
row behind a non-covering index entry (1); a search first positions its cursor (3); a
sorter and a result row cost about one step per column plus a few.

Rows come from :class:`~atlas_actors.query.stats.Stats`. Sibling loops nest: each inner
loop runs once per row of the loops outside it. Terms the index does not consume filter
rows with the textbook selectivities SQLite's planner itself assumes without STAT4
(https://www.sqlite.org/queryplanner-ng.html): 1/4 per range bound, 1/10 for an equality
on a column nothing is known about, the measured rows-per-value when statistics know it.
A LIMIT (and the implicit LIMIT 1 of a scalar subquery) stops a loop nest early unless a
sort or an aggregate has to see every row first. A search driven by ``c IN (...)`` runs
once per value (:func:`_in_values`); a GROUP BY makes one group per 10 rows, or one per
index key when it is served in the order of the outer loop's index (:func:`_groups`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from atlas_actors.query._names import fold
from atlas_actors.query._sqlinfo import UNKNOWN, SqlInfo
from atlas_actors.query.capture import Capture, Term
from atlas_actors.query.plan import (
    Access,
    PlanNames,
    PlanNode,
    QueryPlan,
    QueryStep,
    StepType,
    classify,
)
from atlas_actors.query.schema import Schema
from atlas_actors.query.stats import Stats

__all__ = ["build_plan", "estimate_cost"]

ROW, TERM, SEEK, LOOKUP, AGG_ROW = 1.0, 2.0, 3.0, 1.0, 3.0
ASSUMED_LIMIT = 20
"""Rows assumed for ``LIMIT ?`` when the parameter's value is not known."""
ASSUMED_IN_ROWS = 25.0
"""Values assumed for an ``IN (SELECT ...)`` whose subquery was not costed (SQLite's
planner assumes 25 as well: ``whereLoopAddBtreeIndex``)."""
GROUPS_PER_ROW = 0.1
"""Groups per input row when nothing tells: 10 rows per group."""
RECURSIVE_ROUNDS = 100.0
"""Times a recursive CTE's RECURSIVE STEP is assumed to run (once per row it queues; how
deep the recursion goes, nothing in the plan tells)."""
_LOOPS = ("scan", "search", "constant", "values", "or")


def estimate_cost(plan: QueryPlan) -> float:
    """Return the estimated work of ``plan``: the sum of its step costs (VM steps)."""
    return sum(step.cost for step in plan.steps)


@dataclass
class _Ctx:
    stats: Stats
    capture: Capture
    info: SqlInfo
    schema: Schema
    columns: int
    names: PlanNames = field(default_factory=PlanNames)
    steps: list[QueryStep] = field(default_factory=list)
    derived: dict[str, float] = field(default_factory=dict)
    used: list[str] = field(default_factory=list)
    once: int = 0  # > 0 while costing something that runs once whatever the outer loops do
    # rows of the LIST SUBQUERY lines of the nest being costed, for IN (SELECT ...) searches
    lists: list[float] = field(default_factory=list)

    def add(self, kind: StepType, table: str | None, cost: float, **details: Any) -> int:
        details.setdefault("recognized", True)
        if self.once:
            details["once"] = True
        self.steps.append(QueryStep(kind, table, cost, details))
        return len(self.steps) - 1

    def scale(self, start: int, factor: float) -> None:
        for i in range(start, len(self.steps)):
            s = self.steps[i]
            if not s.details.get("once"):
                self.steps[i] = QueryStep(s.type, s.table, s.cost * factor, s.details)

    def bump(self, index: int, extra: float) -> None:
        s = self.steps[index]
        self.steps[index] = QueryStep(s.type, s.table, s.cost + extra, s.details)


def build_plan(
    sql: str,
    rows: list[tuple[Any, ...]],
    roots: list[PlanNode],
    *,
    stats: Stats,
    capture: Capture,
    info: SqlInfo,
    schema: Schema,
    columns: int = 4,
) -> QueryPlan:
    """Estimate every step of the parsed plan ``roots`` and return the :class:`QueryPlan`."""
    ctx = _Ctx(stats, capture, info, schema, columns, _plan_names(schema, info))
    limit = ASSUMED_LIMIT if info.limit == UNKNOWN else info.limit
    out, last = _limited(
        roots, ctx, 0, limit=limit, single_row=info.single_row, group_by=info.group_by
    )
    if last is not None:
        ctx.bump(last, out * (1 + columns))  # building and returning the result rows
    return QueryPlan(
        steps=tuple(ctx.steps),
        estimated_rows=out,
        used_indexes=tuple(dict.fromkeys(ctx.used)),
        sql=sql,
        analyzed=stats.analyzed,
    )


def _plan_names(schema: Schema, info: SqlInfo) -> PlanNames:
    """The names this statement's plan lines may print (for names with blanks)."""
    tables = schema.tables.values()
    return PlanNames.of(
        [*(t.name for t in tables), *info.aliases],
        (i.name for t in tables for i in t.indexes),
        (c.name for t in tables for c in t.columns),
    )


@dataclass
class _Nest:
    rows: float
    blocking: bool = False
    last_loop: int | None = None


def _limited(
    nodes: list[PlanNode],
    ctx: _Ctx,
    depth: int,
    *,
    limit: int | None,
    single_row: bool,
    correlated: bool = False,
    group_by: tuple[str, ...] | None = None,
) -> tuple[float, int | None]:
    """Cost a nest that stops after ``limit`` rows unless a sort must see them all."""
    start = len(ctx.steps)
    nest = _nest(nodes, ctx, depth, correlated, group_by)
    rows = nest.rows
    if limit is not None and not (nest.blocking or single_row) and rows > 0:
        ctx.scale(start, min(1.0, max(limit, 1) / rows))
    if single_row:
        rows = 1.0
    if limit is not None:
        rows = min(rows, float(limit))
    return rows, nest.last_loop


def _nest(
    nodes: list[PlanNode],
    ctx: _Ctx,
    depth: int,
    correlated: bool = False,
    group_by: tuple[str, ...] | None = None,
) -> _Nest:
    """Cost sibling nodes: loops nest; sorts and subqueries act on the rows so far.

    In a correlated subquery the outer row is already there, so even the first loop can
    apply join terms (they join with the outer query). ``group_by``: the nest is the
    statement's, which groups by these columns (see :func:`_groups`).
    """
    result = _Nest(1.0)
    rows, position = 1.0, int(correlated)
    width = ctx.columns if depth == 0 else 2
    outer_lists, ctx.lists = ctx.lists, _list_rows(nodes, ctx, depth)
    outermost: tuple[Access, str | None] | None = None
    grouped = False
    for node in nodes:
        a = classify(node.detail, ctx.names)
        base: dict[str, Any] = {"detail": node.detail, "depth": depth}
        if a.kind in _LOOPS:
            loop = _loop(node, a, ctx, position)
            if outermost is None:
                outermost = (a, loop.table)
            first = position == int(correlated)
            kind: StepType = (
                "join" if not first else ("index" if a.kind in ("search", "or") else "scan")
            )
            cost, rows = rows * loop.cost, rows * loop.out
            result.last_loop = ctx.add(
                kind, loop.table, cost, **base, rows=rows, index=a.index, access=a.kind
            )
            position += 1
            for child in node.children:  # MULTI-INDEX OR branches, costed with the loop
                for leaf in child.children or [child]:
                    ctx.add(
                        "index",
                        loop.table,
                        0.0,
                        detail=leaf.detail,
                        depth=depth + 1,
                        rows=0.0,
                        index=classify(leaf.detail, ctx.names).index,
                    )
        elif a.kind == "sort":
            cost = rows * (2 + width + 0.1 * math.log2(max(rows, 2.0)))
            if a.what.startswith("GROUP BY"):
                grouped = True
                cost += rows * AGG_ROW
                rows = max(1.0, rows * GROUPS_PER_ROW)  # groups: nothing tells
            result.blocking = result.blocking or not a.what.startswith("RIGHT PART")
            ctx.add("sort", None, cost, **base, rows=rows, what=a.what)
        elif a.kind == "subquery":
            rows = _subquery(node, a, ctx, depth, rows)
        elif a.kind == "compound":
            ctx.add("subquery", None, 0.0, **base, rows=0.0)
            rows = _compound(node, ctx, depth)
        elif a.kind == "recursive":
            # SETUP gives the first rows; RECURSIVE STEP runs once per queued row
            ctx.add("subquery", None, 0.0, **base, rows=0.0)
            start = len(ctx.steps)
            part = _nest(node.children, ctx, depth + 1).rows
            if a.what == "RECURSIVE STEP":
                for i in range(start, len(ctx.steps)):  # (even in a run-once subquery)
                    s = ctx.steps[i]
                    ctx.steps[i] = QueryStep(s.type, s.table, s.cost * RECURSIVE_ROUNDS, s.details)
                rows += part * RECURSIVE_ROUNDS
            else:
                rows = part
        elif a.kind == "bloom":
            table = _resolve(ctx, a.name)
            size = ctx.stats.table(table).rows if table else rows
            ctx.add("filter", table, size * ROW, **base, rows=rows)
        elif a.kind == "in_probe":
            ctx.add("filter", None, rows * SEEK, **base, rows=rows)
        elif a.kind == "right_join":
            ctx.add("join", _resolve(ctx, a.name), 0.0, **base, rows=rows)
            # the right table is scanned again for its unmatched rows: assume 1 in 10
            rows += _nest(node.children, ctx, depth + 1).rows * 0.1
        else:
            ctx.add("filter", None, 0.0, **base, rows=rows, recognized=False)
    ctx.lists = outer_lists
    if group_by is not None and not grouped and result.last_loop is not None:
        # Grouped in index order, as the rows come (no temporary b-tree line).
        ctx.bump(result.last_loop, rows * AGG_ROW)
        rows = _groups(ctx, outermost, group_by, rows)
    result.rows = rows
    return result


def _groups(
    ctx: _Ctx, outermost: tuple[Access, str | None] | None, group_by: tuple[str, ...], rows: float
) -> float:
    """Groups out of ``rows`` for a GROUP BY served in the order of the outermost loop.

    The loop's index starts with the GROUP BY columns: one group per distinct key
    (statistics, or the index probes); the rowid order: one group per row; otherwise
    (expressions, a join's order): :data:`GROUPS_PER_ROW`.
    """
    if outermost is not None and all(group_by):
        a, table = outermost
        info = ctx.schema.tables.get(table) if table else None
        if info is not None and table is not None:
            wanted = set(group_by)
            if wanted <= {"rowid", "oid", "_rowid_"} | _rowid_aliases(ctx.schema, table):
                return rows
            index = next((i for i in info.indexes if a.index and i.name == a.index), None)
            lead = {fold(c.name or "") for c in index.columns[: len(group_by)]} if index else set()
            if index is not None and lead == wanted:
                per_key = ctx.stats.rows_per_key(table, index.name, len(group_by))
                keys = ctx.stats.table(table).rows / max(per_key, 1.0)
                return max(1.0, min(rows, keys))
    return max(1.0, rows * GROUPS_PER_ROW)


def _list_rows(nodes: list[PlanNode], ctx: _Ctx, depth: int) -> list[float]:
    """Rows of each uncorrelated ``LIST SUBQUERY`` among ``nodes``, estimated on scratch.

    They are printed after the loop their IN drives, so they are estimated first, on a
    scratch context (their steps are costed again where they stand).
    """
    out = []
    for node in nodes:
        a = classify(node.detail, ctx.names)
        if a.kind == "subquery" and a.what.startswith("LIST SUBQUERY"):
            scratch = _Ctx(ctx.stats, ctx.capture, ctx.info, ctx.schema, 2, ctx.names)
            rows, _ = _limited(node.children, scratch, depth + 1, limit=None, single_row=False)
            out.append(rows)
    return out


def _subquery(node: PlanNode, a: Access, ctx: _Ctx, depth: int, outer: float) -> float:
    """Cost a subquery; return the rows of the enclosing nest afterwards."""
    step = ctx.add(
        "subquery", a.name, 0.0, detail=node.detail, depth=depth, rows=0.0, correlated=a.correlated
    )
    start = len(ctx.steps)
    scalar = "SCALAR SUBQUERY" in a.what  # SQLite adds LIMIT 1 to a scalar subquery
    if a.name is not None and any(c.detail == "RECURSIVE STEP" for c in node.children):
        ctx.derived[fold(a.name)] = 1.0  # each round of the step reads one queued row
    ctx.once += not a.correlated
    try:
        rows, _last = _limited(
            node.children,
            ctx,
            depth + 1,
            limit=1 if scalar else None,
            single_row=False,
            correlated=a.correlated,
        )
    finally:
        ctx.once -= not a.correlated
    if a.correlated:  # runs again for every row that reaches it
        ctx.scale(start, max(outer, 1.0))
    if a.name is not None:
        ctx.derived[fold(a.name)] = rows
    keep = rows * 2.0 if ("MATERIALIZE" in a.what or "LIST" in a.what) else 0.0
    s = ctx.steps[step]
    ctx.steps[step] = QueryStep("subquery", a.name, keep, {**s.details, "rows": rows})
    return outer


def _compound(node: PlanNode, ctx: _Ctx, depth: int) -> float:
    """Cost the parts of a UNION / INTERSECT / EXCEPT; return the rows of all parts."""
    total = 0.0
    for part in node.children:
        if classify(part.detail, ctx.names).kind != "compound":
            total += _nest([part], ctx, depth + 1).rows
            continue
        ctx.add("subquery", None, 0.0, detail=part.detail, depth=depth + 1, rows=0.0)
        rows = _nest(part.children, ctx, depth + 2).rows
        if "USING TEMP B-TREE" in part.detail:  # this part's rows go through a b-tree
            ctx.add("sort", None, rows * 4, detail=part.detail, depth=depth + 1, rows=rows)
        total += rows
    return total


@dataclass
class _Loop:
    table: str | None
    visited: float
    out: float
    cost: float


def _resolve(ctx: _Ctx, name: str | None) -> str | None:
    if name is None:
        return None
    key = fold(name)
    return (ctx.info.aliases.get(key) or key) if key in ctx.info.aliases else key


def _loop(node: PlanNode, a: Access, ctx: _Ctx, position: int) -> _Loop:
    """Cost one pass of a loop: rows visited, rows out, work."""
    if a.kind == "constant":
        return _Loop(None, 1.0, 1.0, ROW)
    if a.kind == "values":
        n = float(a.what)
        return _Loop(None, n, n, n * ROW)
    if a.kind == "or":
        leaves = [leaf for c in node.children for leaf in (c.children or [c])]
        branches = [_loop(leaf, classify(leaf.detail, ctx.names), ctx, position) for leaf in leaves]
        visited = sum(b.visited for b in branches)
        table = next((b.table for b in branches if b.table), None)
        return _Loop(table, visited, visited, sum(b.cost for b in branches) + visited * ROW)
    table = _resolve(ctx, a.name) or ""
    known = table in ctx.schema.tables and table not in ctx.derived
    n = ctx.stats.table(table).rows if known else ctx.derived.get(table, 100.0)
    terms = ctx.capture.terms(table) if known else {}
    used = {fold(c) for c in a.eq} | {fold(c) for c, _b in a.ranges}
    if "rowid" in used and known:
        used |= _rowid_aliases(ctx.schema, table)
    seeks = 0.0
    if a.kind == "scan":
        visited = n
        lookup = LOOKUP if a.index and not a.covering else 0.0
    else:
        visited, seeks = _search(a, ctx, table, n, terms=terms, known=known)
        lookup = 0.0 if (a.covering or a.primary_key or not a.index) else LOOKUP
        if a.automatic:  # built once per statement: a scan plus one insert per row
            ctx.add("filter", table, n * 6.0, detail="(automatic index build)", depth=0, rows=n)
    if a.index and not a.automatic:
        ctx.used.append(a.index)
    # A join term cannot filter the outermost loop: its other side is not read yet.
    filters = [(c, t) for c, t in terms.items() if c not in used and (position or not t.join)]
    selectivity = 1.0
    for col, t in filters:
        selectivity *= _selectivity(t, n, ctx.stats.eq_rows(table, col) if known else None)
    out = visited * selectivity
    if a.exists:
        out = min(out, 1.0)
    if a.left_join:
        out = max(out, 1.0)
    # An IN (...) filter probes a temporary index for each row: a seek on top.
    probes = sum(1 for _c, t in filters if t.in_list)
    cost = seeks * SEEK + visited * (ROW + lookup + TERM * len(filters) + SEEK * probes)
    if ctx.info.count_only:
        cost = SEEK + visited / 100  # OP_Count reads b-tree pages, not rows
    return _Loop(table or None, visited, out, cost)


def _search(
    a: Access, ctx: _Ctx, table: str, n: float, *, terms: dict[str, Term], known: bool
) -> tuple[float, float]:
    """Return (rows visited, seeks) for one execution of a SEARCH."""
    if a.primary_key:
        rows = 1.0 if a.eq else n
    elif a.automatic:
        rows = min(n, ctx.stats.eq_rows(table, a.eq[0]) or 10.0) if a.eq else n
    elif a.index and {fold(c) for c in a.eq} & {"rowid"}:
        rows = 1.0  # the whole key, rowid included: one entry per lookup
    elif a.index:
        rows = ctx.stats.rows_per_key(table, a.index, len(a.eq))
    elif not a.eq and not a.ranges:
        # min()/max() print SEARCH: one seek on the rowid, else a full scan.
        wanted = {
            fold(c) for r in ctx.capture.requests if fold(r.table) == table for c, _d in r.order_by
        }
        rowid = {"rowid"} | (_rowid_aliases(ctx.schema, table) if known else set())
        rows = 1.0 if wanted and wanted <= rowid and not terms else n
        return rows, 1.0
    else:
        rows = n
    seeks = 1.0
    if a.skip and a.index:  # skip-scan: one seek per distinct value of each skipped column
        seeks = max(1.0, n / ctx.stats.rows_per_key(table, a.index, a.skip))
    seeks *= _in_values(a, ctx, table, terms=terms, known=known)
    for _col, bounds in a.ranges[:1]:
        rows *= 0.25 if bounds == 1 else 1 / 16
    return max(min(rows * seeks, n), 1.0 if n >= 1 else 0.0), seeks


def _in_values(a: Access, ctx: _Ctx, table: str, *, terms: dict[str, Term], known: bool) -> float:
    """Lookups a search makes for its ``IN`` columns: the product of their list sizes.

    SQLite prints ``c=?`` for an ``IN`` that drives a search, and runs the search once
    per value. A column counts when the statement has ``c IN (...)`` and the planner
    offered an IN constraint on it; the list's values are counted in the text, an
    ``IN (SELECT ...)`` takes the rows of the next ``LIST SUBQUERY`` of the nest (or
    :data:`ASSUMED_IN_ROWS`), rounded up to whole lookups as ANALYZE rounds its
    rows-per-key figures (so the count does not depend on how the subquery reads).
    """
    factor = 1.0
    for col in a.eq:
        names = {fold(col)}
        if fold(col) == "rowid" and known:
            names |= _rowid_aliases(ctx.schema, table)
        name = next((c for c in names if c in ctx.info.in_lists and terms.get(c)), None)
        term = terms.get(name) if name else None
        if name is None or term is None or not term.in_list:
            continue
        size = ctx.info.in_lists[name]
        if size is not None:
            values = float(size)
        else:
            values = math.ceil(ctx.lists.pop(0)) if ctx.lists else ASSUMED_IN_ROWS
        factor *= max(values, 1.0)
    return factor


def _selectivity(term: Term, n: float, eq_rows: float | None) -> float:
    if term.ops & {"eq", "is"}:
        # Unknown: a join key is assumed to match ~10 rows, a constant 1 row in 10.
        unknown = min(1.0, 10.0 / n) if term.join else 0.1
        s = eq_rows / n if eq_rows is not None else unknown
    elif "range" in term.ops:
        s = 0.25 if term.bounds <= 1 else 1 / 16
    elif "like" in term.ops:
        s = 0.25
    elif term.ops & {"isnull", "match"}:
        s = 0.1
    elif "function" in term.ops:
        s = 0.5
    else:  # <>, IS NOT, IS NOT NULL
        s = 0.9
    return max(s, 1.0 / max(n, 1.0))


def _rowid_aliases(schema: Schema, table: str) -> set[str]:
    """Return the INTEGER PRIMARY KEY column, which is the rowid under another name."""
    info = schema.tables.get(table)
    if info is None:
        return set()
    pks = [c for c in info.columns if c.primary_key]
    if len(pks) == 1 and pks[0].declared_type.upper() == "INTEGER" and info.has_rowid:
        return {fold(pks[0].name)}
    return set()

"""The optimizer facade: plan analysis, cost, index advice and rewrites for one database.

It owns no connection of the user's database. The runtime hands it ``read(fn)``, which
runs ``fn(conn)`` on a pooled read connection and returns the result, and optionally
``write(sql)``, which runs DDL through the single writer (used by :meth:`apply` only).
Its own scratch space (a private in-memory database mirroring the schema) is rebuilt when
``PRAGMA schema_version`` changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import apsw

from atlas_actors.errors import (
    AtlasError,
    ConfigError,
    QueryValidationError,
    built_params_error,
    built_type_error,
    wrap_sqlite_error,
)
from atlas_actors.future import sql_type_error
from atlas_actors.query._names import closest, fold, quote_catalog_name
from atlas_actors.query._sqlinfo import null_bindings, sql_info
from atlas_actors.query._tokens import is_word, nesting_depth, significant, tokenize
from atlas_actors.query.builder import Query
from atlas_actors.query.capture import Workbench
from atlas_actors.query.conditions import check_count
from atlas_actors.query.cost import build_plan, estimate_cost
from atlas_actors.query.indexes import (
    Candidate,
    IndexSuggestion,
    Inputs,
    candidate_stats,
    candidates,
    evaluate,
)
from atlas_actors.query.plan import QueryPlan, parse_rows
from atlas_actors.query.rewrite import RULES, LikeSemantics, RewriteResult, apply_rules
from atlas_actors.query.schema import Schema
from atlas_actors.query.stats import Stats, collect
from atlas_actors.query.workload import WorkloadRecorder

__all__ = ["Optimizer", "Params", "ReadFn", "WriteFn", "analyzable", "single_statement"]

T = TypeVar("T")
_log = logging.getLogger(__name__)
Params = Sequence[Any] | Mapping[str, Any]
"""A statement's parameters: a sequence for ``?`` placeholders, a mapping for ``:name``."""
ReadFn = Callable[[Callable[[apsw.Connection], Any]], Any]
"""``read(fn)`` runs ``fn(conn)`` on a read connection and returns its result."""
WriteFn = Callable[[str], None]
"""``write(sql)`` runs one DDL statement through the writer."""


MAX_NESTING = 200
"""Deepest nesting of parentheses the optimizer analyzes (its analyses recurse per level)."""


def single_statement(sql: str) -> str:
    """Return ``sql`` if it holds exactly one statement, else raise QueryValidationError.

    ``EXPLAIN QUERY PLAN a; b`` would explain ``a`` and then *run* ``b``, so a second
    statement is refused before anything reaches SQLite.
    """
    tokens = significant(tokenize(sql))
    while tokens and tokens[-1].text == ";":
        tokens.pop()
    if not tokens:
        raise QueryValidationError("empty statement")
    depth = nesting_depth(tokens)
    if depth > MAX_NESTING:
        raise QueryValidationError(
            f"the statement nests parentheses {depth} levels deep; the optimizer analyzes "
            f"at most {MAX_NESTING}: simplify it (flatten the expression, or use a CTE)"
        )
    if any(t.kind == "op" and t.text == ";" for t in tokens):
        raise QueryValidationError(
            "expected one statement, got several; analyze them one at a time"
        )
    return sql


_ANALYZABLE = ("SELECT", "VALUES", "WITH", "INSERT", "REPLACE", "UPDATE", "DELETE")


def analyzable(sql: str) -> str:
    """Return ``sql`` if it is one SELECT, INSERT, UPDATE or DELETE, else raise.

    Analysis prepares the statement on a pooled read connection, and preparing is not
    always harmless: SQLite applies flag pragmas such as ``PRAGMA case_sensitive_like
    = ON`` while preparing them, which would change every later read on that
    connection. So anything but a query or a DML statement is refused.
    """
    single_statement(sql)
    first = significant(tokenize(sql))[0]
    if not is_word(first, *_ANALYZABLE):
        raise QueryValidationError(
            f"the optimizer analyzes SELECT, INSERT, UPDATE and DELETE statements, not "
            f"{first.text.upper()} ones: preparing one can already change the read "
            "connection it runs on (PRAGMA case_sensitive_like = ON does); run statements "
            "that are meant to do something with db.execute()"
        )
    return sql


def check_rules(rules: object) -> tuple[str, ...] | None:
    """Return ``rules`` as a tuple of known rule names (None: all), else raise."""
    if rules is None:
        return None
    known = ", ".join(RULES)
    if isinstance(rules, str | bytes) or not isinstance(rules, Sequence | set | frozenset):
        raise QueryValidationError(
            f"rules= takes a list of rule names, e.g. rules=['or_to_in'], not {rules!r}; "
            f"known: {known}"
        )
    for name in rules:
        if not isinstance(name, str) or name not in RULES:  # (a list is unhashable)
            raise QueryValidationError(
                f"unknown rewrite rule {name!r}; known: {known}",
                suggestion=closest(str(name), RULES),
            )
    return tuple(rules)


def result_columns(conn: apsw.Connection, sql: str, bindings: Any) -> int:
    """Return how many columns ``sql`` returns, preparing it without running it.

    An exec tracer that returns False stops apsw right after the statement is prepared
    (https://rogerbinns.github.io/apsw/execution.html#tracing).
    """
    seen: list[int] = []

    def tracer(cursor: apsw.Cursor, _sql: str, _bindings: Any) -> bool:
        seen.append(len(cursor.get_description()))
        return False

    cursor = conn.cursor()
    cursor.exec_trace = tracer
    with contextlib.suppress(apsw.ExecTraceAbort):
        cursor.execute(sql, bindings)
    return seen[0] if seen else 0


class Optimizer:
    """Plan analysis, cost estimation, index advice and rewrites (see ``docs/query.md``)."""

    def __init__(
        self,
        read: ReadFn,
        write: WriteFn | None = None,
        workload: WorkloadRecorder | None = None,
    ) -> None:
        """Use ``read`` for every look at the database and ``write`` only in :meth:`apply`."""
        self._read = read
        self._write = write
        self.workload = workload
        """The :class:`WorkloadRecorder` :meth:`advise` reads, if any."""
        self._lock = threading.Lock()
        self._schema: Schema | None = None
        self._bench: Workbench | None = None
        self._probes: dict[tuple[str, str], tuple[float, str]] = {}

    # -- shared plumbing ---------------------------------------------------------------

    def _run(self, fn: Callable[[apsw.Connection], T], sql: str | None = None) -> T:
        try:
            result: T = self._read(fn)
        except Exception as exc:
            # apsw's errors, and its answers to bad parameters (TypeError, OverflowError,
            # a KeyError naming a :placeholder), become typed atlas errors.
            wrapped = wrap_sqlite_error(exc, sql)
            if wrapped is exc:
                raise
            raise wrapped from exc
        return result

    def _statement(self, sql: object, params: Params | None) -> tuple[str, Params | None]:
        """Return the SQL text and parameters to analyze: text, or a built query.

        Like ``db.query``, a :class:`Query` (built against the live schema, so unknown
        names fail with a suggestion) or anything with ``build() -> (sql, params)``.
        """
        if type(sql) is not str:
            if params is not None:
                raise built_params_error()
            if isinstance(sql, Query):
                sql, params = sql.build(schema=self.schema())
            else:
                build = getattr(sql, "build", None)
                if build is None:
                    raise sql_type_error(sql)
                built = build()
                try:
                    sql, params = built
                except (TypeError, ValueError):  # (not a pair)
                    raise built_type_error(sql, built) from None
            if type(sql) is not str:
                raise sql_type_error(sql)
        return analyzable(sql), params

    def _schema_on(self, conn: apsw.Connection) -> Schema:
        version = conn.execute("PRAGMA main.schema_version").fetchall()[0][0]
        temp_version = conn.execute("PRAGMA temp.schema_version").fetchall()[0][0]
        with self._lock:
            known = self._schema
            if known is None or (known.version, known.temp_version) != (version, temp_version):
                known = self._schema = Schema.from_connection(conn)
            return known

    def _workbench(self, schema: Schema) -> Workbench:
        with self._lock:
            if self._bench is None or self._bench.schema is not schema:
                if self._bench is not None:
                    self._bench.close()
                self._bench = Workbench(schema)
            return self._bench

    def close(self) -> None:
        """Release the scratch database (the optimizer stays usable: it is rebuilt)."""
        with self._lock:
            if self._bench is not None:
                self._bench.close()
                self._bench = None

    def schema(self) -> Schema:
        """Return the current schema snapshot (re-read when the schema version changed)."""
        return self._run(self._schema_on)

    # -- analysis ----------------------------------------------------------------------

    def analyze(self, sql: str | Query, params: Params | None = None) -> QueryPlan:
        """Return the plan SQLite chooses for ``sql``, with row and cost estimates.

        ``sql`` is one SELECT, INSERT, UPDATE or DELETE, as text or a built query.
        Parameters are optional: without them every parameter is NULL for planning, which
        is what SQLite plans with anyway unless STAT4 is compiled in.
        """
        sql, params = self._statement(sql, params)

        def job(conn: apsw.Connection) -> QueryPlan:
            schema = self._schema_on(conn)
            bindings = params if params is not None else null_bindings(sql)
            rows = conn.execute("EXPLAIN QUERY PLAN " + sql, bindings).fetchall()
            capture = self._workbench(schema).capture(sql, params)
            stats = Stats.from_connection(
                conn, schema, probes=self._probes, columns=capture.equality_columns()
            )
            columns = result_columns(conn, sql, bindings)
            return build_plan(
                sql,
                rows,
                parse_rows(rows),
                stats=stats,
                capture=capture,
                info=sql_info(sql, params),
                schema=schema,
                columns=columns,
            )

        return self._run(job, sql)

    def estimate_cost(self, plan: QueryPlan) -> float:
        """Return the estimated work of ``plan`` (VM steps; lower is cheaper)."""
        if not isinstance(plan, QueryPlan):
            raise QueryValidationError(
                f"estimate_cost() takes the QueryPlan analyze() returns, not {plan!r:.60}"
            )
        return estimate_cost(plan)

    # -- index advice ------------------------------------------------------------------

    def suggest_indexes(
        self, sql: str | Query, params: Params | None = None
    ) -> list[IndexSuggestion]:
        """Return indexes that would make ``sql`` cheaper, best first (see ``indexes.py``).

        Reads the live database (schema, statistics, a random sample of the candidate
        columns); creates nothing there. Pass a suggestion to :meth:`apply` to create it.
        """
        sql, params = self._statement(sql, params)

        def job(conn: apsw.Connection) -> tuple[Inputs, list[Any], list[str]]:
            schema = self._schema_on(conn)
            bindings = params if params is not None else null_bindings(sql)
            capture = self._workbench(schema).capture(sql, params)
            found = collect(conn, schema, probes=self._probes, columns=capture.equality_columns())
            known = [*found.stat1, *found.measured]
            live = Stats.build(schema, known, found.sizes, column_rows=found.column_rows)
            cands = candidates(capture, schema, live.eq_rows)
            stats = candidate_stats(conn, schema, cands, lambda t: live.table(t).rows)
            inputs = Inputs(
                sql,
                bindings,
                schema,
                found,
                capture,
                sql_info(sql, params),
                result_columns(conn, sql, bindings),
            )
            return inputs, cands, stats

        inputs, cands, stats = self._run(job, sql)
        if not cands:
            return []
        try:
            return evaluate(inputs, cands, stats)
        except Exception as exc:
            wrapped = wrap_sqlite_error(exc, sql)
            if wrapped is exc:
                raise
            raise wrapped from exc

    def apply(self, suggestion: IndexSuggestion, *, analyze: bool | None = None) -> None:
        """Create the suggested index through the writer. Never called automatically.

        ``analyze``: run ``ANALYZE`` on the new index so the planner has its figures.
        The default (None) does so only when the database already has statistics, so a
        database that was never analyzed is not left with statistics for one index only.
        """
        if self._write is None:
            raise ConfigError(
                "this Optimizer has no writer: construct it with write=... to apply indexes"
            )
        if not isinstance(suggestion, IndexSuggestion):
            raise QueryValidationError(
                f"apply() takes an IndexSuggestion from suggest_indexes() or advise(), "
                f"not {suggestion!r:.60}"
            )
        self._write(suggestion.create_sql)
        if analyze is None:
            analyze = suggestion.plan_before.analyzed
        if analyze:
            self._write(f"ANALYZE {quote_catalog_name(suggestion.name)}")

    def advise(self, top: int = 10) -> list[IndexSuggestion]:
        """Propose indexes for the ``top`` statements with the most total time.

        Reads the :class:`WorkloadRecorder` given as ``workload``; each statement's
        suggestions are weighted by its number of calls, equal indexes are merged, and an
        index that is a prefix of another one proposed for the same table is folded into
        the longer one. ``estimated_gain`` is then VM steps saved over all recorded calls.
        Nothing is created: pass the ones you want to :meth:`apply`.
        """
        top = check_count(top, "top")
        if self.workload is None:
            raise ConfigError("this Optimizer has no workload: pass workload=WorkloadRecorder()")
        merged: dict[tuple[str, tuple[tuple[str, str, bool], ...]], IndexSuggestion] = {}
        for stats in self.workload.top(top):
            try:
                found = self.suggest_indexes(stats.example)
            except AtlasError as exc:  # a statement that cannot be planned is skipped
                _log.info("advise: skipping %r: %s", stats.example, exc)
                continue
            for s in found:
                key = (fold(s.table), tuple((fold(c), coll, d) for c, coll, d in s.keys))
                merged[key] = _combine(merged.get(key), s, stats.calls)
        return _rename(_fold_prefixes(list(merged.values())), self.schema())

    # -- rewrites ----------------------------------------------------------------------

    def rewrite(
        self,
        sql: str | Query,
        params: Params | None = None,
        *,
        rules: Sequence[str] | None = None,
    ) -> RewriteResult:
        """Return an equivalent, cheaper statement after the named rules (``rewrite.py``).

        Every rule is sound on its own; the result carries both estimated costs. When
        the rewrite is not estimated cheaper, the original statement is returned with a
        warning naming the rules that would have applied (the estimate may be wrong for
        skewed data: measure before adopting a rewrite). ``rules`` limits the run to
        some rule names (an unknown name is refused).
        """
        sql, params = self._statement(sql, params)
        rules = check_rules(rules)

        def job(conn: apsw.Connection) -> tuple[Schema, LikeSemantics]:
            # LIKE's behaviour is a connection setting and a compile option: ask, do not
            # assume (https://www.sqlite.org/pragma.html#pragma_case_sensitive_like).
            ((insensitive, blobs),) = conn.execute("SELECT 'a' LIKE 'A', x'61' LIKE 'a'")
            ((encoding,),) = conn.execute("PRAGMA encoding")
            like = LikeSemantics(not insensitive, bool(blobs), str(encoding))
            return self._schema_on(conn), like

        schema, like = self._run(job, sql)
        out, applied, warnings = apply_rules(sql, schema, like, rules)
        if not applied:
            return RewriteResult(sql, (), tuple(warnings))
        before = estimate_cost(self.analyze(sql, params))
        after = estimate_cost(self.analyze(out, params))
        if after >= before:
            warnings.append(
                f"{', '.join(applied)} would rewrite it, but the result is not estimated "
                f"cheaper ({after:.0f} vs {before:.0f} VM steps): the original is kept"
            )
            return RewriteResult(sql, (), tuple(warnings), before, before)
        return RewriteResult(out, tuple(applied), tuple(warnings), before, after)


def _combine(old: IndexSuggestion | None, new: IndexSuggestion, calls: int) -> IndexSuggestion:
    """Add ``new`` (gain per call) to ``old`` (gain over all calls so far)."""
    gain = new.estimated_gain * calls
    if old is None:
        return dataclasses.replace(new, estimated_gain=gain)
    best = old if old.estimated_gain >= gain else new  # keep the plans of the biggest win
    return dataclasses.replace(
        best,
        estimated_gain=old.estimated_gain + gain,
        queries=(*old.queries, *new.queries),
        keys=old.keys,
    )


def _fold_prefixes(found: list[IndexSuggestion]) -> list[IndexSuggestion]:
    """Fold an index whose keys start another one's (same table) into the longer one."""
    found = sorted(found, key=lambda s: -len(s.keys))
    kept: list[IndexSuggestion] = []
    for s in found:
        for i, longer in enumerate(kept):
            same_table = fold(longer.table) == fold(s.table)
            if same_table and _lower(longer.keys[: len(s.keys)]) == _lower(s.keys):
                kept[i] = dataclasses.replace(
                    longer,
                    estimated_gain=longer.estimated_gain + s.estimated_gain,
                    queries=(*longer.queries, *s.queries),
                )
                break
        else:
            kept.append(s)
    return sorted(kept, key=lambda s: -s.estimated_gain)


def _lower(keys: tuple[tuple[str, str, bool], ...]) -> list[tuple[str, str, bool]]:
    return [(fold(c), coll, d) for c, coll, d in keys]


def _rename(found: list[IndexSuggestion], schema: Schema) -> list[IndexSuggestion]:
    """Give every suggestion a distinct name (two statements may have picked the same)."""
    taken = [i.name for t in schema.tables.values() for i in t.indexes] + list(schema.tables)
    out = []
    for s in found:
        named = s
        if fold(s.name) in {fold(t) for t in taken}:
            cand = Candidate(s.table, s.keys)
            name = cand.name(taken)
            named = dataclasses.replace(s, name=name, create_sql=cand.create_sql(name, schema))
        taken.append(named.name)
        out.append(named)
    return out

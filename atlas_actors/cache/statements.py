"""What a statement reads and writes, and whether its result may be cached.

SQLite calls the authorizer while it prepares a statement, once per table, column and
function the statement (and its views and triggers) touches
(https://sqlite.org/c3ref/set_authorizer.html). Preparing a statement in EXPLAIN mode
runs nothing, so :meth:`StatementAnalyses.analyze` learns a statement's tables and
functions without side effects; each storage keeps the answers per statement text.

A result is cacheable only when it is deterministic: every function it calls is known
to give the same answer for the same input and database content. Date and time
functions are not (``date('now')``), nor are ``random()`` or user functions. And only
when it reads ordinary tables and views of ``main`` (and the schema): no write the
cache is told of changes ``sqlite_sequence``, ``pragma_page_count`` or a virtual table.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import apsw

from atlas_actors.cache.dependencies import TableShape, Template, fold, table_shape, template
from atlas_actors.errors import wrap_sqlite_error
from atlas_actors.memo import TextMemo
from atlas_actors.query._sqlinfo import null_bindings

__all__ = ["DETERMINISTIC_FUNCTIONS", "StatementAnalyses", "StatementInfo", "analyze"]

_DETERMINISTIC_NAMES = """
    abs char coalesce concat concat_ws format glob hex ifnull iif if instr length like
    likelihood likely lower ltrim max min nullif octet_length printf quote replace round
    rtrim sign soundex substr substring trim typeof unhex unicode unlikely upper zeroblob
    avg count group_concat string_agg sum total median percentile
    row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value
    last_value nth_value
    acos acosh asin asinh atan atan2 atanh ceil ceiling cos cosh degrees exp floor ln log
    log10 log2 mod pi pow power radians sin sinh sqrt tan tanh trunc
    json jsonb json_array jsonb_array json_array_length json_error_position json_extract
    jsonb_extract json_insert jsonb_insert json_object jsonb_object json_patch
    jsonb_patch json_pretty json_remove jsonb_remove json_replace jsonb_replace json_set
    jsonb_set json_type json_valid json_quote json_group_array jsonb_group_array
    json_group_object jsonb_group_object json_each json_tree -> ->>
    """

DETERMINISTIC_FUNCTIONS = frozenset(_DETERMINISTIC_NAMES.split())
"""Built-in functions whose result depends only on their arguments."""

_VOLATILE_BUILTIN_NAMES = """
    random randomblob date time datetime julianday strftime unixepoch timediff
    current_date current_time current_timestamp changes total_changes last_insert_rowid
    sqlite_version sqlite_source_id sqlite_offset
    """
_VOLATILE_BUILTINS = frozenset(_VOLATILE_BUILTIN_NAMES.split())
"""Built-in functions that are not deterministic but cannot change the database."""

_PURE_TABLE_FUNCTIONS = frozenset(
    {"json_each", "json_tree", "jsonb_each", "jsonb_tree", "generate_series"}
)
"""Eponymous virtual tables whose rows depend only on their arguments."""

_WRITES = {apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE}
_PLAIN_ACTIONS = {
    apsw.SQLITE_READ,
    apsw.SQLITE_SELECT,
    apsw.SQLITE_FUNCTION,
    apsw.SQLITE_RECURSIVE,
    *_WRITES,
}
"""Authorizer actions of statements that only read and change rows."""
_SCHEMA_ACTIONS = {
    getattr(apsw, name)
    for name in dir(apsw)
    if name.startswith(("SQLITE_CREATE_", "SQLITE_DROP_", "SQLITE_ALTER_"))
}


@dataclass(frozen=True, slots=True)
class StatementInfo:
    """What one statement touches."""

    reads: frozenset[str]
    """Tables (and views) it reads."""
    writes: frozenset[str]
    """Tables it inserts into, updates or deletes from (triggers included)."""
    cacheable: bool
    """A read-only, deterministic statement on the main database."""
    schema: bool
    """It changes the schema (CREATE, DROP, ALTER)."""
    template: Template | None = None
    """Its equality terms, when the rows it depends on can be told (``dependencies.py``)."""
    plain: bool = False
    """It only reads and changes rows of ordinary tables, so it cannot change the schema
    (no DDL, PRAGMA, ANALYZE, ATTACH, transaction control, write to ``sqlite_*`` or
    function other than SQLite's built-in ones)."""


class _Capture:
    """An authorizer that records what a statement touches."""

    def __init__(self) -> None:
        self.reads: set[str] = set()
        self.writes: set[str] = set()
        self.deterministic = True
        self.schema = False
        self.other_database = False
        self.plain = True

    def __call__(self, action: int, arg1: Any, arg2: Any, dbname: Any, source: Any) -> int:
        if action == apsw.SQLITE_READ:
            self.reads.add(str(arg1))
            if dbname not in (None, "main"):
                self.other_database = True  # temp tables differ per connection
        elif action in _WRITES:
            self.writes.add(str(arg1))
            name = str(arg1).lower()
            if name.startswith("sqlite_") and name != "sqlite_sequence":
                self.plain = False  # sqlite_schema with writable_schema, sqlite_stat1
        elif action == apsw.SQLITE_FUNCTION:
            name = str(arg2).lower()
            if name not in DETERMINISTIC_FUNCTIONS:
                self.deterministic = False
                if name not in _VOLATILE_BUILTINS:
                    self.plain = False  # a user function may do anything, DDL included
        elif action in _SCHEMA_ACTIONS:
            self.schema = True
        elif action in (apsw.SQLITE_PRAGMA, apsw.SQLITE_ATTACH, apsw.SQLITE_TRANSACTION):
            self.deterministic = False
        if action not in _PLAIN_ACTIONS:
            self.plain = False
        return apsw.SQLITE_OK


def _invalidated_by_writes(connection: apsw.Connection, name: str) -> bool:
    """True if every change to what reading ``name`` returns is a write the cache sees.

    That is an ordinary table or view of main: the authorizer names the tables a
    statement writes (triggers included), and a schema change drops everything. Not
    so for the rest, which the authorizer reports as reads of ``main`` all the same:
    ``sqlite_sequence`` (SQLite updates it for AUTOINCREMENT inserts, unreported) and
    the other ``sqlite_*`` tables but the schema; eponymous virtual tables such as
    ``pragma_page_count`` (no statement writes them) but pure ones; virtual tables
    (an ``fts5vocab`` one changes with its FTS table, an external-content FTS table
    with its content table, a module's with whatever it reads) and their shadow tables
    (written by the module, unreported).
    """
    folded = fold(name)
    if folded.startswith("sqlite_"):
        return folded == "sqlite_master"  # (how the authorizer names sqlite_schema)
    # The PRAGMA statement, not the pragma_table_list function: a table of that name
    # would shadow the function (and so would one named json_each: main's own object
    # comes before the pure functions' names).
    quoted = name.replace('"', '""')
    found = connection.execute(f'PRAGMA main.table_list("{quoted}")').fetchall()
    if found:
        return str(found[0][2]) in ("table", "view")
    return folded in _PURE_TABLE_FUNCTIONS


_UNKNOWN = object()


class StatementAnalyses:
    """What :meth:`analyze` learnt about statements on one database, by statement text.

    One per storage: the same text means other tables on another database (its own
    triggers, views, column order), so two storages in one process never share one.
    """

    def __init__(self) -> None:
        self.known: TextMemo[StatementInfo] = TextMemo(20_000)
        """The analyses by statement text (cleared in place on schema changes): a hot
        path may look its statement up here before paying for the call."""
        self._shapes: dict[str, TableShape | None] = {}
        self._epoch = 0  # bumped by forget(): analyses begun before it are not kept
        self._lock = threading.Lock()

    def analyze(self, connection: apsw.Connection, sql: str, params: Any = None) -> StatementInfo:
        """Learn what ``sql`` touches by preparing it in EXPLAIN mode (cached per text).

        Must run in the thread that currently owns ``connection``. Raises what SQLite
        raises for an invalid statement (apsw's refusals of the text, typed).
        """
        info = self.known.get(sql)
        if info is not None:
            return info
        epoch = self._epoch  # a schema change meanwhile: use the answer once, keep nothing
        # EXPLAIN never checks the schema cookie: a connection that ran nothing since
        # the schema changed would describe the old one (a view's old tables), and a
        # write to its new ones would leave the result cached. A real read reloads it.
        connection.execute("SELECT 1 FROM sqlite_master LIMIT 0").fetchall()
        capture = _Capture()
        previous = connection.authorizer
        connection.authorizer = capture
        if params is None:
            params = null_bindings(sql)  # EXPLAIN needs every parameter bound; values don't matter
        try:
            # EXPLAIN QUERY PLAN (explain=2): preparing is what calls the authorizer, and
            # stepping through a script prepares each of its statements. Plain EXPLAIN's
            # rows carry a blob literal's bytes as text, which apsw cannot decode.
            connection.cursor().execute(sql, params, explain=2).fetchall()
        except ValueError as error:
            # apsw refused the text (a NUL, a lone surrogate) or a value: typed here, for
            # every caller (the cache's first read, a transaction's or the writer's).
            wrapped = wrap_sqlite_error(error, sql, params)
            if wrapped is error:
                raise
            raise wrapped from error
        finally:
            connection.authorizer = previous
        cacheable = (
            capture.deterministic
            and not capture.writes
            and not capture.schema
            and not capture.other_database
            and bool(capture.reads)
            and all(_invalidated_by_writes(connection, read) for read in capture.reads)
        )
        info = StatementInfo(
            reads=frozenset(capture.reads),
            writes=frozenset(capture.writes),
            cacheable=cacheable,
            schema=capture.schema,
            template=self._template(connection, sql, capture.reads) if cacheable else None,
            plain=capture.plain,
        )
        if capture.writes and connection.readonly("main"):
            # A reader (which will refuse to run it) sees none of the writer's TEMP
            # triggers: what it says the statement writes is not for the writer.
            return info
        with self._lock:
            if epoch == self._epoch:
                self.known.remember(sql, info)
        return info

    def _template(self, connection: apsw.Connection, sql: str, reads: set[str]) -> Template | None:
        """The statement's equality terms, if it reads one ordinary table by name."""
        if len(reads) != 1:
            return None
        (read,) = reads

        def shape_of(name: str) -> TableShape | None:
            if fold(name) != fold(read):
                return None  # the statement names something else (a view, say)
            known = self._shapes.get(read, _UNKNOWN)
            if known is not _UNKNOWN:
                return known  # type: ignore[return-value]
            epoch = self._epoch
            shape = table_shape(connection, read)
            with self._lock:
                if epoch == self._epoch:
                    self._shapes[read] = shape
            return shape

        return template(sql, shape_of)

    def forget(self) -> None:
        """Drop every cached analysis (after a schema change: views may have changed)."""
        with self._lock:
            self._epoch += 1
            self.known.clear()
            self._shapes.clear()


def analyze(connection: apsw.Connection, sql: str, params: Any = None) -> StatementInfo:
    """What ``sql`` touches on ``connection``'s database, analysed afresh (nothing kept).

    A storage keeps its own analyses (:class:`StatementAnalyses`); this is for one-off
    use. Must run in the thread that owns ``connection``.
    """
    return StatementAnalyses().analyze(connection, sql, params)

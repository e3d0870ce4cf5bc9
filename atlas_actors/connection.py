"""SQLite connections: opening and configuring them, running statements, their state.

One small function per connection setting, each saying why. :class:`TrackedConnection`
wraps an apsw connection with the state and metrics of the plan's §2 (State
Management); at any moment exactly one thread uses it (the actor that owns it, or the
caller it is lent to), so its counters need no lock.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import math
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any, NamedTuple

import apsw

from atlas_actors.errors import (
    TEXT_TYPES,
    OperationTimeout,
    ValidationError,
    params_type_error,
    shorten,
    wrap_sqlite_error,
)
from atlas_actors.memo import TextMemo
from atlas_actors.rows import Row, row_class_for
from atlas_actors.rows import _by_description as _row_classes

__all__ = [
    "Claim",
    "ConnectionInfo",
    "ConnectionMetrics",
    "ConnectionState",
    "Params",
    "TrackedConnection",
    "WriteResult",
    "no_connection",
    "open_connection",
    "raw_connection",
    "refuse_connection_settings",
    "refuse_transaction_control",
    "refuse_writer_settings",
]

Params = Sequence[Any] | dict[str, Any] | None
"""Statement parameters: a sequence for ``?`` placeholders, a dict for ``:name`` ones."""


class ConnectionState(enum.Enum):
    """Where a connection is in its life (``db.connections()`` shows each one's).

    A reader connection's life: CONNECTING → IDLE ⇄ ACTIVE → CLOSED, through RECYCLING
    when it is replaced, or FAILED if its reader crashed while a caller had it. The
    writer's: CONNECTING → IDLE ⇄ ACTIVE → CLOSED (a crash closes it at once; the role
    is CONNECTING again until its next incarnation has opened and checked its own).
    """

    CONNECTING = "connecting"
    """Being opened, not serving yet: a role starting (the storage opening, a reader
    added by ``pool.resize`` or growth), a crashed actor waiting out its restart
    backoff or reopening, a reader reopening after a connection fault (the whole
    backoff between its tries included). While no connection is open yet the role's
    :class:`ConnectionInfo` has ``id=None``. A connection just opened is CONNECTING
    too, until it serves: a reader's (its ``connect`` event, with its id) joins the
    pool a moment later; the writer's is checked first after a restart, its role
    shown CONNECTING with ``id=None`` until then."""
    IDLE = "idle"
    """Open and serving, and nobody uses it right now: a reader connection free to be
    claimed (a thread that adopted it claims it first, but adoption is no claim), the
    writer with no write transaction open."""
    ACTIVE = "active"
    """In use right now: a reader connection claimed, that is lent by
    ``pool.acquire()`` until released (a ``repeatable_read`` transaction's pinned
    reader, for the whole transaction), running a read of ``db.query`` (for that
    statement only), a batch of queued reads, or its reader's health check; the writer
    inside a write transaction (a group-commit batch from its BEGIN to its COMMIT, a
    transaction holding the writer lease). Observed without cost to the reads: a
    connection is in use exactly while its claim is held, which the read path takes
    anyway (the pool's maintenance also claims a free one for a moment at each
    tick)."""
    RECYCLING = "recycling"
    """Chosen by the pool to be replaced (``recycle_after_queries`` statements run, or
    ``recycle_after_seconds`` old: one in use when it comes of age is chosen when it is
    given back): lent no more, from that moment until its reader has closed it and its
    replacement has joined the pool (the ``recycle`` event). If no replacement can be
    opened (a connection fault), the role is CONNECTING instead."""
    FAILED = "failed"
    """Its reader crashed (a bug) while a caller had it: unusable, closed (CLOSED)
    when the caller gives it back. A connection its actor holds is closed at once."""
    CLOSED = "closed"
    """Closed: by the storage's close or failure, a recycle, a lost health check, a
    crash, a reader retired by a shrink. ``db.connections()`` shows CLOSED once the
    storage is closed or failed (a reader role that had no connection then with
    ``id=None``; a connection still lent then stays ACTIVE until given back); before,
    a closed connection leaves the list, its role CONNECTING or RECYCLING until the
    next one serves (or gone, retired)."""


@dataclass(frozen=True, slots=True)
class ConnectionMetrics:
    """Counters of one connection (the plan's ``ConnectionMetrics``)."""

    queries: int
    """Statements run on this connection."""
    errors: int
    """Statements that failed."""
    latency: float
    """Mean seconds per statement (0.0 before the first)."""
    bytes_transferred: int
    """Approximate bytes of parameters sent and values returned."""


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """One connection of the storage, or one role waiting for its connection.

    ``db.connections()`` returns one per connection: the writer's and every reader
    role's (a role whose connection is being replaced or reopened shows as RECYCLING
    or CONNECTING; a connection still lent after its reader crashed, stopped or was
    retired shows too, beside the role's next one).
    """

    id: str | None
    """The connection's id (``reader-0#7``: role and a number unique in the process), as
    in the lifecycle events; None for a role with no connection open (CONNECTING, or
    CLOSED once the storage closed)."""
    role: str
    """The actor role that owns it: ``writer`` or ``reader-N``."""
    state: ConnectionState
    """Where it is in its life (see :class:`ConnectionState`)."""
    metrics: ConnectionMetrics
    """Its counters (all zero for a role with no connection)."""
    last_used: float | None
    """``time.monotonic()`` when it was last seen used, as of the last maintenance tick
    (every ``liveness_interval``: reads are not timestamped one by one); its opening
    time if it has not been used since. None for a role with no connection."""


_NO_METRICS = ConnectionMetrics(queries=0, errors=0, latency=0.0, bytes_transferred=0)


def no_connection(role: str, state: ConnectionState) -> ConnectionInfo:
    """The :class:`ConnectionInfo` of ``role`` while it has no connection open."""
    return ConnectionInfo(id=None, role=role, state=state, metrics=_NO_METRICS, last_used=None)


class WriteResult(NamedTuple):
    """What a write did.

    A named tuple rather than a frozen dataclass: the writer makes one per statement,
    and a tuple is built in half the time.
    """

    rowcount: int
    """Rows inserted, updated or deleted by the statement(s) (``sqlite3_changes``)."""
    lastrowid: int | None
    """Rowid of the last row inserted by this write, or None if it inserted none.

    SQLite's last insert rowid after an INSERT that changed rows, as ``sqlite3`` and
    apsw report it. An INSERT into a WITHOUT ROWID table, or an UPSERT that took its
    DO UPDATE branch, leaves SQLite's value as it was: an earlier insert's, perhaps
    another caller's in the same batch. Use ``RETURNING`` there."""
    rows: tuple[Row, ...] = ()
    """Rows returned by the statement (``INSERT ... RETURNING``), if any."""


# -- connection settings, one function each ----------------------------------------------


def use_wal(connection: apsw.Connection) -> None:
    """Switch to WAL: readers never block the writer nor the writer readers.

    Persistent in the file, so only the writer sets it. https://sqlite.org/wal.html
    """
    mode = connection.pragma("journal_mode", "wal")
    if str(mode).lower() != "wal":
        raise wrap_sqlite_error(
            apsw.Error(f"journal_mode could not be set to WAL (got {mode!r})"),
            "PRAGMA journal_mode=wal",
        )


def set_synchronous(connection: apsw.Connection, level: str) -> None:
    """Set how often SQLite syncs (https://sqlite.org/pragma.html#pragma_synchronous).

    FULL syncs the WAL on every commit (durable acknowledgements); NORMAL only at
    checkpoints (a power loss may drop the last commits, a process crash never does).
    """
    connection.pragma("synchronous", level)


_busy_limits = threading.local()


@contextlib.contextmanager
def busy_wait_limit(seconds: float) -> Iterator[None]:
    """Within: this thread's busy handlers give up after ``seconds`` (or their deadline).

    For work that may wait on locks but should rather be tried again later (a RESTART
    checkpoint waiting for readers) than hold the writer for the whole busy timeout.
    """
    previous = getattr(_busy_limits, "seconds", None)
    _busy_limits.seconds = seconds
    try:
        yield
    finally:
        _busy_limits.seconds = previous


def set_busy_handler(
    connection: apsw.Connection,
    *,
    deadline: float,
    base: float,
    cap: float,
    on_wait: Callable[[float], None] | None = None,
) -> None:
    """Wait on locks held by *other processes*, with exponential backoff and jitter.

    Inside one process the single writer never meets SQLITE_BUSY; other processes on the
    same file do. SQLite calls the handler with the number of times it was called for
    this lock; sleeping ``base * 2**n`` (capped, with jitter so processes do not retry in
    lockstep) until ``deadline`` seconds have passed, then giving up, is SQLite's own busy
    timeout with a better schedule (https://sqlite.org/c3ref/busy_handler.html).
    Readers need it too: a read transaction can briefly meet a lock while another
    connection recovers the WAL.
    """
    started = [0.0]
    rng = random.Random()

    def handler(count: int) -> bool:
        now = time.monotonic()
        if count == 0:
            started[0] = now
        limit = getattr(_busy_limits, "seconds", None)  # (busy_wait_limit)
        allowed = deadline if limit is None else min(deadline, limit)
        remaining = allowed - (now - started[0])
        if remaining <= 0:
            return False
        # (2.0 ** 32 and up: past any cap; 2 ** 1024 overflowed a float, in SQLite's callback)
        delay = min(cap, base * 2.0 ** min(count, 32)) * (0.5 + rng.random())
        delay = min(delay, remaining)
        if on_wait is not None:
            on_wait(delay)
        time.sleep(delay)
        return True

    connection.set_busy_handler(handler)


def set_cache_size(connection: apsw.Connection, kib: int) -> None:
    """Size the page cache in KiB (negative ``cache_size`` means KiB, not pages)."""
    connection.pragma("cache_size", -kib)


def set_mmap_size(connection: apsw.Connection, size: int) -> None:
    """Read up to ``size`` bytes of the file through memory-mapped I/O (0: off)."""
    connection.pragma("mmap_size", size)


def enable_foreign_keys(connection: apsw.Connection) -> None:
    """Enforce FOREIGN KEY constraints (SQLite leaves them off by default)."""
    connection.pragma("foreign_keys", 1)


def set_query_only(connection: apsw.Connection) -> None:
    """Refuse writes on a reader connection: only the writer may change the database."""
    connection.pragma("query_only", 1)


def set_value_limit(connection: apsw.Connection, max_bytes: int) -> None:
    """Reject oversize strings and blobs with SQLITE_TOOBIG instead of storing them."""
    connection.limit(apsw.SQLITE_LIMIT_LENGTH, max_bytes)


def refuse_double_quoted_strings(connection: apsw.Connection) -> None:
    """Make ``"name"`` always an identifier: an unknown one is an error, not a string.

    SQLite by default treats a double-quoted name it cannot resolve as a string literal,
    so a misspelt column silently compares against its own name
    (https://sqlite.org/quirks.html#dblquote).
    """
    connection.config(apsw.SQLITE_DBCONFIG_DQS_DML, 0)
    connection.config(apsw.SQLITE_DBCONFIG_DQS_DDL, 0)


def set_journal_size_limit(connection: apsw.Connection, limit: int) -> None:
    """Shrink the WAL back to ``limit`` bytes whenever it restarts.

    So one burst of writes does not leave a huge file behind
    (https://sqlite.org/pragma.html#pragma_journal_size_limit).
    """
    connection.pragma("journal_size_limit", limit)


def set_max_page_count(connection: apsw.Connection, pages: int) -> None:
    """Bound the database size: past it, writes fail with SQLITE_FULL (a full disk)."""
    connection.pragma("max_page_count", pages)


_URI_MODES = ("ro", "rw", "rwc")
"""A ``file:`` URI's ``mode`` values, narrowest first (``memory`` is refused at open)."""


def uri_within_flags(path: str, flags: int) -> str:
    """``path`` with a ``file:`` URI's ``mode`` narrowed to what ``flags`` open.

    SQLite refuses an open whose URI asks for more than its flags ("access mode not
    allowed", https://sqlite.org/uri.html#urimode): given ``mode=rwc``, the storage's
    readers (opened read-only) and its wal-index watcher (read-write, not creating)
    could not open at all. The URI's other parameters are kept as they are.
    """
    if not path.startswith("file:") or "?" not in path:  # (lower case only)
        return path
    widest = 0 if flags & apsw.SQLITE_OPEN_READONLY else 2 if flags & apsw.SQLITE_OPEN_CREATE else 1
    head, _, rest = path.partition("?")
    query, hash_mark, fragment = rest.partition("#")
    parameters = query.split("&")
    for index, parameter in enumerate(parameters):
        name, _, value = parameter.partition("=")
        if urllib.parse.unquote(name) == "mode":
            mode = urllib.parse.unquote(value)
            if mode in _URI_MODES and _URI_MODES.index(mode) > widest:
                parameters[index] = f"{name}={_URI_MODES[widest]}"
    return f"{head}?{'&'.join(parameters)}{hash_mark}{fragment}"


def raw_connection(path: str, flags: int, vfs: str | None = None) -> apsw.Connection:
    """An apsw connection to ``path`` with ``flags``, through ``vfs`` if one is named.

    A ``file:`` URI's ``mode`` is narrowed to the flags (:func:`uri_within_flags`).
    """
    path = uri_within_flags(path, flags)
    if vfs:
        return apsw.Connection(path, flags=flags, vfs=vfs)
    return apsw.Connection(path, flags=flags)


def open_connection(
    path: str,
    *,
    writer: bool,
    synchronous: str = "FULL",
    busy_timeout: float = 5.0,
    busy_backoff: tuple[float, float] = (0.0005, 0.05),
    on_busy: Callable[[float], None] | None = None,
    cache_size_kib: int = 16_384,
    mmap_bytes: int = 0,
    max_value_bytes: int = 16 * 1024 * 1024,
    max_page_count: int = 0,
    journal_size_limit: int = 64 * 1024 * 1024,
    vfs: str | None = None,
) -> apsw.Connection:
    """Open and configure a connection to ``path`` for the writer or a reader.

    ``mmap_bytes`` applies to a reader only (the writer never maps the file).

    A reader is opened ``SQLITE_OPEN_READONLY``: SQLite itself refuses its writes, so
    no statement run through a reader (``PRAGMA query_only = 0`` first, an ``ATTACH``)
    can make it a second writer. Readers open after the writer has created the file
    and put it in WAL mode; a read-only connection still shares the ``-shm`` index.
    """
    if writer:
        flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | apsw.SQLITE_OPEN_URI
    else:
        flags = apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI
    try:
        connection = raw_connection(path, flags, vfs)
    except apsw.Error as error:
        raise wrap_sqlite_error(error, f"open {path}") from error
    try:
        set_busy_handler(
            connection,
            deadline=busy_timeout,
            base=busy_backoff[0],
            cap=busy_backoff[1],
            on_wait=on_busy,
        )
        if writer:
            use_wal(connection)
            set_synchronous(connection, synchronous)
            set_journal_size_limit(connection, journal_size_limit)
        else:
            set_query_only(connection)
            if mmap_bytes:
                set_mmap_size(connection, mmap_bytes)
        set_cache_size(connection, cache_size_kib)
        enable_foreign_keys(connection)
        set_value_limit(connection, max_value_bytes)
        refuse_double_quoted_strings(connection)
        if max_page_count:
            set_max_page_count(connection, max_page_count)
    except BaseException as error:
        # Closed now, not when it is collected: it holds the file open (and its VFS in
        # use), and a failed open is often retried.
        with contextlib.suppress(apsw.Error):
            connection.close()
        if isinstance(error, apsw.Error):
            raise wrap_sqlite_error(error, f"open {path}") from error
        raise
    return connection


# -- running statements ---------------------------------------------------------------------

_SAMPLE_ROWS = 16
SAMPLE_EVERY = 64
"""Once a statement is known, one run in this many is timed and stands for them all.

Each statement counts its own runs, so statements that alternate are each sampled
(the writer's runs of queued writes, ``write_units``, time one call in this many, at
random, which gives every statement the same chance too).
At 16 threads, timing one read in eight cost about a tenth of the reads/s (A/B in
``bench/reads.py``'s setting): every extra call is paid again at each GIL hand-over.
"""
_TIME_FIRST = 4
"""A statement's first runs are all timed (the workload must see rare slow ones)."""
_RECHECK_EVERY = 256
"""Cached column names are checked against SQLite's every this many uses (a multiple
of ``SAMPLE_EVERY``)."""
_MAX_COUNTED = 4096
"""Distinct statements a connection counts runs of (generated SQL stays bounded)."""
DEADLINE_CHECK_STEPS = 100_000
"""A reader's running statement checks its deadline every this many SQLite VM steps.

About a millisecond of a CPU-bound statement here (SQLite runs 100-150 million steps a
second on one core), so a read stops within a few milliseconds of its deadline. SQLite
counts the steps of each prepared statement over all its runs (apsw keeps statements
prepared), so a point read of ~10 steps reaches the check once in ~10,000 runs, and
then only compares two numbers. Fewer steps would check more often for nothing: every
check takes the GIL back from the other threads.
"""


def sample_weight(uses: int) -> int:
    """How many runs the run after ``uses`` earlier ones stands for if timed; 0: untimed.

    A timed run stands for itself and the untimed runs since the one timed before it,
    never for runs still to come: the weights add up to the runs made (up to the last
    timed one), so a statement run five times counts five, not five plus 63.
    """
    if uses <= _TIME_FIRST:
        return 1
    return SAMPLE_EVERY if (uses - _TIME_FIRST) % SAMPLE_EVERY == 0 else 0


def _timed_run(entry: list[Any]) -> int:
    """Time a run of a :meth:`TrackedConnection.write` entry: its weight, as ever.

    The weight is :func:`sample_weight`'s, and the entry counts down to the next timed
    run. A countdown, not a run count: an untimed run (nearly all of them) then costs one
    test and one store.
    """
    timed = entry[2] = entry[2] + 1
    if timed <= _TIME_FIRST:
        return 1  # the next run is timed too
    entry[1] = SAMPLE_EVERY - 1
    return 1 if timed == _TIME_FIRST + 1 else SAMPLE_EVERY  # (itself, and the runs since)


def recheck_due(uses: int) -> bool:
    """True when the run after ``uses`` earlier ones re-reads the column names."""
    return uses >= _TIME_FIRST and (uses - _TIME_FIRST) % _RECHECK_EVERY == _RECHECK_EVERY - 1


_PLAIN_WRITES = frozenset({"insert", "update", "delete", "replac", "create", "drop", "alter"})
"""Statement prefixes that return no rows (unless they say RETURNING)."""


def _returns_rows(sql: str) -> bool:
    """Guess whether ``sql`` may return rows (:func:`_write_kind` caches the answer)."""
    lowered = sql.lower()
    return "returning" in lowered or lowered.lstrip()[:6] not in _PLAIN_WRITES


def _inserts(sql: str) -> bool:
    """True for an INSERT or REPLACE (its lastrowid is SQLite's if it changed rows)."""
    return sql.lstrip()[:7].lower().startswith(("insert", "replace"))


def _lastrowid(sql: str, rowcount: int, before: int, after: int) -> int | None:
    """The rowid of the last row ``sql`` inserted, or None if it inserted none.

    An INSERT that inserted rows reports SQLite's last insert rowid even when it equals
    the previous one (``INSERT OR REPLACE`` of the same row twice). For other statements
    (say one starting with WITH) a rowid that moved is the only sign of an insert.
    """
    if _inserts(sql):
        return after if rowcount > 0 else None
    return after if after != before else None


_SINGLE_CHANGE = re.compile(r"\s*(?:UPDATE|DELETE)\b[^;]*;?\s*", re.IGNORECASE)
"""One UPDATE or DELETE (a semicolon anywhere but at the end: maybe a script)."""


def _inserts_nothing(sql: str) -> bool:
    """True for a single UPDATE or DELETE: its lastrowid is always None.

    Rows a trigger inserts leave SQLite's last insert rowid as it was once the trigger
    ends (https://sqlite.org/c3ref/last_insert_rowid.html), so only a script or a
    statement starting with WITH can move it.
    """
    return _SINGLE_CHANGE.fullmatch(sql) is not None


_RETURNS_ROWS = "returns rows"
_INSERTS = "inserts"
_INSERTS_NOTHING = "inserts nothing"
_OTHER = "other"
_CONTROL = "transaction control"
_write_kinds: TextMemo[str] = TextMemo(10_000)
_COMMENT_OPEN = r"/\*(?:[^*]|\*(?!/))*"
"""A ``/*`` comment up to its ``*/`` (not included): its body holds no ``*/``, so the
patterns built on it take linear time (a lazy body could run over the next comments)."""
_LEADING = rf"(?:\s|--[^\n]*(?:\n|$)|{_COMMENT_OPEN}\*/)*"
"""Whitespace and comments before a statement's first keyword."""
_CONTROL_STATEMENT = re.compile(
    _LEADING + r"(?:BEGIN|COMMIT|END|ROLLBACK|SAVEPOINT|RELEASE)\b", re.IGNORECASE | re.DOTALL
)


_QUOTED_OR_SEMICOLON = re.compile(
    r"(?:[:@#]|(?<![A-Za-z0-9_$\x80-\U0010ffff])\$)(?:[A-Za-z0-9_$\x80-\U0010ffff]|::)+(?:\([^\s)]*\)?)?"
    r"|'[^']*'|\"[^\"]*\"|\[[^\]]*\]|`[^`]*`|--[^\n]*|/\*.*?(?:\*/|\Z)|;",
    re.DOTALL,
)
"""A parameter, a quoted string or name, a comment, or a ``;`` (one pass finds the ``;``
outside them). A named parameter may end in a TCL-style ``(...)`` running to the next
``)`` or space, as SQLite's tokenizer reads it: ``$a('x) ; PRAGMA ...`` is one parameter,
then a second statement, not a string hiding it. A ``$`` after a letter, digit, ``_`` or
``$`` is part of a name (``a$b``), not a parameter."""


def _complete(text: str) -> bool:
    """``sqlite3_complete(text)``, reading named parameters as SQLite's tokenizer does.

    ``sqlite3_complete`` has a simpler tokenizer of its own, which does not know the
    TCL-style suffix of a parameter: it reads ``$a('x) ;`` as an unfinished string. So
    each parameter is ``?`` for it (only parameters outside strings and comments).
    """
    if "(" in text:
        text = _QUOTED_OR_SEMICOLON.sub(_parameter_as_mark, text)
    if "\x00" in text:  # (apsw refuses it, here and when run: SQLError there)
        text = text.replace("\x00", " ")
    return apsw.complete(text)


def _parameter_as_mark(found: re.Match[str]) -> str:
    text = found.group()
    return "?" if text[0] in ":@$#" else text


def _any_statement(sql: str, pattern: re.Pattern[str]) -> bool:
    """True if ``pattern`` matches at the start of any statement of ``sql``.

    A later statement counts where a ``;`` outside quotes and comments is followed by a
    match and SQLite says the text up to it is complete (``sqlite3_complete``: not inside
    a trigger's body, whose last statement is followed by ``END``). The text is scanned
    once; only those rare candidates are checked again.
    """
    if pattern.match(sql):
        return True
    if ";" not in sql:
        return False
    for found in _QUOTED_OR_SEMICOLON.finditer(sql):
        if found.group() == ";":
            end = found.end()
            if pattern.match(sql, end) and _complete(sql[:end]):
                return True
    return False


def _controls_a_transaction(sql: str) -> bool:
    """True if any statement of ``sql`` begins, ends or marks a transaction."""
    return _any_statement(sql, _CONTROL_STATEMENT)


_SCHEMA_STATEMENT = re.compile(_LEADING + r"(?:CREATE|DROP|ALTER)\b", re.IGNORECASE | re.DOTALL)
_schema_statements: TextMemo[bool] = TextMemo(10_000)


def changes_schema(sql: str) -> bool:
    """True if a statement of ``sql`` creates, drops or alters something (cached)."""
    found = _schema_statements.get(sql)
    if found is None:
        found = _any_statement(sql, _SCHEMA_STATEMENT)
        _schema_statements.remember(sql, found)
    return found


def _write_kind(sql: str) -> str:
    """Classify a writing statement for :meth:`TrackedConnection.write` (cached)."""
    if _controls_a_transaction(sql):
        kind = _CONTROL  # the writer owns the transaction: refused
    elif _returns_rows(sql):
        kind = _RETURNS_ROWS
    elif _inserts(sql):
        kind = _INSERTS
    elif _inserts_nothing(sql):
        kind = _INSERTS_NOTHING
    else:
        kind = _OTHER  # a rowid that moved is the only sign of an insert (a trigger's)
    _write_kinds.remember(sql, kind)
    return kind


def refuse_transaction_control(sql: str) -> None:
    """Raise ValidationError if ``sql`` begins, ends or marks a transaction itself.

    Through the writer such a statement would commit, roll back or leave open the
    writer's batch, which holds other callers' writes and the transaction savepoints.
    """
    if (_write_kinds.get(sql) or _write_kind(sql)) is _CONTROL:
        raise _control_error(sql)


def _control_error(sql: str) -> ValidationError:
    return ValidationError(
        f"{shorten(sql)!r} controls a transaction, and the writer owns the "
        "transaction its statements run in: use db.transaction() (and tx.commit(), "
        "tx.rollback(), tx.savepoint(name), tx.rollback_to(name), tx.release(name))"
    )


_READ_PRAGMAS = frozenset(
    {
        # the argument names what to read (https://www.sqlite.org/pragma.html)
        "table_info", "table_xinfo", "table_list", "index_info", "index_xinfo",
        "index_list", "foreign_key_list", "foreign_key_check", "integrity_check",
        "quick_check",
        # read-only: an argument is ignored
        "collation_list", "compile_options", "database_list", "function_list",
        "module_list", "pragma_list", "data_version", "freelist_count", "page_count",
    }
)  # fmt: skip
"""Pragmas that only read, even when given an argument."""
_ACTION_PRAGMAS = frozenset({"optimize", "shrink_memory", "wal_checkpoint", "incremental_vacuum"})
"""Pragmas that do something (ANALYZE, free memory, checkpoint, free pages) even bare."""
_GAP = _LEADING
_PRAGMA_NAME = (  # (SQLite takes a name in any quotes, single ones too)
    r'(?:"(?:[^"]|"")*"|\'(?:[^\']|\'\')*\'|\[[^\]]*\]|`(?:[^`]|``)*`'
    r"|[A-Za-z_\x80-\uffff][\w$\x80-\uffff]*)"
)
_EXPLAIN = rf"(?:EXPLAIN\b{_GAP}(?:QUERY\b{_GAP}PLAN\b{_GAP})?)?"
"""An EXPLAIN in front changes nothing: SQLite applies a flag pragma while preparing."""
_PRAGMA_STATEMENT = re.compile(
    rf"{_LEADING}{_EXPLAIN}PRAGMA\b{_GAP}(?P<first>{_PRAGMA_NAME})"
    rf"(?:{_GAP}\.{_GAP}(?P<second>{_PRAGMA_NAME}))?{_GAP}(?P<value>[=(])?",
    re.IGNORECASE | re.DOTALL,
)
_MAY_HOLD_PRAGMA = re.compile("pragma", re.IGNORECASE)
_WRITER_PRAGMAS = frozenset({"user_version", "application_id", "optimize", "incremental_vacuum"})
"""What the writer may run besides reads: values and upkeep of the database file, not
settings of its connection (``locking_mode = EXCLUSIVE`` or ``query_only = 1`` would make
every later write fail; ``synchronous`` is the storage's configuration)."""
_pragma_verdicts: TextMemo[str | None] = TextMemo(10_000)
_writer_pragma_verdicts: TextMemo[str | None] = TextMemo(10_000)


def refuse_connection_settings(sql: str) -> None:
    """Raise ValidationError unless ``sql`` is one statement that leaves a reader as it is.

    Read connections are pooled: ``PRAGMA case_sensitive_like = ON`` (SQLite applies it
    while preparing), ``PRAGMA foreign_keys = 0`` or ``PRAGMA query_only(0)`` on one
    would change what every later read on that connection does. Allowed: a bare pragma
    (``PRAGMA user_version`` reads the value) and the read-only pragmas whose argument
    names what to read (``PRAGMA table_info(t)``, ``index_list``, ``integrity_check``,
    ...). Refused: any other pragma given a value (``= v`` or ``(v)``, unknown names
    included: SQLite ignores those silently), and the pragmas that act even without one
    (``optimize``, ``shrink_memory``, ``wal_checkpoint``, ``incremental_vacuum``).
    Refused too: ``ATTACH`` and ``DETACH`` (an attached database stays on the pooled
    connection, for every later read), ``VACUUM`` (``VACUUM INTO`` makes a file even on
    a read-only connection), and a second statement (a read's rows have one set of
    columns: those of a second ``SELECT`` came back under the first one's names).
    Pure: it reads only the text (cached per text).
    """
    verdict = _pragma_verdicts.get(sql, "")
    if verdict == "":
        verdict = _reader_refusal(sql) if _MAY_CHANGE_A_READER.search(sql) else None
        _pragma_verdicts.remember(sql, verdict)
    if verdict is not None:
        raise ValidationError(verdict)


_MAY_CHANGE_A_READER = re.compile("pragma|attach|detach|vacuum|;", re.IGNORECASE)
"""A cheap first look: text without any of these is one statement that changes nothing."""
_READER_REFUSED = re.compile(_LEADING + r"(ATTACH|DETACH|VACUUM)\b", re.IGNORECASE | re.DOTALL)
_NOTHING_MORE = re.compile(rf"(?:\s|--[^\n]*(?:\n|$)|{_COMMENT_OPEN}(?:\*/|\Z)|;)*")
"""What may follow a read's statement: whitespace, comments (a last one unterminated, as
SQLite takes it) and empty statements."""


def _reader_refusal(sql: str) -> str | None:
    """Why ``sql`` may not run on a pooled reader (a message), or None."""
    starts = list(_statement_starts(sql))
    pragma = _setting_pragma(sql, starts=starts) if _MAY_HOLD_PRAGMA.search(sql) else None
    if pragma is not None:
        return _settings_message(sql, pragma)  # (the most telling, in any statement)
    if any(not _NOTHING_MORE.fullmatch(sql, start) for start in starts[1:]):
        return (
            f"{shorten(sql)!r} holds more than one statement, and a read runs one: its "
            "rows have one set of columns. Run each statement with its own call (a "
            "script that writes goes through db.execute())"
        )
    refused = _READER_REFUSED.match(sql)
    if refused is not None:
        verb = refused.group(1).upper()
        return (
            f"{shorten(sql)!r}: {verb} is not run on reader connections, which are "
            "shared: an attached database would stay on one for every later read, and "
            "VACUUM INTO made an empty file before it failed (readers cannot write). "
            "Read another database file with a storage of its own; copy this one with "
            "SQLite's backup API on a connection of your own (apsw Connection.backup)"
        )
    return None


def refuse_writer_settings(sql: str) -> None:
    """Raise ValidationError if ``sql`` holds a PRAGMA that changes the writer's connection.

    The writer's connection serves every caller: ``PRAGMA locking_mode = EXCLUSIVE`` or
    ``PRAGMA query_only = 1`` on it made every later write fail, and ``foreign_keys``
    or ``case_sensitive_like`` would change every caller's writes. Allowed besides what
    :func:`refuse_connection_settings` allows: the database's own values and upkeep
    (``user_version``, ``application_id``, ``optimize``, ``incremental_vacuum``).
    Checked where the writer first sees a statement's text (cached per text).
    """
    verdict = _writer_pragma_verdicts.get(sql, "")
    if verdict == "":
        verdict = (
            _setting_pragma(sql, allowed=_WRITER_PRAGMAS) if _MAY_HOLD_PRAGMA.search(sql) else None
        )
        _writer_pragma_verdicts.remember(sql, verdict)
    if verdict is not None:
        raise ValidationError(
            f"{shorten(sql)!r}: PRAGMA {verdict} changes the writer's connection, which "
            "every caller's writes share (locking_mode or query_only would stop them all). "
            "Set connection options through atlas.open()'s configuration; the database's "
            "own values (user_version, application_id) and upkeep (optimize, "
            "incremental_vacuum; db.wal.checkpoint()) may be run"
        )


def _settings_message(sql: str, verdict: str) -> str:
    return (
        f"{shorten(sql)!r}: PRAGMA {verdict} changes the connection or the database, "
        "and reads run on shared connections where every later read would see it. "
        "Run it through the writer with db.execute() (database values such as "
        "user_version, upkeep such as optimize; db.wal.checkpoint() for a checkpoint); "
        "connection options are set by atlas.open()'s configuration. Reads such as "
        "PRAGMA user_version or PRAGMA table_info(t) are fine"
    )


def _setting_pragma(
    sql: str, allowed: frozenset[str] = frozenset(), starts: Iterable[int] | None = None
) -> str | None:
    """The name of the first pragma in ``sql`` that is no plain read (nor ``allowed``).

    ``starts``: where its statements start, if known already (:func:`_statement_starts`).
    """
    for start in _statement_starts(sql) if starts is None else starts:
        found = _PRAGMA_STATEMENT.match(sql, start)
        if found is None:
            continue
        name = _pragma_name(found["second"] or found["first"])
        if name in allowed:
            continue
        if name in _ACTION_PRAGMAS or (found["value"] and name not in _READ_PRAGMAS):
            return name
    return None


def _pragma_name(token: str) -> str:
    if token[0] in "\"`'":
        return token[1:-1].replace(token[0] * 2, token[0]).lower()
    if token[0] == "[":
        return token[1:-1].lower()
    return token.lower()


def _statement_starts(sql: str) -> Iterator[int]:
    """Yield where each statement of ``sql`` starts (as :func:`_any_statement` splits)."""
    yield 0
    if ";" not in sql:
        return
    for found in _QUOTED_OR_SEMICOLON.finditer(sql):
        if found.group() == ";" and _complete(sql[: found.end()]):
            yield found.end()


_new_result = tuple.__new__
"""``_new_result(WriteResult, (rowcount, lastrowid, rows))``: a result built in C, without
the named tuple's Python-level ``__new__``."""

_NO_ROWID_RESULTS = tuple(WriteResult(rowcount, None) for rowcount in range(256))
"""The results of writes that inserted no row, by rowcount: shared, since a tuple is
immutable and building one costs as much as a statement's bookkeeping."""

_ids = itertools.count(1)


def _value_bytes(values: Iterable[Any]) -> int:
    total = 0
    for value in values:
        total += len(value) if isinstance(value, str | bytes) else 8
    return total


class Claim:
    """Held by whoever uses a connection: a lock made of a set holding one token while free.

    ``acquire``, ``release`` and ``locked`` work as on ``threading.Lock``. The hot read
    path claims and gives back with the set's own methods instead, ``token.pop()``
    (KeyError while held) and ``token.add(True)``: they run in C without releasing the
    GIL, so they are atomic. Claiming and giving back that way took 692 instructions,
    ``Lock.acquire(False)`` and ``release()`` 1390, most of it parsing ``acquire``'s
    arguments (callgrind, one thread, a loop of 10,000 pairs less an empty loop).
    Giving the token back twice leaves one token: a stray release never lets two in.
    """

    __slots__ = ("token",)

    def __init__(self) -> None:
        self.token: set[bool] = {True}
        """``{True}`` while free, empty while held (a plain set: its calls stay fast)."""

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Claim it; wait (polling) up to ``timeout`` seconds (-1: for ever) if asked to."""
        deadline = None
        while True:
            try:
                self.token.pop()
                return True
            except KeyError:
                if not blocking:
                    return False
            now = time.monotonic()
            if deadline is None:
                deadline = now + timeout if timeout >= 0 else float("inf")
            elif now >= deadline:
                return False
            time.sleep(0.001)  # only a stopping reader waits for its connection

    def release(self) -> None:
        """Give it back; RuntimeError if it was not held (as ``Lock.release``)."""
        if self.token:
            raise RuntimeError("release of a connection claim that is not held")
        self.token.add(True)

    def locked(self) -> bool:
        """True while someone holds it."""
        return not self.token


class TrackedConnection:
    """An apsw connection with its identity, state and metrics.

    Used by one thread at a time: the actor that owns it, or the caller it is lent to.
    """

    __slots__ = (
        "_anchored",
        "_bytes",
        "_deadline",
        "_default_timeout",
        "_errors",
        "_in_place",
        "_latency",
        "_pairs_weight",
        "_queries",
        "_read",
        "_runs",
        "_timed",
        "_untimed_pairs",
        "_written",
        "affinity",
        "connection",
        "created_at",
        "cursor",
        "id",
        "last_check",
        "last_latency",
        "last_used",
        "last_weight",
        "lock",
        "owner",
        "read_timeout",
        "recycle_at",
        "role",
        "seen_queries",
        "state",
        "usable",
    )

    def __init__(self, connection: apsw.Connection, role: str, owner: Any = None) -> None:
        self.connection = connection
        self.cursor = connection.cursor()
        self.id = f"{role}#{next(_ids)}"
        self.role = role
        self.owner = owner
        self.state = ConnectionState.CONNECTING
        """Stored state: CONNECTING until it serves (a reader's joins the pool, the
        writer's is checked), then IDLE; ACTIVE only while lent by ``pool.acquire()``
        (:meth:`current_state` also sees the other claims), RECYCLING, FAILED, CLOSED."""
        self.created_at = time.monotonic()
        self.last_used = self.created_at
        self._queries = 0
        self._timed = 0
        self._errors = 0
        self._latency = 0.0
        self._bytes = 0
        self._runs: TextMemo[int] = TextMemo(_MAX_COUNTED)
        """Runs of each statement through write_many(), which decide the ones sampled."""
        self._read: TextMemo[list[Any]] = TextMemo(_MAX_COUNTED)
        """``[None, untimed, timed]`` of each statement through query() (see write())."""
        self._written: TextMemo[list[Any]] = TextMemo(_MAX_COUNTED)
        """``[kind, untimed, timed]`` of each statement through write() (one lookup for
        all three; see ``_learn_write``)."""
        self._in_place: dict[str, bool] = {}
        """Statements :meth:`write_pairs` runs itself (INSERT, UPDATE or DELETE past
        their first runs through write()) → whether they insert."""
        self._untimed_pairs = 0
        """:meth:`write_pairs` calls left before the next timed one."""
        self._pairs_weight = 1
        """The calls the next timed one stands for: itself and those since the last."""
        self.last_latency = 0.0
        """Seconds the last statement took (0 when it was not timed)."""
        self.last_weight = 1
        """How many runs the last timed one stands for (1, or the sampling rate)."""
        self.lock = Claim()
        """Held by whoever uses the connection (a reader pool claim)."""
        self.usable = True
        """False once it must not be lent again (its reader failed, retired or closed)."""
        self.last_check = 0.0
        """``time.monotonic()`` of its last health check."""
        self.seen_queries = 0
        """``queries`` when the pool last looked (to tell when it was last used)."""
        self.affinity: int | None = None
        """The thread that adopted this connection as its own (reader pool)."""
        self.recycle_at: float = math.inf
        """``queries`` at which its release hands it to its reader to recycle (a reader
        pool's): the query budget, or 0 once it is old enough while in use."""
        self.read_timeout: float | None = None
        """Seconds the statement about to run may take (None: the storage's
        ``default_timeout``), enforced once :meth:`bound_statements` was called. The
        pool's hot read path sets it alone, one store per read: its deadline starts at
        the statement's first check, counted by ``_queries``. Others call :meth:`bound`."""
        self._anchored = -1
        """``_queries`` when the running statement's deadline was fixed (-1: not yet)."""
        self._deadline = math.inf
        """``time.monotonic()`` past which the running statement is interrupted."""
        self._default_timeout = math.inf
        """``read_timeout`` when that is None (set by :meth:`bound_statements`)."""

    @property
    def queries(self) -> int:
        """Statements run so far."""
        return self._queries

    def current_state(self) -> ConnectionState:
        """:attr:`state`, and ACTIVE for an IDLE one claimed right now (a reader's).

        The read path claims a connection for each read anyway, so this costs it
        nothing (a writer's connection is never claimed: its owner tells).
        """
        state = self.state
        if state is ConnectionState.IDLE and self.lock.locked():
            return ConnectionState.ACTIVE
        return state

    def info(self, state: ConnectionState | None = None) -> ConnectionInfo:
        """How ``db.connections()`` shows it (``state``: :meth:`current_state` if None)."""
        return ConnectionInfo(
            id=self.id,
            role=self.role,
            state=self.current_state() if state is None else state,
            metrics=self.metrics(),
            last_used=self.last_used,
        )

    def seen_at(self, now: float) -> None:
        """A maintenance tick at ``now``: ``last_used`` is now if it ran statements since."""
        queries = self._queries
        if queries != self.seen_queries:
            self.seen_queries = queries
            self.last_used = now

    # -- statement deadlines (reader connections) ----------------------------------------

    def bound_statements(self, default_timeout: float) -> None:
        """Interrupt a statement that runs past its deadline (``read_timeout`` seconds).

        Installs a progress handler, called by SQLite every ``DEADLINE_CHECK_STEPS`` VM
        steps of a running statement, that returns True past the deadline: SQLite then
        stops the statement with SQLITE_INTERRUPT, which :meth:`timed_out` turns into
        :class:`OperationTimeout`. An interrupted read changes nothing and leaves the
        connection as it was: no statement open, and a read transaction (a pinned
        snapshot) still open (SQLite rolls back only a writing statement).

        The deadline is fixed at the statement's first check, from ``read_timeout``,
        whenever ``_queries`` moved since the last one (a new counted statement) or
        :meth:`bound` was called; until then the running statement keeps it.
        """
        self._default_timeout = default_timeout
        tracked = self
        monotonic = time.monotonic

        def past_deadline() -> bool:
            now = monotonic()
            queries = tracked._queries
            if queries != tracked._anchored:  # a statement not checked before
                tracked._anchored = queries
                seconds = tracked.read_timeout
                tracked._deadline = now + (default_timeout if seconds is None else seconds)
            return now >= tracked._deadline

        self.connection.set_progress_handler(past_deadline, DEADLINE_CHECK_STEPS)

    def bound(self, seconds: float | None) -> None:
        """Give the statements run next ``seconds`` (None: ``default_timeout``), together.

        For every path but the pool's hot one, and for statements that do not count in
        ``queries`` (a health check, a rollback, a borrower's own): one deadline, from
        the first check, covers them until the next counted statement.
        """
        self.read_timeout = seconds
        self._anchored = -1

    def timed_out(self, error: BaseException, operation: str) -> OperationTimeout | None:
        """The :class:`OperationTimeout` to raise for ``error``, if it is this deadline's.

        That is an interrupt (SQLITE_INTERRUPT) once the running statement's deadline
        has passed. ``applied`` is False: the read was stopped and changed nothing, so
        it is safe to retry.
        """
        if not isinstance(error, apsw.InterruptError) or time.monotonic() < self._deadline:
            return None
        seconds = self.read_timeout
        return OperationTimeout(
            operation,
            self._default_timeout if seconds is None else seconds,
            applied=False,
            outcome="it was stopped at its deadline and changed nothing, so it is safe to retry",
        )

    def read_error(self, error: Exception, sql: str, params: Params = None) -> BaseException:
        """What a failed read raises: :meth:`timed_out`, else the wrapped SQLite error."""
        return self.timed_out(error, f"query {shorten(sql)!r}") or wrap_sqlite_error(
            error, sql, params
        )

    def timed_totals(self) -> tuple[float, int]:
        """(seconds, statements) of the timed runs: each stands for ``weight`` runs."""
        return self._latency, self._timed

    def metrics(self) -> ConnectionMetrics:
        """A snapshot of this connection's counters."""
        timed = self._timed
        return ConnectionMetrics(
            queries=self._queries,
            errors=self._errors,
            latency=self._latency / timed if timed else 0.0,
            bytes_transferred=self._bytes,
        )

    def query(self, sql: str, params: Params = None) -> list[Row]:
        """Run ``sql`` and return its rows; SQLite errors come back as AtlasError.

        Timed as :meth:`write` times a statement: its first runs, then one in
        ``SAMPLE_EVERY`` by its own count. ``last_latency`` is 0 for an untimed run,
        and ``last_weight`` says how many runs a timed one stands for.
        """
        if type(params) in TEXT_TYPES:  # (apsw binds one character per placeholder)
            self._errors += 1
            self._queries += 1  # (a failed statement is one run, as every other)
            raise params_type_error(params, sql)
        try:
            entry = self._read[sql]
        except KeyError:
            entry = [None, 0, 0]  # [unused, untimed, timed], as write()'s (_timed_run)
            self._read.remember(sql, entry)  # (past the bound, each run is timed)
        untimed = entry[1]
        if untimed:
            entry[1] = untimed - 1
            weight = 0
        else:
            weight = _timed_run(entry)
        started = perf_counter() if weight else 0.0
        cursor = self.cursor
        self._queries += 1
        try:
            cursor.execute(sql, params)
            try:
                description = cursor.get_description()
            except apsw.ExecutionCompleteError:
                rows: list[Row] = []  # finished without a row: nothing to name
            else:
                cls = _row_classes.get(description) or row_class_for(description)
                rows = list(map(cls, cursor.fetchall()))
        except Exception as error:
            self._errors += 1
            raise self.read_error(error, sql, params) from error
        if weight:
            self.count_timed(perf_counter() - started, weight, params, rows)
        else:
            self.last_latency = 0.0
        return rows

    def query_fast(self, sql: str, params: Params, names: TextMemo[list[Any]]) -> list[Row]:
        """:meth:`query` for the pool's hot path: row classes cached, runs sampled.

        ``names`` maps statement text to ``[row class or None, uses, width]`` (width:
        the class's number of columns, -1 without a class), shared by the pool's
        connections, emptied on every schema change the storage sees, and bounded
        (``_MAX_COUNTED`` texts: past it, a new text is described on every run). Asking SQLite
        for the column names costs several calls into it per read (each one a chance
        for another thread to take the GIL), so the class is reused and checked
        against SQLite's names every ``_RECHECK_EVERY`` uses, and at once if the width
        of a row differs from it. ``uses`` also decides which runs are timed
        (:func:`sample_weight`). ``last_latency`` is set on timed runs only (0 else).
        """
        if type(params) in TEXT_TYPES:  # (apsw binds one character per placeholder)
            self._errors += 1
            self._queries += 1  # (a failed statement is one run, as every other)
            raise params_type_error(params, sql)
        self._queries += 1
        entry = names.get(sql)
        uses = 0 if entry is None else entry[1]
        weight = self.last_weight = sample_weight(uses)
        started = perf_counter() if weight else 0.0
        cursor = self.cursor
        try:
            cursor.execute(sql, params)
            if entry is not None and not recheck_due(uses):
                entry[1] = uses + 1
                raw = cursor.fetchall()
                if raw and len(raw[0]) != entry[2]:
                    names.forget(sql)  # unknown or stale: learn them (other threads may too)
                    self._queries -= 1
                    return self.query_fast(sql, params, names)
                rows: list[Row] = list(map(entry[0], raw)) if raw else []
            else:
                # Learned for a known text, or a new one while the bound leaves room (an
                # application that formats values into its SQL makes a text per read).
                learn = entry is not None or names.has_room(sql)
                try:
                    description = cursor.get_description()
                except apsw.ExecutionCompleteError:
                    rows = []  # finished without a row: nothing to name
                    if learn:
                        names.remember(sql, [None, uses + 1, -1])
                else:
                    cls = _row_classes.get(description) or row_class_for(description)
                    if learn:
                        names.remember(sql, [cls, uses + 1, len(cls._fields)])
                    rows = list(map(cls, cursor.fetchall()))
        except Exception as error:
            self._errors += 1
            raise self.read_error(error, sql, params) from error
        if weight:
            self.last_latency = latency = perf_counter() - started
            self.count_timed(latency, weight, params, rows)
        else:
            self.last_latency = 0.0
        return rows

    def count_timed(self, latency: float, weight: int, params: Params, rows: list[Row]) -> None:
        """Account a timed run (its latency and bytes) standing for ``weight`` runs."""
        self.last_latency = latency
        self.last_weight = weight
        self._latency += latency * weight  # a mean over runs, not over samples
        self._timed += weight
        self._sample_bytes(params, rows, weight)

    def count_error(self) -> None:
        """Account a statement that failed."""
        self._errors += 1

    def write(self, sql: str, params: Params = None) -> WriteResult:
        """Run a writing statement and report what it changed (writer only)."""
        # The writer's hottest function (once per statement): helpers inlined, the
        # statement's kind classified once, the result built without the named
        # tuple's Python-level __new__.
        if type(params) in TEXT_TYPES:  # (apsw binds one character per placeholder)
            self._errors += 1
            self._queries += 1  # (a failed statement is one run, as every other)
            raise params_type_error(params, sql)
        connection = self.connection
        try:
            entry = self._written[sql]
        except KeyError:
            entry = self._learn_write(sql)
        kind = entry[0]
        untimed = entry[1]  # (0 for statements returning rows: they are always timed)
        if untimed and kind is not _OTHER:
            # An INSERT, UPDATE or DELETE between timed runs: what nearly every run of
            # a known statement is, so it goes first, straight to SQLite. A
            # transaction's statements on the lent connection all come here, while
            # the transactions behind it wait.
            entry[1] = untimed - 1
            self._queries += 1
            try:
                self.cursor.execute(sql, params)
            except Exception as error:
                self._errors += 1
                raise wrap_sqlite_error(error, sql, params) from error
            rowcount = connection.changes()
            if kind is _INSERTS and rowcount > 0:
                return _new_result(WriteResult, (rowcount, connection.last_insert_rowid(), ()))
            if rowcount < 256:
                return _NO_ROWID_RESULTS[rowcount]
            return _new_result(WriteResult, (rowcount, None, ()))
        if kind is _RETURNS_ROWS:
            before = connection.last_insert_rowid()
            rows = self.query(sql, params)
            rowcount = connection.changes()
            after = connection.last_insert_rowid()
            return _new_result(
                WriteResult, (rowcount, _lastrowid(sql, rowcount, before, after), tuple(rows))
            )
        before = connection.last_insert_rowid() if kind is _OTHER else 0
        self._queries += 1
        if untimed:  # (a statement of kind _OTHER between timed runs)
            entry[1] = untimed - 1
            weight = 0
        else:
            weight = _timed_run(entry)
            if entry[2] == _TIME_FIRST and (kind is _INSERTS or kind is _INSERTS_NOTHING):
                self._in_place[sql] = kind is _INSERTS  # past its first runs: see write_pairs
        started = perf_counter() if weight else 0.0
        try:
            self.cursor.execute(sql, params)
        except Exception as error:
            self._errors += 1
            raise wrap_sqlite_error(error, sql, params) from error
        if weight:
            self._timed_write(perf_counter() - started, params, weight)
        rowcount = connection.changes()
        if kind is _INSERTS:
            if rowcount > 0:
                return _new_result(WriteResult, (rowcount, connection.last_insert_rowid(), ()))
        elif kind is _OTHER:
            after = connection.last_insert_rowid()
            if after != before:
                return _new_result(WriteResult, (rowcount, after, ()))
        if rowcount < 256:
            return _NO_ROWID_RESULTS[rowcount]
        return _new_result(WriteResult, (rowcount, None, ()))

    def write_pairs(self, statements: Iterable[tuple[str, Params]]) -> list[WriteResult]:
        """:meth:`write` each (sql, params) pair in turn: a ``write_all``'s statements."""
        done: list[list[WriteResult]] = []
        self.write_units((statements,), done)
        return done[0]

    def write_units(
        self,
        units: Iterable[Iterable[tuple[str, Params]]],
        done: list[list[WriteResult]],
    ) -> None:
        """:meth:`write_pairs` for each unit in turn, its results appended to ``done``.

        If a statement fails, its error propagates and ``done`` holds the results of
        the units before its own.

        The writer's hottest loop once the commit is cheap, and its Python is paid
        about three times over there (each SQLite call hands the GIL to the waiting
        callers, and the writer waits to get it back). So the writer runs the writes
        it finds queued together, through one call, and a known INSERT, UPDATE or
        DELETE past its first runs (in ``_in_place``) is :meth:`write` written out, with
        the connection's methods looked up once per call; anything else goes to it.
        Those are timed by the call, not each on its own count: one call in
        ``SAMPLE_EVERY`` on average, at random, so that every statement has the same
        chance whatever the pattern of calls.
        """
        untimed = self._untimed_pairs
        if untimed:
            self._untimed_pairs = untimed - 1
            weight = 0
        else:
            weight = self._pairs_weight  # itself and the untimed calls since the last timed
            gap = self._untimed_pairs = random.randrange(2 * SAMPLE_EVERY - 1)  # mean gap 64
            self._pairs_weight = gap + 1
        in_place = self._in_place.get
        execute = self.cursor.execute
        connection = self.connection
        ran = 0  # statements of the units done (run here or by write())
        passed_on = 0  # those of them run by write(), which counts them itself
        results: list[WriteResult] = []
        try:
            for unit in units:
                results = []
                append = results.append
                for sql, params in unit:
                    inserts = in_place(sql)
                    if inserts is None:
                        append(self.write(sql, params))
                        passed_on += 1
                        continue
                    started = perf_counter() if weight else 0.0
                    try:
                        execute(sql, params)
                    except Exception as error:
                        self._errors += 1
                        self._queries += 1
                        raise wrap_sqlite_error(error, sql, params) from error
                    if weight:
                        self._timed_write(perf_counter() - started, params, weight)
                    rowcount = connection.changes()
                    if inserts and rowcount > 0:
                        rowid = connection.last_insert_rowid()
                        append(_new_result(WriteResult, (rowcount, rowid, ())))
                    elif rowcount < 256:
                        append(_NO_ROWID_RESULTS[rowcount])
                    else:
                        append(_new_result(WriteResult, (rowcount, None, ())))
                done.append(results)
                ran += len(results)
                results = []
        finally:
            # Those run here, failing or not (a failing unit's first statements too).
            self._queries += ran + len(results) - passed_on

    def _timed_write(self, latency: float, params: Params, weight: int) -> None:
        """Account a timed write that took ``latency`` seconds (standing for ``weight`` runs)."""
        self.last_latency = latency
        self._latency += latency * weight
        self._timed += weight
        self._sample_bytes(params, (), weight)

    def _learn_write(self, sql: str) -> list[Any]:
        """A new entry for a statement new to :meth:`write`; refuses transaction control.

        ``[kind, untimed, timed]``: the statement's kind, the runs left before the next
        timed one, and the timed runs so far (:func:`_timed_run`).
        """
        kind = _write_kinds.get(sql) or _write_kind(sql)
        if kind is _CONTROL:
            raise _control_error(sql)
        refuse_writer_settings(sql)
        entry: list[Any] = [kind, 0, 0]
        self._written.remember(sql, entry)  # (past the bound, each run is timed)
        return entry

    def write_many(self, sql: str, seq_of_params: Iterable[Params]) -> WriteResult:
        """Run one statement once per parameter set (writer only)."""
        refuse_transaction_control(sql)
        refuse_writer_settings(sql)
        connection = self.connection
        changes = connection.changes
        rowcount = 0

        def each_set() -> Iterator[Params]:
            # executemany asks for a set once the one before has finished (its rows
            # drained), so sqlite3_changes() is then that set's count: the rows its
            # statement changed, not those its triggers and foreign-key actions did
            # (total_changes() counts those too).
            nonlocal rowcount
            for params in seq_of_params:
                yield params
                rowcount += changes()

        started = time.perf_counter()
        before_rowid = connection.last_insert_rowid()
        try:
            self.cursor.executemany(sql, each_set())  # type: ignore[arg-type]
            # Drain rows of e.g. INSERT ... RETURNING so every set runs.
            for _ in self.cursor:
                pass
        except Exception as error:
            self._errors += 1
            self._queries += 1
            raise wrap_sqlite_error(error, sql) from error
        self._account(sql, started, None, ())
        return WriteResult(
            rowcount=rowcount,
            lastrowid=_lastrowid(sql, rowcount, before_rowid, connection.last_insert_rowid()),
        )

    def _account(
        self, sql: str, started: float, params: Params, rows: Sequence[Row] | tuple[()]
    ) -> None:
        # Timed on every run; bytes sampled by the statement's own runs (as in write()),
        # so statements that alternate are each measured.
        self.last_latency = latency = perf_counter() - started
        self._latency += latency
        self._timed += 1
        self._queries += 1
        weight = self._sample_weight(sql)
        if weight:
            self._sample_bytes(params, rows, weight)

    def _sample_weight(self, sql: str) -> int:
        """Count a run of ``sql``; :func:`sample_weight` of the runs before it."""
        counted = self._runs
        uses = counted.get(sql, 0)
        counted.remember(sql, uses + 1)
        return sample_weight(uses)

    def _sample_bytes(self, params: Params, rows: Sequence[Row] | tuple[()], weight: int) -> None:
        # Bytes are measured on a sample of statements standing for ``weight`` runs each
        # (and on a sample of the rows of large results), then extrapolated: metrics must
        # cost far less than the query they describe.
        sent = 0
        if params:
            sent = _value_bytes(params.values() if isinstance(params, dict) else params)
        received = 0
        if rows:
            sample = rows[:_SAMPLE_ROWS]
            received = sum(_value_bytes(row) for row in sample)
            if len(rows) > _SAMPLE_ROWS:
                received = received * len(rows) // len(sample)
        self._bytes += (sent + received) * weight

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        self.state = ConnectionState.CLOSED
        self.usable = False
        with contextlib.suppress(apsw.Error):  # closing a broken connection still frees it
            self.connection.close(True)

    def __repr__(self) -> str:
        return f"<TrackedConnection {self.id} {self.state.value}>"

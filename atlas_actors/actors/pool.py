"""The reader pool: lends reader connections and routes queued reads to reader actors.

A connection is in use exactly while its lock is held; whoever holds it (a caller's
thread, or the reader actor that owns the connection) is its only user. Two read paths
share the connections:

* **Synchronous** (``db.query``, ``pool.acquire()``): the caller's thread claims a
  connection, runs the statement itself and releases it. Measured here, a hop to
  another thread and back costs 15-40 µs, several point reads, so this path makes none.
  Each thread remembers the connection it used last and claims it again first, so with
  as many connections as reading threads every claim is an uncontended lock.
* **Queued** (``pool.submit`` → :class:`~atlas_actors.future.Future`): the read goes to a
  reader actor, which runs it and every other read queued meanwhile before it gives its
  connection back (several reads per wake-up).

The pool keeps ``readers`` connections and grows up to ``max_readers`` when callers find
none free; readers above the floor retire after ``reader_idle_timeout`` idle seconds.

**Connection faults** (a failed health check, a connection that cannot be opened) are
the pool's to handle, as in HikariCP or SQLAlchemy's pool, not the supervisor's: a
failed check is no crash, and a fault of the file or the disk is seen by every reader
at once, so restarting each reader would count one fault as N restarts and exceed the
restart intensity (8 readers, a 150 ms read error: the storage failed). A reader that
loses its connection lives on without one (``connection_lost``), and the pool runs a
circuit breaker over all of them:

* the first loss opens a *fault* (``fault()``, a ``degraded`` event); losses while it is
  open are the same fault;
* while it is open the readers do not all retry: one at a time is sent :class:`Reopen`,
  ``reader_reconnect_backoff_initial`` after the fault began, then after twice as long
  each time that try fails (with jitter, up to ``reader_reconnect_backoff_max``); the
  pool does not grow meanwhile;
* the first connection opened and checked closes the fault (``recovered``) and every
  other reader reopens at once; so does a shrink that retires every reader without a
  connection (``recovered`` with ``retired=True``, on the next tick);
* a fault that outlasts ``reader_fault_timeout`` seconds fails the storage (the
  supervisor escalates: ``StorageUnavailable``), so a lasting fault (the file gone,
  unreadable) ends in the documented failed state, never a wait for ever.

Callers meanwhile get what their read gets (a typed error from a connection still
lent), or wait for a connection until their deadline (``OperationTimeout``, which names
the fault) and are served as soon as one is back.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import apsw
from pykka._envelope import Envelope

from atlas_actors.actors.base import Unrecoverable, sort_out
from atlas_actors.actors.reader import HealthCheck, ReadOp, Recycle, Reopen, RunReads
from atlas_actors.cache.statements import StatementAnalyses, StatementInfo
from atlas_actors.config import MAX_READERS, StorageConfig
from atlas_actors.connection import (
    _MAX_COUNTED,
    _RECHECK_EVERY,
    _TIME_FIRST,
    SAMPLE_EVERY,
    ConnectionInfo,
    ConnectionMetrics,
    ConnectionState,
    Params,
    TrackedConnection,
    no_connection,
    refuse_connection_settings,
    refuse_transaction_control,
)
from atlas_actors.errors import (
    TEXT_TYPES,
    AtlasError,
    OperationTimeout,
    ReadOnlyError,
    StorageUnavailable,
    TransactionTimeout,
    ValidationError,
    shorten,
    wrap_sqlite_error,
)
from atlas_actors.events import EventBus
from atlas_actors.future import checked_timeout, sql_type_error
from atlas_actors.memo import TextMemo
from atlas_actors.rows import Row
from atlas_actors.telemetry.tracing import Tracing

if TYPE_CHECKING:
    from atlas_actors.actors.reader import ReaderActor

__all__ = ["PoolStatus", "PooledConnection", "ReaderFault", "ReaderPool"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_READS_PER_WAKEUP = 64

# sample_weight and recheck_due as the fast path tests them: by the remainders of a
# statement's run count (at least _TIME_FIRST there), with no subtraction, and the
# second remainder taken one run in SAMPLE_EVERY (_RECHECK_EVERY is a multiple of it).
_TIMED_AT = _TIME_FIRST % SAMPLE_EVERY
"""``sample_weight(uses)`` is SAMPLE_EVERY exactly when ``uses % SAMPLE_EVERY`` is this."""
_RECHECK_AT = (_TIME_FIRST - 1) % _RECHECK_EVERY
"""``recheck_due(uses)`` exactly when ``uses % _RECHECK_EVERY`` is this."""
_RECHECK_PHASE = _RECHECK_AT % SAMPLE_EVERY
"""``uses % SAMPLE_EVERY`` whenever a recheck is due."""


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """The pool at one moment (the plan's ``PoolStatus``)."""

    total: int
    """Reader connections open."""
    active: int
    """Connections in use (by a caller, or busy in their reader)."""
    idle: int
    """Connections free to claim."""
    waiting_requests: int
    """Callers waiting for a connection plus queued reads waiting for a reader."""


@dataclass(frozen=True, slots=True)
class ReaderFault:
    """Readers that lost their connections and have not reopened them yet (``fault()``)."""

    since: float
    """``time.monotonic()`` when the first connection was lost."""
    error: str
    """The last error: of a failed check, or of the last try to reopen."""
    readers_down: int
    """Readers without a connection now."""
    attempts: int
    """Tries to reopen that failed since the fault began."""
    next_attempt: float
    """``time.monotonic()`` of the next try (one reader at a time)."""

    def describe(self, now: float) -> str:
        """One line for errors and logs."""
        return (
            f"{self.readers_down} reader(s) reconnecting for {now - self.since:.1f}s "
            f"({self.attempts} tries to reopen failed), after: {self.error}"
        )


class _Fault:
    """The open fault of :class:`ReaderPool` (mutable, under the pool's lock)."""

    __slots__ = ("attempts", "error", "next_attempt", "since")

    def __init__(self, since: float, error: str, next_attempt: float) -> None:
        self.since = since
        self.error = error
        self.attempts = 0
        self.next_attempt = next_attempt


def _by_role(info: ConnectionInfo) -> tuple[int, int]:
    """Sort key: reader-2 before reader-10, a role's connections by number (#9 before #10)."""
    role = info.role.rpartition("-")[2]
    number = (info.id or "").rpartition("#")[2]
    return (int(role) if role.isdigit() else -1, int(number) if number.isdigit() else -1)


def _dropped(connection: TrackedConnection, thread_name: str) -> str:
    """Why a lease dropped without ``release()`` was given back (the warning)."""
    return (
        f"a pooled connection ({connection.id}) acquired by thread {thread_name!r} was "
        "dropped without release(): an open read transaction on it is rolled back. "
        "Release every pool.acquire(), or use `with db.pool.connection()`"
    )


def _read_only(error: ReadOnlyError, sql: str) -> ReadOnlyError:
    """Explain a write attempted through the read path.

    Only for plain ``SQLITE_READONLY`` (the statement writes): the extended codes say the
    file cannot be read as it is (a hot journal on a read-only file, a moved database,
    ...), which no other call fixes, so they keep SQLite's own advice.
    """
    if error.extended_result_code not in (None, apsw.SQLITE_READONLY):
        return error
    # SQLite's words without the general advice (to open the file read-write): the
    # statement writes, and the read path is read-only on purpose.
    said = str(error.__cause__ or "attempt to write a readonly database")
    return ReadOnlyError(
        f"{said} in {shorten(sql)!r}: reads (db.query, pool.acquire()) run on read-only "
        "connections: use db.write or db.execute for statements that change data",
        sql=sql,
        result_code=error.result_code,
        extended_result_code=error.extended_result_code,
    )


class _Waiter:
    """A caller queued for a connection; ``ready`` is set once one is handed over."""

    __slots__ = ("connection", "ready")

    def __init__(self) -> None:
        self.connection: TrackedConnection | None = None
        self.ready = threading.Event()


class _Hold:
    """New reads wait for ``ended`` (until ``until`` at most) while the writer truncates."""

    __slots__ = ("ended", "until")

    def __init__(self, until: float) -> None:
        self.ended = threading.Event()
        self.until = until


class _Adoption:
    """Frees a connection for adoption when the thread that adopted it ends."""

    __slots__ = ("connection", "thread")

    def __init__(self, connection: TrackedConnection, thread: int) -> None:
        self.connection = connection
        self.thread = thread

    def __del__(self) -> None:
        if self.connection.affinity == self.thread:
            self.connection.affinity = None


class PooledConnection:
    """A reader connection lent by ``pool.acquire()``; give it back with ``release()``.

    Usable from the thread that acquired it until released; a context manager too.
    The pool takes a lease back on its maintenance tick (with a warning) when:

    * it is dropped without ``release()`` (garbage-collected): its read transaction,
      if one was left open, is rolled back and the connection goes back to the pool
      (once the storage is closed, the connection closes as the lease is collected);
    * the thread that acquired it has ended: nobody can use it as documented any more,
      so it goes back, and later calls on this object raise ``ValidationError``;
    * a read transaction (``BEGIN``) on it has been open longer than the storage's
      ``transaction_timeout``: a snapshot keeps the WAL from being checkpointed, so it
      is rolled back (never under a running statement: by the owner's next call, or a
      later tick), the connection goes back, and later calls raise
      ``TransactionTimeout``, as a ``repeatable_read`` transaction's do. It is never
      rolled back silently to go on in autocommit: the ``BEGIN`` promised one snapshot.

    The last two only while :attr:`supervised` (a ``repeatable_read`` transaction's
    reader is not: the transaction bounds its snapshot by its own timeout).
    """

    __slots__ = (
        "__weakref__",
        "_began",
        "_connection",
        "_ended",
        "_lock",
        "_pool",
        "_thread",
        "supervised",
    )

    def __init__(self, pool: ReaderPool, connection: TrackedConnection) -> None:
        self._pool = pool
        self._connection: TrackedConnection | None = connection
        self._lock = threading.Lock()
        """Held by a call on the lease, and by the tick while it takes the lease back."""
        self._thread = weakref.ref(threading.current_thread())
        self._began = 0.0
        """``time.monotonic()`` when the read transaction open on it was first seen."""
        self._ended: tuple[type[AtlasError], str] | None = None
        """Why the pool took it back (the error each later call raises), if it did."""
        self.supervised = True
        """The pool takes the lease back when its thread ends or a read transaction on
        it outlives ``transaction_timeout``. False for a holder that bounds it itself
        (a ``repeatable_read`` transaction: its own timeout, and it may be ended from
        another thread once its own has ended)."""

    def _live(self) -> TrackedConnection:
        connection = self._connection
        if connection is None:
            ended = self._ended
            if ended is not None:
                raise ended[0](ended[1])
            raise ValidationError("this connection was released; acquire another from the pool")
        return connection

    @property
    def id(self) -> str:
        """The connection's id (``reader-0#7``)."""
        return self._live().id

    @property
    def state(self) -> ConnectionState:
        """The connection's state: ACTIVE while lent, FAILED if its reader crashed meanwhile."""
        return self._live().state

    @property
    def metrics(self) -> ConnectionMetrics:
        """The connection's counters."""
        return self._live().metrics()

    @property
    def last_used(self) -> float:
        """``time.monotonic()`` of the connection's last use."""
        return self._live().last_used

    def execute(
        self, sql: str, params: Params = None, *, timeout: float | None = None
    ) -> list[Row]:
        """Run one read statement on this connection and return its rows.

        More than one statement, ``ATTACH``/``DETACH``, ``VACUUM`` or a ``PRAGMA`` that
        sets something raise ``ValidationError`` (the connection is shared). A read
        transaction (``BEGIN``) left open past ``transaction_timeout`` is rolled back, and
        the call raises ``TransactionTimeout`` (see the class).

        A statement still running ``timeout`` seconds after it started (None: the
        storage's ``default_timeout``) is stopped and raises ``OperationTimeout``; the
        connection stays as it was (a read transaction begun on it stays open).
        """
        if timeout is not None:
            timeout = checked_timeout(timeout)
        if self._pool.held is not None and not self._began:
            # A new read transaction (none open on it): it waits out the writer's
            # TRUNCATE as every other new read does (see ReaderPool.hold_reads).
            timeout = self._pool._wait_for_truncate(timeout)
        with self._lock:  # (the tick takes the lease back only between calls)
            connection = self._live()
            if self._began and self._too_old(time.monotonic()):
                # Past its bound while this thread ran a statement (the tick waits for
                # none): ended now, as the tick would have.
                why = self._timed_out(connection, time.monotonic())
                self._connection = None
                self._ended = (TransactionTimeout, why)
                self._pool.give_back(connection, why, self._thread_name())
                raise TransactionTimeout(why)
            try:
                tracing = self._pool.tracing
                if tracing.enabled and self.supervised:  # (a transaction's reads have theirs)
                    with tracing.client_span("atlas.pool.query", sql if type(sql) is str else None):
                        return self._pool.run(connection, sql, params, timeout)
                return self._pool.run(connection, sql, params, timeout)
            except TypeError:  # (the text's checks: None, a number, a list, bytes)
                if type(sql) is str:
                    raise
                raise sql_type_error(sql, built=False) from None
            finally:
                try:
                    open_ = connection.connection.in_transaction
                except apsw.Error:  # (closed: its reader crashed)
                    open_ = False
                if not open_:
                    self._began = 0.0
                elif not self._began:
                    self._began = time.monotonic()  # the snapshot's age counts from here

    query = execute

    def release(self) -> None:
        """Give the connection back to the pool (safe to call twice)."""
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            self._pool._lent.pop(connection, None)  # (before another lease can have it)
            if connection.state is ConnectionState.ACTIVE:  # (not a FAILED one: it closes)
                connection.state = ConnectionState.IDLE
            self._pool.release(connection)

    def _too_old(self, now: float) -> bool:
        """True if a read transaction is open on it for longer than its bound."""
        return (
            bool(self._began)
            and self.supervised
            and now - self._began >= self._pool.config.transaction_timeout
        )

    def _timed_out(self, connection: TrackedConnection, now: float) -> str:
        """Why its read transaction was ended (the error its later calls raise)."""
        bound = self._pool.config.transaction_timeout
        return (
            f"this pooled connection ({connection.id}) kept a read transaction open for "
            f"{now - self._began:.1f}s, past transaction_timeout ({bound:g}s): "
            "it was rolled back so that the WAL can be checkpointed, and the connection "
            "went back to the pool. Keep read transactions short and release leases "
            "promptly, or raise transaction_timeout"
        )

    def _thread_name(self) -> str:
        thread = self._thread()
        return "?" if thread is None else thread.name

    def _take_back(self, connection: TrackedConnection, error: type[AtlasError], why: str) -> bool:
        """The tick's: end the lease unless a call is running (then False: next tick)."""
        if not self._lock.acquire(False):
            return False
        try:
            if self._connection is not connection:
                return False  # released meanwhile
            self._connection = None
            self._ended = (error, why)
        finally:
            self._lock.release()
        return True

    def __enter__(self) -> PooledConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ReaderPool:
    """Lends reader connections and queues reads for reader actors."""

    def __init__(
        self,
        *,
        config: StorageConfig,
        events: EventBus,
        grow: Callable[[], bool],
        retire: Callable[[str], None],
        record_query: Callable[..., None] | None = None,
        statements: StatementAnalyses | None = None,
        check_wait: Callable[[], Callable[[], None] | None] | None = None,
        report: Callable[[BaseException, dict[str, Any] | None], object] | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.config = config
        self.tracing = tracing or Tracing(None, "")
        """Spans of ``acquire()`` and of a lease's statements (the storage's tracing)."""
        self.report = report
        """Reports an error of a queued read (the storage's ``errors.handle``), or None."""
        self.events = events
        self.statements = statements or StatementAnalyses()
        """What the storage's statements touch (shared with its writer)."""
        self._check_wait = check_wait
        """Called before a caller queues for a connection: raises DeadlockError if the
        wait would close a cycle; returns what to call once it ends (or None)."""
        self._grow = grow
        self._retire = retire
        self._record_query = record_query
        self.floor = config.readers
        """Readers kept ready (``resize`` changes it)."""
        self.ceiling = config.max_readers
        """Most readers the pool grows to."""
        self._connections: list[TrackedConnection] = []  # replaced, never changed in place
        self._gone_timing = (0.0, 0)  # read_timing() of the connections taken out
        self._pending: deque[ReadOp] = deque()
        self._pending_lock = threading.Lock()
        """Held to add to, take from or filter ``_pending`` (the queued reads)."""
        self._cond = threading.Condition(threading.Lock())
        self._waiting = 0  # len(self._waiters), read without the lock on the hot path
        self._waiters: deque[_Waiter] = deque()
        self._readers: dict[str, ReaderActor] = {}
        self._ready_roles: set[str] = set()  # every role that was ever ready (a few bytes
        # per reader started, kept: a retired role's late crash report must not look
        # like a failed growth, nor its restart like a reader growth asked for)
        self._starting = 0
        self._starting_roles: dict[str, None] = {}
        """Roles asked for (growth, resize) whose first connection is not open yet."""
        self._unwanted = 0
        """Readers of ``_starting`` that a later ``resize`` made surplus: the next this
        many to become ready retire at once (at most ``_starting``)."""
        self._resizing = threading.Lock()
        """Held through :meth:`resize`: each call decides from what the last one did."""
        self._growth_backoff = 0.0  # seconds; doubles per failed growth, 0 once one starts
        self._no_growth_until = 0.0  # time.monotonic(): no growth before (after a failure)
        self._local = threading.local()
        self._leases: set[TrackedConnection] = set()
        """Connections whose ``checkout`` event was emitted and ``checkin`` is due: a lease
        is tracked only if it began while someone listened, so this stays empty (and the
        read path skips it) with nobody listening. Each connection is added and removed
        by its one holder at a time."""
        self._lent: dict[TrackedConnection, tuple[weakref.ref[PooledConnection], str]] = {}
        """Connections lent by :meth:`acquire`: their lease (weakly) and its thread's name,
        until released (the tick takes back leases dropped, orphaned or too old)."""
        self._rotor = itertools.count()
        self._names: TextMemo[list[Any]] = TextMemo(_MAX_COUNTED)
        self._down: dict[str, ReaderActor] = {}
        """Readers without a connection (a fault), by role, until they reopen one."""
        self._reopening: set[str] = set()
        """Roles of ``_down`` sent :class:`Reopen` whose answer is pending."""
        self._probing: str | None = None
        """The one role trying to reopen while the fault is open."""
        self._fault: _Fault | None = None
        self._random = random.Random()
        self._recycle_queries = config.recycle_after_queries or float("inf")
        self._recycle_seconds = config.recycle_after_seconds or float("inf")
        self.closed: AtlasError | None = None
        self.held: _Hold | None = None
        """Set while the writer truncates the WAL (:meth:`hold_reads`): new reads wait."""
        self.query = self.read_function(self._query_general)
        """``query(sql, params=None, *, timeout=None)``: a read run in the calling thread."""

    # -- membership (the supervisor and reader actors) ---------------------------------

    def reader_ready(
        self, reader: ReaderActor, *, connected: bool = True, reopened: bool = False
    ) -> bool:
        """A reader incarnation opened its connection (it arrives next, via ``checkin``).

        ``connected=False``: a restarted incarnation that could not open one; it reports
        ``connection_lost`` next. An open that succeeded ends a fault: every other reader
        without a connection is sent :class:`Reopen` at once.

        ``reopened``: the same incarnation, back from a fault (:class:`Reopen`). False if
        it was retired meanwhile (a shrink, during its open, which may take long): it is
        not counted again, and must close what it opened and call
        :meth:`retire_unconnected`.
        """
        recovered: _Fault | None = None
        with self._cond:
            if reader.retiring or (reopened and self._readers.get(reader.role) is not reader):
                return False
            surplus: TrackedConnection | None = None
            if reader.role not in self._ready_roles and self._starting:
                self._starting -= 1  # one of the readers asked for by growth or resize
                self._growth_backoff = self._no_growth_until = 0.0
                if self._unwanted and connected:
                    self._unwanted -= 1
                    surplus = reader.connection
            if surplus is not None:
                # A resize since it was asked for made it surplus: it retires now (its
                # checkin finds the connection unusable and disposes of it), not after
                # reader_idle_timeout above the floor, or never.
                reader.retiring = True
                surplus.usable = False
            else:
                self._readers[reader.role] = reader
            self._ready_roles.add(reader.role)
            self._starting_roles.pop(reader.role, None)
            if connected:
                self._down.pop(reader.role, None)
                self._reopening.discard(reader.role)
                if self._probing == reader.role:
                    self._probing = None
                recovered, self._fault = self._fault, None
                if recovered is not None:
                    reason = f"reconnect after: {recovered.error}"
                    self._send_reopen(list(self._down), reason)
        if recovered is not None:
            self._fault_over(recovered, time.monotonic(), f"{reader.role} reopened")
        return True

    def retire_unconnected(self, reader: ReaderActor) -> None:
        """Retire ``reader``, retired by a shrink while it had no connection to give back.

        (A reader is retired when its connection is disposed of; one without a
        connection, or that closed the one it opened meanwhile, has none to dispose of.)
        """
        self._retire(reader.role)

    def connection_lost(self, reader: ReaderActor, error: BaseException) -> None:
        """``reader`` has no connection now: its check, or its try to open one, failed.

        It waits without one until :meth:`maintain` sends it :class:`Reopen` (see the
        module docstring). A reader being retired is retired now instead.
        """
        # Text only: the error's traceback holds the frames of a failed open, and with
        # them its half-open connection (a file descriptor) until it is freed.
        why = str(error)
        with self._cond:
            # Decided under the lock, as a shrink marks readers retiring under it: one it
            # marks after this reader joined ``_down`` is retired by the shrink itself.
            retired = reader.retiring
            if not retired:
                if self._readers.get(reader.role) is not reader:
                    return  # an older incarnation, or the role is gone
                began, down = self._mark_down(reader, why)
        if retired:
            self.retire_unconnected(reader)
            return
        if began:
            log.warning(
                "%s lost its reader connection (%s); reopening with backoff, one reader at "
                "a time, for up to %gs (reader_fault_timeout)",
                reader.role,
                why,
                self.config.reader_fault_timeout,
            )
            self.events.emit("degraded", "pool", reason="reader_fault", error=why)
        else:
            log.info("%s has no reader connection (%d down): %s", reader.role, down, why)

    def _mark_down(self, reader: ReaderActor, why: str) -> tuple[bool, int]:
        """Count ``reader`` down, in the fault (opened now if none was): (began, down)."""
        now = time.monotonic()
        self._down[reader.role] = reader
        self._reopening.discard(reader.role)
        fault = self._fault
        began = fault is None
        if fault is None:
            fault = self._fault = _Fault(now, why, now + self._backoff(0))
        fault.error = why
        if self._probing == reader.role:
            self._probing = None
            fault.attempts += 1
            fault.next_attempt = now + self._backoff(fault.attempts)
        return began, len(self._down)

    def reopen_not_needed(self, reader: ReaderActor) -> None:
        """``reader`` got :class:`Reopen` but has a connection (or is retiring): no try.

        A retiring one without a connection is retired now: else it would stay down,
        and its fault open, for good.
        """
        with self._cond:
            self._reopening.discard(reader.role)
            if self._probing == reader.role:
                self._probing = None
            if reader.connection is not None:
                self._down.pop(reader.role, None)
            retire = reader.connection is None and reader.retiring
        if retire:
            self.retire_unconnected(reader)

    def fault(self) -> ReaderFault | None:
        """The open fault (readers that lost their connections), or None."""
        with self._cond:
            return self._fault_unlocked()

    def _fault_unlocked(self) -> ReaderFault | None:
        fault = self._fault
        return None if fault is None else self._snapshot(fault)

    def _snapshot(self, fault: _Fault) -> ReaderFault:
        return ReaderFault(
            since=fault.since,
            error=fault.error,
            readers_down=len(self._down),
            attempts=fault.attempts,
            next_attempt=fault.next_attempt,
        )

    def _backoff(self, failures: int) -> float:
        """Seconds before the next try to reopen, after ``failures`` failed tries."""
        config = self.config
        delay = min(
            config.reader_reconnect_backoff_initial * 2.0**failures,
            config.reader_reconnect_backoff_max,
        )
        return delay * (1 + config.restart_backoff_jitter * self._random.random())

    def _send_reopen(self, roles: list[str], reason: str) -> None:
        """Send :class:`Reopen` to these readers of ``_down`` (holding the lock)."""
        for role in roles:
            reader = self._down.get(role)
            if reader is not None and role not in self._reopening:
                self._reopening.add(role)
                reader.mailbox.put(Envelope(Reopen(reason)))

    def _reconnect(self, now: float) -> None:
        """The tick's part in a fault: the next try to reopen, or escalation."""
        with self._cond:
            fault = self._fault
            if self.closed is not None:
                return
            if fault is None:
                self._send_reopen(list(self._down), "reconnect")  # (none are left waiting)
                return
            ended = not self._down
            if ended:
                # Every reader that lost its connection was retired: nothing is down.
                self._fault = None
            else:
                self._next_try(fault, now)
        if ended:
            self._fault_over(fault, now, "its readers were retired", retired=True)

    def _fault_over(self, fault: _Fault, now: float, how: str, *, retired: bool = False) -> None:
        """Log the end of ``fault`` and emit its ``recovered`` event (its caller cleared it).

        ``retired``: it ended because every reader down was retired (the event says so).
        """
        seconds = now - fault.since
        log.warning("the reader fault is over after %.2fs: %s (%s)", seconds, how, fault.error)
        if retired:
            self.events.emit(
                "recovered", "pool", reason="reader_fault", seconds=seconds, retired=True
            )
        else:
            self.events.emit("recovered", "pool", reason="reader_fault", seconds=seconds)

    def _next_try(self, fault: _Fault, now: float) -> None:
        """Send the next try to reopen if it is due, or escalate (holding the lock)."""
        timeout = self.config.reader_fault_timeout
        if now - fault.since >= timeout:
            raise Unrecoverable(
                f"the readers could not reconnect within reader_fault_timeout="
                f"{timeout:g}s: {self._snapshot(fault).describe(now)}"
            )
        if self._probing is None and now >= fault.next_attempt:
            waiting = [role for role in self._down if role not in self._reopening]
            if waiting:
                # The one down longest first (dicts keep insertion order).
                self._probing = waiting[0]
                self._send_reopen(waiting[:1], f"reconnect after: {fault.error}")

    def was_ready(self, role: str) -> bool:
        """True once the reader ``role`` opened its connection (even if retired since)."""
        return role in self._ready_roles

    def reader_starting(self, role: str) -> None:
        """The reader ``role`` is being started: CONNECTING until it is ready or gone.

        Without the lock: growth asks for a reader while holding it (one dict store,
        made before the reader can start, so nothing it would guard can interleave).
        """
        self._starting_roles[role] = None

    def reader_gone(self, role: str) -> None:
        """A reader role was removed (retired, failed to start, or the pool shut down)."""
        with self._cond:
            self._starting_roles.pop(role, None)
            self._readers.pop(role, None)
            self._down.pop(role, None)
            self._reopening.discard(role)
            if self._probing == role:
                self._probing = None

    def expected_growth_failed(self) -> None:
        """A reader started for growth could not start: stop counting it, and back off.

        No growth for 0.1 s, doubling with each failure in a row up to 10 s.
        """
        with self._cond:
            self._starting = max(0, self._starting - 1)
            self._unwanted = min(self._unwanted, self._starting)
            self._growth_backoff = min(max(0.1, 2 * self._growth_backoff), 10.0)
            self._no_growth_until = time.monotonic() + self._growth_backoff

    @property
    def size(self) -> int:
        """Reader roles alive or starting."""
        return len(self._readers) + self._starting

    def checkin(self, connection: TrackedConnection, *, checked: bool = False) -> None:
        """A claimed connection becomes available (returned, recycled, checked or new).

        The ``checkin`` event is emitted only for a lease that emitted a ``checkout``
        (queued reads, say): not for a new connection, a health check or a recycle.
        """
        if checked:
            connection.last_check = time.monotonic()
        self.join(connection)
        self.release(connection)

    def join(self, connection: TrackedConnection) -> None:
        """Add a new claimed connection to the pool (IDLE from now on), not lent yet.

        :meth:`checkin` does it first; a reader calls it before, to announce the
        connection (its ``recycle`` event) before any caller can have it.
        """
        if connection not in self._connections:
            connection.recycle_at = self._recycle_queries  # (a new one; 0 once it is due)
            with self._cond:
                if self.closed is None and connection.usable:
                    if connection.state is ConnectionState.CONNECTING:
                        connection.state = ConnectionState.IDLE  # it serves from now on
                    self._connections = [*self._connections, connection]

    def forget(self, connection: TrackedConnection) -> None:
        """Take ``connection`` out of the pool (it is closing); a lease on it ends here."""
        with self._cond:
            if any(c is connection for c in self._connections):
                seconds, count = self._gone_timing
                timed = connection.timed_totals()
                self._gone_timing = (seconds + timed[0], count + timed[1])
            self._connections = [c for c in self._connections if c is not connection]
        if self._leases and connection in self._leases:
            self._check_in(connection)  # its reader crashed holding it, say

    # -- claiming and releasing --------------------------------------------------------

    def _claim(self) -> TrackedConnection | None:
        """A free connection, locked for the caller, or None; the thread's own first.

        A thread adopts one connection no other thread has adopted, so with enough
        connections every thread keeps to its own and never contends. When its own is
        busy, or none is left to adopt, it borrows one nobody adopted for one call;
        another thread's own only when the pool cannot grow (borrowing those while it
        can would send their owners borrowing in turn, a round of musical chairs that
        never settles). A connection whose thread ended is freed for adoption by the
        maintenance tick.
        """
        local = self._local
        preferred: TrackedConnection | None = getattr(local, "connection", None)
        if preferred is not None and preferred.lock.acquire(False):
            if preferred.usable:
                return preferred
            preferred.lock.release()
        me = threading.get_ident()
        owns = preferred is not None and preferred.usable and preferred.affinity == me
        connections = self._connections
        count = len(connections)
        if not count:
            return None
        start = next(self._rotor) % count
        steal = self._cannot_grow()
        for adopting in (False,) if owns else (True, False):
            for offset in range(count):
                candidate = connections[(start + offset) % count]
                if candidate.affinity not in (None, me) and (adopting or not steal):
                    continue
                if candidate.lock.acquire(False):
                    if candidate.usable:
                        if adopting:
                            if preferred is not None and preferred.affinity == me:
                                preferred.affinity = None
                            candidate.affinity = me
                            local.connection = candidate
                            # Dropped with the thread's locals when the thread ends.
                            local.adoption = _Adoption(candidate, me)
                        return candidate
                    candidate.lock.release()
        return None

    def _take(self, timeout: float | None) -> TrackedConnection:
        # Callers already waiting go first: a newcomer that claimed ahead of them could
        # starve one until its deadline.
        connection = None if self._waiting else self._claim()
        if connection is None:
            limit = self.config.default_timeout if timeout is None else checked_timeout(timeout)
            deadline = time.monotonic() + limit
            connection = self._wait_for_connection(deadline, limit)
            connection.bound(max(0.0, deadline - time.monotonic()))  # what the wait left
        else:
            connection.bound(timeout)
        if self.events.watches_checkouts:
            self._check_out_for_caller(connection)
        return connection

    def _wait_for_connection(self, deadline: float, limit: float) -> TrackedConnection:
        """Queue behind earlier waiters until a connection is handed over, or time out.

        The deadline is ``limit`` seconds from now (the timeout error gives ``limit``).
        Waiters are served first come, first served: a released connection is handed
        to the oldest waiter while still locked, so a thread that keeps reading cannot
        take it back before the waiter wakes up.
        """
        waiter = _Waiter()
        with self._cond:
            if not self._waiters:
                connection = self._claim()
                if connection is not None:
                    return connection
            if self.closed is not None:
                raise self.closed
        waited = None if self._check_wait is None else self._check_wait()
        try:
            return self._queue_for_connection(waiter, deadline, limit)
        finally:
            if waited is not None:
                waited()

    def _queue_for_connection(
        self, waiter: _Waiter, deadline: float, limit: float
    ) -> TrackedConnection:
        """:meth:`_wait_for_connection`'s wait, in the queue of waiters."""
        with self._cond:
            connection = None if self._waiters else self._claim()
            if connection is not None:
                return connection  # freed meanwhile
            if self.closed is not None:
                raise self.closed  # closed meanwhile: nobody would wake this waiter
            self._waiters.append(waiter)
            self._waiting += 1
            self._maybe_grow()
        try:
            while not waiter.ready.wait(max(0.0, min(deadline - time.monotonic(), 0.1))):
                if time.monotonic() >= deadline:
                    break
                with self._cond:
                    # A safety net, not the mechanism: every release hands over.
                    if self._waiters and self._waiters[0] is waiter:
                        connection = self._claim_any()
                        if connection is not None:
                            self._serve(connection)
                            break
                    self._maybe_grow()
        except BaseException:
            # Interrupted (KeyboardInterrupt, say): a connection handed over meanwhile
            # goes back, or nobody ever releases it.
            with self._cond:
                self._forget(waiter)
                handed = waiter.connection  # (_serve sets it under the lock)
            if handed is not None:
                self.release(handed)
            raise
        with self._cond:
            self._forget(waiter)
        connection = waiter.connection
        if connection is not None:
            self._adopt_if_free(connection)
            return connection
        if self.closed is not None:
            raise self.closed
        fault = self._fault_unlocked()
        why = "" if fault is None else f"; {fault.describe(time.monotonic())}"
        raise OperationTimeout(
            f"waiting for a reader connection ({self.status_unlocked()}{why})",
            limit,
            applied=False,
        )

    def _forget(self, waiter: _Waiter) -> None:
        """Take ``waiter`` out of the queue if no connection reached it (under the lock)."""
        if waiter.connection is None and waiter in self._waiters:
            self._waiters.remove(waiter)
            self._waiting -= 1

    def _adopt_if_free(self, connection: TrackedConnection) -> None:
        """Make a handed-over connection the calling thread's own if nobody's it is.

        Without this a thread served by a hand-over would stay without a connection
        of its own and queue again on its next read, keeping the queue alive.
        """
        local = self._local
        if connection.affinity is None and getattr(local, "connection", None) is None:
            me = threading.get_ident()
            connection.affinity = me
            local.connection = connection
            local.adoption = _Adoption(connection, me)

    def _claim_any(self) -> TrackedConnection | None:
        """A free connection for a waiter (another thread: not adopted), locked.

        One that some thread adopted is taken only when the pool cannot grow.
        """
        steal = self._cannot_grow()
        for connection in self._connections:
            if connection.affinity is not None and not steal:
                continue
            if connection.lock.acquire(False):
                if connection.usable:
                    return connection
                connection.lock.release()
        return None

    def _cannot_grow(self) -> bool:
        """True when the pool may not start a reader now: then adopted ones are shared.

        That is at its ceiling (counting readers starting), or while it backs off after a
        reader failed to start.
        """
        return (
            len(self._readers) + self._starting >= self.ceiling
            or time.monotonic() < self._no_growth_until
            or self._fault is not None  # a new reader would only fail to open as well
        )

    def _serve(self, connection: TrackedConnection) -> None:
        """Hand a claimed connection to the oldest waiter (holding the condition's lock)."""
        waiter = self._waiters.popleft()
        self._waiting -= 1
        waiter.connection = connection
        waiter.ready.set()

    def release(self, connection: TrackedConnection | PooledConnection) -> None:
        """Give a connection back: one from :meth:`acquire` (the plan's ``release()``).

        Releasing a lease twice is harmless. Anything else raises ``ValidationError``.
        """
        if isinstance(connection, PooledConnection):
            connection.release()
            return
        if type(connection) is not TrackedConnection or (
            getattr(connection.owner, "pool", None) is not self  # (a writer's, another pool's)
        ):
            if connection is None:
                given = "None"
            elif type(connection) is TrackedConnection:
                given = f"connection {connection.id}, not this pool's"
            else:
                given = f"an object of type {type(connection).__name__}"
            raise ValidationError(
                f"pool.release() got {given}: pass the object pool.acquire() returned "
                "(or use `with db.pool.connection() as c:`)"
            )
        escaped: BaseException | None = None
        if self._leases and connection in self._leases:
            try:
                self._check_in(connection)
            except BaseException as error:  # a handler's Ctrl-C or sys.exit() (main thread)
                escaped = error  # raised once the connection is back
        self._give_back(connection)
        if escaped is not None:
            raise escaped

    def _give_back(self, connection: TrackedConnection) -> None:
        """:meth:`release` once the lease has ended: back to the pool, or disposed of."""
        if connection.connection.in_transaction and connection.usable:
            # Left open by its borrower (BEGIN through a lent connection): every later
            # read on it would see that old snapshot, not the acknowledged writes since.
            connection.bound(None)  # (not the last read's deadline, maybe past)
            try:
                connection.cursor.execute("ROLLBACK")
            except apsw.Error:
                log.warning("could not end the transaction a borrower left open on %s", connection)
                connection.usable = False  # disposed of below
        if not connection.usable or self.closed is not None:
            self._dispose(connection)
            return
        if connection.queries >= connection.recycle_at:
            self._recycle(connection, self._recycle_reason(connection))
            return
        connection.lock.release()
        if self._pending or self._waiting:
            self._wake_next()

    def _let_go(self, connection: TrackedConnection) -> None:
        """Release a briefly claimed connection, waking a caller waiting for one."""
        connection.lock.release()
        if self._pending or self._waiting:
            self._wake_next()

    def _wake_next(self) -> None:
        """After a connection was let go: start queued reads, wake a waiting caller.

        Called after the release, never before: a caller that starts waiting meanwhile
        either claims the released connection or is seen here and notified.
        """
        if self._pending:
            self._dispatch_pending()
        if self._waiting:
            with self._cond:
                while self._waiters:
                    connection = self._claim_any()
                    if connection is None:
                        return
                    self._serve(connection)

    def _check_out(self, connection: TrackedConnection) -> None:
        """Begin a lease of a claimed connection: track it, emit ``checkout``.

        Called only while someone listens to ``checkout`` or ``checkin``
        (``events.watches_checkouts``), so that a lease begun then ends with exactly one
        ``checkin`` (:meth:`_check_in`) even if the listeners change meanwhile.
        """
        self._leases.add(connection)
        if "checkout" in self.events.active:
            self.events.emit("checkout", connection.role, connection.id)

    def _check_out_for_caller(self, connection: TrackedConnection) -> None:
        """:meth:`_check_out` a connection the caller is about to get.

        A handler's Ctrl-C or ``sys.exit()`` reaches the caller in the main thread (see
        ``EventBus.emit``), which then never gets the connection: it goes back first.
        """
        try:
            self._check_out(connection)
        except BaseException:
            self.release(connection)
            raise

    def _check_in(self, connection: TrackedConnection) -> None:
        """End the lease :meth:`_check_out` began (by the connection's holder): ``checkin``."""
        self._leases.discard(connection)
        if "checkin" in self.events.active:
            self.events.emit("checkin", connection.role, connection.id)

    def _send(self, connection: TrackedConnection, message: Any) -> None:
        """Hand a claimed connection to its reader actor with ``message``."""
        connection.owner.mailbox.put(Envelope(message))

    def _recycle(self, connection: TrackedConnection, reason: str) -> None:
        """Choose a claimed connection for recycling: RECYCLING until it is replaced."""
        connection.state = ConnectionState.RECYCLING
        self._send(connection, Recycle(connection, reason))

    def _dispose(self, connection: TrackedConnection) -> None:
        """Close a claimed connection that must not be lent again; retire its reader if asked."""
        self.forget(connection)
        if connection.state is not ConnectionState.CLOSED:
            connection.close()
            self.events.emit("disconnect", connection.role, connection.id, reason="disposed")
        owner = connection.owner
        if owner.retiring and owner.connection is connection:
            self._retire(owner.role)

    # -- the WAL truncation's hold -----------------------------------------------------

    @contextmanager
    def hold_reads(self, seconds: float) -> Iterator[None]:
        """New reads wait (``seconds`` at most) while the writer truncates the WAL.

        A TRUNCATE first copies the WAL into the database file, waiting for every
        reader on a snapshot older than the WAL's end; SQLite has a few read-mark slots
        (https://sqlite.org/walformat.html) and a read that begins while all are held
        shares the newest one, however old: with reads that overlap continuously, such
        a slot is never free and the copy never finishes (16 threads: 1 TRUNCATE in 11
        finished, the WAL reached 190 times its limit). Reads held off for a moment let
        the ones running end; reads that begin once the copy is done read the database
        file and keep nothing from the TRUNCATE.
        """
        hold = _Hold(time.monotonic() + seconds)
        self.held = hold
        try:
            yield
        finally:
            self.held = None
            hold.ended.set()

    def _wait_for_truncate(self, timeout: float | None) -> float | None:
        """Wait out :meth:`hold_reads` (half the read's ``timeout`` at most); what is left."""
        hold = self.held
        if hold is None:
            return timeout
        started = time.monotonic()
        limit = self.config.default_timeout if timeout is None else timeout
        hold.ended.wait(max(0.0, min(hold.until - started, limit / 2)))
        if timeout is None:
            return None
        return timeout - (time.monotonic() - started)

    # -- the synchronous path ----------------------------------------------------------

    def acquire(self, timeout: float | None = None) -> PooledConnection:
        """Borrow a connection for the calling thread (the plan's ``acquire()``)."""
        if self.tracing.enabled:
            with self.tracing.client_span("atlas.pool.acquire"):
                return self._acquire(timeout)
        return self._acquire(timeout)

    def _acquire(self, timeout: float | None) -> PooledConnection:
        if timeout is not None:
            timeout = checked_timeout(timeout)  # (a free connection's wait checks none)
        if self.held is not None:
            timeout = self._wait_for_truncate(timeout)
        connection = self._take(timeout)
        connection.state = ConnectionState.ACTIVE
        if not connection.usable and connection.state is ConnectionState.ACTIVE:
            # Its reader crashed as it was handed over (it clears ``usable`` first, then
            # sets FAILED): whichever came first, FAILED is what stays.
            connection.state = ConnectionState.FAILED
        lease = PooledConnection(self, connection)
        dropped = weakref.ref(lease, self._lease_dropped)
        self._lent[connection] = (dropped, threading.current_thread().name)
        return lease

    def _lease_dropped(self, lease: weakref.ref[PooledConnection]) -> None:
        """A lease of :meth:`acquire` was collected (its weak reference's callback).

        While the pool serves, the tick gives its connection back (:meth:`_check_leases`);
        a released one left ``_lent`` first. Once the pool is closed no tick runs and no
        reader closes a connection still lent, so it would stay open (with its files) for
        as long as the storage object lives: closed here. This runs in whatever thread
        drops the lease or collects, maybe one holding the pool's lock: it takes no lock
        and emits no event. (Not ``__del__``: a weak reference is cleared before its
        callback runs, so :meth:`close`, which looks for leases gone after it sets
        ``closed``, and this, which looks at ``closed`` after the lease is gone, never
        both miss one.)
        """
        if self.closed is None:
            return
        for connection, entry in list(self._lent.items()):
            if entry[0] is lease and self._lent.pop(connection, None) is entry:
                connection.close()

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[PooledConnection]:
        """``with pool.connection() as c:`` acquire, then release on leaving."""
        lease = self.acquire(timeout)
        try:
            yield lease
        finally:
            lease.release()

    def read_function(
        self,
        fallback: Callable[..., list[Row]],
        report: Callable[[AtlasError], object] | None = None,
    ) -> Callable[..., list[Row]]:
        """A ``query(sql, params=None, *, timeout=None)`` that claims, reads and releases.

        It runs ``sql`` in the calling thread on a claimed connection and returns the
        rows. Calls it does not serve (SQL that is not a ``str``, a closed pool) go to
        ``fallback(sql, params, timeout=timeout)`` as they are; ``report`` (if given)
        sees every :class:`AtlasError` it raises otherwise, before it propagates. The
        pool's own :attr:`query` is one; ``db.query`` is another when it has no span
        to open and no cache to ask, so that a read runs in one Python frame.
        ``timeout`` (None: ``default_timeout``) bounds the wait for a connection and
        the statement: one still running past it is stopped (``OperationTimeout``).
        """
        # The hottest path of all, kept flat on purpose: at 16 threads every call and
        # attribute lookup here costs several times its single-thread price (each read
        # hands the GIL over twice, and the next holder starts with cold caches), so a
        # layer less was worth 10-40% more reads/s in A/B runs here (which is also why
        # the release block below repeats _query_general's, and why this is a closure:
        # db.query itself, not a call into it). It covers the common case (the
        # thread's own connection free, the statement's row class known, no checkout
        # listener) and updates the connection's counters itself; anything else takes
        # _query_general.
        pool = self
        local = self._local
        events = self.events
        record_query = self._record_query
        text_types = TEXT_TYPES

        def query(sql: str, params: Params = None, *, timeout: float | None = None) -> list[Row]:
            """Claim a connection, run ``sql`` in this thread, give the connection back."""
            if type(sql) is not str or type(params) in text_types or pool.closed is not None:
                # (a str as the parameters binds one character per placeholder: the
                # general path refuses it)
                return fallback(sql, params, timeout=timeout)
            if timeout is not None:
                timeout = checked_timeout(timeout)
            try:
                try:  # (cheaper than getattr with a default and dict.get, when both are there)
                    connection: TrackedConnection = local.connection  # (never set to None)
                    entry = pool._names[sql]
                except (AttributeError, KeyError):
                    return pool._query_general(sql, params, timeout)  # a new thread or statement
                uses: int = entry[1]  # runs of the statement so far
                phase = uses % SAMPLE_EVERY
                if (
                    uses < _TIME_FIRST  # its first runs (all timed: sample_weight)
                    or (phase == _RECHECK_PHASE and uses % _RECHECK_EVERY == _RECHECK_AT)
                    or events.watches_checkouts
                    or pool.held is not None  # the writer truncates the WAL: wait a moment
                ):
                    return pool._query_general(sql, params, timeout)
                try:
                    connection.lock.token.pop()  # claimed (Claim.acquire(False), cheaper)
                except KeyError:
                    return pool._query_general(sql, params, timeout)  # lent to a waiter
                if not connection.usable:
                    connection.lock.release()
                    return pool._query_general(sql, params, timeout)
                count = connection._queries + 1
                connection._queries = count  # (also tells the deadline check: a new read)
                connection.read_timeout = timeout  # the statement's bound: one store, no clock
                timed = phase == _TIMED_AT  # sample_weight, inlined
                started = perf_counter() if timed else 0.0
                cursor = connection.cursor
                try:
                    cursor.execute(sql, params)
                    raw: list[Any] = cursor.fetchall()
                except BaseException as error:
                    pool._failed(connection, sql, error)
                try:
                    stale = False
                    if not raw:
                        rows: list[Row] = []
                    elif len(raw[0]) != entry[2]:  # no row class yet, or not this wide:
                        stale = True  # its columns changed (a schema change not heard of)
                    elif len(raw) == 1:
                        raw[0] = entry[0](raw[0])  # a point read: in fetchall's own list
                        rows = raw  # (214 fewer instructions per read than a new list,
                        # callgrind, one thread; that had 5% fewer than map() and list())
                    else:
                        rows = list(map(entry[0], raw))
                    if stale:
                        connection._queries -= 1
                        pool._names.forget(sql)
                    else:
                        entry[1] = uses + 1
                        if timed:
                            latency = perf_counter() - started
                            # (the first sampled run stands for itself: sample_weight)
                            weight = SAMPLE_EVERY if uses != _TIME_FIRST else 1
                            connection.count_timed(latency, weight, params, rows)
                except BaseException:
                    pool.release(connection)  # whatever failed, the connection goes back
                    raise
                if stale:
                    connection.lock.release()
                    return pool._query_general(sql, params, timeout)
                if count >= connection.recycle_at or not connection.usable:  # (retired meanwhile)
                    pool.release(connection)
                else:
                    connection.lock.token.add(True)  # released (Claim.release(), cheaper)
                    if pool._pending or pool._waiting:
                        pool._wake_next()
                if timed and record_query is not None:
                    record_query(sql, latency, calls=weight)
                return rows
            except AtlasError as error:
                if report is not None:
                    report(error)
                raise

        return query

    def _failed(self, connection: TrackedConnection, sql: str, error: BaseException) -> NoReturn:
        """Give back a connection whose statement failed and raise the typed error."""
        # (A statement on the fast path has run on this read-only connection before, so
        # a ReadOnlyError that _query_general explains cannot come up here.)
        if isinstance(error, Exception):
            connection.count_error()  # while the connection is still this thread's
            raised = connection.read_error(error, sql)
            self.release(connection)
            raise raised from error
        self.release(connection)
        raise error

    def _claim_for_read(self, timeout: float | None) -> TrackedConnection:
        """The thread's own connection if it is free, else one from :meth:`_take`.

        Claimed, checked out (when someone listens) and bounded by ``timeout`` (None:
        ``default_timeout``): the paths of a read that the fast path does not serve.
        """
        if timeout is not None:
            timeout = checked_timeout(timeout)
        if self.held is not None:
            timeout = self._wait_for_truncate(timeout)
        connection: TrackedConnection | None = getattr(self._local, "connection", None)
        if connection is None or not connection.lock.acquire(False):
            return self._take(timeout)  # (which checks out and bounds the statement)
        if not connection.usable:
            connection.lock.release()
            return self._take(timeout)
        connection.bound(timeout)
        if self.events.watches_checkouts:
            self._check_out_for_caller(connection)
        return connection

    def _query_general(self, sql: str, params: Params, timeout: float | None) -> list[Row]:
        """:attr:`query` when the fast path does not apply (claims through _take if needed)."""
        # A statement's first runs all come here, so a refused one never reaches the
        # fast path: BEGIN would leave a shared reader on an old snapshot for good, and
        # a PRAGMA setting would hold for every later read on that connection.
        refuse_transaction_control(sql)
        refuse_connection_settings(sql)
        connection = self._claim_for_read(timeout)
        try:
            rows = connection.query_fast(sql, params, self._names)
        except ReadOnlyError as error:
            self.release(connection)
            raise _read_only(error, sql) from error
        except BaseException:
            self.release(connection)
            raise
        latency = connection.last_latency
        if (
            connection.queries >= connection.recycle_at
            or self._leases  # (perhaps this one's: release() ends it)
            or not connection.usable  # retired while it ran (a shrink): closed by release()
        ):
            self.release(connection)
        else:
            connection.lock.release()
            if self._pending or self._waiting:
                self._wake_next()
        if latency and self._record_query is not None:
            self._record_query(sql, latency, calls=connection.last_weight)  # a timed run
        return rows

    def forget_names(self) -> None:
        """Drop the cached column names (the schema changed)."""
        self._names = TextMemo(_MAX_COUNTED)

    def query_analyzed(
        self, sql: str, params: Params, timeout: float | None = None
    ) -> tuple[list[Row], StatementInfo, float]:
        """Like :attr:`query`, also returning what the statement touches and its latency.

        The first time a statement text is seen, it is analyzed (prepared in EXPLAIN
        mode with an authorizer) on the claimed connection before it runs.
        """
        refuse_transaction_control(sql)  # (as in _query_general)
        refuse_connection_settings(sql)
        connection = self._claim_for_read(timeout)
        try:
            try:
                info = self.statements.analyze(connection.connection, sql, params)
            except Exception:
                # Refused as it was prepared, before query_fast could count it: a query
                # run on this connection that failed, as it is without the cache.
                connection._queries += 1
                connection.count_error()
                raise
            rows = connection.query_fast(sql, params, self._names)
            latency = connection.last_latency
        except ReadOnlyError as error:
            raise _read_only(error, sql) from error
        except (apsw.Error, TypeError, OverflowError, KeyError) as error:
            # (apsw's answers to bad parameters, from the analysis too: typed here)
            raise wrap_sqlite_error(error, sql) from error
        finally:
            self.release(connection)
        if latency and self._record_query is not None:
            self._record_query(sql, latency, calls=connection.last_weight)  # a timed run
        return rows, info, latency

    def run(
        self,
        connection: TrackedConnection,
        sql: str,
        params: Params,
        timeout: float | None = None,
    ) -> list[Row]:
        """Run a read on a borrowed connection, recording it in the workload.

        The statement is stopped ``timeout`` seconds (None: ``default_timeout``) after
        it started: ``OperationTimeout``. A PRAGMA setting is refused: it would hold
        for the reads of whoever borrows the connection next.
        """
        refuse_connection_settings(sql)
        connection.bound(timeout)
        try:
            rows = connection.query(sql, params)
        except ReadOnlyError as error:
            raise _read_only(error, sql) from error
        latency = connection.last_latency
        if latency and self._record_query is not None:
            self._record_query(sql, latency, calls=connection.last_weight)  # a timed run
        return rows

    def run_function(self, fn: Callable[[apsw.Connection], T], timeout: float | None = None) -> T:
        """Borrow a connection and call ``fn`` with the raw apsw connection (read-only).

        ``timeout`` bounds the wait for a connection and, from there, the statements
        ``fn`` runs (together): past it, SQLite interrupts the one running
        (``apsw.InterruptError`` inside ``fn``).
        """
        if self.held is not None:
            timeout = self._wait_for_truncate(None if timeout is None else checked_timeout(timeout))
        connection = self._take(timeout)
        try:
            return fn(connection.connection)
        except apsw.InterruptError as error:
            name = getattr(fn, "__qualname__", None) or repr(fn)
            timed_out = connection.timed_out(error, f"read {name}")
            if timed_out is None:
                raise
            raise timed_out from error
        finally:
            self.release(connection)

    # -- the queued path ---------------------------------------------------------------

    def submit(self, op: ReadOp) -> None:
        """Queue a read for a reader actor."""
        if self.closed is not None:
            op.fail(self.closed)
            return
        op.future.report = self.report  # (its timeout in get() is reported too)
        late: list[ReadOp] = []
        with self._pending_lock:
            if len(self._pending) >= self.config.mailbox_size:
                late = self._drop_finished()  # (reads given up count for nothing)
            full = len(self._pending) >= self.config.mailbox_size
            if not full:
                self._pending.append(op)
        self._fail_late(late)
        if full:
            refused = OperationTimeout(
                f"{op.describe()} (the read queue is full: {self.config.mailbox_size} reads wait)",
                0.0,
                applied=False,
            )
            if self.report is not None:
                self.report(refused, {"operation": "submit_query"})
            op.fail(refused)
            return
        self._dispatch_pending()
        if self._pending:
            with self._cond:
                self._maybe_grow()

    def take_pending(self) -> list[ReadOp]:
        """Up to a batch of queued reads, for a reader about to give its connection back."""
        ops: list[ReadOp] = []
        pending = self._pending
        with self._pending_lock:
            while len(ops) < _MAX_READS_PER_WAKEUP:
                try:
                    ops.append(pending.popleft())
                except IndexError:
                    break
        return ops

    def _drop_finished(self) -> list[ReadOp]:
        """Take out the queued reads nobody waits for any more (holding _pending_lock).

        A read whose caller timed out (and withdrew it) is done; one past its deadline
        is claimed and returned, for :meth:`_fail_late` (after the lock: failing runs
        the future's callbacks). Until then they counted as waiting and filled the
        queue: with no reader free, the next read was refused as "the read queue is
        full" while nothing waited.
        """
        awaited, late = sort_out(self._pending, time.monotonic())
        self._pending.clear()
        self._pending.extend(awaited)
        return late

    def _fail_late(self, late: list[ReadOp]) -> None:
        """Fail the reads :meth:`_drop_finished` found past their deadline, as a reader would."""
        now = time.monotonic()
        for op in late:
            error = op.too_late(now)
            if self.report is not None:
                self.report(error, {"operation": "submit_query"})
            op.fail(error)

    def _waiting_reads(self) -> int:
        """Queued reads someone still waits for: not given up, not past their deadline.

        Counted, not taken out: this runs under the pool's lock, and failing a read
        runs its future's callbacks.
        """
        if not self._pending:
            return 0
        now = time.monotonic()
        return sum(1 for op in list(self._pending) if op.awaited(now))

    def _dispatch_pending(self) -> None:
        while self._pending:
            connection = self._claim()
            if connection is None:
                return
            ops = self.take_pending()
            if not ops:
                connection.lock.release()
                return
            try:
                if self.events.watches_checkouts:
                    self._check_out(connection)  # lent to its reader: it checks in when done
            finally:  # (sent even past a handler's Ctrl-C: the reads were taken)
                self._send(connection, RunReads(connection, ops))

    # -- maintenance (the supervisor's tick) -------------------------------------------

    def maintain(self, now: float) -> None:
        """Health checks, age recycling, and retiring readers idle above the floor.

        Also the next try to reopen a lost connection; raises :class:`Unrecoverable`
        once readers failed to for ``reader_fault_timeout`` (the supervisor escalates).
        """
        self._reconnect(now)
        self._keep_floor()
        if self._lent:
            self._check_leases(now)
        interval = self.config.health_check_interval
        alive = {thread.ident for thread in threading.enumerate()}
        for connection in self._connections:
            if connection.affinity is not None and connection.affinity not in alive:
                connection.affinity = None  # its thread ended: free for adoption
            if connection.owner.retiring:
                if not connection.usable and connection.lock.acquire(False):
                    self.release(connection)  # its reader retired while it was lent: close
                continue
            if not connection.lock.acquire(False):
                # In use (a thread reading in a loop may never leave it free at a tick).
                # Its own reads exercise it, which is what a health check would (and
                # taking it away for one would only make its thread grow the pool); an
                # age recycle is due at its next release.
                connection.last_check = now
                connection.seen_at(now)
                if now - connection.created_at >= self._recycle_seconds:
                    connection.recycle_at = 0
                continue
            if not connection.usable:
                self._let_go(connection)
                continue
            if connection.last_check == 0.0:
                connection.last_check = now
            connection.seen_at(now)
            if now - connection.created_at >= self._recycle_seconds:
                age = now - connection.created_at
                self._recycle(connection, f"{age:.0f}s old")
            elif interval and now - connection.last_check >= interval:
                self._send(connection, HealthCheck(connection))
            elif (
                len(self._readers) > self.floor
                and now - connection.last_used >= self.config.reader_idle_timeout
                and self._retire_reader(connection)
            ):
                continue
            else:
                self._let_go(connection)

    def _keep_floor(self) -> None:
        """The tick's: start readers while fewer than the floor are ready or starting.

        Whatever took the pool below its floor (a reader that failed to start for a
        resize, say), it heals here. Not while growth backs off after a reader failed
        to start, nor during a fault: a file that cannot be opened gets no start per tick.
        """
        with self._cond:
            if self.closed is not None or self._cannot_grow():
                return
            missing = self.floor - (len(self._readers) + self._starting - self._unwanted)
            for _ in range(missing):
                self._starting += 1
                if not self._grow():
                    self._starting -= 1  # not even asked for (the storage is stopping)
                    return

    def _check_leases(self, now: float) -> None:
        """Take back leases of :meth:`acquire` that nobody can use, or that pin the WAL.

        (See :class:`PooledConnection`.) Not at collection: a lease is collected in
        whatever thread the collector runs, maybe one holding this pool's lock, so the
        tick finds it gone (its weak reference dead) and gives its connection back
        (:meth:`_lease_dropped` acts at once only once the pool is closed).
        """
        for connection, (ref, thread_name) in list(self._lent.items()):
            lease = ref()
            if lease is None:
                # Dropped without release() (released ones leave _lent first).
                self.give_back(connection, _dropped(connection, thread_name), thread_name, ref)
                continue
            if not lease.supervised:
                continue
            owner = lease._thread()
            if owner is None or not owner.is_alive():
                why = (
                    f"the pool took back this connection ({connection.id}): the thread "
                    f"that acquired it ({thread_name!r}) ended without release(). A "
                    "pooled connection is usable only from the thread that acquired it"
                )
                error: type[AtlasError] = ValidationError
            elif lease._too_old(now):
                why = lease._timed_out(connection, now)
                error = TransactionTimeout
            else:
                continue
            if lease._take_back(connection, error, why):  # (else in a call: a later tick)
                self.give_back(connection, why, thread_name, ref)

    def give_back(
        self,
        connection: TrackedConnection,
        why: str,
        thread_name: str,
        seen: weakref.ReferenceType[PooledConnection] | None = None,
    ) -> None:
        """Release a lent connection its lease lost (see :meth:`_check_leases`), warning.

        ``seen``: the lease the tick saw, which must still be the connection's (released
        and lent again since the tick looked, it is someone else's now); None from the
        lease itself.
        """
        entry = self._lent.get(connection)
        if entry is None or (seen is not None and entry[0] is not seen):
            return  # (given back already, or lent again since)
        if self._lent.pop(connection, None) is not entry:
            return  # (closed meanwhile by _lease_dropped, once the pool is closed)
        # (Still the dead or orphaned lease's: nobody else can release it meanwhile.)
        log.warning("%s; given back to the pool (acquired by thread %r)", why, thread_name)
        if connection.state is ConnectionState.ACTIVE:
            connection.state = ConnectionState.IDLE
        self.release(connection)  # (rolls back a read transaction left open)

    def _recycle_reason(self, connection: TrackedConnection) -> str:
        """Why a claimed connection past its ``recycle_at`` is recycled."""
        if connection.queries >= self._recycle_queries:
            return f"{connection.queries} queries"
        return f"{time.monotonic() - connection.created_at:.0f}s old"

    def withdraw_idle(self, connection: TrackedConnection) -> bool:
        """Claim ``connection`` if it is free; True if the caller now holds it."""
        return connection.lock.acquire(False)

    def _retire_reader(self, connection: TrackedConnection) -> bool:
        """Retire the reader of a claimed connection if the pool is above its floor.

        Decided under the lock, so that shrinks and the tick retiring at once never take
        the pool below it. False (the caller still holds the connection) if not.
        """
        with self._cond:
            if len(self._readers) <= self.floor:
                return False
            connection.owner.retiring = True
            self._readers.pop(connection.role, None)
        self._dispose(connection)
        return True

    def _maybe_grow(self) -> None:
        """Start one more reader if callers wait and the ceiling allows (holding the lock)."""
        demand = self._waiting + len(self._pending)
        if demand > self._starting - self._unwanted and not self._cannot_grow():
            self._starting += 1
            if not self._grow():
                self._starting -= 1  # not even asked for (the storage is stopping)

    def in_use(self) -> int:
        """Connections claimed now (by any caller: a read, a borrower, a snapshot)."""
        return sum(1 for connection in self._connections if connection.lock.locked())

    def lent_to(self, threads: Collection[int]) -> int:
        """Connections lent by :meth:`acquire` to any of ``threads`` (by ident).

        Transactions' own (not :attr:`~PooledConnection.supervised`) are left out: the
        wait-for graph records those. A connection a thread in a cycle borrowed comes
        free only when that thread goes on: it counts as taken for good.
        """
        count = 0
        for ref, _ in list(self._lent.values()):
            lease = ref()
            if lease is None or not lease.supervised:
                continue
            owner = lease._thread()
            if owner is not None and owner.ident in threads:
                count += 1
        return count

    def exhausted(self) -> bool:
        """True when no connection is free and the pool cannot grow."""
        free = any(not c.lock.locked() for c in self._connections)
        return not free and len(self._readers) + self._starting >= self.ceiling

    def resize(self, size: int) -> None:
        """Keep ``size`` readers ready: start more, or retire some without failing calls.

        Returns at once: new readers join the pool (and ``status().total``) as they
        start, usually within milliseconds; surplus ones retire once idle, and surplus
        ones still starting as soon as they are ready. Calls from several threads take
        effect one after the other.
        """
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValidationError(f"pool size {size!r}; it must be an integer >= 1")
        if self.closed is not None:
            raise self.closed  # (a closed or failed storage: nothing would start)
        if size > MAX_READERS:
            raise ValidationError(
                f"pool size {size}: at most {MAX_READERS} readers (each is a thread and a "
                "connection; reads need about one per core); pass a smaller size"
            )
        with self._resizing:
            with self._cond:
                self.floor = size
                self.ceiling = max(self.ceiling, size)
                missing = size - len(self._readers) - self._starting
                self._starting += max(0, missing)
                # Readers still starting past ``size`` (asked for by an earlier resize or
                # by growth) retire as they become ready: see reader_ready.
                self._unwanted = max(0, min(self._starting, self.size - size))
                shrink = len(self._readers) > size
            for _ in range(missing):
                if not self._grow():
                    self.expected_growth_failed()
            if shrink:
                self._shrink()

    def _shrink(self) -> None:
        """Retire readers down to the floor (each decided under the lock, as the tick does).

        Readers without a connection first (a fault), then free connections: they close
        at once. Busy ones are marked retiring and close when they are released, so no
        call in flight fails.
        """
        with self._cond:
            down = list(self._down.values())[: max(0, len(self._readers) - self.floor)]
            for reader in down:
                reader.retiring = True
                self._readers.pop(reader.role, None)
        for reader in down:
            self._retire(reader.role)
        for connection in list(self._connections):
            if len(self._readers) <= self.floor:
                return
            if connection.owner.retiring:
                continue
            if connection.lock.acquire(False) and not self._retire_reader(connection):
                self._let_go(connection)  # (the floor was reached meanwhile)
                return
        with self._cond:
            count = len(self._readers) - self.floor
            busy = [r for r in self._readers.values() if not r.retiring][: max(0, count)]
            for reader in busy:
                reader.retiring = True
                self._readers.pop(reader.role, None)
                if reader.connection is not None:
                    reader.connection.usable = False
            # One that lost its connection since the first pass has none to give back:
            # retired now. (One opening a connection sees it is retiring once opened.)
            down = [r for r in busy if self._down.get(r.role) is r]
        for reader in down:
            self.retire_unconnected(reader)

    # -- status and shutdown -----------------------------------------------------------

    def status(self) -> PoolStatus:
        """Total, active, idle connections and waiting requests."""
        with self._cond:
            return self.status_unlocked()

    def status_unlocked(self) -> PoolStatus:
        """:meth:`status` for callers already holding the pool's lock.

        A connection lent by :meth:`acquire` while its reader retired (a shrink) or
        crashed is no longer usable but still open and in use until released: counted,
        as ``db.connections()`` shows it. One that failed under a read is not: it closes
        as that read ends, and counting it would show a pool whole during a fault.
        """
        lent = self._lent
        connections = [
            c
            for c in self._connections
            if c.usable or (c in lent and c.state is not ConnectionState.CLOSED)
        ]
        active = sum(1 for c in connections if c.lock.locked())
        return PoolStatus(
            total=len(connections),
            active=active,
            idle=len(connections) - active,
            waiting_requests=self._waiting + self._waiting_reads(),
        )

    def read_timing(self) -> tuple[float, int]:
        """(seconds, statements) of the timed reads of every reader connection ever.

        Two counters that only grow (a recycled connection's share is kept), so their
        growth over a window gives the mean time of a read over that window.
        """
        with self._cond:
            seconds, count = self._gone_timing
            connections = self._connections
        for connection in connections:
            timed = connection.timed_totals()
            seconds += timed[0]
            count += timed[1]
        return seconds, count

    def connection_infos(self) -> list[ConnectionInfo]:
        """Every reader connection and every reader role waiting for one, by role.

        The pool's connections (a lent one whose reader crashed, stopped or retired
        too), then each reader role none of them serves: RECYCLING while its reader
        replaces its connection, CONNECTING while it opens or reopens one (a new role,
        a restart, a fault's backoff); once the pool is closed, such a role is CLOSED.
        Taken under the pool's lock, under which connections join and leave the pool
        (a reader marks a recycle before its connection leaves, and unmarks it after
        the replacement joined): each role shows once. Costs the reads nothing.
        """
        with self._cond:
            closed = self.closed is not None
            waiting = ConnectionState.CLOSED if closed else ConnectionState.CONNECTING
            infos: list[ConnectionInfo] = []
            served: set[str] = set()  # roles a usable connection of the pool stands for
            listed: set[TrackedConnection] = set()
            for connection in self._connections:
                info = connection.info()
                if info.state is ConnectionState.CLOSED and not closed:
                    continue  # closed just now, on its way out: its role shows below
                infos.append(info)
                listed.add(connection)
                if connection.usable and info.state is not ConnectionState.FAILED:
                    served.add(connection.role)
            for role, reader in self._readers.items():
                if role in served:
                    continue
                recycling, current = reader.recycling, reader.connection
                if recycling is None and current in listed:
                    # Lent while its reader stopped: listed above. Closed, the role has
                    # nothing else to show; else its next connection is on its way.
                    if not closed:
                        infos.append(no_connection(role, waiting))
                    continue
                if recycling is not None:
                    infos.append(recycling.info(ConnectionState.RECYCLING))
                elif current is not None and (
                    closed or current.state is not ConnectionState.CLOSED
                ):
                    infos.append(current.info())  # opened and about to join; or shut down
                else:
                    infos.append(no_connection(role, waiting))
            if not closed:
                infos.extend(
                    no_connection(role, waiting)
                    for role in self._starting_roles
                    if role not in self._readers
                )
        return sorted(infos, key=_by_role)

    def connection_metrics(self) -> dict[str, ConnectionMetrics]:
        """Counters of every open reader connection, by connection id."""
        return {c.id: c.metrics() for c in self._connections}

    def page_cache_counters(self) -> tuple[int, int]:
        """SQLite page-cache (hits, misses) summed over the free connections."""
        hits = misses = 0
        for connection in self._connections:
            if not connection.lock.acquire(False):
                continue  # in use
            try:
                raw = connection.connection
                hits += raw.status(apsw.SQLITE_DBSTATUS_CACHE_HIT)[0]
                misses += raw.status(apsw.SQLITE_DBSTATUS_CACHE_MISS)[0]
            except apsw.Error:
                pass
            finally:
                self._let_go(connection)
        return hits, misses

    def close(self, error: AtlasError | None = None) -> None:
        """Refuse new work; fail queued reads and wake every waiter."""
        self.closed = error or StorageUnavailable("the reader pool is shut down")
        while True:
            try:
                self._pending.popleft().fail(self.closed)
            except IndexError:
                break
        for connection in list(self._connections):
            if connection.lock.acquire(False):
                self._dispose(connection)  # busy ones close when released
        for connection, (ref, thread_name) in list(self._lent.items()):
            if ref() is None:
                # Dropped unreleased since the last tick, and no tick runs any more (one
                # dropped from now on is closed by _lease_dropped).
                self.give_back(connection, _dropped(connection, thread_name), thread_name, ref)
        with self._cond:
            for waiter in self._waiters:
                waiter.ready.set()  # they find nothing handed over and raise ``closed``

"""The reader pool: lends reader connections and routes queued reads to reader actors.

Two read paths share the pool's connections:

* **Synchronous** (``db.query``, ``pool.acquire()``): the caller's thread borrows an idle
  reader connection, runs the statement itself and gives the connection back. Measured
  here, a hop to another thread and back costs 20-25 µs, three times a point read by
  primary key, so this path makes none.
* **Queued** (``pool.submit`` → :class:`~atlas_actors.future.Future`): the read goes to a
  reader actor, which runs it and every other read queued meanwhile before giving its
  connection back (several reads per wake-up).

The pool keeps ``readers`` connections ready and grows up to ``max_readers`` when every
connection is busy and callers wait; readers above the floor retire after
``reader_idle_timeout`` idle seconds. A connection is used by exactly one thread at a
time: whoever took it out of the idle deque (deque operations are atomic in CPython).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import apsw
from pykka._envelope import Envelope

from atlas_actors.actors.reader import HealthCheck, ReadOp, Recycle, RunReads
from atlas_actors.cache.statements import StatementInfo, analyze
from atlas_actors.config import StorageConfig
from atlas_actors.connection import (
    ConnectionMetrics,
    ConnectionState,
    Params,
    TrackedConnection,
)
from atlas_actors.errors import (
    AtlasError,
    OperationTimeout,
    ReadOnlyError,
    StorageUnavailable,
    ValidationError,
    wrap_sqlite_error,
)
from atlas_actors.events import EventBus
from atlas_actors.rows import Row

if TYPE_CHECKING:
    from atlas_actors.actors.reader import ReaderActor

__all__ = ["PoolStatus", "PooledConnection", "ReaderPool"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_READS_PER_WAKEUP = 64


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """The pool at one moment (the plan's ``PoolStatus``)."""

    total: int
    """Reader connections open."""
    active: int
    """Connections lent to callers or busy in their reader."""
    idle: int
    """Connections ready to lend."""
    waiting_requests: int
    """Callers waiting for a connection plus queued reads waiting for a reader."""


class PooledConnection:
    """A reader connection lent by ``pool.acquire()``; give it back with ``release()``.

    Usable from the thread that acquired it until released; a context manager too.
    """

    __slots__ = ("_connection", "_pool")

    def __init__(self, pool: ReaderPool, connection: TrackedConnection) -> None:
        self._pool = pool
        self._connection: TrackedConnection | None = connection

    def _live(self) -> TrackedConnection:
        connection = self._connection
        if connection is None:
            raise ValidationError("this connection was released; acquire another from the pool")
        return connection

    @property
    def id(self) -> str:
        """The connection's id (``reader-0#7``)."""
        return self._live().id

    @property
    def state(self) -> ConnectionState:
        """The connection's state (ACTIVE while lent)."""
        return self._live().state

    @property
    def metrics(self) -> ConnectionMetrics:
        """The connection's counters."""
        return self._live().metrics()

    @property
    def last_used(self) -> float:
        """``time.monotonic()`` of the connection's last use."""
        return self._live().last_used

    def execute(self, sql: str, params: Params = None) -> list[Row]:
        """Run a read statement on this connection and return its rows."""
        return self._pool.run(self._live(), sql, params)

    query = execute

    def release(self) -> None:
        """Give the connection back to the pool (safe to call twice)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool.release(connection)

    def __enter__(self) -> PooledConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_only(error: ReadOnlyError, sql: str) -> ReadOnlyError:
    """Explain a write attempted through the read path."""
    return ReadOnlyError(
        f"{error}; db.query runs on read-only connections: use db.write or "
        "db.execute for statements that change data",
        sql=sql,
        result_code=error.result_code,
        extended_result_code=error.extended_result_code,
    )


class ReaderPool:
    """Lends reader connections and queues reads for reader actors."""

    def __init__(
        self,
        *,
        config: StorageConfig,
        events: EventBus,
        grow: Callable[[], None],
        retire: Callable[[str], None],
        record_query: Callable[[str, float], None] | None = None,
    ) -> None:
        self.config = config
        self.events = events
        self._grow = grow
        self._retire = retire
        self._record_query = record_query
        self.floor = config.readers
        """Readers kept ready (``resize`` changes it)."""
        self.ceiling = config.max_readers
        """Most readers the pool grows to."""
        self._idle: deque[TrackedConnection] = deque()
        self._pending: deque[ReadOp] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._waiting = 0
        self._readers: dict[str, ReaderActor] = {}
        self._starting = 0
        self._last_check: dict[str, float] = {}
        self.closed: AtlasError | None = None
        self._recycle_queries = config.recycle_after_queries or float("inf")
        self._recycle_seconds = config.recycle_after_seconds or float("inf")

    # -- membership (called by the supervisor and reader actors) -----------------------

    def reader_ready(self, reader: ReaderActor) -> None:
        """A reader incarnation opened its connection (it arrives next, via ``checkin``)."""
        with self._cond:
            if reader.role not in self._readers and self._starting:
                self._starting -= 1  # one of the readers asked for by growth or resize
            self._readers[reader.role] = reader

    def reader_gone(self, role: str) -> None:
        """A reader role was removed (retired or the pool shut down)."""
        with self._cond:
            self._readers.pop(role, None)

    def expected_growth_failed(self) -> None:
        """A reader started for growth could not start: stop counting it."""
        with self._cond:
            self._starting = max(0, self._starting - 1)

    @property
    def size(self) -> int:
        """Reader roles alive or starting."""
        return len(self._readers) + self._starting

    # -- the synchronous path ----------------------------------------------------------

    def acquire(self, timeout: float | None = None) -> PooledConnection:
        """Borrow a connection for the calling thread (the plan's ``acquire()``)."""
        return PooledConnection(self, self._take(timeout))

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[PooledConnection]:
        """``with pool.connection() as c:`` acquire, then release on leaving."""
        lease = self.acquire(timeout)
        try:
            yield lease
        finally:
            lease.release()

    def query(self, sql: str, params: Params, timeout: float | None = None) -> list[Row]:
        """Borrow a connection, run ``sql`` in this thread, give the connection back."""
        # The hot read path, inlined: borrow, run, record, give back.
        try:
            connection = self._idle.pop()
        except IndexError:
            connection = self._take(timeout)
        else:
            if connection.state is not ConnectionState.IDLE or connection.owner.retiring:
                self._dispose(connection)
                connection = self._take(timeout)
            else:
                connection.state = ConnectionState.ACTIVE
                if self.events.active:
                    self._emit_checkout(connection)
        try:
            rows = connection.query(sql, params)
            latency = connection.last_latency
        except ReadOnlyError as error:
            self.release(connection)
            raise _read_only(error, sql) from error
        except BaseException:
            self.release(connection)
            raise
        self.release(connection)
        if self._record_query is not None:
            self._record_query(sql, latency)
        return rows

    def query_analyzed(
        self, sql: str, params: Params, timeout: float | None = None
    ) -> tuple[list[Row], StatementInfo, float]:
        """Like :meth:`query`, also returning what the statement touches and its latency.

        The first time a statement text is seen, it is analyzed (prepared in EXPLAIN
        mode with an authorizer) on the borrowed connection before it runs.
        """
        connection = self._take(timeout)
        try:
            info = analyze(connection.connection, sql, params)
            rows = connection.query(sql, params)
            latency = connection.last_latency
        except ReadOnlyError as error:
            raise _read_only(error, sql) from error
        except apsw.Error as error:
            raise wrap_sqlite_error(error, sql) from error
        finally:
            self.release(connection)
        if self._record_query is not None:
            self._record_query(sql, latency)
        return rows, info, latency

    def page_cache_counters(self) -> tuple[int, int]:
        """SQLite page-cache (hits, misses) summed over the idle connections."""
        hits = misses = 0
        for connection in list(self._idle):
            if not self._remove_idle(connection):
                continue  # borrowed meanwhile
            try:
                raw = connection.connection
                hits += raw.status(apsw.SQLITE_DBSTATUS_CACHE_HIT)[0]
                misses += raw.status(apsw.SQLITE_DBSTATUS_CACHE_MISS)[0]
            except apsw.Error:
                pass
            finally:
                self.checkin(connection)
        return hits, misses

    def run_function(self, fn: Callable[[apsw.Connection], T], timeout: float | None = None) -> T:
        """Borrow a connection and call ``fn`` with the raw apsw connection (read-only)."""
        connection = self._take(timeout)
        try:
            return fn(connection.connection)
        finally:
            self.release(connection)

    def run(self, connection: TrackedConnection, sql: str, params: Params) -> list[Row]:
        """Run a read on a borrowed connection, recording it in the workload."""
        try:
            rows = connection.query(sql, params)
        except ReadOnlyError as error:
            raise _read_only(error, sql) from error
        if self._record_query is not None:
            self._record_query(sql, connection.last_latency)
        return rows

    def _emit_checkout(self, connection: TrackedConnection) -> None:
        if "checkout" in self.events.active:
            self.events.emit("checkout", connection.role, connection.id)

    def _take(self, timeout: float | None) -> TrackedConnection:
        deadline = time.monotonic() + (self.config.default_timeout if timeout is None else timeout)
        while True:
            try:
                connection = self._idle.pop()
            except IndexError:
                connection = self._wait_for_connection(deadline)
            if connection.state is ConnectionState.IDLE and not connection.owner.retiring:
                connection.state = ConnectionState.ACTIVE
                if self.events.active:
                    self._emit_checkout(connection)
                return connection
            self._dispose(connection)

    def _wait_for_connection(self, deadline: float) -> TrackedConnection:
        with self._cond:
            self._waiting += 1
            try:
                while True:
                    try:
                        return self._idle.pop()
                    except IndexError:
                        pass
                    if self.closed is not None:
                        raise self.closed
                    self._maybe_grow()
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise OperationTimeout(
                            f"waiting for a reader connection ({self.status_unlocked()})",
                            self.config.default_timeout,
                            applied=False,
                        )
                    self._cond.wait(remaining)
            finally:
                self._waiting -= 1

    def release(self, connection: TrackedConnection) -> None:
        """Give a borrowed connection back."""
        now = time.monotonic()
        connection.last_used = now
        if "checkin" in self.events.active:
            self.events.emit("checkin", connection.role, connection.id)
        if (
            connection.state is ConnectionState.ACTIVE
            and self.closed is None
            and not connection.owner.retiring
            and connection.queries < self._recycle_queries
            and now - connection.created_at < self._recycle_seconds
        ):
            # The common case, kept short: straight back to the idle deque.
            connection.state = ConnectionState.IDLE
            self._idle.append(connection)
            if self._pending:
                self._dispatch_pending()
            if self._waiting:
                with self._cond:
                    self._cond.notify()
            return
        self.checkin(connection)

    # -- the queued path ---------------------------------------------------------------

    def submit(self, op: ReadOp) -> None:
        """Queue a read for a reader actor."""
        if self.closed is not None:
            op.fail(self.closed)
            return
        if len(self._pending) >= self.config.mailbox_size:
            op.fail(
                OperationTimeout(
                    f"{op.describe()} (the read queue is full: "
                    f"{self.config.mailbox_size} reads wait)",
                    0.0,
                    applied=False,
                )
            )
            return
        self._pending.append(op)
        self._dispatch_pending()
        if self._pending:
            with self._cond:
                self._maybe_grow()

    def take_pending(self) -> list[ReadOp]:
        """Up to a batch of queued reads, for a reader about to give its connection back."""
        ops: list[ReadOp] = []
        pending = self._pending
        while len(ops) < _MAX_READS_PER_WAKEUP:
            try:
                ops.append(pending.popleft())
            except IndexError:
                break
        return ops

    def _dispatch_pending(self) -> None:
        while self._pending:
            try:
                connection = self._idle.pop()
            except IndexError:
                return
            if connection.state is not ConnectionState.IDLE or connection.owner.retiring:
                self._dispose(connection)
                continue
            ops = self.take_pending()
            if not ops:
                self._idle.append(connection)
                return
            connection.state = ConnectionState.ACTIVE
            connection.owner.mailbox.put(Envelope(RunReads(connection, ops)))

    # -- connections coming back -------------------------------------------------------

    def checkin(self, connection: TrackedConnection, *, checked: bool = False) -> None:
        """A connection becomes available (returned, recycled, checked or new)."""
        owner = connection.owner
        if checked:
            self._last_check[connection.id] = time.monotonic()
        if connection.state in (ConnectionState.FAILED, ConnectionState.CLOSED) or (
            self.closed is not None or owner.retiring
        ):
            self._dispose(connection)
            return
        reason = self._recycle_reason(connection)
        if reason is not None:
            connection.state = ConnectionState.RECYCLING
            owner.mailbox.put(Envelope(Recycle(connection, reason)))
            return
        connection.state = ConnectionState.IDLE
        self._idle.append(connection)
        if self._pending:
            self._dispatch_pending()
        if self._waiting:
            with self._cond:
                self._cond.notify()

    def _recycle_reason(self, connection: TrackedConnection) -> str | None:
        config = self.config
        if config.recycle_after_queries and connection.queries >= config.recycle_after_queries:
            return f"{connection.queries} queries"
        age = time.monotonic() - connection.created_at
        if config.recycle_after_seconds and age >= config.recycle_after_seconds:
            return f"{age:.0f}s old"
        return None

    def _dispose(self, connection: TrackedConnection) -> None:
        """Close a connection that must not be lent again; retire its reader if asked."""
        if connection.state is not ConnectionState.CLOSED:
            connection.close()
            self.events.emit("disconnect", connection.role, connection.id, reason="disposed")
        self._last_check.pop(connection.id, None)
        owner = connection.owner
        if owner.retiring and owner.connection is connection:
            self._retire(owner.role)

    # -- maintenance (the supervisor's tick) -------------------------------------------

    def maintain(self, now: float) -> None:
        """Health checks of idle connections; retire readers idle above the floor."""
        interval = self.config.health_check_interval
        for connection in list(self._idle):
            if connection.owner.retiring:
                continue
            if interval and now - self._last_check.setdefault(connection.id, now) >= interval:
                if self._remove_idle(connection):
                    connection.state = ConnectionState.ACTIVE
                    connection.owner.mailbox.put(Envelope(HealthCheck(connection)))
            elif (
                len(self._readers) > self.floor
                and now - connection.last_used >= self.config.reader_idle_timeout
                and self._remove_idle(connection)
            ):
                self._retire_reader(connection)

    def withdraw_idle(self, connection: TrackedConnection) -> bool:
        """Take ``connection`` out of the idle deque; True if it was there (now yours)."""
        return self._remove_idle(connection)

    def _remove_idle(self, connection: TrackedConnection) -> bool:
        try:
            self._idle.remove(connection)
        except ValueError:
            return False  # someone borrowed it meanwhile
        return True

    def _retire_reader(self, connection: TrackedConnection) -> None:
        connection.owner.retiring = True
        with self._cond:
            self._readers.pop(connection.role, None)
        self._dispose(connection)

    def exhausted(self) -> bool:
        """True when no connection is idle and the pool cannot grow."""
        return not self._idle and len(self._readers) + self._starting >= self.ceiling

    def _maybe_grow(self) -> None:
        """Start one more reader if callers wait and the ceiling allows (holding the lock)."""
        demand = self._waiting + len(self._pending)
        if demand > self._starting and len(self._readers) + self._starting < self.ceiling:
            self._starting += 1
            self._grow()

    def resize(self, size: int) -> None:
        """Keep ``size`` readers ready: start more, or retire some without failing calls."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValidationError(f"pool size {size!r}; it must be an integer >= 1")
        with self._cond:
            self.floor = size
            self.ceiling = max(self.ceiling, size)
            missing = size - len(self._readers) - self._starting
            self._starting += max(0, missing)
            surplus = len(self._readers) - size
        for _ in range(missing):
            self._grow()
        if surplus > 0:
            self._shrink(surplus)

    def _shrink(self, count: int) -> None:
        # Idle readers first: their connection can close at once. Busy ones are marked
        # retiring and close when their connection comes back, so no call in flight fails.
        while count > 0:
            try:
                connection = self._idle.popleft()
            except IndexError:
                break
            self._retire_reader(connection)
            count -= 1
        if count > 0:
            with self._cond:
                busy = [r for r in self._readers.values() if not r.retiring][:count]
                for reader in busy:
                    reader.retiring = True
                    self._readers.pop(reader.role, None)

    # -- status and shutdown -----------------------------------------------------------

    def status(self) -> PoolStatus:
        """Total, active, idle connections and waiting requests."""
        with self._cond:
            return self.status_unlocked()

    def status_unlocked(self) -> PoolStatus:
        """:meth:`status` for callers already holding the pool's lock."""
        total = sum(
            1
            for reader in self._readers.values()
            if reader.connection is not None
            and reader.connection.state is not ConnectionState.CLOSED
        )
        idle = len(self._idle)
        return PoolStatus(
            total=total,
            active=max(0, total - idle),
            idle=idle,
            waiting_requests=self._waiting + len(self._pending),
        )

    def connection_metrics(self) -> dict[str, ConnectionMetrics]:
        """Counters of every open reader connection, by connection id."""
        metrics: dict[str, ConnectionMetrics] = {}
        for reader in list(self._readers.values()):
            connection = reader.connection
            if connection is not None:
                metrics[connection.id] = connection.metrics()
        return metrics

    def close(self, error: AtlasError | None = None) -> None:
        """Refuse new work; fail queued reads and wake every waiter."""
        self.closed = error or StorageUnavailable("the reader pool is shut down")
        while True:
            try:
                self._pending.popleft().fail(self.closed)
            except IndexError:
                break
        while True:
            try:
                connection = self._idle.pop()
            except IndexError:
                break
            connection.close()
        with self._cond:
            self._cond.notify_all()

"""A reader actor: owns one ``query_only`` connection and its life.

The reader opens its connection, hands it to the pool, and from then on acts on
messages about it: run a batch of queued reads (:class:`RunReads`: several reads per
wake-up), check its health (:class:`HealthCheck`), reopen it (:class:`Recycle`). The
pool may also *lend* the connection to a caller's thread for a synchronous read (see
``pool.py``): a thread hop costs about three point reads here, so the synchronous path
runs the statement where the caller is. Whoever holds the connection (the reader, or
the caller it is lent to) is its only user until it goes back to the pool.

A connection that fails its health check, or that cannot be opened (a recycle, a
restart), is a fault of the file or the disk, not a bug of the reader: the reader
closes it, tells the pool (``connection_lost``) and lives on without one until the pool
sends :class:`Reopen`. The pool spaces those tries out and makes one reader try at a
time while the fault lasts (see ``ReaderPool``), so that a fault every reader sees is
one fault. Only an exception that is no SQLite error crashes the reader (a bug: the
supervisor restarts it, under its restart intensity).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import apsw

from atlas_actors.actors.base import Crash, Op, RoleActor
from atlas_actors.config import StorageConfig
from atlas_actors.connection import ConnectionState, Params, TrackedConnection
from atlas_actors.errors import AtlasError, wrap_sqlite_error
from atlas_actors.events import EventBus
from atlas_actors.future import Future
from atlas_actors.telemetry.tracing import Tracing

if TYPE_CHECKING:
    from atlas_actors.actors.pool import ReaderPool

__all__ = [
    "HEALTH_CHECK_SQL",
    "HealthCheck",
    "ReadOp",
    "ReaderActor",
    "Recycle",
    "Reopen",
    "RunReads",
]

log = logging.getLogger(__name__)

HEALTH_CHECK_SQL = "SELECT count(*) FROM sqlite_schema"
"""What a health check runs: it reads the schema, so it fails when the file cannot be read."""


class ReadOp(Op):
    """A read statement → ``list[Row]``."""

    __slots__ = ("params", "sql")

    def __init__(
        self, future: Future[Any], session: int, trace_context: Any, sql: str, params: Params
    ) -> None:
        super().__init__(future, session, trace_context)
        self.sql = sql
        self.params = params


@dataclass(frozen=True, slots=True)
class RunReads:
    """Run ``ops`` on ``connection`` (lent by the pool), then give it back."""

    connection: TrackedConnection
    ops: list[ReadOp]


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Check ``connection`` still works, then give it back (or fail and be restarted)."""

    connection: TrackedConnection


@dataclass(frozen=True, slots=True)
class Recycle:
    """Close ``connection`` and open a fresh one in its place."""

    connection: TrackedConnection
    reason: str


@dataclass(frozen=True, slots=True)
class Reopen:
    """The pool's go-ahead for a reader without a connection to open (and check) one."""

    reason: str
    """Why the reader has none: the error it lost its last one to."""


def run_read(
    connection: TrackedConnection,
    op: ReadOp,
    tracing: Tracing,
    report: Callable[[BaseException, dict[str, Any] | None], object] | None = None,
) -> None:
    """Run one queued read on ``connection`` and resolve its future.

    A read that fails is reported (``report``: log once, count), as the writer reports
    a write that fails: its caller learns of it only through the future.
    """
    if not op.claim():
        return  # withdrawn by a caller that timed out
    now = time.monotonic()
    if now > op.deadline:
        late = op.too_late(now)
        if report is not None:
            report(late, {"operation": "submit_query"})
        op.fail(late)
        return
    connection.bound(op.deadline - now)  # stopped where the caller stops waiting
    with tracing.consumer_span("atlas.reader.query", op.trace_context, op.sql) as span:
        try:
            rows = connection.query(op.sql, op.params)
        except Exception as error:
            Tracing.record_error(span, error)
            if report is not None:
                report(error, {"operation": "submit_query", "sql": op.sql})
            op.fail(error)
            return
    op.future.set_result(rows)


class ReaderActor(RoleActor):
    """One reader of the pool."""

    def __init__(
        self,
        *,
        config: StorageConfig,
        events: EventBus,
        tracing: Tracing,
        pool: ReaderPool,
        connect: Callable[[], apsw.Connection],
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.config = config
        self.events = events
        self.tracing = tracing
        self.pool = pool
        self.connect = connect
        self.connection: TrackedConnection | None = None
        self.retiring = False
        """Set by the pool when the pool shrinks: the connection closes when it returns."""
        self._holding: TrackedConnection | None = None
        self._unfinished: list[ReadOp] = []
        self._lost: str | None = None
        """The id of the connection this reader lost last (a fault), until it reopens."""
        self.recycling: TrackedConnection | None = None
        """The connection this reader is recycling, until its replacement joined the
        pool (``db.connections()`` shows the role RECYCLING meanwhile)."""

    def _open(self, *, check: bool = False) -> TrackedConnection:
        """Open a connection (and run a health check on it first, if ``check``)."""
        raw = self.connect()
        connection = TrackedConnection(raw, self.role, owner=self)
        if check:
            try:
                connection.cursor.execute(HEALTH_CHECK_SQL).fetchall()
            except apsw.Error as error:
                connection.close()
                raise wrap_sqlite_error(error, "health check") from error
        connection.bound_statements(self.config.default_timeout)  # every read has a deadline
        connection.lock.acquire()  # claimed by this actor until it is checked in
        self.connection = connection
        self.events.emit("connect", self.role, connection.id, incarnation=self.incarnation)
        return connection

    def on_start(self) -> None:
        """Open the connection and give it to the pool.

        The first incarnation of a role raises if it cannot (``open()`` or the pool's
        growth learns of it at once); a restarted one checks its connection first, and
        if it cannot open a sound one, joins the pool without a connection and reopens
        it when the pool says (see the module docstring).
        """
        try:
            connection = self._open(check=self.incarnation > 1)
        except AtlasError as error:
            if self.incarnation == 1:
                raise
            log.warning("%s could not open its connection: %s", self.role, str(error))
            self.pool.reader_ready(self, connected=False)
            self.pool.connection_lost(self, error)
            return
        self.pool.reader_ready(self)
        self.pool.checkin(connection)

    def on_stop(self) -> None:
        """Retired or shut down: close the connection, or have its user close it."""
        connection = self.connection
        if connection is None or connection.state is ConnectionState.CLOSED:
            return
        connection.usable = False  # a caller using it now closes it when done
        if connection.lock.acquire(timeout=1.0):
            self.pool.forget(connection)
            self._close(connection, "stop")

    def on_crash(self, current: Op | None, error: BaseException | None) -> None:
        """Mark the connection dead; give unfinished reads to other readers."""
        super().on_crash(current, error)
        self.recycling = None  # (the role is CONNECTING now: it restarts)
        connection, self.connection = self.connection, None
        holding, self._holding = self._holding, None
        if connection is not None:
            connection.usable = False  # (first: acquire() checks it after marking ACTIVE)
            connection.state = ConnectionState.FAILED
            if holding is connection or self.pool.withdraw_idle(connection):
                self.pool.forget(connection)
                self._close(connection, "crash")
            # Otherwise it is lent to a caller, who finishes and the pool then closes it.
        unfinished, self._unfinished = self._unfinished, []
        for op in unfinished:
            self.pool.submit(op)

    def _retired_while_opening(self, connection: TrackedConnection) -> None:
        """Close the connection just opened, not lent yet: the pool shrank meanwhile."""
        self.connection = None
        self.recycling = None
        self._lost = None
        self._close(connection, "retired")
        self.pool.retire_unconnected(self)

    def _close(self, connection: TrackedConnection, reason: str) -> None:
        connection.close()
        self.events.emit("disconnect", self.role, connection.id, reason=reason)

    def on_receive(self, message: Any) -> Any:
        """Handle reads and connection maintenance."""
        if isinstance(message, RunReads):
            self._run_reads(message)
        elif isinstance(message, HealthCheck):
            self._health_check(message.connection)
        elif isinstance(message, Recycle):
            self._recycle(message.connection, message.reason)
        elif isinstance(message, Reopen):
            self._reopen(message.reason)
        elif isinstance(message, Crash):
            self.crash_if_mine(message)
        else:
            return super().on_receive(message)
        return None

    def _mine(self, connection: TrackedConnection) -> bool:
        """True if ``connection`` is this incarnation's; else dispose of the stale one."""
        if connection is self.connection and connection.usable:
            return True
        # (A shrink marked this reader retiring while the message was on its way: the
        # pool retires it here, or nothing ever would and its thread would live on.)
        self.pool._dispose(connection)
        return False

    def _run_reads(self, message: RunReads) -> None:
        connection = message.connection
        if not self._mine(connection):
            # Sent to an incarnation that died meanwhile: other readers take the reads.
            for op in message.ops:
                self.pool.submit(op)
            return
        self._holding = connection
        self._unfinished = list(message.ops)
        while self._unfinished:
            op = self._unfinished.pop(0)
            self._current = op
            run_read(connection, op, self.tracing, self.pool.report)
            self._current = None
            if not self._unfinished:
                # Drain more queued reads before giving the connection back.
                self._unfinished = self.pool.take_pending()
        self._holding = None
        self.pool.checkin(connection)

    def _health_check(self, connection: TrackedConnection) -> None:
        if not self._mine(connection):
            return
        self._holding = connection
        connection.bound(None)  # (not the last read's deadline, maybe past)
        try:
            connection.cursor.execute(HEALTH_CHECK_SQL).fetchall()
        except apsw.Error as error:
            wrapped = wrap_sqlite_error(error, "health check")
            self.events.emit("health_check_failed", self.role, connection.id, error=repr(wrapped))
            log.debug("%s failed its health check: %s", self.role, wrapped)
            self._lose(connection, wrapped, "health check failed")
            return
        self._holding = None
        self.pool.checkin(connection, checked=True)

    def _lose(self, connection: TrackedConnection, error: BaseException, reason: str) -> None:
        """Close ``connection`` (held by this reader) and go on without one: a fault."""
        self.pool.forget(connection)
        self._close(connection, reason)
        self.connection = None
        self._holding = None
        self._lost = connection.id
        self.pool.connection_lost(self, error)

    def _recycle(self, connection: TrackedConnection, reason: str) -> None:
        if not self._mine(connection):
            return
        # RECYCLING (the pool chose it) until the fresh one has joined the pool.
        self.recycling = connection
        self._holding = connection
        self.pool.forget(connection)
        self._close(connection, "recycle")
        self.connection = None
        self._holding = None
        try:
            fresh = self._open()
        except AtlasError as error:
            log.debug("%s could not reopen its connection: %s", self.role, str(error))
            self._lost = connection.id
            self.recycling = None  # no replacement: the role is CONNECTING (a fault)
            self.pool.connection_lost(self, error)
            return
        if self.retiring:
            # Marked while it had none (a shrink): ``usable`` could not be cleared on it.
            self._retired_while_opening(fresh)
            return
        self.pool.join(fresh)
        self.recycling = None
        # Once replaced, before anyone can have the fresh connection: a handler sees it
        # serving, the old one gone, and hears of it before its first checkout.
        self.events.emit("recycle", self.role, fresh.id, replaced=connection.id, reason=reason)
        self.pool.checkin(fresh)

    def _reopen(self, reason: str) -> None:
        """Open a fresh connection in place of the one lost, and check it before use."""
        if self.connection is not None or self.retiring:
            # A new incarnation opened one at its start (or this one was retired): the
            # pool need not wait for this try any more.
            self.pool.reopen_not_needed(self)
            return
        try:
            fresh = self._open(check=True)
        except AtlasError as error:
            self.events.emit(
                "health_check_failed", self.role, None, error=repr(error), reopening=True
            )
            log.debug("%s could not reopen its connection: %s", self.role, str(error))
            self.pool.connection_lost(self, error)
            return
        # Retired while it opened (the open may take long)? Then the pool must not count
        # it again, nor lend what it opened.
        if not self.pool.reader_ready(self, reopened=True):
            self._retired_while_opening(fresh)
            return
        replaced, self._lost = self._lost, None
        self.pool.join(fresh)
        # Once it serves (IDLE; the role was CONNECTING until here), before its first use.
        self.events.emit("recycle", self.role, fresh.id, replaced=replaced, reason=reason)
        self.pool.checkin(fresh, checked=True)

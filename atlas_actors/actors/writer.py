"""The writer actor: the only connection that writes, with group commit.

Group commit (DESIGN.md): the first write of a batch opens ``BEGIN IMMEDIATE``; each
write runs under its own ``SAVEPOINT`` so a failing one rolls back only itself and fails
only its own future; when the mailbox holds no more messages (or the batch reaches
``max_batch_size`` writes or ``max_batch_delay`` seconds) the batch commits once, the
commit hooks run (cache invalidation), and only then do the futures resolve. With
``synchronous=FULL`` one fsync thus acknowledges a whole batch.

Messages it receives are defined here: :class:`WriteOp`, :class:`WriteManyOp`,
:class:`WriteAllOp`, :class:`UnitOfWorkOp`, and :class:`Crash` (fault injection).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from time import monotonic
from typing import Any

import apsw

from atlas_actors.actors.base import Crash, InjectedCrash, Op, RoleActor, _op_ids
from atlas_actors.config import StorageConfig
from atlas_actors.connection import Params, TrackedConnection, WriteResult, open_connection
from atlas_actors.errors import (
    ActorCrashedError,
    CorruptionError,
    DiskIOError,
    OperationTimeout,
    wrap_sqlite_error,
)
from atlas_actors.events import EventBus
from atlas_actors.future import Future
from atlas_actors.telemetry.tracing import Tracing

__all__ = [
    "UnitOfWorkOp",
    "WriteAllOp",
    "WriteManyOp",
    "WriteOp",
    "WriterActor",
    "WriterOp",
    "WriterStats",
    "in_writer_thread",
]

log = logging.getLogger(__name__)

_local = threading.local()


def in_writer_thread() -> bool:
    """True in a writer actor's thread (code run by ``run_in_writer``)."""
    return getattr(_local, "writer", False)


class WriterOp(Op):
    """A unit of work for the writer, run under its own savepoint."""

    __slots__ = ("sql",)
    span_name = "atlas.writer.write"

    def __init__(
        self, future: Future[Any], session: int, trace_context: Any, sql: str | None
    ) -> None:
        super().__init__(future, session, trace_context)
        self.sql = sql
        """The statement text, for spans and errors (None for a function)."""

    def run(self, connection: TrackedConnection) -> Any:
        """Do the work on the writer's connection and return the future's value."""
        raise NotImplementedError


class WriteOp(WriterOp):
    """One statement (or a script of several) with its parameters → :class:`WriteResult`."""

    __slots__ = ("params", "statement")

    def __init__(
        self, future: Future[Any], session: int, trace_context: Any, sql: str, params: Params
    ) -> None:
        # Op.__init__ inlined: this runs once per write.
        self.id = next(_op_ids)
        self.future = future
        self.session = session
        self.deadline = future.deadline
        self.enqueued_at = monotonic()
        self.trace_context = trace_context
        self.claimed = False
        self.sql = sql
        self.statement = sql
        self.params = params

    def run(self, connection: TrackedConnection) -> WriteResult:
        """Run the statement."""
        return connection.write(self.statement, self.params)


class WriteManyOp(WriterOp):
    """One statement run once per parameter set → one :class:`WriteResult` (total rowcount)."""

    __slots__ = ("seq_of_params", "statement")
    span_name = "atlas.writer.write_many"

    def __init__(
        self,
        future: Future[Any],
        session: int,
        trace_context: Any,
        sql: str,
        seq_of_params: Sequence[Params],
    ) -> None:
        super().__init__(future, session, trace_context, sql)
        self.statement = sql
        self.seq_of_params = seq_of_params

    def run(self, connection: TrackedConnection) -> WriteResult:
        """Run the statement for every parameter set."""
        return connection.write_many(self.statement, self.seq_of_params)


class WriteAllOp(WriterOp):
    """Several statements, all or nothing → a list of :class:`WriteResult`."""

    __slots__ = ("statements",)
    span_name = "atlas.writer.write_all"

    def __init__(
        self,
        future: Future[Any],
        session: int,
        trace_context: Any,
        statements: Sequence[tuple[str, Params]],
        text: str | None = None,
    ) -> None:
        # Op.__init__ inlined: this runs once per write.
        self.id = next(_op_ids)
        self.future = future
        self.session = session
        self.deadline = future.deadline
        self.enqueued_at = monotonic()
        self.trace_context = trace_context
        self.claimed = False
        self.sql = text if text is not None else "; ".join(sql for sql, _ in statements)
        self.statements = statements

    def run(self, connection: TrackedConnection) -> list[WriteResult]:
        """Run each statement in order; the first failure undoes them all."""
        return [connection.write(sql, params) for sql, params in self.statements]


class UnitOfWorkOp(WriterOp):
    """``fn(connection)`` run inside the writer → whatever ``fn`` returns.

    Not replayed after a crash: ``fn`` may have had effects outside the database.
    """

    __slots__ = ("fn",)
    span_name = "atlas.writer.run"
    replayable = False

    def __init__(
        self,
        future: Future[Any],
        session: int,
        trace_context: Any,
        fn: Callable[[apsw.Connection], Any],
    ) -> None:
        super().__init__(future, session, trace_context, None)
        self.fn = fn

    def run(self, connection: TrackedConnection) -> Any:
        """Call the function with the raw apsw connection."""
        return self.fn(connection.connection)


_OP_TYPES = frozenset({WriteOp, WriteManyOp, WriteAllOp, UnitOfWorkOp})


@dataclass(frozen=True, slots=True)
class WriterStats:
    """Counters of the writer (all incarnations of this storage)."""

    writes: int
    """Operations acknowledged (committed)."""
    failed: int
    """Operations that failed (their own error; nothing else affected)."""
    batches: int
    """Group commits done."""
    mean_batch: float
    """Mean operations per commit."""
    max_batch: int
    """Largest batch committed."""
    queue_wait: float
    """Mean seconds an operation waited in the mailbox."""


class _Counters:
    """Mutable counters shared by the writer's incarnations (written by one thread)."""

    def __init__(self) -> None:
        self.writes = 0
        self.failed = 0
        self.batches = 0
        self.max_batch = 0
        self.queue_wait = 0.0
        self.started = 0

    def snapshot(self) -> WriterStats:
        return WriterStats(
            writes=self.writes,
            failed=self.failed,
            batches=self.batches,
            mean_batch=self.writes / self.batches if self.batches else 0.0,
            max_batch=self.max_batch,
            queue_wait=self.queue_wait / self.started if self.started else 0.0,
        )


CommitHook = Callable[[TrackedConnection], None]


class WriterActor(RoleActor):
    """Owns the write connection; runs writes in group-committed batches."""

    def __init__(
        self,
        *,
        path: str,
        config: StorageConfig,
        events: EventBus,
        tracing: Tracing,
        counters: _Counters,
        commit_hooks: Sequence[CommitHook],
        on_connected: Callable[[TrackedConnection], None] | None = None,
        vfs: str | None = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.path = path
        self.config = config
        self.events = events
        self.tracing = tracing
        self.counters = counters
        self.commit_hooks = commit_hooks
        self.on_connected = on_connected
        self.vfs = vfs
        self.connection: TrackedConnection | None = None
        self._batch: list[tuple[WriterOp, Any]] = []
        self._spans: list[Any] = []
        self._in_transaction = False
        self._batch_started = 0.0

    # -- lifecycle ---------------------------------------------------------------------

    def on_start(self) -> None:
        """Open and check the write connection (in the actor's thread)."""
        _local.writer = True
        raw = open_connection(
            self.path,
            writer=True,
            synchronous=self.config.synchronous,
            busy_timeout=self.config.busy_timeout,
            cache_size_kib=self.config.cache_size_kib,
            max_value_bytes=self.config.max_value_bytes,
            vfs=self.vfs,
        )
        connection = TrackedConnection(raw, "writer", owner=self)
        if self.incarnation > 1 and self.config.verify_on_restart:
            self._verify(connection)
        self.connection = connection
        if self.on_connected is not None:
            self.on_connected(connection)
        self.events.emit("connect", "writer", connection.id, incarnation=self.incarnation)

    def _verify(self, connection: TrackedConnection) -> None:
        """After a restart, check the file before serving writes again."""
        result = connection.connection.execute("PRAGMA quick_check").fetchall()
        if result != [("ok",)]:
            connection.close()
            raise CorruptionError(
                f"quick_check after a writer restart failed: {result[:5]!r}; "
                "stop writing, restore from a backup or investigate a copy",
                sql="PRAGMA quick_check",
            )

    def on_stop(self) -> None:
        """Graceful stop: commit the open batch, acknowledge it, close the connection."""
        if self._in_transaction:
            self._commit()
        self._close("stop")

    def on_crash(self, current: Op | None, error: BaseException | None) -> None:
        """Roll back the open batch; replay what had no effect, fail what may have."""
        super().on_crash(current, error)
        batch, self._batch = self._batch, []
        self._spans = []
        self._in_transaction = False
        replay: list[Op] = []
        for op, _ in batch:
            if op.replayable:
                replay.append(op)
            else:
                op.fail(ActorCrashedError("writer", op.describe(), error))
        self._close("crash")  # closing rolls the open transaction back
        if replay:
            self.mailbox.replay(replay)

    def _close(self, reason: str) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close()
            self.events.emit("disconnect", "writer", connection.id, reason=reason)

    # -- messages ----------------------------------------------------------------------

    def _handle_receive(self, message: Any) -> Any:
        # Write ops skip pykka's generic dispatch: this is the hot path.
        if type(message) in _OP_TYPES:
            self._run(message)
            result = None
        else:
            result = super()._handle_receive(message)
        if self._in_transaction and (
            self.mailbox.empty()
            or len(self._batch) >= self.config.max_batch_size
            or time.monotonic() - self._batch_started >= self.config.max_batch_delay
        ):
            self._commit()
        return result

    def on_receive(self, message: Any) -> Any:
        """Run a write op, or obey a control message."""
        if isinstance(message, WriterOp):
            self._run(message)
            return None
        if isinstance(message, Crash):
            raise InjectedCrash(message.reason)
        return super().on_receive(message)

    def stats(self) -> WriterStats:
        """The writer's counters (ask this through the actor's proxy)."""
        return self.counters.snapshot()

    # -- group commit ------------------------------------------------------------------

    def _run(self, op: WriterOp) -> None:
        if not op.claim():
            return  # the caller timed out and withdrew it before it started
        now = time.monotonic()
        if now > op.deadline:
            self.counters.failed += 1
            op.fail(OperationTimeout(op.describe(), now - op.enqueued_at, applied=False))
            return
        connection = self.connection
        assert connection is not None, "on_start opened the connection"
        cursor = connection.cursor
        self.counters.started += 1
        self.counters.queue_wait += now - op.enqueued_at
        if not self._in_transaction:
            try:
                cursor.execute("BEGIN IMMEDIATE")
            except apsw.Error as error:
                self.counters.failed += 1
                op.fail(wrap_sqlite_error(error, "BEGIN IMMEDIATE"))
                return
            self._in_transaction = True
            self._batch_started = now
        self._current = op
        tracing = self.tracing
        if tracing.enabled:
            with tracing.consumer_span(op.span_name, op.trace_context, op.sql) as span:
                self._savepoint(op, cursor, connection, span)
                self._spans.append(span)
        else:
            self._savepoint(op, cursor, connection, None)
        self._current = None

    def _savepoint(
        self, op: WriterOp, cursor: apsw.Cursor, connection: TrackedConnection, span: Any
    ) -> None:
        cursor.execute("SAVEPOINT op")
        try:
            result = op.run(connection)
        except Exception as error:
            self._undo(op, cursor, error, span)
            return
        cursor.execute("RELEASE op")
        self._batch.append((op, result))

    def _undo(self, op: WriterOp, cursor: apsw.Cursor, error: Exception, span: Any) -> None:
        """Roll back one failed op; if SQLite dropped the whole transaction, replay the batch."""
        self.counters.failed += 1
        # A function run in the writer keeps its own exception; SQLite's are typed.
        wrapped = error if op.sql is None else wrap_sqlite_error(error, op.sql)
        Tracing.record_error(span, wrapped)
        if self.connection is not None and self.connection.connection.in_transaction:
            cursor.execute("ROLLBACK TO op; RELEASE op")
        else:
            # Some errors (SQLITE_FULL, IOERR, ON CONFLICT ROLLBACK) roll back the whole
            # transaction (https://sqlite.org/lang_transaction.html#response_to_errors
            # _within_a_transaction): the earlier ops of the batch are gone, so they run
            # again in a fresh transaction before anything else.
            self._in_transaction = False
            lost = [queued for queued, _ in self._batch]
            self._batch = []
            self._spans = []
            replay = [queued for queued in lost if queued.replayable]
            for queued in lost:
                if not queued.replayable:
                    queued.fail(ActorCrashedError("writer", queued.describe(), error))
            self.mailbox.replay(replay)
        op.fail(wrapped if wrapped is not error else error)

    def _commit(self) -> None:
        connection = self.connection
        assert connection is not None, "a batch is open only with a connection"
        batch, self._batch = self._batch, []
        spans, self._spans = self._spans, []
        self._in_transaction = False
        tracing = self.tracing
        with tracing.batch_span("atlas.writer.commit", spans, **{"atlas.batch.size": len(batch)}):
            try:
                connection.cursor.execute("COMMIT")
            except apsw.Error as error:
                self._commit_failed(connection, batch, error)
                return
            self._run_commit_hooks(connection)
        counters = self.counters
        counters.batches += 1
        counters.writes += len(batch)
        counters.max_batch = max(counters.max_batch, len(batch))
        for op, result in batch:
            op.future.set_result(result)

    def _commit_failed(
        self,
        connection: TrackedConnection,
        batch: Iterable[tuple[WriterOp, Any]],
        error: apsw.Error,
    ) -> None:
        """COMMIT failed: SQLite rolled back (or we do): every op of the batch fails."""
        log.warning("group commit failed: %s", error)
        if connection.connection.in_transaction:
            try:
                connection.cursor.execute("ROLLBACK")
            except apsw.Error:
                log.exception("rollback after a failed commit failed")
        wrapped = wrap_sqlite_error(error, "COMMIT")
        if isinstance(wrapped, DiskIOError):
            # An fsync that fails leaves the commit's WAL frames written but unsynced:
            # SQLite reports failure, yet WAL recovery after a crash may still find them.
            wrapped.args = (
                f"{wrapped}; the commit's outcome is uncertain: the write is not visible "
                "now, but may reappear after a crash and WAL recovery. Check before "
                "retrying a non-idempotent write.",
            )
        for op, _ in batch:
            self.counters.failed += 1
            op.fail(wrapped)

    def _run_commit_hooks(self, connection: TrackedConnection) -> None:
        # Hooks (cache invalidation) run after COMMIT and before any future resolves, so
        # no caller sees its write acknowledged while a stale cache entry survives.
        for hook in self.commit_hooks:
            try:
                hook(connection)
            except Exception:
                log.exception("commit hook %r failed", hook)

"""Stable handles: ``db.writer`` and ``db.supervisor`` keep working across restarts.

A handle never holds an actor reference. The writer handle puts its messages in the
writer role's mailbox, which every incarnation of the writer reads, so a restart
between sending and handling changes nothing for the caller. The supervisor handle
talks to the (never restarted) supervisor actor, with a deadline on every wait.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from threading import get_ident
from time import monotonic
from typing import TYPE_CHECKING, Any, TypeVar

import apsw
import pykka
from opentelemetry import trace

from atlas_actors.actors.base import Mailbox, Op
from atlas_actors.actors.supervisor import KillMode, SupervisorActor, SupervisorStatus
from atlas_actors.actors.writer_ops import (
    UnitOfWorkOp,
    WriteAllOp,
    WriteManyOp,
    WriteOp,
    WriterStats,
    _writer_threads,
)
from atlas_actors.connection import Params, WriteResult
from atlas_actors.errors import (
    TEXT_TYPES,
    AtlasError,
    DeadlockError,
    OperationTimeout,
    ParameterError,
    StorageUnavailable,
    not_pairs_error,
    params_type_error,
)
from atlas_actors.future import (
    _PENDING,
    Future,
    SqlText,
    StatementTypeError,
    checked_timeout,
    freeze_pairs,
    parameter_sets,
    sql_text,
    statement_type_error,
)
from atlas_actors.telemetry.tracing import Tracing, batch_attributes

if TYPE_CHECKING:
    from atlas_actors.storage import Storage

__all__ = ["SupervisorHandle", "WriterFuture", "WriterHandle", "batch_call_attributes", "end_span"]

T = TypeVar("T")


class WriterFuture(Future[T]):
    """A future resolved by the writer; waiting on it from inside the writer is refused."""

    __slots__ = ("handle",)

    handle: WriterHandle | None
    """The handle whose deadlock guard ``get()`` applies: set for writes, None for the
    lease's own messages (set by the :class:`WriterHandle` that creates the future)."""

    def get(self, timeout: float | None = None) -> T:
        """Wait for the writer's result (see :meth:`Future.get`)."""
        if timeout is not None:
            timeout = checked_timeout(timeout)  # (ValidationError, as every call's)
        if self._value is _PENDING:  # not self.done(), inlined
            me = get_ident()
            if me in _writer_threads:  # in_writer_thread(), inlined
                raise DeadlockError(
                    ["writer thread", f"waits on {self.operation}", "writer thread"],
                    "code running inside the writer (run_in_writer) cannot wait for "
                    "another write: use the connection it was given instead",
                )
            handle = self.handle
            if handle is not None and me in handle.guarded_threads:  # holders of something
                waited = handle.check_wait(self)
                try:
                    return Future.get(self, timeout)
                finally:
                    if waited is not None:
                        waited()  # (the wait recorded in the wait-for graph is over)
            # Future.get's wait, inlined: one call less on every write.
            remaining = self.deadline - monotonic()
            if timeout is not None and timeout < remaining:
                remaining = timeout
            if remaining <= 0 or not self._done.acquire(True, remaining):
                self._timed_out(remaining if timeout is None else timeout)
            else:
                self._done.release()  # every later waiter must find it free too
        if self._error is not None:
            raise self._error
        value: T = self._value
        return value

    def _report_timeout(self, error: OperationTimeout) -> None:
        handle = self.handle
        if handle is not None:  # (a lease's own message: the transaction reports it)
            handle._storage.errors.handle(error, {"operation": self._verb})


class WriterHandle:
    """``db.writer``: send work to the writer; every method returns a future.

    ``future.get(timeout)`` waits for the result; the write is acknowledged (committed
    and, with ``synchronous=FULL``, synced) when the future resolves.
    """

    def __init__(self, storage: Storage, mailbox: Mailbox) -> None:
        self._storage = storage
        self._mailbox = mailbox
        self._tracing = storage.tracing
        self._default_timeout = storage.config.default_timeout
        self.guarded_threads = storage.guarded_threads
        """The threads whose waits the deadlock guard checks (the storage's set)."""

    def execute(
        self, sql: str, params: Params = None, *, timeout: float | None = None
    ) -> WriterFuture[WriteResult]:
        """Run a writing statement (or a script); resolves to a :class:`WriteResult`."""
        return self.submit(WriteOp, "write", sql, (sql, params), timeout, traced=True)

    def executemany(
        self, sql: str, seq_of_params: Sequence[Params], *, timeout: float | None = None
    ) -> WriterFuture[WriteResult]:
        """Run one statement per parameter set, all or nothing; one :class:`WriteResult`."""
        sets = parameter_sets(seq_of_params, sql)
        return self.submit(WriteManyOp, "write_many", sql, (sql, sets), timeout, traced=True)

    def write_all(
        self, statements: Sequence[tuple[str, Params]], *, timeout: float | None = None
    ) -> WriterFuture[list[WriteResult]]:
        """Run several statements as one unit: all commit or none does."""
        # The hot path of db.write_all too: statement_pairs() and, untraced, submit()
        # inlined (no generic call with *args, ~1k instructions; no Mailbox.send call).
        try:
            statements = list(statements)  # a copy: the caller may reuse its list
        except TypeError:  # (an int, None: not a list of pairs)
            raise not_pairs_error(statements) from None
        try:
            for sql, params in statements:  # ValueError or TypeError unless a pair
                if type(sql) is not str:
                    raise statement_type_error(statements)
                if type(params) in TEXT_TYPES:  # (one character per placeholder otherwise)
                    raise params_type_error(params, sql)
        except (ValueError, TypeError) as error:  # (only a failed check pays for this)
            if isinstance(error, StatementTypeError | ParameterError):
                raise
            raise statement_type_error(statements) from None
        freeze_pairs(statements)  # (after the checks: what params raise is their own)
        if self._tracing.enabled:
            return self.submit(
                WriteAllOp, "write_all", statements, (statements,), timeout, traced=True
            )
        storage = self._storage
        if storage._state != "running" or storage.write_block is not None:
            storage.check_writable()
        now = monotonic()
        deadline = now + (self._default_timeout if timeout is None else checked_timeout(timeout))
        future: WriterFuture[list[WriteResult]] = WriterFuture(deadline, "write_all", statements)
        future.handle = self
        op = WriteAllOp(future, get_ident(), None, statements, now)
        mailbox = self._mailbox
        queued = mailbox._queue
        if (
            mailbox.closed is None
            and queued.qsize() + mailbox.held + len(mailbox._front) < mailbox.capacity
        ):
            queued.put(op)  # mailbox.send(op) when open with room, inlined
            if mailbox.closed is not None:
                mailbox.fail_all(mailbox.closed)  # closed while we queued
        else:
            try:
                mailbox.send(op)  # raises, or waits for room
            except AtlasError as error:
                if not error.reported:
                    storage.errors.handle(error, {"operation": "write_all"})
                raise
        return future

    def run(
        self, fn: Callable[[apsw.Connection], T], *, timeout: float | None = None
    ) -> WriterFuture[T]:
        """Run ``fn(connection)`` inside the writer, in its own savepoint.

        ``fn`` gets the writer's apsw connection; whatever it returns resolves the
        future, whatever it raises fails it (and undoes what it wrote): its own
        exceptions as raised, SQLite's typed as every call's (``ConstraintError``,
        ``DiskFullError``, ..., the apsw error as ``__cause__``). It must not wait
        on the storage, end the writer's transaction or savepoint (``COMMIT``,
        ``ROLLBACK``, ``RELEASE``) or leave a writing statement running (a ``RETURNING``
        cursor not read to the end): its call then fails with ``ValidationError``, and
        nothing it did commits. After a writer crash it is not run again (it might have
        had effects outside the database): its future fails with ``ActorCrashedError``.
        """
        name = getattr(fn, "__qualname__", repr(fn))
        return self.submit(UnitOfWorkOp, f"run_in_writer {name}", None, (fn,), timeout, traced=True)

    def check_wait(self, future: WriterFuture[Any]) -> Callable[[], None] | None:
        """The deadlock guard of ``future.get()`` in a guarded thread.

        A lease holder's, or one pinning a reader: refuses a cycle, and records the wait
        behind the lease while it lasts; returns what ends that record, or None.
        """
        return self._storage._guard(f"waits on {future.operation}", record=True)

    def stats(self) -> WriterStats:
        """The writer's counters: writes, batches, mean batch size, queue wait."""
        return self._storage.writer_counters.snapshot()

    def submit(
        self,
        op_class: type[Op],
        verb: str,
        sql: SqlText,
        args: tuple[Any, ...],
        timeout: float | None,
        *,
        traced: bool,
    ) -> WriterFuture[Any]:
        """Queue an op in the writer's mailbox (internal; the public methods call it).

        Lease messages have their own :meth:`submit_lease`.
        """
        storage = self._storage
        if storage._state != "running" or storage.write_block is not None:
            storage.check_writable()  # (called only when it raises: this runs per write)
        deadline = time.monotonic() + (
            self._default_timeout if timeout is None else checked_timeout(timeout)
        )
        future: WriterFuture[Any] = WriterFuture(deadline, verb, sql)
        tracing = self._tracing
        context = None
        if tracing.enabled:
            if traced:
                span = tracing.start_client_span(
                    "atlas.writer.submit",
                    sql_text(sql),
                    **batch_call_attributes(op_class, sql, args),
                )
                if span is not None:
                    context = trace.set_span_in_context(span)
                    future.add_done_callback(lambda f: end_span(span, f))
            else:
                context = tracing.current_context()
        future.handle = self
        try:
            self._mailbox.send(op_class(future, threading.get_ident(), context, *args))
        except BaseException as error:  # not queued (full, closed): nobody would resolve it
            if future.claim():  # (queued after all, and taken by the writer: it resolves it)
                future.set_exception(error)  # (ends the call's span, through its callback)
            if isinstance(error, AtlasError) and not error.reported:
                storage.errors.handle(error, {"operation": verb})  # (a full mailbox's timeout)
            raise
        return future

    def submit_lease(
        self,
        op_class: type[Op],
        verb: str,
        args: tuple[Any, ...],
        *,
        writable: bool,
        deliver: Callable[[Any], bool] | None = None,
    ) -> WriterFuture[Any]:
        """Queue a transaction's lease message (internal: ``LeaseRequest``/``LeaseReturn``).

        :meth:`submit` without what lease messages never need: a span of their own (the
        caller's context goes along) and the deadlock guard on waiting (the transaction
        checks the wait-for graph itself). ``writable=False`` skips the writes-stopped
        check (a transaction giving its lease back must always get through);
        ``deliver(op)`` may take the op instead of the mailbox (True: taken).
        """
        storage = self._storage
        if storage._state != "running" or (writable and storage.write_block is not None):
            if writable:
                storage.check_writable()
            else:
                storage.check_usable()
        future: WriterFuture[Any] = WriterFuture(
            time.monotonic() + self._default_timeout, verb, None
        )
        future.handle = None  # (the transaction checks the wait-for graph itself)
        tracing = self._tracing
        context = tracing.current_context() if tracing.enabled else None
        op = op_class(future, threading.get_ident(), context, *args)
        if deliver is None or not deliver(op):
            self._mailbox.send(op, bounded=writable)  # (a return ends the hold: never waits)
        return future


def batch_call_attributes(
    op_class: type[Op], sql: SqlText, args: tuple[Any, ...]
) -> dict[str, Any]:
    """The batch attributes of a call's span (``write_many``: one set per operation)."""
    try:
        return batch_attributes(sql, len(args[1]) if op_class is WriteManyOp else None)
    except TypeError:  # (SQL that is not text: the op refuses it, recorded on the span)
        return {}


def end_span(span: trace.Span, future: Future[Any]) -> None:
    """End the CLIENT span of a call that returned ``future``, failed if the call failed."""
    error = future.exception(0) if future.done() else None
    if error is not None:
        Tracing.record_error(span, error)
    span.end()


class SupervisorHandle:
    """``db.supervisor``: status and fault injection."""

    def __init__(
        self,
        ref: pykka.ActorRef[SupervisorActor],
        timeout: float,
        unavailable: Callable[[], StorageUnavailable] | None = None,
    ) -> None:
        self._ref = ref
        self._proxy = ref.proxy()
        self._timeout = timeout
        self.unavailable = unavailable
        """Returns the error a call raises once the supervisor has stopped (the storage's
        own: :class:`StorageClosedError` after ``close()``); None: a generic one."""
        self.report: Callable[[AtlasError, str], object] | None = None
        """Logs and counts an error the handle raises itself (set by the storage)."""

    def status(self) -> SupervisorStatus:
        """Each child with role, incarnation, restarts and state."""
        return self._ask(self._proxy.status, "supervisor.status()")  # type: ignore[no-any-return]

    def kill(self, role: str, how: KillMode = "crash") -> int:
        """Inject a failure into ``role`` (``writer``, ``reader-0``, ...).

        ``how="crash"``: the actor fails as if it had a bug; ``how="stop"``: it stops
        silently and the liveness check must notice. Returns the incarnation hit.
        """
        return self._ask(  # type: ignore[no-any-return]
            lambda: self._proxy.kill(role, how), f"supervisor.kill({role!r})"
        )

    def _ask(self, call: Callable[[], pykka.Future[Any]], what: str) -> Any:
        actor = self._ref._actor_weakref()
        if threading.get_ident() == getattr(actor, "thread_ident", None):
            # (an event handler run by the supervisor: restart, escalate...)
            error = DeadlockError(
                ["supervisor thread", what, "supervisor thread"],
                "an event handler runs in the supervisor, which cannot answer it until "
                "the handler returns: ask from another thread, or after the event",
            )
            if self.report is not None:
                self.report(error, what)
            raise error
        try:
            return call().get(timeout=self._timeout)
        except pykka.Timeout:
            raise OperationTimeout(what, self._timeout, applied=None) from None
        except pykka.ActorDeadError:  # the storage was closed (its supervisor stopped)
            raise self._gone(what) from None

    def _gone(self, what: str) -> StorageUnavailable:
        if self.unavailable is not None:
            return self.unavailable()
        return StorageUnavailable(
            f"{what}: the storage's supervisor has stopped (the storage was closed); "
            "open it again with atlas_actors.open(path)"
        )

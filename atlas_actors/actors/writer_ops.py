"""The messages the writer actor receives, and its counters.

Writes (:class:`WriteOp`, :class:`WriteManyOp`, :class:`WriteAllOp`,
:class:`UnitOfWorkOp`) run in the group-committed batch; lease messages
(:class:`LeaseRequest`, :class:`LeaseReturn`, :class:`LeaseExpired`) lend the write
connection to an interactive transaction (see ``transaction/lease.py``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from time import monotonic
from typing import Any

import apsw

from atlas_actors.actors.base import Escaped, Notice, Op, _op_ids
from atlas_actors.connection import Params, TrackedConnection, WriteResult
from atlas_actors.errors import TEXT_TYPES, DiskFullError, ValidationError, params_type_error
from atlas_actors.future import Future, frozen_params, sql_text, sql_type_error
from atlas_actors.telemetry.tracing import batch_attributes

__all__ = [
    "OP_TYPES",
    "CheckpointOp",
    "DiskFullFound",
    "LeaseExpired",
    "LeaseRequest",
    "LeaseReturn",
    "UnitOfWorkOp",
    "WriteAllOp",
    "WriteManyOp",
    "WriteOp",
    "WriterCounters",
    "WriterOp",
    "WriterStats",
    "in_writer_thread",
    "mark_writer_thread",
    "unmark_writer_thread",
]


_writer_threads: set[int] = set()
"""Idents of the threads running a writer now (of any storage). A set, not a
``threading.local``: the wait for a write asks it every time, and a thread-local
attribute costs more than ``get_ident()``, which that wait needs anyway."""

if hasattr(os, "register_at_fork"):  # (not on Windows)
    # A forked child runs none of its parent's writers, and its new threads may get
    # their idents: a stale one would refuse a plain wait as a deadlock.
    os.register_at_fork(after_in_child=_writer_threads.clear)


def mark_writer_thread() -> None:
    """Mark the calling thread as a writer's (for the deadlock guard)."""
    _writer_threads.add(threading.get_ident())


def unmark_writer_thread() -> None:
    """The calling writer thread is ending (its ident may be reused by another)."""
    _writer_threads.discard(threading.get_ident())


def in_writer_thread() -> bool:
    """True in a writer actor's thread (code run by ``run_in_writer``)."""
    return threading.get_ident() in _writer_threads


class WriterOp(Op):
    """A unit of work for the writer, run under its own savepoint."""

    __slots__ = ("statement",)
    span_name = "atlas.writer.write"

    def __init__(
        self, future: Future[Any], session: int, trace_context: Any, sql: str | None
    ) -> None:
        super().__init__(future, session, trace_context)
        self.statement = sql
        """The one statement's text (None: a function, or several statements)."""

    @property
    def sql(self) -> str | None:
        """The text of what the op runs, for spans and errors (None for a function)."""
        return self.statement

    def batch_attributes(self) -> dict[str, Any]:
        """Its span's batch attributes (``tracing.batch_attributes``): none but a batch's."""
        return {}

    def run(self, connection: TrackedConnection) -> Any:
        """Do the work on the writer's connection and return the future's value."""
        raise NotImplementedError


class WriteOp(WriterOp):
    """One statement (or a script of several) with its parameters → :class:`WriteResult`."""

    __slots__ = ("params",)
    statement: str

    def __init__(
        self, future: Future[Any], session: int, trace_context: Any, sql: str, params: Params
    ) -> None:
        # Op.__init__ inlined: this runs once per write.
        if type(sql) is not str:  # (refused here, in the caller: it would crash the writer)
            raise sql_type_error(sql, built=False)
        kind = type(params)
        if kind is list:  # (the caller may reuse its list: see frozen_params)
            params = tuple(params)  # type: ignore[arg-type]
        elif kind is not tuple and params is not None:
            if kind in TEXT_TYPES:  # (the writer may run it without write()'s check)
                raise params_type_error(params, sql)
            params = frozen_params(params)
        self.id = next(_op_ids)
        self.future = future
        self.session = session
        self.deadline = future.deadline
        self.enqueued_at = monotonic()
        self.trace_context = trace_context
        self.claimed = False
        self.statement = sql
        self.params = params

    def run(self, connection: TrackedConnection) -> WriteResult:
        """Run the statement."""
        return connection.write(self.statement, self.params)


class WriteManyOp(WriterOp):
    """One statement run once per parameter set → one :class:`WriteResult` (total rowcount)."""

    __slots__ = ("seq_of_params",)
    statement: str
    span_name = "atlas.writer.write_many"

    def __init__(
        self,
        future: Future[Any],
        session: int,
        trace_context: Any,
        sql: str,
        seq_of_params: Sequence[Params],
    ) -> None:
        if type(sql) is not str:
            raise sql_type_error(sql, built=False)
        super().__init__(future, session, trace_context, sql)
        self.seq_of_params = seq_of_params

    def run(self, connection: TrackedConnection) -> WriteResult:
        """Run the statement for every parameter set."""
        return connection.write_many(self.statement, self.seq_of_params)

    def batch_attributes(self) -> dict[str, Any]:
        """A batch of its parameter sets (two or more)."""
        return batch_attributes(self.statement, len(self.seq_of_params))


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
        enqueued_at: float | None = None,
    ) -> None:
        # Op.__init__ inlined: this runs once per write. ``enqueued_at``: the caller's
        # clock reading, when it has one (a call to the clock costs as much as this).
        self.id = next(_op_ids)
        self.future = future
        self.session = session
        self.deadline = future.deadline
        self.enqueued_at = monotonic() if enqueued_at is None else enqueued_at
        self.trace_context = trace_context
        self.claimed = False
        self.statement = None
        self.statements = statements

    @property
    def sql(self) -> str:
        """The statements' text joined with ``"; "`` (built only for spans and errors)."""
        return sql_text(self.statements)

    def run(self, connection: TrackedConnection) -> list[WriteResult]:
        """Run each statement in order; the first failure undoes them all."""
        return connection.write_pairs(self.statements)

    def batch_attributes(self) -> dict[str, Any]:
        """A batch of its statements (two or more)."""
        return batch_attributes(self.statements)


class UnitOfWorkOp(WriterOp):
    """``fn(connection)`` run inside the writer → whatever ``fn`` returns.

    Not replayed after a crash: ``fn`` may have had effects outside the database.
    """

    __slots__ = ("ended", "fn")
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
        self.ended = False
        """True once the function ended the writer's transaction (and the batch with it)."""

    def run(self, connection: TrackedConnection) -> Any:
        """Call the function with the raw apsw connection.

        If it raises a ``BaseException`` that is no ``Exception`` (``SystemExit``, a test
        framework's outcome), that fails this call alone, as any exception would: its
        savepoint is rolled back, and its caller gets the original (:meth:`fail`).

        The function must not end the writer's transaction: a ``COMMIT`` would commit
        the batch's other writes before they are acknowledged (and, the batch's end
        failing, they would run again). While it runs, SQLite's commit hook turns any
        ``COMMIT`` into a rollback, and the rollback hook notes that the batch is gone
        (its ``ROLLBACK``, or its statement's ``ON CONFLICT ROLLBACK``): then
        :attr:`ended` is set, and the call fails (its own exception, if it raised one).
        """
        raw = connection.connection
        refused: list[bool] = []

        def refuse_commit() -> bool:
            refused.append(True)
            return True  # (SQLite rolls back instead)

        def note_rollback() -> None:
            self.ended = True

        raw.set_commit_hook(refuse_commit)
        raw.set_rollback_hook(note_rollback)
        try:
            result = self.fn(raw)
        except Exception as error:
            if refused:  # (its own error is SQLite's refusal: say what it was)
                raise ended_error(self) from error
            raise
        except BaseException as error:
            raise Escaped(error) from error
        finally:
            raw.set_commit_hook(None)
            raw.set_rollback_hook(None)
        if self.ended:
            raise ended_error(self)
        return result

    def fail(self, error: BaseException) -> None:
        """Resolve the future with ``error`` (the function's own, if it escaped)."""
        super().fail(error.original if isinstance(error, Escaped) else error)


def ended_error(op: UnitOfWorkOp) -> ValidationError:
    """Mark ``op``'s function as having ended the writer's transaction; its error."""
    op.ended = True
    return ValidationError(
        f"{op.describe()} ended the writer's transaction or savepoint (its COMMIT, END, "
        "ROLLBACK or RELEASE, or a statement's ON CONFLICT ROLLBACK): the writer commits "
        "each batch itself, so a function run in it must leave transaction control alone "
        "(use db.transaction() to group statements); nothing it did was committed, and "
        "the batch's writes run again"
    )


OP_TYPES = frozenset({WriteOp, WriteManyOp, WriteAllOp, UnitOfWorkOp})
"""The write ops (the hot path dispatches on their exact type)."""


@dataclass(frozen=True, slots=True)
class WriterStats:
    """Counters of the writer (all incarnations of this storage)."""

    writes: int
    """Operations acknowledged (committed)."""
    failed: int
    """Operations that failed (their own error; nothing else affected)."""
    batches: int
    """Group commits done that acknowledged at least one operation."""
    mean_batch: float
    """Mean operations per commit."""
    max_batch: int
    """Largest batch committed."""
    queue_wait: float
    """Mean seconds an operation waited in the mailbox."""
    handovers: int = 0
    """Leases passed straight from a committing transaction to the next one waiting."""
    regrouped: int = 0
    """Writes run a second time, alone under their own savepoint, because a write of
    the group sharing their savepoint failed (that write included; see ``writer.py``)."""


class WriterCounters:
    """Mutable counters shared by the writer's incarnations (written by one thread)."""

    __slots__ = (
        "batches",
        "checkpoints",
        "commit_seq",
        "failed",
        "handovers",
        "last_checkpoint",
        "max_batch",
        "queue_wait",
        "regrouped",
        "started",
        "wal_frames",
        "writes",
    )

    def __init__(self) -> None:
        self.writes = 0
        self.failed = 0
        self.batches = 0
        self.max_batch = 0
        self.queue_wait = 0.0
        self.started = 0
        self.commit_seq = 0
        """Commits that changed something, over every incarnation (the writer version)."""
        self.wal_frames = 0
        """Frames in the WAL after the last commit."""
        self.checkpoints = 0
        """Checkpoints run."""
        self.last_checkpoint: float | None = None
        """``time.time()`` of the last checkpoint."""
        self.handovers = 0
        """Leases handed over between transactions (by the lease holders, one at a time)."""
        self.regrouped = 0
        """Writes run again alone after a failure in their shared savepoint."""

    def snapshot(self) -> WriterStats:
        """The counters as a :class:`WriterStats`."""
        return WriterStats(
            writes=self.writes,
            failed=self.failed,
            batches=self.batches,
            mean_batch=self.writes / self.batches if self.batches else 0.0,
            max_batch=self.max_batch,
            queue_wait=self.queue_wait / self.started if self.started else 0.0,
            handovers=self.handovers,
            regrouped=self.regrouped,
        )


CommitHook = Callable[[TrackedConnection], None]


class LeaseRequest(Op):
    """Lend the write connection to transaction ``tx_id`` → a ``Lease``.

    ``expected_commits`` (repeatable_read) is how many commits of this storage the
    transaction's snapshot saw (-1: not known); if there were others since, the
    request fails with ``TransactionConflict`` instead. Other processes' commits are
    the transaction's to find (see ``Transaction._changed_since_snapshot``).
    """

    __slots__ = ("expected_commits", "lease_timeout", "owner", "tx_id")

    def __init__(
        self,
        future: Future[Any],
        session: int,
        trace_context: Any,
        tx_id: int,
        lease_timeout: float,
        expected_commits: int | None,
    ) -> None:
        super().__init__(future, session, trace_context)
        self.tx_id = tx_id
        self.owner = session
        self.lease_timeout = lease_timeout
        self.expected_commits = expected_commits


class LeaseReturn(Op):
    """Transaction ``tx_id`` gives the connection back.

    Its savepoint was released (``commit``: the future resolves once the batch commits)
    or rolled back.
    """

    __slots__ = ("commit", "lost", "plain", "tables", "tx_id")
    replayable = False  # a crash rolls the transaction back: it must fail, not rerun

    def __init__(
        self,
        future: Future[Any],
        session: int,
        trace_context: Any,
        tx_id: int,
        commit: bool,
        lost: bool = False,
        tables: AbstractSet[str] | None = None,
        plain: bool = False,
    ) -> None:
        super().__init__(future, session, trace_context)
        self.tx_id = tx_id
        self.commit = commit
        self.lost = lost
        """SQLite rolled the whole batch back under the transaction (SQLITE_FULL...)."""
        self.tables = tables
        """Tables the transaction changed (None: unknown)."""
        self.plain = plain
        """Each of the transaction's statements is known to leave the schema alone."""


class CheckpointOp(Op):
    """Run a WAL checkpoint (outside any batch) → (frames in the WAL, frames copied)."""

    __slots__ = ("mode",)

    def __init__(self, future: Future[Any], session: int, trace_context: Any, mode: str) -> None:
        super().__init__(future, session, trace_context)
        self.mode = mode


@dataclass(frozen=True, slots=True)
class DiskFullFound(Notice):
    """A transaction's statement found the disk full (sent in front of the mailbox).

    The writer refuses plain writes from now on, as when one of them finds it.
    """

    error: DiskFullError


@dataclass(frozen=True, slots=True)
class LeaseExpired(Notice):
    """The lease of ``tx_id`` ran past its timeout (sent by a timer)."""

    tx_id: int

"""The writer actor: the only connection that writes, with group commit.

Group commit (DESIGN.md): the first write of a batch opens ``BEGIN IMMEDIATE``; each
write is isolated by a ``SAVEPOINT`` so a failing one rolls back only itself and fails
only its own future; when the mailbox holds no more messages (or the batch reaches
``max_batch_size`` writes or ``max_batch_delay`` seconds) the batch commits once, the
commit hooks run (cache invalidation), and only then do the futures resolve. With
``synchronous=FULL`` one fsync thus acknowledges a whole batch.

Consecutive replayable writes (statements; not ``run_in_writer`` functions) share one
savepoint, the *group*: every SQLite call releases the GIL, and under threads busy in
Python each one costs the writer a wait for the GIL back, which every write of the
batch then pays. When a write of the group fails, the group is rolled back, its earlier
writes run again each under its own savepoint, and the failing one runs again under its
own, so it fails alone as before; the rest of that batch takes a savepoint per write.

Interactive transactions borrow the connection under a lease (``transaction/lease.py``):
the writer opens a savepoint for them inside the batch and stashes everyone else's
messages until the lease comes back, so transactions are group-committed too.

When the disk is full the writer degrades to read-only: writes fail at once with
``DiskFullError``, except one probe write per ``disk_full_probe_interval``; the first
probe that commits ends the degradation by itself.

The messages it receives are defined in ``writer_ops.py``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import apsw

from atlas_actors.actors.base import Crash, Escaped, Op, RoleActor, sort_out
from atlas_actors.actors.writer_ops import (
    OP_TYPES,
    CheckpointOp,
    DiskFullFound,
    LeaseExpired,
    LeaseRequest,
    LeaseReturn,
    UnitOfWorkOp,
    WriteAllOp,
    WriteManyOp,
    WriteOp,
    WriterCounters,
    WriterOp,
    WriterStats,
    ended_error,
    mark_writer_thread,
    unmark_writer_thread,
)
from atlas_actors.cache.dependencies import RowImage
from atlas_actors.cache.statements import StatementAnalyses
from atlas_actors.config import StorageConfig
from atlas_actors.connection import (
    Params,
    TrackedConnection,
    WriteResult,
    busy_wait_limit,
    changes_schema,
)
from atlas_actors.errors import (
    ActorCrashedError,
    AtlasError,
    CorruptionError,
    DiskFullError,
    DiskIOError,
    OperationTimeout,
    SQLiteError,
    TransactionAborted,
    TransactionConflict,
    TransactionTimeout,
    ValidationError,
    wrap_sqlite_error,
)
from atlas_actors.events import EventBus
from atlas_actors.future import _PENDING
from atlas_actors.telemetry.tracing import Tracing
from atlas_actors.transaction.lease import Lease

__all__ = ["WriterActor", "WriterHooks"]

log = logging.getLogger(__name__)

_GROUP = "atlas_group"
"""The savepoint shared by consecutive replayable writes of a batch."""
_ROW_IMAGE_LIMIT = 1024
"""Row images kept per table and batch; past it, the cache drops the table's entries."""


def _yes() -> bool:
    return True


def _ignore(*_: Any) -> None:
    return None


@dataclass(frozen=True, slots=True)
class WriterHooks:
    """How the writer tells the storage about things (each called in the writer thread)."""

    connected: Callable[[TrackedConnection], None] = _ignore
    """A new connection is open (once per incarnation)."""
    disconnected: Callable[[], None] = _ignore
    """The incarnation's connection closed (its thread is about to end)."""
    version: Callable[[tuple[int, int, int]], None] = _ignore
    """The writer version changed: (commits by this storage, SQLite data_version as of
    the last BEGIN, incarnation). Each incarnation publishes its own at start: its
    connection counts data_version afresh, from a state that may include commits the
    last one never saw."""
    error: Callable[[BaseException, str | None], None] = _ignore
    """An operation failed with this error (statement text or None): log and count it."""
    corruption: Callable[[CorruptionError], None] = _ignore
    """SQLite reported corruption: the storage stops writes and verifies the file."""
    disk_full: Callable[[], bool] = lambda: False
    """Whether the storage is degraded by a full disk (an earlier incarnation said so)."""
    schema_changed: Callable[[], None] = _ignore
    """A commit (ours or another process's) changed the schema."""
    began: Callable[[], None] = _ignore
    """A batch holds the write lock now (the cache settles its external-change count)."""
    will_commit: Callable[[], None] = _ignore
    """A COMMIT of changes is about to run."""
    committed: Callable[
        [frozenset[str] | None, bool, dict[str, list[RowImage] | None] | None], None
    ] = _ignore
    """A COMMIT succeeded: the tables it changed (None: unknown), whether it wrote WAL
    frames, and the images of the rows it changed by table (None: unknown; collected
    when ``track_tables``). Runs before any write of it is acknowledged: the cache
    invalidates here."""
    commit_failed: Callable[[], None] = _ignore
    """A COMMIT failed."""
    track_tables: bool = False
    """Work out which tables each batch changes (only the cache needs it)."""
    wal_change: Callable[[], int | None] = _ignore
    """The wal-index change counter (``cache/changes.py``), None when it cannot be read."""
    wants_rows: Callable[[], bool] = _yes
    """Asked as each batch begins (with ``track_tables``): collect the images of the
    rows it changes? Without them the cache invalidates whole tables."""
    lease_granted: Callable[[Lease], None] = _ignore
    """A transaction borrowed the connection."""
    lease_ended: Callable[[Lease], None] = _ignore
    """The lease came back, expired or was revoked."""
    write_block: Callable[[], AtlasError | None] = lambda: None
    """Why the storage refuses writes now (stopped for a check, read-only), if it does:
    asked as each batch begins, for writes accepted before the block came."""
    hold_reads: Callable[[float], contextlib.AbstractContextManager[object]] = lambda _seconds: (
        contextlib.nullcontext()
    )
    """New reads of this storage wait, for these seconds at most, while the context
    lasts: the automatic TRUNCATE's (``ReaderPool.hold_reads``)."""
    lease_passed: Callable[[Lease, Lease], None] | None = None
    """The first lease came back and the second was granted in its place (a hand-over,
    in the returning transaction's thread): ``lease_ended`` then ``lease_granted`` in
    one call. None: those two are called instead."""


_BUSY_ANSWER_MARGIN = 0.05
"""Seconds before a call's deadline at which the writer stops waiting out another
process's lock for it, so that the call fails with SQLITE_BUSY in time."""
_TRUNCATE_WAIT = 0.1
"""Seconds the writer first waits for readers when it truncates a WAL past its limit."""
_READ_HOLD = 0.25
"""Seconds an automatic TRUNCATE holds new reads off, at most (see ReaderPool.hold_reads)."""
_CHECKPOINT_WAIT = 1.0
"""Seconds an explicit FULL, RESTART or TRUNCATE checkpoint waits for readers, at most."""
_TRUNCATE_BACKOFF = 9.0
"""Writing time between two such truncations, as a multiple of the last one's."""
_RUN_MAX = 32
"""Most queued writes :meth:`WriterActor._run_queued` runs together: between runs the
writer checks ``max_batch_delay`` (a run of many slow statements could overrun it)."""


def _set_results(ops: Sequence[Op], done: Sequence[list[WriteResult]]) -> None:
    """Give each op its unit's results (a ``write`` its one result), as far as ``done``."""
    for op, results in zip(ops, done, strict=False):
        op.result = results if type(op) is WriteAllOp else results[0]


class StatementLeftRunning(RuntimeError):
    """A function run in the writer keeps a writing statement running.

    Nothing can commit on the connection until it ends, so the writer restarts (closing
    its connection ends the statement).
    """


def _wrapped(op: WriterOp, error: Exception) -> BaseException:
    """What the caller of a failed ``op`` gets for ``error``.

    A function run in the writer keeps its own exception; SQLite's are typed (the
    original as the cause), as every other call's: a full disk found by a function
    degrades the storage as a write's does.
    """
    if op.sql is not None:
        return wrap_sqlite_error(error, op.sql)
    if isinstance(error, apsw.Error):
        wrapped = wrap_sqlite_error(error)
        wrapped.__cause__ = error
        return wrapped
    return error


def _left_running(op: WriterOp, cause: BaseException | None = None) -> ValidationError:
    error = ValidationError(
        f"{op.describe()} left a statement running (a cursor of a writing statement, such "
        "as INSERT ... RETURNING, not read to its end): read all its rows, or close it, "
        "before the function returns; nothing it did was committed"
    )
    error.__cause__ = cause  # (what the function raised, if it did)
    return error


def _rolled_back_with_batch(op: Op, reason: str) -> TransactionAborted:
    what = f"transaction {op.tx_id}" if isinstance(op, LeaseReturn) else op.describe()
    return TransactionAborted(
        f"{what} was rolled back with the writer's batch, because {reason}; nothing of "
        "it was committed: run it again"
    )


class WriterActor(RoleActor):
    """Owns the write connection; runs writes in group-committed batches."""

    def __init__(
        self,
        *,
        config: StorageConfig,
        events: EventBus,
        tracing: Tracing,
        counters: WriterCounters,
        hooks: WriterHooks,
        connect: Callable[[], apsw.Connection],
        statements: StatementAnalyses | None = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.statements = statements or StatementAnalyses()
        """What the database's statements touch (the storage's, shared with readers)."""
        self.config = config
        self.events = events
        self.tracing = tracing
        self.counters = counters
        self.hooks = hooks
        self.connect = connect
        self.connection: TrackedConnection | None = None
        self._batch: list[Op] = []
        """The batch's ops in order, each with its ``result`` (acknowledged at COMMIT)."""
        self._spans: dict[int, Any] = {}
        """Op id → the consumer span of its last run (traced only): the commit links those
        of the ops it commits, not of runs rolled back and run again, nor failed ones."""
        self._in_transaction = False
        self._group_start: int | None = None
        """Index in the batch of the first write of the open group (None: no group)."""
        self._group_failed = False
        """A write of this batch failed inside a group: no more groups in this batch."""
        self._alone: set[int] = set()
        """Ids of writes sent back by a failed group: each runs under its own savepoint,
        in whichever batch it lands (the batch may commit before they run again)."""
        self._batch_started = 0.0
        self._data_version = 0
        self._change_at_begin: int | None = None
        self._change_expected: int | None = None
        """The wal-index change counter the next batch finds if nobody else committed
        (None: unknown, so the batch asks SQLite's data_version)."""
        self._batch_plain = False
        """Every statement of the batch is known to leave the schema alone."""
        self._lease: Lease | None = None
        self._stash: list[Op] = []
        self._prune_stash_at = 0
        """Stash length at which :meth:`_hold` next drops what nobody waits for."""
        # Lease requests that arrived during a lease with nothing stashed before them;
        # a returning transaction may hand the connection straight to the first one.
        self._lease_queue: deque[LeaseRequest] = deque()
        self._chained: deque[LeaseReturn] = deque()  # handed over, acked at COMMIT
        self._chain_length = 0
        self._handing_over = threading.Lock()
        """Held by a hand-over (in a committing transaction's thread) while it changes
        the lease, and by a stop or crash before they take the lease back."""
        self._ending = False
        """Set (under ``_handing_over``) once this incarnation stops or crashes: no
        transaction hands the lease on any more."""
        self._schema_version = 0
        self._batch_tables: set[str] | None = set()
        self._wrote_frames = False
        self.wal_frames = 0
        """Frames in the WAL after the last commit (from the WAL hook)."""
        self._checkpoint_due = self.config.checkpoint_frames
        """WAL frames at which the next automatic checkpoint runs."""
        self._checkpointed_at = 0
        """Frames in the WAL at the last checkpoint (fewer after a commit: it restarted)."""
        self._page_size = 4096
        """The database's page size (read at start): a WAL frame's size, with its header."""
        self._truncate_after = 0.0
        """``time.monotonic()`` before which no TRUNCATE is tried (see _truncate_wal)."""
        self._truncate_wait = _TRUNCATE_WAIT
        """Seconds the next TRUNCATE waits for readers (see _truncate_wal)."""
        self._changes_at_begin = 0
        self._row_changes: dict[str, list[RowImage] | None] = {}
        self._row_hook_calls = 0
        self._rows_hooked = False
        """Whether the pre-update hook is installed on the connection now."""
        self._disk_full: DiskFullError | None = None
        self._disk_full_since = 0.0
        """When this incarnation found the disk full (a batch begun later may end it)."""
        self._next_probe = 0.0
        self._refused_while_full = 0
        """Writes refused since the disk was found full (told when space returns)."""
        self._probe = 0
        """Id of the write that probes the full disk now (0: none)."""

    # -- lifecycle ---------------------------------------------------------------------

    def _actor_loop(self) -> None:
        try:
            super()._actor_loop()
        finally:
            unmark_writer_thread()  # the thread ends: its ident may go to another

    def on_start(self) -> None:
        """Open and check the write connection (in the actor's thread)."""
        mark_writer_thread()
        # This incarnation holds nothing yet, whatever the last one left counted (one
        # that died without its crash clean-up would otherwise shrink the bound for good).
        self.mailbox.release_held()
        self.mailbox.count_held = self._held_awaited
        raw = self.connect()
        connection = TrackedConnection(raw, "writer", owner=self)
        if self.incarnation > 1 and self.config.verify_on_restart:
            self._verify(connection)
        self.connection = connection
        self._data_version = int(raw.pragma("data_version"))
        self.hooks.version((self.counters.commit_seq, self._data_version, self.incarnation))
        self._schema_version = int(raw.pragma("schema_version"))
        # The WAL hook says, after each COMMIT, whether it wrote frames and how many
        # the WAL holds. Installing it turns SQLite's automatic checkpoints off
        # (https://sqlite.org/c3ref/wal_autocheckpoint.html): the writer runs them.
        self._page_size = int(raw.pragma("page_size"))
        self._checkpoint_due = self._checkpoint_step()
        raw.set_wal_hook(self._on_wal)
        self._rows_hooked = False
        if self.hooks.disk_full():
            # An earlier incarnation found the disk full: this one goes on from there,
            # its first write a probe (which ends the mode, and tells the storage, once
            # a commit succeeds again).
            self._disk_full = self._disk_full_error(time.monotonic())
            self._next_probe = 0.0
        self.hooks.connected(connection)
        self.events.emit("connect", "writer", connection.id, incarnation=self.incarnation)

    def _verify(self, connection: TrackedConnection) -> None:
        """After a restart, check the file before serving writes again.

        A failed check is corruption like any other: the storage stops writes and runs
        its integrity_check (resuming them if the file is sound), reads go on, and this
        incarnation serves on. Failing the start instead would restart the writer until
        the restart intensity fails the whole storage, its reads too.
        """
        result = connection.connection.execute("PRAGMA quick_check").fetchall()
        if result != [("ok",)]:
            error = CorruptionError(
                f"quick_check after a writer restart failed: {result[:5]!r}; writes are "
                "stopped while the file is verified; restore from a backup or investigate "
                "a copy if the check confirms it",
                sql="PRAGMA quick_check",
                result_code=apsw.SQLITE_CORRUPT,
            )
            self.hooks.error(error, "PRAGMA quick_check")
            self.hooks.corruption(error)

    def on_stop(self) -> None:
        """Graceful stop: end a lease, run what waited behind it, commit, close.

        The storage closing, or this incarnation alone (``supervisor.kill(how="stop")``):
        then the next one takes the lease requests and returns still queued.
        """
        self._stop_handing_over()
        shutting_down = self.mailbox.closed is not None
        lease = self._lease
        if lease is not None:
            # Puts what waited behind the lease back in front of the mailbox.
            self._revoke(
                lease,
                TransactionAborted(
                    "the storage is closing; the transaction was rolled back"
                    if shutting_down
                    else "the writer was stopped (it restarts at once); the transaction "
                    "was rolled back: run it again"
                ),
            )
            if self._lease is lease:
                # Given back, and its return not here yet: that commit would not be
                # acknowledged (its caller hears the storage closed, or that the lease
                # was lost), so nothing of the batch may commit. Its writes run again.
                self._lease = None
                self.hooks.lease_ended(lease)
                self._absorb_chain()
                connection = self.connection
                if connection is not None and connection.connection.in_transaction:
                    connection.cursor.execute("ROLLBACK")
                closing = TransactionAborted(
                    f"the storage closed before transaction {lease.tx_id}'s commit "
                    "reached the writer, and the batch holding this call's changes was "
                    "rolled back with it: nothing of it was committed"
                )
                for ended in self._batch:  # (the others run again below)
                    if not ended.replayable:
                        ended.fail(closing)
                self._batch = [kept for kept in self._batch if kept.replayable]
                self._batch_lost("the storage closed")
        self._absorb_chain()
        self.mailbox.replay([*self._take_lease_queue(), *self._take_stash()])
        # Run what is in front now, and what running it puts back there (the writes of
        # a failed group, or of a batch SQLite rolled back): all were accepted before
        # the close, so they are handled, not failed with the closed mailbox.
        later: list[Op] = []
        while (op := self.mailbox.take_replayed()) is not None:
            if isinstance(op, WriterOp):
                self._run(op, drain=False)
            elif shutting_down:
                op.fail(self.closed_error())
            else:
                later.append(op)  # (a lease request or return: the next incarnation's)
        if self._in_transaction:
            self._commit()
        if later:
            self.mailbox.replay(later)
        self._close("stop")

    def on_crash(self, current: Op | None, error: BaseException | None) -> None:
        """Roll back the open batch; replay what had no effect, fail what may have."""
        try:
            self._clean_up_crash(current, error)
        finally:
            # Whatever failed above: a connection left open keeps SQLite's write lock,
            # and every later incarnation's BEGIN IMMEDIATE would meet SQLITE_BUSY.
            self._close("crash")  # closing rolls the open transaction back

    def _clean_up_crash(self, current: Op | None, error: BaseException | None) -> None:
        super().on_crash(current, error)
        self._stop_handing_over()
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.revoke(
                TransactionAborted(
                    f"the writer crashed ({error!r}); the transaction was rolled back, "
                    "nothing of it was committed: run it again"
                ),
                undo=None,
            )
            self.hooks.lease_ended(lease)
        self._absorb_chain()
        batch, self._batch = self._batch, []
        self._spans = {}
        self._in_transaction = False
        replay = [op for op in batch if op.replayable]
        for op in batch:
            if not op.replayable:
                op.fail(self._crash_error(op, error))
        # Never handled: safe to hand to the next incarnation.
        replay.extend(self._take_lease_queue())
        replay.extend(self._take_stash())
        self._close("crash")  # (before the replay: the next incarnation runs it)
        if replay:
            self.mailbox.replay(replay)

    def _stop_handing_over(self) -> None:
        """From now on no transaction hands the lease on; one doing so has finished."""
        with self._handing_over:
            self._ending = True

    @staticmethod
    def _crash_error(op: Op, error: BaseException | None) -> AtlasError:
        if isinstance(op, LeaseReturn):
            return TransactionAborted(
                f"the writer crashed ({error!r}) before transaction {op.tx_id} was "
                "committed; it was rolled back: run it again"
            )
        return ActorCrashedError("writer", op.describe(), error)

    def _close(self, reason: str) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close()
            self.hooks.disconnected()
            self.events.emit("disconnect", "writer", connection.id, reason=reason)

    # -- messages ----------------------------------------------------------------------

    def _handle_receive(self, message: Any) -> Any:
        try:
            kind = type(message)
            result = None
            # Write ops skip pykka's generic dispatch: this is the hot path.
            if kind in OP_TYPES:
                if self._lease is None:
                    self._run(message)
                else:
                    self._hold(message)
            elif kind is LeaseRequest:
                if self._lease is None:
                    self._grant(message)
                elif self._stash:
                    self._hold(message)
                else:
                    self._lease_queue.append(message)
            elif kind is LeaseReturn:
                if self.tracing.enabled:
                    with self.tracing.consumer_span(
                        "atlas.writer.lease_return",
                        message.trace_context,
                        None,
                        **{"atlas.transaction.id": message.tx_id},
                    ):
                        self._take_back(message)
                else:
                    self._take_back(message)
            elif kind is LeaseExpired:
                self._expire(message.tx_id)
            elif kind is DiskFullFound:
                if self._disk_full is None:
                    self._enter_disk_full(message.error)
            elif kind is CheckpointOp:
                if self._lease is not None:
                    self._hold(message)
                elif self.tracing.enabled:
                    with self.tracing.consumer_span(
                        "atlas.writer.checkpoint", message.trace_context
                    ) as span:
                        self._run_checkpoint(message)
                        error = message.future.exception(0) if message.future.done() else None
                        if error is not None:
                            Tracing.record_error(span, error)
                else:
                    self._run_checkpoint(message)
            else:
                result = super()._handle_receive(message)
            if (
                self._in_transaction
                and self._lease is None
                and (
                    self.mailbox.empty()
                    or len(self._batch) >= self.config.max_batch_size
                    or time.monotonic() - self._batch_started >= self.config.max_batch_delay
                )
            ):
                self._commit()
            return result
        except Exception:
            raise
        except BaseException as error:
            raise Escaped(error) from error  # a crash of the writer alone: see base.py

    def on_receive(self, message: Any) -> Any:
        """Obey a control message."""
        if isinstance(message, Crash):
            self.crash_if_mine(message)
            return None
        return super().on_receive(message)

    @property
    def in_write_transaction(self) -> bool:
        """A batch or a transaction's lease is open (read from any thread: one flag)."""
        return self._in_transaction

    def stats(self) -> WriterStats:
        """The writer's counters (ask this through the actor's proxy)."""
        return self.counters.snapshot()

    def lease_status(self) -> tuple[int | None, int, float]:
        """(transaction holding the lease, messages waiting behind it, oldest wait)."""
        lease = self._lease
        now = time.monotonic()
        # (Ops given up behind the lease stay held until it ends: they are no queue.)
        waiting = [op for op in (*self._lease_queue, *self._stash) if op.awaited(now)]
        oldest = max((now - op.enqueued_at for op in waiting), default=0.0)
        return (lease.tx_id if lease else None, len(waiting), oldest)

    def _held_awaited(self) -> int:
        """How many of the ops held behind the lease someone still waits for (any thread)."""
        now = time.monotonic()
        return sum(1 for op in list(self._stash) if op.awaited(now))

    # -- group commit ------------------------------------------------------------------

    def _begin(self, op: Op) -> bool:
        """Open the batch's transaction; False (and ``op`` failed) if SQLite refused.

        Another process holding the write lock past ``busy_timeout`` (a transaction of
        its own may hold it for its whole ``transaction_timeout``) is waited out until
        ``op``'s deadline: nothing has run yet, so trying BEGIN again is safe, and the
        busy handler counts every wait. Only then does ``op`` fail, with SQLITE_BUSY;
        sooner if the storage is closing, a control message (a stop, an injected crash)
        waits, or the wait reached ``transaction_timeout + busy_timeout`` (a caller's
        deadline may be years away: the writer serves nobody else meanwhile).
        """
        connection = self.connection
        assert connection is not None, "on_start opened the connection"
        blocked = self.hooks.write_block()
        if blocked is not None:
            # Accepted before writes stopped (queued while a restart found the file
            # damaged, say): refused now, as the call would be.
            self._fail(op, blocked)
            return False
        busy_timeout = self.config.busy_timeout
        give_up_at = min(
            op.deadline, time.monotonic() + self.config.transaction_timeout + busy_timeout
        )
        while True:
            # Each wait ends a moment before the deadline, so that the caller hears
            # SQLITE_BUSY, not a timeout saying the write may still complete.
            left = give_up_at - time.monotonic() - _BUSY_ANSWER_MARGIN
            try:
                if left >= busy_timeout:
                    connection.cursor.execute("BEGIN IMMEDIATE")  # (most batches: no limit)
                else:
                    with busy_wait_limit(max(left, 0.0)):
                        connection.cursor.execute("BEGIN IMMEDIATE")
                break
            except apsw.Error as error:
                if (
                    isinstance(error, apsw.BusyError)
                    and left > 0
                    and self.mailbox.closed is None
                    and not self.mailbox.control_waiting()
                ):
                    continue  # (each wait ran the busy handler's backoff, counted)
                self._fail(op, wrap_sqlite_error(error, "BEGIN IMMEDIATE"), "BEGIN IMMEDIATE")
                return False
        try:
            # Holding the write lock, data_version says if another process committed.
            # The wal-index counter says it without a call into SQLite (each call
            # releases the GIL: see the module docstring): unchanged since our last
            # commit means nobody did.
            change = self.hooks.wal_change()
            if change is not None and change == self._change_expected:
                data_version = self._data_version
            else:
                data_version = int(connection.connection.pragma("data_version"))
            self._change_at_begin, self._change_expected = change, None
        except apsw.Error as error:
            self._fail(op, wrap_sqlite_error(error, "BEGIN IMMEDIATE"), "BEGIN IMMEDIATE")
            if connection.connection.in_transaction:
                connection.cursor.execute("ROLLBACK")
            return False
        self._in_transaction = True
        self._group_start = None
        self._group_failed = False
        self._batch_plain = self.hooks.track_tables
        self._batch_started = time.monotonic()
        self._batch_tables = set()
        self._changes_at_begin = connection.connection.total_changes()
        self._row_changes = {}
        self._row_hook_calls = 0
        if self.hooks.track_tables:
            self._hook_rows(connection.connection, self.hooks.wants_rows())
        self.hooks.began()
        if data_version != self._data_version:
            self._data_version = data_version
            self.hooks.version((self.counters.commit_seq, data_version, self.incarnation))
            self._check_schema(connection)  # another process committed: DDL maybe
        return True

    def _hook_rows(self, raw: apsw.Connection, wanted: bool) -> None:
        """Install or remove the pre-update hook for the batch that begins.

        It notes every changed row, old and new image, so the cache drops only what a
        commit may have changed (https://sqlite.org/c3ref/preupdate_blobwrite.html).
        It costs a Python call per changed row, in the writer and under the GIL, so
        it is off while the cache has nothing that depends on rows (a batch without
        it invalidates whole tables: _take_row_changes sees the missing calls).
        """
        if wanted != self._rows_hooked:
            raw.preupdate_hook(self._on_row_change if wanted else None)
            self._rows_hooked = wanted
            if wanted:
                # SQLite picks the truncate optimization (a DELETE without WHERE that
                # drops the table's pages, no hook call per row) when it prepares the
                # statement, if no hook was set then: one kept in apsw's cache from a
                # batch without the hook would delete rows the hook never sees. Setting
                # the authorizer expires every prepared statement (they are prepared
                # again, with the hook, at their next run).
                raw.authorizer = raw.authorizer

    def _check_schema(self, connection: TrackedConnection) -> None:
        raw = connection.connection
        # temp's cookie too (shifted; 0 on a new connection, so on_start's value still
        # holds): a TEMP trigger on a main table changes what its writes reach, and
        # only that cookie.
        schema_version = int(raw.pragma("schema_version")) + (
            int(raw.pragma("schema_version", schema="temp")) << 32
        )
        if schema_version != self._schema_version:
            self._schema_version = schema_version
            self.hooks.schema_changed()

    def _run(self, op: WriterOp, drain: bool = True) -> None:
        """Run ``op`` in the batch (opened if needed), then (``drain``) the writes behind it.

        Those run until the batch reaches its bounds, taken straight from the mailbox
        rather than one per turn of pykka's loop (several Python calls per message);
        anything else ends the drain and goes back in front, so the loop handles it
        next, in order. One loop with its attributes read once: this runs per write.
        """
        mailbox = self.mailbox
        front = mailbox._front
        take_queued = mailbox._queue.get_nowait
        counters = self.counters
        alone = self._alone
        tracing = self.tracing
        traced = tracing.enabled
        connection = self.connection
        assert connection is not None, "on_start opened the connection"
        cursor = connection.cursor
        write_pairs = connection.write_pairs
        limit = self.config.max_batch_size
        delay = self.config.max_batch_delay
        monotonic = time.monotonic
        now = monotonic()
        # Counted here and added to the counters on the way out (a local costs less).
        started = 0
        waited = 0.0
        try:
            while True:
                replayed = op.claimed  # run before, rolled back and put back in the mailbox
                if not replayed:
                    # op.claim() inlined.
                    op.claimed = next(op.future._claim, 0) == 1
                if not op.claimed:
                    pass  # the caller timed out and withdrew it before it started
                elif now > op.deadline:
                    alone.discard(op.id)
                    self._fail(op, op.too_late(now))
                elif self._disk_full is None or op.id == self._probe or self._probes(op, now):
                    if not replayed:  # counted once, however often it runs
                        started += 1
                        waited += now - op.enqueued_at
                    try:
                        if not self._in_transaction and not self._begin(op):
                            pass
                        elif traced:
                            with tracing.consumer_span(
                                op.span_name, op.trace_context, op.sql, **op.batch_attributes()
                            ) as span:
                                self._savepoint(op, cursor, connection, span)
                                self._spans[op.id] = span
                        elif (
                            self._group_start is not None
                            and not self._group_failed
                            and (not alone or op.id not in alone)
                            and op.replayable
                        ):
                            # One more write in the open group: _savepoint's first case,
                            # inlined, and for a write_all WriteAllOp.run too.
                            try:
                                if type(op) is WriteAllOp:
                                    result = write_pairs(op.statements)
                                else:
                                    result = op.run(connection)
                            except Exception as error:
                                self._split_group(op, cursor, connection, error, None)
                            else:
                                op.result = result
                                self._batch.append(op)
                        else:
                            self._savepoint(op, cursor, connection, None)
                    except BaseException:
                        # The actor dies of it (a bug, or SQLite misused): on_crash fails
                        # this op as maybe applied. Set only now, not around every op.
                        # (pykka stops the actor without on_crash for a BaseException
                        # that is no Exception.)
                        self._current = op
                        raise
                # (No lease can begin in this loop: only the message loop grants one.)
                if not drain or not self._in_transaction or len(self._batch) >= limit:
                    return
                now = monotonic()
                if now - self._batch_started >= delay:
                    return
                # mailbox.take_nowait(), inlined (only this thread takes from the mailbox,
                # but a closing mailbox's fail_all() may empty the front meanwhile).
                letter = None
                if front:
                    with contextlib.suppress(IndexError):
                        letter = front.popleft()  # a replayed op, or a control message
                elif (
                    self._group_start is not None
                    and not self._group_failed
                    and not traced
                    and self._disk_full is None
                ):
                    letter = self._run_queued(now)
                    if letter is None:
                        return  # nothing queued any more, the batch full, or a unit failed
                    now = monotonic()  # (the run took time: letter's deadline is checked next)
                if letter is None:
                    try:
                        letter = take_queued()
                    except queue.Empty:
                        return
                    if mailbox._senders_waiting:
                        mailbox._wake_a_sender()
                if type(letter) not in OP_TYPES:
                    mailbox.put_back(letter)
                    return
                op = letter
        finally:
            counters.started += started
            counters.queue_wait += waited

    def _run_queued(self, now: float) -> Any:
        """Run the writes (``write_all`` and ``write`` calls) queued, in the group, together.

        One call of ``write_units`` runs them all: the writer's Python per write, paid
        about three times over under load (see ``TrackedConnection.write_units``), is
        then one check per write instead of a turn of :meth:`_run`'s loop. Ops taken
        from the queue are new: never claimed, run or put back. At most ``_RUN_MAX``
        run together, so :meth:`_run` checks ``max_batch_delay`` between runs.
        Returns the first message taken that is neither, for :meth:`_run` to handle
        after them; or None once the queue is empty, the batch full, or a unit failed
        (the ops to run next are then in front of the mailbox). Called only with the
        group open, untraced, the disk not full and nothing in front of the mailbox.
        """
        mailbox = self.mailbox
        take = mailbox._queue.get_nowait
        ready: list[WriteAllOp | WriteOp] = []
        units: list[Sequence[tuple[str, Params]]] = []
        room = min(self.config.max_batch_size - len(self._batch), _RUN_MAX)
        waited = 0.0
        letter: Any = None
        try:
            while room > 0:
                try:
                    letter = take()
                except queue.Empty:
                    letter = None
                    break
                if mailbox._senders_waiting:
                    mailbox._wake_a_sender()
                kind = type(letter)
                if kind is WriteAllOp:
                    units.append(letter.statements)
                elif kind is WriteOp:
                    units.append(((letter.statement, letter.params),))
                else:
                    break
                op, letter = letter, None
                op.claimed = next(op.future._claim, 0) == 1  # op.claim(), inlined
                if not op.claimed:
                    units.pop()  # the caller timed out and withdrew it before it started
                    continue
                if now > op.deadline:
                    units.pop()
                    error = op.too_late(now)
                    self._fail(op, error)
                    continue
                waited += now - op.enqueued_at
                ready.append(op)
                room -= 1
        except BaseException:
            # (A done-callback raising in _fail, say.) Those claimed here never ran: the
            # next incarnation runs them.
            mailbox.replay(ready)
            raise
        if not ready:
            return letter
        counters = self.counters
        counters.started += len(ready)
        counters.queue_wait += waited
        connection = self.connection
        assert connection is not None, "a group is open only with a connection"
        done: list[list[WriteResult]] = []
        try:
            connection.write_units(units, done)
        except BaseException as error:
            failed = len(done)
            _set_results(ready, done)
            self._batch.extend(ready[:failed])
            # Taken after the failing one: put back as they came (claimed, never run).
            if letter is not None:
                mailbox.put_back(letter)
            mailbox.replay(ready[failed + 1 :])
            try:
                if not isinstance(error, Exception):
                    raise
                self._split_group(ready[failed], connection.cursor, connection, error, None)
            except BaseException:
                # The actor dies of it: the failing op was running (on_crash fails it
                # as maybe applied; pykka stops the actor without on_crash for a
                # BaseException that is no Exception, as in _run).
                self._current = ready[failed]
                raise
            return None
        _set_results(ready, done)
        self._batch.extend(ready)
        return letter

    def _probes(self, op: WriterOp, now: float) -> bool:
        """The disk is full: make ``op`` the probe write if one is due, else fail it."""
        if now < self._next_probe:
            self._alone.discard(op.id)
            refused = self._disk_full_error(now)
            refused.routine = True  # (the mode's start was logged: one ERROR, not one each)
            self._refused_while_full += 1
            self._fail(op, refused)
            return False
        # This write is the probe (and so are its reruns, after a split group):
        # whatever it finds, the next probe is an interval away.
        self._probe = op.id
        self._next_probe = now + self.config.disk_full_probe_interval
        return True

    def _savepoint(
        self, op: WriterOp, cursor: apsw.Cursor, connection: TrackedConnection, span: Any
    ) -> None:
        if op.replayable and not self._group_failed and op.id not in self._alone:
            # A replayable write runs inside the batch's open group (opened if needed).
            if self._group_start is None:
                cursor.execute(f"SAVEPOINT {_GROUP}")
                self._group_start = len(self._batch)
            try:
                result = op.run(connection)
            except Exception as error:
                self._split_group(op, cursor, connection, error, span)
                return
            op.result = result
            self._batch.append(op)
            return
        alone = self._alone
        if alone and op.id in alone:  # (an empty set, as nearly always, tests false)
            self._run_again(op, cursor, connection, span)
        else:
            self._run_alone(op, cursor, connection, span)

    def _run_alone(
        self, op: WriterOp, cursor: apsw.Cursor, connection: TrackedConnection, span: Any
    ) -> None:
        """Run ``op`` in the batch under a savepoint of its own (it fails alone)."""
        self._close_group(cursor)
        cursor.execute("SAVEPOINT op")
        try:
            result = op.run(connection)
        except Exception as error:
            self._undo(op, cursor, error, span)
            return
        try:
            cursor.execute("RELEASE op")
        except apsw.BusyError:  # (a function left a writing statement running)
            if isinstance(result, apsw.Cursor):
                result.close(True)  # its caller could not use it anyway
            del result
            self._undo(op, cursor, _left_running(op), span, left_running=True)
            return
        except apsw.SQLError:
            if not isinstance(op, UnitOfWorkOp):
                raise
            # The function released (or rolled back) the writer's savepoint itself: its
            # changes are the batch's now, and cannot be undone alone.
            self._undo(op, cursor, ended_error(op), span)
            return
        op.result = result
        self._batch.append(op)

    def _run_again(
        self, op: WriterOp, cursor: apsw.Cursor, connection: TrackedConnection, span: Any
    ) -> None:
        """Run a write of a split group again, alone, under its own savepoint.

        Its run in the group was counted on the connection (``queries``, and ``errors``
        for the one that failed) and rolled back: this run is the same statements again,
        so it is not counted a second time (one failed write is one query, one error).
        """
        self._alone.discard(op.id)
        counted = connection._queries, connection._errors
        try:
            self._run_alone(op, cursor, connection, span)
        finally:
            connection._queries, connection._errors = counted

    def _split_group(
        self,
        op: WriterOp,
        cursor: apsw.Cursor,
        connection: TrackedConnection,
        error: Exception,
        span: Any,
    ) -> None:
        """A write of the group failed: undo the group, run its writes again one by one.

        They go back in front of the mailbox and run next, each under its own
        savepoint, so the failing one fails alone and the others commit as before.
        """
        start, self._group_start = self._group_start, None
        assert start is not None, "a group is open while one of its writes runs"
        self._group_failed = True
        if not connection.connection.in_transaction:
            self._undo(op, cursor, error, span)  # SQLite dropped the whole batch: replay
            return
        cursor.execute(f"ROLLBACK TO {_GROUP}; RELEASE {_GROUP}")
        if start == len(self._batch):
            # The group held this write alone: its run failed as a run alone would, so
            # it fails now (run again, it would count and trace one write twice).
            failed = _wrapped(op, error)
            Tracing.record_error(span, failed)
            self._fail(op, failed, op.sql)
            return
        again = self._batch[start:]
        del self._batch[start:]
        again.append(op)
        self.counters.regrouped += len(again)
        self._alone.update(queued.id for queued in again)
        self.mailbox.replay(again)

    def _close_group(self, cursor: apsw.Cursor) -> None:
        """End the open group (its writes stay in the batch), before another savepoint."""
        if self._group_start is not None:
            self._group_start = None
            cursor.execute(f"RELEASE {_GROUP}")

    def _note_writes(self, batch: list[Op], raw: apsw.Connection) -> None:
        """Add the tables the batch's writes changed to the batch's (None once any is unknown).

        Once per batch, before its COMMIT, rather than once per write: a loop costs less
        than a call. A transaction's return noted its tables as it joined the batch.
        """
        tables = self._batch_tables
        if tables is None:
            return
        # The batch's statements by text (with parameters to bind for the analysis):
        # dict.update gathers a write_all's pairs in C, and a batch runs the same few
        # statements again and again.
        statements: dict[str, Params] = {}
        gather = statements.update
        for op in batch:
            kind = type(op)
            if kind is WriteAllOp:
                gather(op.statements)  # type: ignore[attr-defined]
            elif kind is WriteOp or kind is WriteManyOp:
                statements[op.statement] = None  # type: ignore[attr-defined]
            elif kind is UnitOfWorkOp:
                self._batch_tables = None  # a function's statements are not known
                return
        known = self.statements.known
        for sql, params in statements.items():
            if changes_schema(sql):
                # What the batch's other statements wrote is analysed here, after they
                # ran: a trigger this DDL dropped (a temp one changes no version the
                # writer checks) would no longer show. The cache drops everything.
                self._batch_plain = False
                self._batch_tables = None
                return
            info = known.get(sql)  # analyze()'s own cache, without the call
            if info is None:
                try:
                    info = self.statements.analyze(raw, sql, params)
                except apsw.Error:
                    self._batch_tables = None  # cannot tell: the cache drops everything
                    return
            tables.update(info.writes)
            if not info.plain:
                self._batch_plain = False

    def _undo(
        self,
        op: WriterOp,
        cursor: apsw.Cursor,
        error: Exception,
        span: Any,
        *,
        left_running: bool = False,
    ) -> None:
        """Roll back one failed op; if SQLite dropped the whole transaction, replay the batch.

        ``left_running``: ``error`` says that the op (a function) left a statement running.
        """
        wrapped = _wrapped(op, error)
        Tracing.record_error(span, wrapped)
        raw = self.connection.connection if self.connection is not None else None
        ended = isinstance(op, UnitOfWorkOp) and op.ended
        if raw is not None and raw.in_transaction and not ended:
            cursor.execute("ROLLBACK TO op")  # (possible with statements running)
            if not self._released(op, cursor, error):
                # A statement the function keeps running: nothing can commit on this
                # connection while it runs. The batch goes, and so does the connection
                # (the writer restarts; the statement ends with it).
                failure = wrapped if left_running else _left_running(op, cause=wrapped)
                self._fail(op, failure, op.sql)
                cursor.execute("ROLLBACK")
                self._in_transaction = False
                self._lost_batch(f"{op.describe()} left a statement running")
                raise StatementLeftRunning(f"{op.describe()} left a statement running")
        else:
            # Some errors (SQLITE_FULL, IOERR, ON CONFLICT ROLLBACK) roll back the whole
            # transaction (https://sqlite.org/lang_transaction.html#response_to_errors
            # _within_a_transaction), and a function run here may end it itself: the
            # earlier ops of the batch are gone, so they run again in a fresh
            # transaction before anything else.
            if raw is not None and raw.in_transaction:
                cursor.execute("ROLLBACK")  # (one the function began after its own end)
            self._in_transaction = False
            self._lost_batch(
                f"{op.describe()} ended the writer's transaction"
                if ended and not isinstance(wrapped, SQLiteError)
                else f"{op.describe()} failed ({type(wrapped).__name__}), and SQLite rolled "
                "back the whole transaction"
            )
        self._fail(op, wrapped, op.sql)

    @staticmethod
    def _released(op: WriterOp, cursor: apsw.Cursor, error: Exception) -> bool:
        """Release the failed op's savepoint; False if a statement it keeps running forbids it.

        A function that raised while it read a writing statement's rows (``RETURNING``)
        may hold it in its traceback's frames: those are cleared, so it ends.
        """
        try:
            cursor.execute("RELEASE op")
            return True
        except apsw.BusyError:
            if error.__traceback__ is not None:
                traceback.clear_frames(error.__traceback__)
            gc.collect()  # (frames in reference cycles)
        try:
            cursor.execute("RELEASE op")
            return True
        except apsw.BusyError:
            pass
        # Kept elsewhere (a global, a closure): closed, so its statement ends. Its owner's
        # next use of it raises CursorClosedError; the writer's own cursor is idle here.
        for referrer in gc.get_referrers(cursor.connection):
            if isinstance(referrer, apsw.Cursor) and referrer is not cursor:
                try:
                    referrer.get_description()  # (raises unless a statement is running)
                except apsw.Error:
                    continue
                referrer.close(True)
        try:
            cursor.execute("RELEASE op")
            return True
        except apsw.BusyError:
            return False

    def _lost_batch(self, reason: str) -> None:
        """SQLite's transaction is gone (``reason`` says why): run its writes again.

        The writes run again first thing in a fresh transaction (none was acknowledged);
        a function's unit of work or a transaction's changes cannot be run again here,
        so those calls fail with :class:`TransactionAborted`, which says why.
        """
        batch, self._batch = self._batch, []
        self._spans = {}
        replay = [queued for queued in batch if queued.replayable]
        for queued in batch:
            if not queued.replayable:
                queued.fail(_rolled_back_with_batch(queued, reason))
        self.mailbox.replay(replay)

    def _fail(self, op: Op, error: BaseException, sql: str | None = None) -> None:
        """Fail one op: count, report (log once), degrade on disk full or corruption."""
        self.counters.failed += 1
        if isinstance(error, DiskFullError) and self._disk_full is None:
            self._enter_disk_full(error)
        elif isinstance(error, CorruptionError):
            self.hooks.corruption(error)
        if not isinstance(error, Escaped):  # (SystemExit...: no error of the storage's)
            self.hooks.error(error, sql)  # (a function's own exception too: logged, counted)
        op.fail(error)

    def _commit(self) -> None:
        connection = self.connection
        assert connection is not None, "a batch is open only with a connection"
        batch, self._batch = self._batch, []
        spans, self._spans = self._spans, {}
        self._in_transaction = False
        tracing = self.tracing
        if self.hooks.track_tables:
            self._note_writes(batch, connection.connection)
        tables, self._batch_tables = self._batch_tables, set()
        changes_now = connection.connection.total_changes()
        # Nothing to acknowledge (its writes failed, its transactions rolled back): the
        # batch rolls back. A COMMIT would still write the pages they dirtied (and sync
        # them), a commit nobody made that a repeatable_read snapshot would take for one.
        end = "COMMIT" if batch else "ROLLBACK"
        rows = self._take_row_changes(changes_now)
        if rows is None and not self._batch_plain and self.hooks.track_tables:
            # A statement may have written what its analysis cannot name (a user
            # function runs any SQL), and no hook saw its rows: drop everything.
            tables = None
        members = [spans[op.id] for op in batch if op.id in spans] if spans else []
        with tracing.batch_span(
            "atlas.writer.commit", members, **{"atlas.batch.size": len(batch)}
        ) as span:
            if batch:
                self.hooks.will_commit()
            self._wrote_frames = False
            try:
                connection.cursor.execute(end)
            except apsw.Error as error:
                Tracing.record_error(span, wrap_sqlite_error(error, end))
                if batch:
                    self.hooks.commit_failed()
                self._commit_failed(connection, batch, error)
                return
            if self._change_at_begin is not None:
                # A commit that wrote WAL frames moves the counter by one (changes.py).
                wrote = 1 if self._wrote_frames else 0
                self._change_expected = (self._change_at_begin + wrote) & 0xFFFFFFFF
            if batch and not (self._batch_plain and tables is not None):
                self._check_schema(connection)
            if batch:
                self._after_commit(tables, self._wrote_frames, rows)
        counters = self.counters
        if batch:
            counters.commit_seq += 1
            counters.batches += 1  # (a batch whose every write failed committed none)
            self.hooks.version((counters.commit_seq, self._data_version, self.incarnation))
            if (
                self._disk_full is not None
                and self._wrote_frames  # (a commit that wrote nothing proves nothing)
                and self._batch_started > self._disk_full_since
            ):
                # (the batch that found the disk full commits its other writes: they fit,
                # the failed one did not; only a later batch, its probe, proves space)
                self._leave_disk_full()
        counters.writes += len(batch)
        counters.max_batch = max(counters.max_batch, len(batch))
        called_back = None  # (callbacks run once every write is acknowledged)
        for op in batch:
            future = op.future
            if future._value is _PENDING:  # future.set_result(op.result) inlined: once per write
                future._value = op.result
                future._done.release()
                if future._callbacks is not None:
                    if called_back is None:
                        called_back = []
                    called_back.append(future)
        if called_back is not None:
            escaped: BaseException | None = None
            for future in called_back:
                try:
                    future._run_callbacks()
                except BaseException as error:  # (no Exception: those are logged)
                    escaped = escaped or error  # every callback runs; then the writer dies
            if escaped is not None:
                raise escaped
        if self.wal_frames >= self._checkpoint_due:
            self._checkpoint_after_commit()

    def _checkpoint_after_commit(self) -> None:
        """The automatic PASSIVE checkpoint, after the batch was acknowledged.

        Its failure is no write's: another process checkpointing (SQLITE_BUSY at once,
        whatever the busy handler) or a full disk while copying pages into the database
        file must not crash the writer, which would meet it again on its next commit
        and escalate.
        """
        try:
            frames, copied = self._checkpoint("PASSIVE")  # after acknowledging
            if (
                copied < frames
                and self._wal_bytes(frames) > self.config.wal_size_limit
                and time.monotonic() >= self._truncate_after
            ):
                self._truncate_wal()
        except apsw.BusyError:
            log.debug("automatic checkpoint skipped: another connection is checkpointing")
        except apsw.Error as error:
            # Logged and counted; the WAL keeps the frames, and the commit a step later
            # retries (not every commit: each try would fail, log and count again).
            self._checkpoint_due = self.wal_frames + self._checkpoint_step()
            wrapped = wrap_sqlite_error(error, "PRAGMA wal_checkpoint")
            if isinstance(wrapped, CorruptionError):
                self.hooks.corruption(wrapped)
            self.hooks.error(wrapped, "PRAGMA wal_checkpoint")

    def _checkpoint_step(self) -> int:
        """Frames written between two automatic checkpoints (the first: from an empty WAL).

        ``checkpoint_frames``, or fewer when that many frames would pass
        ``wal_size_limit``: with a small limit the WAL is copied (and then starts over)
        before it passes it, and a WAL that readers keep from starting over reaches
        the TRUNCATE check once it passes it, not only once it is several times its
        size (1000 frames are 16 times a 256 KiB limit).
        """
        within_limit = (self.config.wal_size_limit - 32) // (24 + self._page_size)
        return max(1, min(self.config.checkpoint_frames, within_limit))

    def _wal_bytes(self, frames: int) -> int:
        """Bytes of a WAL holding ``frames`` frames (https://sqlite.org/fileformat2.html#walformat)."""
        return 32 + frames * (24 + self._page_size)

    def _truncate_wal(self) -> None:
        """The WAL is past ``wal_size_limit`` and readers keep PASSIVE from finishing.

        With readers whose transactions overlap (checkpoint starvation), PASSIVE never
        copies the last frames and the WAL never starts over: it would grow for ever.
        TRUNCATE waits for the readers on old frames to finish (new ones read the
        database file), then empties the file. This holds the write lock, so the wait
        starts short and doubles after each try that readers outlasted (up to
        ``busy_timeout``: long reads are waited out in the end), and halves after a
        success.
        """
        started = time.monotonic()
        try:
            # This storage's new reads wait a moment (its running ones end meanwhile):
            # with reads that overlap all the time, the TRUNCATE would never finish.
            hold = min(self._truncate_wait, _READ_HOLD)
            with self.hooks.hold_reads(hold), busy_wait_limit(self._truncate_wait):
                self._checkpoint("TRUNCATE")
        except apsw.BusyError:
            self._truncate_wait = min(2 * self._truncate_wait, self.config.busy_timeout)
            log.info("WAL past wal_size_limit, still in use by readers: truncated later")
            # The wait readers outlasted held the write lock: the next try comes after
            # nine times as long of writing, so such waits take at most a tenth of the
            # writer's time (the WAL may pass its limit by what is written meanwhile).
            finished = time.monotonic()
            self._truncate_after = finished + _TRUNCATE_BACKOFF * (finished - started)
        else:
            # Emptied: the next one is due when the WAL has passed its limit again.
            self._truncate_wait = max(_TRUNCATE_WAIT, self._truncate_wait / 2)
            self._truncate_after = 0.0

    def _commit_failed(
        self,
        connection: TrackedConnection,
        batch: Iterable[Op],
        error: apsw.Error,
    ) -> None:
        """COMMIT failed: SQLite rolled back (or we do): every op of the batch fails."""
        # (each write of the batch reports the error, logged once there with its context)
        log.debug("group commit failed: %s", error)
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
        for op in batch:
            self._fail(op, wrapped, "COMMIT")

    _CHECKPOINT_MODES = {
        "PASSIVE": apsw.SQLITE_CHECKPOINT_PASSIVE,
        "FULL": apsw.SQLITE_CHECKPOINT_FULL,
        "RESTART": apsw.SQLITE_CHECKPOINT_RESTART,
        "TRUNCATE": apsw.SQLITE_CHECKPOINT_TRUNCATE,
    }

    def _checkpoint(self, mode: str) -> tuple[int, int]:
        """Copy WAL frames into the database file (https://sqlite.org/wal.html#ckpt).

        PASSIVE copies what it can without waiting for readers; RESTART and TRUNCATE
        wait (the busy handler) until readers are off the WAL, then let it start over.
        """
        connection = self.connection
        assert connection is not None, "on_start opened the connection"
        log_frames, copied = connection.connection.wal_checkpoint(mode=self._CHECKPOINT_MODES[mode])
        # Next time past another _checkpoint_step() frames, unless the WAL starts over
        # (_on_wal): readers on old frames keep PASSIVE from finishing, and trying after
        # every commit would only copy (and sync) a few frames each time. (A TRUNCATE
        # leaves 0 frames: the step counts from there.)
        self._checkpointed_at = log_frames
        self._checkpoint_due = log_frames + self._checkpoint_step()
        past_limit = (self.config.wal_size_limit - 32) // (24 + self._page_size) + 1
        if log_frames < past_limit:
            # Not started over and not yet past the limit: checked again once it passes
            # it, not only a step later (which let it reach twice the limit).
            self._checkpoint_due = min(self._checkpoint_due, past_limit)
        counters = self.counters
        counters.checkpoints += 1
        counters.last_checkpoint = time.time()
        if copied == log_frames:
            self.wal_frames = 0  # the next commit restarts the WAL from its start
        counters.wal_frames = self.wal_frames
        return log_frames, copied

    def _run_checkpoint(self, op: CheckpointOp) -> None:
        if not op.claim():
            return
        if self._in_transaction:
            self._commit()  # a checkpoint cannot run inside the batch's transaction
        sql = f"PRAGMA wal_checkpoint({op.mode})"
        try:
            # FULL, RESTART and TRUNCATE wait for readers on old frames while holding
            # the write lock: not for the whole busy timeout, every write behind them.
            waiting = (
                busy_wait_limit(min(self.config.busy_timeout, _CHECKPOINT_WAIT))
                if op.mode != "PASSIVE"
                else contextlib.nullcontext()
            )
            with waiting:
                result = self._checkpoint(op.mode)
        except apsw.BusyError as error:
            refused = wrap_sqlite_error(error, sql)
            refused.args = (
                f"{sql}: another connection is checkpointing; nothing was copied, try again later"
                if op.mode == "PASSIVE"  # (PASSIVE never waits for readers)
                else f"{sql} could not finish: readers still use the WAL (transactions "
                "of this storage, a repeatable_read snapshot say, or of other "
                "processes), or another process holds the write lock. What they allow "
                "was copied; try again once they end",
            )
            self._fail(op, refused)
            return
        except apsw.Error as error:
            self._fail(op, wrap_sqlite_error(error, sql))
            return
        op.future.set_result(result)

    def _on_wal(self, connection: apsw.Connection, database: str, frames: int) -> int:
        if database == "main":
            self._wrote_frames = True
            if frames < self._checkpointed_at:  # the WAL started over
                self._checkpointed_at = 0
                self._checkpoint_due = self._checkpoint_step()
            self.wal_frames = frames
            self.counters.wal_frames = frames
        return apsw.SQLITE_OK

    def _on_row_change(self, update: apsw.PreUpdate) -> None:
        """The pre-update hook: note the changed row's images (cheaply; once per row)."""
        self._row_hook_calls += 1
        if update.database_name != "main":
            return  # temp tables: never cached
        changes = self._row_changes
        table = update.table_name
        images = changes.get(table)
        if images is None:
            if table in changes:
                return  # too many rows already: the table is invalidated whole
            images = changes[table] = []
        if len(images) >= _ROW_IMAGE_LIMIT or update.blob_write >= 0:
            changes[table] = None  # a blob written in place has no new image
            return
        op = update.op
        try:
            old = update.old if op != "INSERT" else ()
            new = update.new if op != "DELETE" else ()
        except apsw.Error:  # a VIRTUAL generated column: apsw cannot read its images
            changes[table] = None  # the table counts as wholly changed
            return
        if old is None or new is None:
            changes[table] = None  # cannot happen; if it did, drop the table whole
            return
        if old:
            images.append((update.rowid, old))
        if new:
            images.append((update.rowid_new if op == "UPDATE" else update.rowid, new))

    def _take_row_changes(self, changes_now: int) -> dict[str, list[RowImage] | None] | None:
        """The batch's changed rows by table, or None if the hook may have missed some.

        SQLite counts every row a statement changed (``total_changes``); the hook must
        have seen at least as many, or some change bypassed it (e.g. a truncation).
        """
        changes, self._row_changes = self._row_changes, {}
        calls, self._row_hook_calls = self._row_hook_calls, 0
        if not self.hooks.track_tables or calls < changes_now - self._changes_at_begin:
            return None
        return changes

    def _after_commit(
        self,
        tables: set[str] | None,
        wrote: bool,
        rows: dict[str, list[RowImage] | None] | None,
    ) -> None:
        # Runs after COMMIT and before any future resolves, so no caller sees its write
        # acknowledged while a stale cache entry survives (the runtime's hook drops the
        # whole cache if it fails).
        try:
            self.hooks.committed(frozenset(tables) if tables is not None else None, wrote, rows)
        except Exception:
            log.exception("the commit hook failed")

    # -- disk full ---------------------------------------------------------------------

    def _enter_disk_full(self, error: DiskFullError) -> None:
        self._disk_full = error
        self._disk_full_since = now = time.monotonic()
        self._refused_while_full = 0
        self._next_probe = now + self.config.disk_full_probe_interval
        log.error("disk full: writes refused until space returns (%s)", error)
        self.events.emit("degraded", "writer", reason="disk_full", error=str(error))

    def _leave_disk_full(self) -> None:
        self._disk_full = None
        log.warning(
            "disk space is back: writes accepted again (%d refused meanwhile)",
            self._refused_while_full,
        )
        self.events.emit("recovered", "writer", reason="disk_full")

    def _disk_full_error(self, now: float) -> DiskFullError:
        self._next_probe = min(self._next_probe, now + self.config.disk_full_probe_interval)
        return DiskFullError(
            "the disk is full: writes are refused until space returns (one write is "
            f"tried every {self.config.disk_full_probe_interval:g}s to find out); "
            "reads go on. Free space, delete data or raise max_page_count.",
            sql=None,
            result_code=apsw.SQLITE_FULL,
        )

    # -- the lease ---------------------------------------------------------------------

    def _grant(self, request: LeaseRequest) -> None:
        if not self.tracing.enabled:
            self._grant_lease(request)
            return
        with self.tracing.consumer_span(
            "atlas.writer.lease",
            request.trace_context,
            None,
            **{"atlas.transaction.id": request.tx_id},
        ) as span:
            self._grant_lease(request)
            future = request.future
            error = future.exception(0) if future.done() else None
            if error is not None:
                Tracing.record_error(span, error)

    def _grant_lease(self, request: LeaseRequest) -> None:
        if not request.claim():
            return
        now = time.monotonic()
        if now > request.deadline:
            self._fail(
                request,
                OperationTimeout(
                    "waiting for the writer lease", now - request.enqueued_at, applied=False
                ),
            )
            return
        expected = request.expected_commits
        if expected is not None and self._batch:
            self._commit()  # compare against committed state only
        if not self._in_transaction and not self._begin(request):
            return
        connection = self.connection
        assert connection is not None, "a batch is open only with a connection"
        if expected is not None and expected != self.counters.commit_seq:
            request.fail(TransactionConflict.stale_snapshot(request.tx_id))
            return
        savepoint = f"tx{request.tx_id}"
        try:
            # A transaction is not replayable: a later failure in the group must not
            # roll it back with the group.
            self._close_group(connection.cursor)
            connection.cursor.execute(f"SAVEPOINT {savepoint}")
        except apsw.Error as error:
            self._fail(request, wrap_sqlite_error(error, "SAVEPOINT"))
            return
        lease = Lease(request.tx_id, savepoint, connection, request.owner, request.lease_timeout)
        lease.hand_over = self._hand_over
        self._lease = lease
        # The runtime's tick sends LeaseExpired past lease.deadline (no timer per lease:
        # starting a thread costs more than a short transaction).
        self.hooks.lease_granted(lease)
        request.future.set_result(lease)

    def _hand_over(self, lease: Lease, ret: LeaseReturn) -> bool:
        """Pass a committed transaction's connection straight to the next one waiting.

        Runs in the returning transaction's thread, after it released its savepoint
        (so the writer can no longer revoke its lease). Going through the writer would
        cost two thread wake-ups per transaction; this costs one. ``ret`` is then
        acknowledged with the batch's COMMIT like any other return. False (nothing
        done): the caller sends ``ret`` to the writer as usual, which ends the chain
        and lets the writer commit; that happens when no transaction waits, the next
        one needs a version check, or the batch reached its bounds.
        """
        # Under a lock a stop or crash takes too: either it comes first (and nothing is
        # handed on), or the hand-over is done, its successor in place, before it looks.
        refused: list[tuple[LeaseRequest, BaseException]] | None = None  # (rare: traced after)
        try:
            with self._handing_over:
                config = self.config
                now = time.monotonic()
                if (
                    self._ending
                    or self._lease is not lease
                    or self._chain_length >= config.max_batch_size
                    or now - self._batch_started >= config.max_batch_delay
                ):
                    return False
                waiting = self._lease_queue
                while True:  # the first queued request this return may be granted (claimed)
                    try:
                        request = waiting.popleft()
                    except IndexError:
                        return False
                    if request.expected_commits is not None:
                        waiting.appendleft(request)  # the writer compares it with committed state
                        return False
                    if not request.claim():
                        continue  # its caller gave up waiting
                    if now <= request.deadline:
                        break
                    late = OperationTimeout(
                        "waiting for the writer lease", now - request.enqueued_at, applied=False
                    )
                    request.fail(late)
                    refused = [*(refused or ()), (request, late)]
                savepoint = f"tx{request.tx_id}"
                connection = lease.connection
                try:
                    connection.cursor.execute("SAVEPOINT " + savepoint)
                except apsw.Error as error:
                    failed = wrap_sqlite_error(error, "SAVEPOINT")
                    request.fail(failed)
                    refused = [*(refused or ()), (request, failed)]
                    return False
                successor = Lease(
                    request.tx_id, savepoint, connection, request.owner, request.lease_timeout
                )
                successor.hand_over = lease.hand_over  # (this method, bound once at the grant)
                self._chained.append(ret)
                self._chain_length += 1
                self.counters.handovers += 1
                self._lease = successor
                hooks = self.hooks
                if hooks.lease_passed is not None:
                    hooks.lease_passed(lease, successor)
                else:
                    hooks.lease_ended(lease)
                    hooks.lease_granted(successor)
        finally:
            if refused is not None and self.tracing.enabled:
                for failed_request, failure in refused:
                    self._trace_hand_over(failed_request, failure)
        if self.tracing.enabled:  # the request was handled here: its span, after the fact
            self._trace_hand_over(request, None)
        request.future.set_result(successor)  # wakes the next transaction
        return True

    def _trace_hand_over(self, request: LeaseRequest, error: BaseException | None) -> None:
        """The span of a lease request handled at a hand-over (made after the fact)."""
        with self.tracing.consumer_span(
            "atlas.writer.lease",
            request.trace_context,
            None,
            **{"atlas.transaction.id": request.tx_id, "atlas.lease.handed_over": True},
        ) as span:
            if error is not None:
                Tracing.record_error(span, error)

    def _absorb_chain(self) -> None:
        """Add the returns handed over during the lease to the batch (writer thread)."""
        self._chain_length = 0
        while self._chained:
            self._add_return(self._chained.popleft())

    def _add_return(self, message: LeaseReturn) -> None:
        message.result = None
        self._batch.append(message)  # acknowledged with the batch's COMMIT
        if message.trace_context is not None:  # traced: the commit links the transaction's
            span = Tracing.span_in(message.trace_context)  # commit call (atlas.tx.commit)
            if span is not None:
                self._spans[message.id] = span
        if not message.plain:
            self._batch_plain = False  # (the transaction noted it: see Transaction._plain)
        if self._batch_tables is not None:
            if message.tables is None:
                self._batch_tables = None
            else:
                self._batch_tables.update(message.tables)

    def _take_lease_queue(self) -> list[LeaseRequest]:
        queue = self._lease_queue
        taken = []
        while queue:
            taken.append(queue.popleft())
        return taken

    def _take_back(self, message: LeaseReturn) -> None:
        lease = self._lease
        if lease is None or lease.tx_id != message.tx_id:
            message.fail(
                TransactionAborted(
                    f"transaction {message.tx_id} no longer holds the writer lease "
                    "(it expired or the writer restarted); it was rolled back"
                )
            )
            return
        self._lease = None
        self.hooks.lease_ended(lease)
        self._absorb_chain()
        if message.lost:
            # SQLite rolled back the batch under the transaction, or refused to end its
            # savepoint (which may still hold its changes): no part of it may commit.
            connection = self.connection
            if connection is not None and connection.connection.in_transaction:
                self._current = message  # if ROLLBACK raises, the writer restarts: fail it
                connection.cursor.execute("ROLLBACK")
                self._current = None
            self._batch_lost(
                f"transaction {message.tx_id} lost it (a statement of its rolled back "
                "SQLite's whole transaction, or its savepoint could not be ended)"
            )
            message.future.set_result(None)
            return
        if message.commit:
            self._add_return(message)
        else:
            message.future.set_result(None)
        self._release_stash()

    def _expire(self, tx_id: int) -> None:
        lease = self._lease
        if lease is None or lease.tx_id != tx_id:
            return  # returned meanwhile
        waited = time.monotonic() - lease.granted_at
        self._revoke(
            lease,
            TransactionTimeout(
                f"transaction {tx_id} held the writer lease for {waited:.1f}s, past its "
                "timeout; it was rolled back. Keep transactions short, or give them more "
                "time: db.transaction(timeout=...), or the storage's transaction_timeout"
            ),
        )

    def _revoke(self, lease: Lease, error: AtlasError) -> None:
        """Take ``lease`` back and roll its transaction back (unless it was returned)."""
        savepoint = lease.savepoint
        lost = False

        def undo(connection: TrackedConnection) -> None:
            nonlocal lost
            if connection.connection.in_transaction:
                connection.cursor.execute(f"ROLLBACK TO {savepoint}; RELEASE {savepoint}")
            else:
                lost = True  # SQLite rolled the whole batch back already (no savepoint left)

        if not lease.revoke(error, undo):
            return  # given back meanwhile (its LeaseReturn is on its way, or handed over)
        self._lease = None
        self.hooks.lease_ended(lease)
        self._absorb_chain()
        if lost:
            self._batch_lost(
                f"a statement of transaction {lease.tx_id} rolled back SQLite's whole transaction"
            )
        else:
            self._release_stash()

    def _batch_lost(self, reason: str) -> None:
        """SQLite rolled the batch back during a lease: replay it, then what waited behind.

        The batch's writes go in front of the lease queue and the stash: they were sent
        first.
        """
        self._in_transaction = False
        self._release_stash()
        self._lost_batch(reason)  # puts the batch's writes in front of those

    def _hold(self, message: Op) -> None:
        """Keep ``message`` until the lease ends, counted against the mailbox's bound.

        So while a transaction holds the lease, senders wait for room (backpressure).
        """
        self._stash.append(message)
        if len(self._stash) >= self._prune_stash_at:
            self._prune_stash()
        self.mailbox.held = len(self._stash)

    def _prune_stash(self) -> None:
        """Drop the held ops nobody waits for, failing those past their deadline.

        A sender finding the mailbox full counts only the held ops still awaited
        (``count_held``), so writes given up behind a lease take no room; they must not
        pile up here either. Pruned once the stash doubled since the last time (and at
        the mailbox's bound): each op is looked at a bounded number of times, and the
        stash stays within twice the bound.
        """
        now = time.monotonic()
        self._stash, late = sort_out(self._stash, now)
        for op in late:
            self._fail(op, op.too_late(now))
        self._prune_stash_at = max(self.mailbox.capacity, 2 * len(self._stash))

    def _take_stash(self) -> list[Op]:
        """What :meth:`_hold` kept, taken out: the mailbox counts it held no more."""
        stash, self._stash = self._stash, []
        self.mailbox.release_held()
        return stash

    def _release_stash(self) -> None:
        """Hand what waited behind the lease back to the mailbox, in front, in order."""
        waiting = [*self._take_lease_queue(), *self._take_stash()]
        if waiting:
            self.mailbox.replay(waiting)

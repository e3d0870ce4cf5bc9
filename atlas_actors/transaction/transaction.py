"""Interactive transactions (the plan's ``Transaction`` and ``TransactionManager``).

``with db.transaction(isolation=...) as tx:`` commits on leaving the block and rolls
back on an exception; inside it, another ``with db.transaction()`` in the same thread
(and asyncio task, if any) becomes a savepoint. ``db.transactions.begin()`` returns the
same object for explicit ``commit()``/``rollback()``; ``db.transactions.run(fn)`` runs
``fn(tx)`` and retries it when it hits a transient conflict. See ``isolation.py`` for
what each level does.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import apsw

from atlas_actors.actors.writer_ops import LeaseRequest, LeaseReturn
from atlas_actors.config import MAX_SECONDS
from atlas_actors.connection import (
    Params,
    TrackedConnection,
    WriteResult,
    refuse_connection_settings,
    refuse_transaction_control,
    refuse_writer_settings,
)
from atlas_actors.errors import (
    AtlasError,
    ConstraintError,
    DeadlockError,
    DiskFullError,
    OperationTimeout,
    ReadOnlyError,
    StatementTypeError,
    TransactionAborted,
    TransactionConflict,
    TransactionError,
    TransactionTimeout,
    ValidationError,
    WrongThreadError,
    shorten,
    wrap_sqlite_error,
)
from atlas_actors.future import Future, sql_type_error
from atlas_actors.rows import Row
from atlas_actors.transaction.deadlock import WaitForGraph
from atlas_actors.transaction.isolation import PREVENTS, IsolationLevel, check_isolation
from atlas_actors.transaction.lease import Lease, LeaseState, run_command

if TYPE_CHECKING:
    from atlas_actors.actors.pool import PooledConnection
    from atlas_actors.storage import Storage

__all__ = ["Transaction", "TransactionInfo", "TransactionManager", "TransactionsStatus"]

T = TypeVar("T")

log = logging.getLogger(__name__)

_ids = itertools.count(1)
_SAVEPOINT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SAVEPOINT_NAME_MAX = 64
"""Characters a savepoint name has at most."""
_RESERVED_SAVEPOINT = re.compile(r"(tx[1-9][0-9]*|nested_[0-9]+_[0-9]+)\Z", re.IGNORECASE)
"""The transactions' own savepoints: ``tx<id>`` (ids from 1) and nested blocks'."""
_NESTED_SAVEPOINT = re.compile(r"nested_[0-9]+_[0-9]+\Z")
"""A nested block's savepoint (never a caller's: the name is reserved)."""
_SNAPSHOT_ATTEMPTS = 20
_WRITE_REFUSED = (apsw.SQLITE_READONLY, None)
"""A reader's ``ReadOnlyError`` codes for a statement that writes."""
LEASE = "the writer lease"
_ACTIVE = LeaseState.ACTIVE
_NO_TABLES: frozenset[str] = frozenset()
_now = time.time  # (module names: Transaction() runs once per transaction)
_get_ident = threading.get_ident
_modules = sys.modules
_ref = weakref.ref
_ending = threading.Lock()
"""Held for a few steps, never across a wait: by the owner storing a lease just granted,
and by a commit or rollback ending a transaction that holds none (from another thread,
perhaps, while the owner waits for the lease). Either the lease is stored first, and
the end ends it, or the end comes first, and the owner gives the lease straight back."""


class Transaction:
    """One interactive transaction: statements, savepoints, commit, rollback."""

    # What most transactions never change is a class attribute: a transaction is made
    # in its caller's thread once per transaction, and each line is paid again at the
    # GIL hand-overs when many threads run transactions.
    operations = 0
    """Statements run so far."""
    state = "active"
    """``active``, ``committed``, ``rolled_back`` or ``failed``; ``committing`` after a
    ``commit()`` that timed out waiting for the acknowledgement, until the writer's
    answer comes."""
    _lease: Lease | None = None
    """The writer lease while held; None once the transaction has ended."""
    _request: Future[Lease] | None = None
    """The owner's request for the lease while it waits for it (a commit or rollback
    from another thread withdraws it)."""
    _reader: PooledConnection | None = None
    _reader_lock: threading.RLock | None = None
    """Created with the first snapshot (``repeatable_read``). The owner holds it through
    every call that reads the snapshot, takes the lease or ends the transaction, and
    the tick that ends a snapshot past the timeout takes it only when it is free: the
    two never act on the transaction at once."""
    _pinned_at = 0.0
    """``time.monotonic()`` when the reader was pinned."""
    _pinned_by = 0
    """Thread id that pinned the reader (its hold in the wait-for graph)."""
    _snapshot: tuple[int, int, int] | None = None
    _closed_error: AtlasError | None = None
    """Set when the storage closed or failed with a snapshot pinned: it ends (see
    :meth:`end_snapshot_for_close`)."""
    _snapshot_data_version: int | None = None
    """The pinned reader's ``PRAGMA data_version`` inside the snapshot (see
    :meth:`_changed_since_snapshot`)."""
    _savepoints: tuple[str, ...] = ()
    _error: AtlasError | None = None
    """What ended the transaction (a timeout, a conflict, a lost batch), if anything did."""
    _last_error: AtlasError | None = None
    """The last error one of its calls raised (``db.errors.recover`` applies its strategy
    when nothing ended the transaction: a constraint violation leaves it active)."""
    _nested = 0
    _pending: tuple[str, ...] = ()
    """Open nested blocks' savepoints not taken yet, outermost first: a block begun
    while the transaction holds no lease takes its savepoint with the lease, just
    before the statement that takes it (a block that only reads takes none)."""
    _plain = True
    """Every statement it ran is known to leave the schema alone (``StatementInfo.plain``;
    noted with the tables it writes): the writer then skips its schema check."""
    _commit_sent = False
    """Set once a commit went to the writer and its wait timed out (never reset)."""
    _task: object = None
    """The asyncio task that opened its ``with`` block, if one did (see _current_task)."""

    def __init__(
        self,
        manager: TransactionManager,
        isolation: IsolationLevel,
        timeout: float | None,
    ) -> None:
        self.id = next(_ids)
        """Unique id (the writer names its savepoint ``tx<id>``)."""
        self.isolation: IsolationLevel = isolation
        self.start_time = _now()
        """Wall-clock start (``time.time()``)."""
        self.owner = _get_ident()
        self._manager = manager
        self._storage = manager.storage
        self._timeout = manager.transaction_timeout if timeout is None else timeout
        self._known = manager.statements.known
        self._writes: set[str] | None = set() if manager.tracks_writes else None
        """The tables written, noted only for a cache; None if not noted or unknown."""

    # -- statements --------------------------------------------------------------------

    def execute(self, sql: str, params: Params = None) -> WriteResult:
        """Run a writing statement in the transaction."""
        # Most of a transaction's statements come here, so what Lease.run and a shared
        # helper would do is written out (in query() too): each Python call saved is
        # paid again at every GIL hand-over when many threads run transactions.
        lease = self._lease
        if lease is None:  # (also once the transaction has ended: _writer raises)
            lease = self._writer()
        try:
            with lease.lock:  # the writer takes it before revoking the lease
                if lease.state is not _ACTIVE:
                    raise lease.ended_error()
                writes = self._writes
                if writes is not None:
                    info = self._known.get(sql)  # analyze()'s cache, without the call
                    if info is None:
                        # (before the analysis: preparing a PRAGMA applies it)
                        refuse_writer_settings(sql)
                        self._note_tables(writes, sql, params, lease.connection)
                    else:
                        writes.update(info.writes)
                        if not info.plain:
                            self._plain = False
                result = lease.connection.write(sql, params)
        except AtlasError as error:
            raised = self._failed_on_writer(lease, error)
            if raised is not error:
                raise raised from error
            raise
        except TypeError:  # (what the text's checks raise for None, a list, bytes...)
            if type(sql) is str:
                raise
            raise self._not_text(sql) from None
        self.operations += 1
        return result

    def query(self, sql: str, params: Params = None) -> list[Row]:
        """Run a read in the transaction (what it sees depends on the isolation level)."""
        lease = self._lease
        if lease is None:
            if self.isolation != "serializable":
                self._check_active()
                try:
                    refuse_transaction_control(sql)  # COMMIT would end the pinned snapshot
                    refuse_connection_settings(sql)  # (the reader goes back to the pool)
                except TypeError:  # (None, a number, a list, bytes: not SQL text)
                    if type(sql) is str:
                        raise
                    raise self._not_text(sql) from None
                rows = self._read_before_writing(sql, params)
                if rows is not None:
                    self.operations += 1
                    return rows
                # It writes (INSERT ... RETURNING, say): the transaction's first write.
            lease = self._writer()
        # On the lent connection: as execute(), written out for the same reason. Its
        # tables are noted too (INSERT ... RETURNING reads).
        try:
            with lease.lock:
                if lease.state is not _ACTIVE:
                    raise lease.ended_error()
                info = self._known.get(sql)
                if info is None or not info.plain:  # (a plain one controls no transaction)
                    refuse_transaction_control(sql)  # (write() refuses them itself)
                    refuse_writer_settings(sql)
                writes = self._writes
                if writes is not None:
                    if info is None:
                        self._note_tables(writes, sql, params, lease.connection)
                    else:
                        writes.update(info.writes)
                        if not info.plain:
                            self._plain = False
                rows = lease.connection.query(sql, params)
        except AtlasError as error:
            raised = self._failed_on_writer(lease, error)
            if raised is not error:
                raise raised from error
            raise
        except TypeError:  # (as in execute)
            if type(sql) is str:
                raise
            raise self._not_text(sql) from None
        self.operations += 1
        return rows

    def _not_text(self, sql: object) -> StatementTypeError:
        """The error for a statement that is not SQL text; the transaction goes on."""
        error = sql_type_error(sql, built=False)
        self._last_error = error
        self._storage.errors.handle(error, {"operation": "transaction", "tx": self.id})
        return error

    def create_savepoint(self, name: str) -> None:
        """Mark a point to roll back to (takes the writer lease).

        Names are matched as SQLite matches them: without regard to case, the most
        recent of equal names first.
        """
        _check_savepoint_name(name)
        self._open_savepoint(name)

    savepoint = create_savepoint

    def rollback_to(self, name: str) -> None:
        """Undo everything since savepoint ``name`` (which stays open).

        Inside a nested block, ``name`` must have been opened inside it (see
        :meth:`_check_inside_nested`).
        """
        _check_savepoint_name(name)
        self._check_inside_nested(name, "rollback_to")
        self._rollback_to_savepoint(name)

    def release(self, name: str) -> None:
        """Forget savepoint ``name`` (and those after it), keeping their changes."""
        _check_savepoint_name(name)
        self._check_inside_nested(name, "release")
        self._release_savepoint(name)

    def _check_inside_nested(self, name: str, call: str) -> None:
        """Refuse ``call(name)`` for a savepoint opened before the innermost nested block.

        SQLite would undo or end the block's own savepoint with it (those after
        ``name``): the block could no longer undo what it ran, and leaving it would
        find its savepoint gone.
        """
        index = self._savepoint_index(name)
        for later in self._savepoints[index + 1 :]:
            if _NESTED_SAVEPOINT.match(later):
                raise ValidationError(
                    f"{call}({name!r}): savepoint {name!r} of transaction {self.id} was "
                    "opened before the nested `with db.transaction()` block that is open, "
                    "and this would end the block's own savepoint with it. Raise out of "
                    f"the block to undo what it did, and call {call}({name!r}) once it "
                    "has ended"
                )

    # The three without the name check: a nested block's savepoint has a reserved name.
    def _open_savepoint(self, name: str) -> None:
        self._savepoint_command(f'SAVEPOINT "{name}"')
        self._savepoints = (*self._savepoints, name)

    def _rollback_to_savepoint(self, name: str) -> None:
        index = self._savepoint_index(name)
        self._savepoint_command(f'ROLLBACK TO "{name}"')
        self._savepoints = self._savepoints[: index + 1]

    def _release_savepoint(self, name: str) -> None:
        index = self._savepoint_index(name)
        self._savepoint_command(f'RELEASE "{name}"')
        self._savepoints = self._savepoints[:index]

    def _savepoint_command(self, sql: str) -> None:
        """Run ``sql`` on the lent connection; an error is handled as a statement's.

        (SQLite may refuse one: an I/O error in ROLLBACK TO, say, which can also roll
        the writer's whole batch back.)
        """
        self._on_writer(self._writer(), lambda connection: run_command(connection, sql))

    def _savepoint_index(self, name: str) -> int:
        """Where the most recent savepoint SQLite takes for ``name`` is (ASCII case folded)."""
        folded = [open_name.lower() for open_name in self._savepoints]
        try:
            return len(folded) - 1 - folded[::-1].index(name.lower())
        except ValueError:
            raise ValidationError(
                f"no savepoint {name!r} in transaction {self.id}; open: {list(self._savepoints)}"
            ) from None

    # -- ending ------------------------------------------------------------------------

    def commit(self) -> None:
        """Commit; returns once the changes are committed (and synced, with FULL)."""
        if self.state != "active":
            self._check_active()
        lease = self._lease
        if lease is None:
            if self._reader_lock is not None:
                self._commit_snapshot(self._reader_lock)
                return
            closed = self._storage_closed()  # (a read-only one commits nothing, but says so)
            lease = self._end_unleased("committed" if closed is None else "failed")
            if lease is None:  # (ended: nothing written, no lease to give back)
                self._manager.ended(self)
                if closed is not None:
                    self._error = closed
                    raise closed
                return
        try:
            if lease is not None:
                lease.give_back(f"RELEASE {lease.savepoint}")
                self._lease = None
                self._manager.return_lease(
                    self,
                    lease,
                    commit=True,
                    tables=self._writes if self._manager.tracks_writes else _NO_TABLES,
                    plain=self._plain and self._writes is not None,
                )
        except AtlasError as error:
            if self.state == "committing":
                # Given back, its COMMIT not acknowledged in time: settled later.
                self._storage.errors.handle(error, {"operation": "transaction", "tx": self.id})
                raise
            try:
                if (
                    lease is not None
                    and self._lease is lease
                    and not isinstance(error, TransactionError)
                ):
                    self._send_back_refused(lease)  # (TransactionError: revoked already)
            finally:
                self._fail(error)  # (even if sending the lease back failed too)
            raise
        finally:
            if self._reader is not None:
                self._drop_reader()
        self.state = "committed"
        manager = self._manager
        if manager._active.pop(self.id, None) is not None:  # ended(), written out
            with manager._lock:
                manager.committed += 1

    def _storage_closed(self) -> AtlasError | None:
        """The error calls raise once the storage closed or failed; None while it serves."""
        try:
            self._storage.check_usable()
        except AtlasError as error:
            return error
        return None

    def _commit_snapshot(self, lock: threading.RLock) -> None:
        """Commit a transaction that has read a snapshot (it may hold the lease by now)."""
        with lock:  # the tick cannot end the snapshot halfway through
            self._check_active()
            if self._lease is not None:
                Transaction.commit(self)  # (granted before we took the lock: the lease path)
                return
            closed = self._closed_error or self._storage_closed()
            if closed is not None:  # (a read-only one commits nothing, but says so)
                self._closed_error = closed
                if self._reader is not None:
                    raise self._expire()
                self._error = closed
                self._finish("failed")
                raise closed
            self._drop_reader()
            self._finish("committed")

    def rollback(self) -> None:
        """Undo the whole transaction. Harmless once it has ended."""
        lock = self._reader_lock
        if lock is None:
            self._rollback()
            return
        with lock:  # the tick cannot end the snapshot halfway through
            self._rollback()

    def _rollback(self) -> None:
        if self.state != "active":
            self._drop_reader()
            return
        with _ending:  # (see _ending: the owner may be storing a lease just granted)
            if self.state != "active":  # ended by another thread just now
                ended = True
            else:
                ended = False
                lease, self._lease = self._lease, None  # (an ended transaction holds none)
                request, self._request = self._request, None
                self.state = "rolled_back"  # a lease granted from now on goes straight back
        if ended:
            self._drop_reader()
            return
        try:
            if request is not None:
                self._withdraw(request)
            if lease is not None:
                self._roll_back_lease(lease)
        finally:
            self._drop_reader()
            self._finish("rolled_back")

    def __enter__(self) -> Transaction:
        # On the thread's stack while its block is open: a db.transaction() inside
        # becomes a savepoint of it (and is refused once it has failed), if it comes
        # from the asyncio task that opened the block (_current_task(), written out).
        asyncio = _modules.get("asyncio")  # (never imported: no event loop runs)
        if asyncio is not None and asyncio._get_running_loop() is not None:
            self._task = asyncio.current_task()
        self._manager._local.stack.append(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stack = self._manager._local.stack
        if stack and stack[-1] is self:
            stack.pop()
        if exc_type is None:
            if self.state == "active":
                self.commit()
            elif self._error is not None:
                raise self._error
        else:
            self.rollback()

    # -- internals ---------------------------------------------------------------------

    def _check_active(self) -> None:
        if self.state == "active":
            return
        raise self._ended_error()

    def _ended_error(self) -> AtlasError:
        """What a call on this transaction raises once it has ended."""
        if self._error is not None:
            return self._error
        return TransactionError(f"transaction {self.id} is {self.state}; begin a new one")

    def _end_unleased(self, state: str) -> Lease | None:
        """End the transaction as ``state`` if it holds no lease; else return the lease.

        Its owner may be waiting for the lease (in another thread): the request is
        withdrawn, so that the writer never grants it, or if the writer took it already,
        the owner gives the lease straight back once granted (``_writer``). Raises the
        ended error if the transaction ended meanwhile (another thread ended it first).
        """
        with _ending:
            lease = self._lease
            if lease is not None:
                return lease  # granted just now, and stored: ended the usual way
            if self.state != "active":
                raise self._ended_error()
            request, self._request = self._request, None
            self.state = state
        if request is not None:
            self._withdraw(request)
        return None

    def _withdraw(self, request: Future[Lease]) -> None:
        """The transaction ended while its owner waited for the lease: withdraw the request.

        Claimed here, the writer skips it, and the owner's wait ends at once with the
        ended error. Else the writer has it, and the owner gives the lease straight back
        once granted.
        """
        if request.claim():
            request.set_exception(self._ended_error())

    def _note_tables(
        self, writes: set[str], sql: str, params: Params, connection: TrackedConnection
    ) -> None:
        """Add the tables ``sql`` changes to ``writes``, analysing it first (a new text)."""
        try:
            info = self._manager.statements.analyze(connection.connection, sql, params)
        except (TypeError, OverflowError, KeyError, ValueError) as error:
            # Parameters the statement cannot bind either (apsw's answers), or text it
            # cannot prepare (a NUL, a lone surrogate): typed now.
            wrapped = wrap_sqlite_error(error, sql)
            if isinstance(wrapped, AtlasError):
                raise wrapped from error
            self._writes = None  # (not about the parameters: as below)
            return
        except apsw.Error:
            self._writes = None  # unknown from now on; the statement fails next, typed
            return
        writes.update(info.writes)
        if not info.plain:
            self._plain = False

    def _on_writer(self, lease: Lease, fn: Callable[[TrackedConnection], T]) -> T:
        """Run ``fn`` on the lent connection (savepoint commands; statements: execute)."""
        try:
            return lease.run(fn)
        except AtlasError as error:
            raised = self._failed_on_writer(lease, error)
            if raised is not error:
                raise raised from error
            raise

    def _send_back_refused(self, lease: Lease) -> None:
        """SQLite refused to end ``lease``'s savepoint: send the lease back all the same.

        The writer waits for a lease given back (a timeout cannot revoke it), so it goes
        back at once, as a lost batch: if SQLite kept the batch, the savepoint may still
        hold this transaction's changes, and the batch's COMMIT would commit them. The
        writer rolls the batch back (unless SQLite did) and replays its other writes.
        """
        self._lease = None
        self._manager.return_lease(self, lease, commit=False, lost=True)

    def _failed_on_writer(self, lease: Lease, error: AtlasError) -> AtlasError:
        """Account ``error`` from the lent connection; return the error to raise.

        That is ``error``, unless the writer revoked the lease meanwhile (a timeout
        interrupting the statement, say): then the lease's own error says what happened;
        or a constraint made SQLite roll its whole transaction back (``OR ROLLBACK``,
        ``ON CONFLICT ROLLBACK``, ``RAISE(ROLLBACK)``): then the ``TransactionAborted``
        that ended the transaction, ``error`` its cause. (A ``ConstraintError``'s
        advice, "nothing was changed", would say the transaction goes on. A full disk
        or an I/O error that lost the batch is raised as it is: what handles it keys
        on its type, and the transaction's next call raises the ``TransactionAborted``.)
        """
        if isinstance(error, TransactionError):  # revoked: timed out or the writer crashed
            self._fail(error)
            return error
        if lease.revoking:
            lease.await_revocation()  # the writer interrupted the statement (a timeout)
        with lease.lock:  # the writer may have revoked the lease and be using the connection
            revoked = lease.state is not LeaseState.ACTIVE
            try:
                lost = not revoked and not lease.connection.connection.in_transaction
            except apsw.Error:
                lost = True  # closed under it (the writer crashed): nothing of it is left
        if revoked:
            # The writer rolled it back (a timeout interrupting the statement, say): the
            # lease's error is the one raised, and the one reported (once).
            ended = lease.ended_error()
            self._fail(ended)
            return ended
        self._last_error = error
        self._storage.errors.handle(error, {"operation": "transaction", "tx": self.id})
        if isinstance(error, DiskFullError):
            self._storage.disk_full_found(error)  # (plain writes are refused from now on)
        if lost:
            # SQLite rolled the whole batch back (SQLITE_FULL, IOERR, ON CONFLICT
            # ROLLBACK): so is this one. The lease goes back first (_fail forgets it), so
            # the writer replays the batch's other writes and serves the next at once.
            aborted = TransactionAborted(
                f"transaction {self.id} was rolled back by SQLite after an error: "
                f"{_sqlite_words(error)}; it has ended, its earlier statements undone "
                "and nothing of it committed: run it again from the start"
            )
            aborted.__cause__ = error  # (its codes: analyze() and recover() diagnose it)
            try:
                self._give_back(commit=False, lost=True)
            finally:
                self._fail(aborted)
            if isinstance(error, ConstraintError):
                return aborted
        return error

    def _wrong_thread(self, me: int) -> WrongThreadError:
        begun = f"thread {self.owner}" if self.owner else "a thread that has ended"
        return WrongThreadError(
            f"transaction {self.id} was begun by {begun} and used from thread "
            f"{me}: a transaction belongs to the thread that began it (the deadlock guard "
            "tracks who holds the writer lease by thread); begin it in the thread that "
            "runs its statements"
        )

    def _lease_advice(self) -> str:
        return (
            f"transaction {self.id} would wait for the writer lease its own "
            "thread holds: commit or roll back the other transaction first"
        )

    def _writer(self, locked: bool = False) -> Lease:
        """The writer lease: borrowed (waiting behind other transactions) if not held."""
        if self.state != "active":
            self._check_active()
        lease = self._lease
        if lease is not None:
            return lease
        if self._reader_lock is not None and not locked:
            with self._reader_lock:  # the tick cannot end the snapshot meanwhile
                if self._reader is not None and self._snapshot_too_old():
                    self._check_active()
                    raise self._expire()
                return self._writer(locked=True)  # (state and lease checked again)
        me = threading.get_ident()
        if me != self.owner:
            refused = self._wrong_thread(me)
            self._storage.errors.handle(refused, {"operation": "transaction", "tx": self.id})
            raise refused
        expected = None
        if self.isolation == "repeatable_read" and self._reader is not None:
            # A snapshot whose version could not be pinned conflicts on purpose.
            expected = self._snapshot[0] if self._snapshot is not None else -1
        manager = self._manager
        if manager._local.end is None:
            manager._watch(me)
        graph = manager.graph
        try:
            recorded = graph.check(me, LEASE, advice=self._lease_advice, record=True)
        except DeadlockError as error:
            # Refused before it waited: reported, and the transaction stays usable (its
            # owner may end the other one and go on).
            self._storage.errors.handle(error, {"operation": "transaction", "tx": self.id})
            raise
        try:
            request = manager.storage.writer.submit_lease(
                LeaseRequest,
                f"transaction {self.id}: lease",
                (self.id, self._timeout, expected),
                writable=True,
            )
            self._request = request  # (a commit or rollback from another thread withdraws it)
            try:
                if self.state != "active":  # ended before it could see the request
                    self._withdraw(request)
                granted: Lease = request.get()
                if expected is not None and self._changed_since_snapshot():
                    # (_abandon, below, gives the lease back)
                    raise TransactionConflict.stale_snapshot(self.id)
            except BaseException:
                self._abandon(request)
                raise
            finally:
                self._request = None
        except AtlasError as error:
            if self.state != "active":
                # Ended from another thread meanwhile (its request withdrawn, or its wait
                # given up): said as any call on an ended transaction says it.
                raise self._ended_error() from None
            self._fail(error)
            raise
        finally:
            if recorded:
                graph.done_waiting(me)
        with _ending:
            live = self.state == "active"
            if live:
                self._lease = granted
        if not live:
            # Ended from another thread while it waited, too late to withdraw the
            # request: the lease goes straight back (an ended transaction holds none).
            self._give_back_unused(granted)
            raise self._ended_error()
        if self._reader is not None:
            self._drop_reader()  # from now on the writer serves every statement
        if self._pending:
            self._open_pending()
        return granted

    def _changed_since_snapshot(self) -> bool:
        """Whether anything was committed since the snapshot began (lease granted).

        With the lease granted the writer holds the write lock: nothing commits
        meanwhile. Each of two signs misses no commit, and each alone may see one that
        was none, so a conflict needs both:

        - the writer's version (this storage's commits, SQLite's ``data_version`` as of
          its last ``BEGIN``, its incarnation) moved since the snapshot's stamp; it
          also moves for another process's commit made before the snapshot began,
          which the writer learns of only at its next ``BEGIN``, and for a restart;
        - the pinned reader's ``data_version`` read inside the snapshot moved by now;
          it also moves for a checkpoint that truncated or restarted the WAL.
        """
        reader = self._reader
        if reader is None or self._snapshot is None or self._snapshot_data_version is None:
            return True  # (no snapshot whose version is known: conflicts on purpose)
        if self._storage.writer_version == self._snapshot:
            return False
        reader.query("ROLLBACK")  # (the snapshot ends: the next read sees the latest)
        now: int = reader.query("PRAGMA data_version")[0][0]
        return now != self._snapshot_data_version

    def _open_pending(self) -> None:
        """Open the savepoints of the nested blocks begun before the lease was taken.

        If one cannot be opened, the transaction is rolled back: a block running
        without its savepoint could not undo what it ran.
        """
        try:
            while self._pending:
                self._open_savepoint(self._pending[0])
                self._pending = self._pending[1:]
        except BaseException:
            self._pending = ()
            self.rollback()
            raise

    def _abandon(self, request: Future[Lease]) -> None:
        """The wait for the lease ended without it (a timeout, an interrupt): let it go.

        Withdrawn if nobody took the request yet. Else the writer (or a committing
        transaction) took it and grants the lease shortly, once SQLite's write lock is
        free: the lease goes straight back, rolled back. Held by a thread that stopped
        waiting, it would stop every other write until its timeout, and make that
        thread's next write a deadlock with itself.
        """
        if request.claim():
            return  # withdrawn: the writer skips it
        # Past the call's deadline: what the writer waits for (the write lock) is bounded.
        request.deadline = time.monotonic() + self._storage.config.busy_timeout + 1.0
        try:
            lease = request.get()
        except BaseException:
            return  # refused (or still not granted: then the lease's timeout ends it)
        self._give_back_unused(lease)

    def _give_back_unused(self, lease: Lease) -> None:
        """Roll back and give back a lease granted to a wait that no longer wants it."""
        try:
            self._roll_back_lease(lease)
        except AtlasError as error:  # the caller gets the error that ended its wait
            self._storage.errors.handle(error, {"operation": "transaction", "tx": self.id})

    def _roll_back_lease(self, lease: Lease) -> None:
        """Roll ``lease``'s savepoint back and give the lease back to the writer."""
        savepoint = lease.savepoint
        try:
            lease.give_back(f"ROLLBACK TO {savepoint}; RELEASE {savepoint}")
        except TransactionError:
            return  # revoked already: the writer rolled it back
        except AtlasError as error:
            # The whole batch is rolled back (by SQLite, or the writer now), this
            # transaction with it: the rollback happened.
            self._storage.errors.handle(error, {"operation": "transaction", "tx": self.id})
            self._send_back_refused(lease)
            return
        self._manager.return_lease(self, lease, commit=False)

    def _read_before_writing(self, sql: str, params: Params) -> list[Row] | None:
        """Run a read before the first write; None if ``sql`` writes (SQLite refused it).

        The reader is read-only, so SQLite refuses a statement that writes before it
        changes or returns anything (``SQLITE_READONLY``): that statement is the
        transaction's first write, for the caller to run on the write connection.
        """
        try:
            if self.isolation != "repeatable_read":
                # read_committed / read_uncommitted: the latest committed state each
                # time (read_uncommitted skips the cache's check for other processes).
                storage = self._storage
                if storage.config.cache:
                    fresh = self.isolation != "read_uncommitted"
                    return storage.cache.read(sql, params, None, fresh=fresh)
                return storage.pool.query(sql, params)
            lock = self._reader_lock
            if lock is None:
                lock = self._reader_lock = threading.RLock()
            with lock:  # the tick cannot end the snapshot while it is read
                self._check_active()  # (the tick may have ended it just now)
                reader = self._reader
                if reader is None:
                    return self._open_snapshot(sql, params)
                if self._snapshot_too_old():
                    raise self._expire()
                return reader.query(sql, params)
        except TransactionTimeout:
            raise  # (logged once, where the snapshot ended)
        except AtlasError as error:
            if type(error) is ReadOnlyError and error.extended_result_code in _WRITE_REFUSED:
                return None  # (an extended code: the file cannot be read as it is)
            self._last_error = error
            self._storage.errors.handle(error, {"operation": "transaction", "tx": self.id})
            raise

    def _open_snapshot(self, sql: str, params: Params) -> list[Row]:
        """Pin a reader and start a read transaction whose version is known exactly.

        Called holding the reader lock.
        """
        me = threading.get_ident()
        if me != self.owner:
            raise self._wrong_thread(me)
        reader = self._manager.pin_reader(self)
        self._pinned_by = threading.get_ident()
        self._pinned_at = time.monotonic()
        self._reader = reader
        try:
            for _ in range(_SNAPSHOT_ATTEMPTS):
                before = self._storage.writer_version
                reader.query("BEGIN")
                rows = reader.query(sql, params)  # the snapshot starts at the first read
                if self._storage.writer_version == before:
                    self._snapshot = before
                    self._snapshot_data_version = reader.query("PRAGMA data_version")[0][0]
                    return rows
                reader.query("ROLLBACK")  # a commit raced the snapshot's start: try again
        except BaseException:
            # No snapshot whose version is known (a typo in the first read, say): none
            # at all, so that the next read starts one afresh instead of the first write
            # conflicting with a version never recorded.
            self._drop_reader()
            raise
        self._snapshot = None  # could not pin a version: the first write will conflict
        return rows

    def _drop_reader(self) -> None:
        lock = self._reader_lock
        if lock is None:
            return  # never pinned one
        with lock:
            reader, self._reader = self._reader, None
            if reader is not None:
                with contextlib.suppress(AtlasError):  # no read transaction was open
                    reader.query("ROLLBACK")
                self._manager.unpin_reader(self, reader)

    def expire_snapshot(self, now: float) -> bool:
        """End this transaction's snapshot if it is older than its timeout (the tick).

        A pinned snapshot keeps every WAL frame committed after it from being
        checkpointed, so one kept open (an idle ``repeatable_read`` transaction) would
        let the WAL grow without bound. Past the transaction's ``timeout`` the snapshot
        is rolled back, its reader goes back to the pool, and the owner's next call
        raises ``TransactionTimeout``. While the owner is in a call (a statement, the
        wait for the lease) the tick leaves it alone: that call, or the owner's next,
        ends it. True once it has ended.
        """
        lock = self._reader_lock
        if lock is None or self._reader is None or now - self._pinned_at < self._timeout:
            return False
        if not lock.acquire(blocking=False):
            return False  # the owner is in a call: it, or a later tick, ends the snapshot
        try:
            if self._reader is None or self.state != "active":
                return False
            self._expire()
            return True
        finally:
            lock.release()

    def end_snapshot_for_close(self, error: AtlasError, wait: float) -> None:
        """The storage closes (or failed): end this transaction's snapshot and reader.

        Waits up to ``wait`` seconds for a statement its owner is running on the reader;
        past that, the owner's next call ends the snapshot. Either way that call raises
        ``error``.
        """
        lock = self._reader_lock
        if lock is None:
            return
        self._closed_error = error  # (a statement running now: see _snapshot_too_old)
        if not lock.acquire(timeout=wait):
            return
        try:
            if self._reader is not None and self.state == "active":
                self._expire()
        finally:
            lock.release()

    def _snapshot_too_old(self) -> bool:
        """Past its timeout, or its storage closed meanwhile: :meth:`_expire` ends it."""
        return self._closed_error is not None or time.monotonic() - self._pinned_at >= self._timeout

    def _expire(self) -> AtlasError:
        """Roll the snapshot back and fail the transaction (holding the reader lock)."""
        error = self._closed_error
        if error is None:
            held = time.monotonic() - self._pinned_at
            error = TransactionTimeout(
                f"transaction {self.id} kept its snapshot for {held:.1f}s, past its "
                "timeout; it was rolled back so that the WAL can be checkpointed. Keep "
                "transactions short, or pass a longer timeout"
            )
            self._storage.errors.handle(error, {"operation": "transaction", "tx": self.id})
        self._error = error
        self._drop_reader()
        self._finish("failed")
        return error

    def _settle_later(self, future: Future[Any]) -> None:
        """Its commit's acknowledgement did not come in time: the writer's answer ends it.

        The lease is back with the writer, which commits (or fails) it with its batch
        whatever the wait did; meanwhile the transaction is ``committing``, neither
        committed nor rolled back.
        """
        self._commit_sent = True
        self.state = "committing"

        def settled(done: Future[Any]) -> None:
            try:
                done.get(0)
            except AtlasError as error:
                self._error = error
                self.state = "failed"
            else:
                self.state = "committed"
            self._manager.ended(self)

        future.add_done_callback(settled)

    def _give_back(self, *, commit: bool, lost: bool = False) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            self._manager.return_lease(self, lease, commit=commit, lost=lost)

    def _fail(self, error: AtlasError) -> None:
        self._storage.errors.handle(error, {"operation": "transaction", "tx": self.id})
        if self.state == "active":
            self._error = error
            self._lease = None
            self._drop_reader()
            self._finish("failed")

    def _revoked(self, lease: Lease) -> None:
        """The writer took the lease back (its timeout): the transaction has failed.

        From the tick, perhaps while the owner is in a call: that call meets the revoked
        lease and fails the same way (``_fail``), once. The lease stays, so every later
        call meets it too and raises its error.
        """
        error = lease.ended_error()
        if self.state == "active":
            self._error = error  # (before the state: a reader of the state finds it)
        self._storage.errors.handle(error, {"operation": "transaction", "tx": self.id})
        self._finish("failed")  # (forgotten and counted once, as every end)

    def _finish(self, state: str) -> None:
        if self.state == "active":
            self.state = state
        self._manager.ended(self)

    def info(self) -> TransactionInfo:
        """A snapshot of this transaction for ``db.transactions.status()``."""
        return TransactionInfo(
            id=self.id,
            isolation=self.isolation,
            start_time=self.start_time,
            operations=self.operations,
            holds_lease=self._lease is not None,
            owner=self.owner,
        )

    def __repr__(self) -> str:
        return f"<Transaction {self.id} {self.isolation} {self.state} ops={self.operations}>"


class _Savepoint:
    """A nested ``with db.transaction()``: a savepoint of the enclosing transaction."""

    def __init__(self, outer: Transaction, depth: int) -> None:
        self.outer = outer
        self.name = f"nested_{outer.id}_{depth}"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.outer, name)

    def __enter__(self) -> Transaction:
        outer = self.outer
        if outer._lease is None and outer.state == "active":
            # Its savepoint waits for the lease (see Transaction._pending): a block that
            # only reads takes nothing, so a repeatable_read transaction that only
            # reads still never conflicts nor blocks writers.
            outer._pending = (*outer._pending, self.name)
        else:
            outer._open_savepoint(self.name)
        return outer

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        outer = self.outer
        outer._nested -= 1
        if outer.state != "active":
            return
        pending = outer._pending
        if pending and pending[-1] == self.name:
            outer._pending = pending[:-1]  # never taken: the block only read, nothing to undo
            return
        if exc_type is None:
            outer._release_savepoint(self.name)
        else:
            outer._rollback_to_savepoint(self.name)
            outer._release_savepoint(self.name)


@dataclass(frozen=True, slots=True)
class TransactionInfo:
    """One active transaction."""

    id: int
    """Transaction id."""
    isolation: str
    """Its isolation level."""
    start_time: float
    """When it began (``time.time()``)."""
    operations: int
    """Statements run so far."""
    holds_lease: bool
    """True while it holds the writer lease."""
    owner: int
    """Thread id of its owner (0 once that thread has ended)."""


@dataclass(frozen=True, slots=True)
class TransactionsStatus:
    """``db.transactions.status()``."""

    active: tuple[TransactionInfo, ...]
    """Transactions begun and not ended."""
    lease_holder: int | None
    """Id of the transaction holding the writer lease, if any."""
    queued: int
    """Writes and lease requests waiting behind the lease."""
    longest_wait: float
    """Seconds the oldest of them has waited."""
    committed: int
    """Transactions committed since the storage opened."""
    rolled_back: int
    """Transactions rolled back (by their owner or by a timeout, conflict or crash)."""


class _PerThread(threading.local):
    """Each thread's open ``with db.transaction()`` blocks, innermost last."""

    end: _ThreadEnd | None = None
    """Set once the thread holds or waits for something (see ``TransactionManager._watch``)."""

    def __init__(self) -> None:
        self.stack: list[Transaction] = []


class _ThreadEnd:
    """Kept in a thread's locals: tells the manager when the thread has ended.

    CPython drops a thread's locals as it ends, before any later thread can be given
    its ident: what the ident held must be forgotten by then (``thread_ended``).
    """

    __slots__ = ("ident", "manager")

    def __init__(self, manager: weakref.ref[TransactionManager], ident: int) -> None:
        self.manager = manager
        self.ident = ident

    def __del__(self) -> None:
        manager = self.manager()
        if manager is not None:
            with contextlib.suppress(Exception):  # (at interpreter exit, say)
                manager.thread_ended(self.ident)


class TransactionManager:
    """``db.transactions``: begin, run with retries, status; deadlock detection."""

    def __init__(
        self, storage: Storage, transaction_class: type[Transaction] = Transaction
    ) -> None:
        self.storage = storage
        config = storage.config
        self.transaction_timeout: float = config.transaction_timeout
        """How long a transaction may hold the writer lease unless it says otherwise."""
        self.statements = storage.statements
        """What the database's statements touch (the storage's analyses)."""
        self.tracks_writes: bool = config.cache
        """Whether transactions note the tables they write (only a cache needs them)."""
        self.graph = WaitForGraph()
        """Who holds and waits for the writer lease and pinned readers."""
        self._transaction_class = transaction_class
        """What begin() makes (the storage passes a traced subclass when tracing is on)."""
        self._active: dict[int, weakref.ref[Transaction]] = {}
        """Transactions not ended yet, held weakly: one its owner dropped unended
        (abandoned) is collected, and the tick then forgets it (see sweep())."""
        self._pinned: dict[int, Transaction] = {}
        """Transactions holding a reader for their snapshot, held strongly: dropped,
        the tick must still reach them to give the reader back."""
        self._closed: AtlasError | None = None
        """The error of the close (or failure) of the storage, once it began."""
        self._local = _PerThread()
        self._lock = threading.Lock()
        self.committed = 0
        self.rolled_back = 0

    # -- public ------------------------------------------------------------------------

    def begin(
        self, isolation: str = "serializable", *, timeout: float | None = None
    ) -> Transaction:
        """Begin a transaction; end it with ``commit()`` or ``rollback()``."""
        self.storage.check_usable()
        level = "serializable" if isolation == "serializable" else check_isolation(isolation)
        if timeout is not None:
            timeout = _checked_timeout(timeout)
        tx = self._transaction_class(self, level, timeout)
        self._active[tx.id] = _ref(tx)  # (one step under the GIL; status() copies in one too)
        return tx

    def transaction(
        self, isolation: str = "serializable", *, timeout: float | None = None
    ) -> Transaction | _Savepoint:
        """A context manager: a new transaction, or a savepoint when one is open here."""
        stack = self._local.stack
        if stack:
            outer = stack[-1]
            if outer._task is not _current_task():
                raise _other_task(outer)  # (an asyncio task's block is not inside another's)
            if outer.state == "active":
                _check_nested(outer, isolation, timeout)
                outer._nested += 1
                return _Savepoint(outer, outer._nested)
            if outer.state == "failed":
                # Inside a block whose transaction failed (a timeout, say): a new
                # transaction here would commit on its own what the block computed.
                outer._check_active()
        # begin(), written out: this runs once per transaction (see execute()).
        storage = self.storage
        if storage._state != "running":  # (check_usable(), its test inlined)
            storage.check_usable()
        level = "serializable" if isolation == "serializable" else check_isolation(isolation)
        if timeout is not None:
            timeout = _checked_timeout(timeout)
        tx = self._transaction_class(self, level, timeout)
        self._active[tx.id] = _ref(tx)
        return tx  # (its __enter__ puts it on the stack: only open blocks are there)

    def run(
        self,
        fn: Callable[[Transaction], T],
        *,
        isolation: str = "serializable",
        retries: int = 3,
        timeout: float | None = None,
    ) -> T:
        """Run ``fn(tx)`` in a transaction and commit; retry it on transient errors.

        ``fn`` may run more than once (after a ``TransactionConflict``, a
        ``TransactionTimeout`` or a busy database), so it must not have effects outside
        the transaction. Backoff between attempts is exponential with jitter. A commit
        whose acknowledgement timed out is never retried (it may still be applied): its
        ``OperationTimeout`` (``applied=None``) is raised. ``retries`` is a whole number,
        0 or more (0: the first error is raised).
        """
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValidationError(
                f"retries={retries!r}: give a whole number of retries, 0 or more (0: fn runs once)"
            )
        attempt = 0
        while True:
            tx = self.begin(isolation, timeout=timeout)
            try:
                result = fn(tx)
                tx.commit()
                return result
            except AtlasError as error:
                tx.rollback()  # (nothing to undo once committing: the writer decides)
                if tx._commit_sent:
                    # Its commit went to the writer and the wait timed out: never run it
                    # again. (Its state may have settled since: read it only now.)
                    if tx.state == "committed":
                        return result
                    raise
                if not error.transient or attempt >= retries:
                    raise
                attempt += 1
                self.storage.metrics.add("transaction_retries")
                time.sleep(min(0.2, 0.002 * 2 ** min(attempt, 10)) * (1 + random.random()))
            except BaseException:
                tx.rollback()
                raise

    def status(self) -> TransactionsStatus:
        """Active transactions, the lease holder and what queues behind it."""
        holder, queued, oldest = self.storage.writer_lease_status()
        live = [ref() for ref in list(self._active.values())]  # (copied in one step)
        active = tuple(tx.info() for tx in live if tx is not None)
        return TransactionsStatus(
            active=active,
            lease_holder=holder,
            queued=queued,
            longest_wait=oldest,
            committed=self.committed,
            rolled_back=self.rolled_back,
        )

    # -- used by Transaction -----------------------------------------------------------

    def ended(self, tx: Transaction) -> None:
        """Count an ended transaction and forget it."""
        if self._active.pop(tx.id, None) is None:
            return  # counted already (popped in one step: once per transaction)
        with self._lock:
            if tx.state == "committed":
                self.committed += 1
            else:
                self.rolled_back += 1

    def return_lease(
        self,
        tx: Transaction,
        lease: Lease,
        *,
        commit: bool,
        lost: bool = False,
        tables: AbstractSet[str] | None = None,
        plain: bool = False,
    ) -> None:
        """Give the write connection back; on commit, wait for the group commit.

        ``tables`` are those the transaction changed (None: unknown); ``plain``: each
        of its statements is known to leave the schema alone. A commit first
        offers the connection straight to the next transaction waiting for it
        (``lease.hand_over``), saving the trip through the writer.
        """
        future = self.storage.writer.submit_lease(
            LeaseReturn,
            f"transaction {tx.id}: {'commit' if commit else 'rollback'}",
            (tx.id, commit, lost, tables, plain),  # (the transaction has ended: tables stays)
            writable=False,
            deliver=(
                partial(hand_over, lease)  # (a partial calls it from C: no Python frame)
                if commit and not lost and (hand_over := lease.hand_over) is not None
                else None
            ),
        )
        # A return is never withdrawn: the writer commits (or rolls back) with its batch
        # whatever the wait does, so a timeout must say "may have been applied", not
        # "not applied" (an unclaimed future withdraws itself on timeout).
        try:
            future.claim()
            future.get()
        except OperationTimeout:
            if commit and not lost:
                tx._settle_later(future)
            raise
        except AtlasError as error:
            tx._error = error
            raise
        except BaseException:
            # The wait ended early otherwise (a KeyboardInterrupt, say): the return went
            # to the writer all the same, and the writer's answer settles the commit, as
            # after a timeout. Left active, a rollback() on the way out would report
            # rolled back a transaction the writer then commits.
            if commit and not lost:
                tx._settle_later(future)
            raise

    def dropped(self, tx_id: int) -> bool:
        """Whether transaction ``tx_id`` was dropped unended (collected, not yet swept)."""
        ref = self._active.get(tx_id)
        return ref is not None and ref() is None

    def _watch(self, me: int) -> None:
        """Have the calling thread's end reported to :meth:`thread_ended`."""
        self._local.end = _ThreadEnd(weakref.ref(self), me)

    def thread_ended(self, ident: int) -> None:
        """Thread ``ident`` ended: forget what was held and awaited by that ident.

        A later thread may be given the same ident, and must not be taken for the
        owner of its transactions (a plain write of its own refused as a deadlock, a
        lease used from it). Its transactions belong to no thread from now on: their
        lease, if one holds it, ends as any other (another thread may still commit or
        roll them back; else their timeout, or being dropped, ends them).
        """
        self.storage.forget_thread(ident)
        self.graph.forget(ident)
        for ref in list(self._active.values()):
            tx = ref()
            if tx is not None and tx.owner == ident:
                tx.owner = 0  # (no thread's ident)
                if tx._pinned_by == ident:
                    tx._pinned_by = 0

    def check_reader_wait(self, me: int, advice: str = "") -> bool:
        """Refuse (DeadlockError) a wait of thread ``me`` for a reader that closes a cycle.

        Every reader taken, each by a transaction waiting (in the end) for something
        ``me`` holds: a reader busy with an ordinary read counts as one that comes free.
        True if the wait was recorded (call ``graph.done_waiting(me)`` after it).
        """
        pool = self.storage.pool
        return self.graph.check(
            me,
            "pool:readers",
            all_units_taken=pool.exhausted,
            units_in_use=pool.in_use,
            units_lent_to=pool.lent_to,
            advice=advice,
            record=True,
        )

    def pin_reader(self, tx: Transaction) -> PooledConnection:
        """Take a reader connection for ``tx``'s snapshot."""
        me = threading.get_ident()
        if self._local.end is None:
            self._watch(me)
        pool = self.storage.pool
        recorded = self.check_reader_wait(me)
        try:
            reader = pool.acquire()
        finally:
            if recorded:
                self.graph.done_waiting(me)
        reader.supervised = False  # (its timeout and thread end are the transaction's)
        self.graph.hold(me, "pool:readers", f"transaction {tx.id}")
        self._pinned[tx.id] = tx  # (dropped unended, the tick still gives the reader back)
        closed = self._closed
        if closed is not None:  # (close() began meanwhile, and may not have seen it)
            self._pinned.pop(tx.id, None)
            try:
                reader.release()
            finally:
                self.graph.release(me, "pool:readers")
            raise closed
        return reader

    def unpin_reader(self, tx: Transaction, reader: PooledConnection) -> None:
        """Give ``tx``'s reader back to the pool (from any thread: the tick may)."""
        self._pinned.pop(tx.id, None)
        try:
            reader.release()  # (which may raise a checkin handler's Ctrl-C, once back)
        finally:
            self.graph.release(tx._pinned_by, "pool:readers")

    def close(self, error: AtlasError, wait: float) -> None:
        """The storage closes: end every pinned snapshot, so that its reader closes.

        Held here (``_pinned``), a transaction left open would keep its reader
        connection, and the file, open for good: no tick runs after the close. One
        pinned from now on ends at once (:meth:`pin_reader`).
        """
        self._closed = error
        deadline = time.monotonic() + wait
        for tx in list(self._pinned.values()):
            tx.end_snapshot_for_close(error, max(0.0, deadline - time.monotonic()))

    def sweep(self, now: float) -> list[int]:
        """The storage's tick: forget the transactions that ended unseen, end old snapshots.

        * One whose lease the writer took back (its timeout) is forgotten, counted as
          rolled back, and ``failed`` (reported once): its owner's next call, if it
          ever makes one, raises the lease's error.
        * One its owner dropped unended (abandoned: collected, so nothing can use it any
          more) is forgotten, counted as rolled back, with a warning. Returns their
          ids: the storage takes the writer lease back from any of them now, not at
          its timeout, which every write waits behind.
        * A snapshot kept past its transaction's timeout is ended (``expire_snapshot``).
        """
        abandoned: list[int] = []
        for tx_id, ref in list(self._active.items()):  # (copied in one step)
            tx = ref()
            if tx is None:
                if self._active.pop(tx_id, None) is not None:  # (as ended(): counted once)
                    abandoned.append(tx_id)
                continue
            lease = tx._lease
            if lease is not None and lease.state is LeaseState.REVOKED:
                tx._revoked(lease)
            elif tx._reader is not None:
                try:
                    tx.expire_snapshot(now)
                except Exception:  # one transaction's must not stop the others' (or the tick)
                    log.exception("ending the snapshot of transaction %s failed", tx.id)
        if abandoned:
            with self._lock:
                self.rolled_back += len(abandoned)
            shown = ", ".join(map(str, abandoned[:10])) + (", ..." if len(abandoned) > 10 else "")
            log.warning(
                "%d transaction(s) dropped without commit() or rollback() (%s): rolled "
                "back. End every transaction, or use `with db.transaction() as tx:`",
                len(abandoned),
                shown,
                extra={"operation": "transaction", "abandoned": abandoned},
            )
        return abandoned


def _sqlite_words(error: AtlasError) -> str:
    """SQLite's own words for ``error`` and its statement, without atlas's advice."""
    cause = error.__cause__
    said = str(cause) if isinstance(cause, apsw.Error) else ""
    if not said:
        return str(error)
    sql = getattr(error, "sql", None)
    return f"{said} in {shorten(sql)!r}" if isinstance(sql, str) and sql else said


def _current_task() -> object:
    """The asyncio task running in this thread, or None (none, or no event loop runs).

    Tasks of one event loop share its thread, and so the thread's open blocks: a block
    one task opened is open while another runs, without being around it.
    """
    asyncio = _modules.get("asyncio")  # (never imported: no event loop runs)
    if asyncio is None or asyncio._get_running_loop() is None:
        return None
    return asyncio.current_task()


def _other_task(outer: Transaction) -> ValidationError:
    """The refusal of a ``db.transaction()`` from another task than ``outer``'s block's."""
    task = _current_task()
    caller = f"asyncio task {_task_name(task)}" if task is not None else "code outside a task"
    opened = (
        f"opened by another asyncio task ({_task_name(outer._task)})"
        if outer._task is not None
        else "opened outside any asyncio task"
    )
    return ValidationError(
        f"db.transaction() from {caller} while the block of transaction {outer.id}, "
        f"{opened}, is open in this thread: it is not inside that block, so "
        "it can be neither a savepoint of it nor a transaction of its own here (their "
        "blocks would interleave). The transaction API is synchronous and blocks the "
        "event loop while it waits (for the writer lease, a commit): run each task's "
        "transaction in a worker thread, e.g. "
        "`await asyncio.to_thread(db.transactions.run, fn)`"
    )


def _task_name(task: object) -> str:
    get_name = getattr(task, "get_name", None)
    return repr(get_name()) if callable(get_name) else repr(task)


def _checked_timeout(timeout: object) -> float:
    """``timeout`` as seconds, or ValidationError unless a positive finite number."""
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_SECONDS
    ):
        raise ValidationError(
            f"transaction timeout {timeout!r}: give a positive number of seconds (at most "
            f"{MAX_SECONDS:.0e}), or None for the storage's transaction_timeout"
        )
    return float(timeout)


def _check_nested(outer: Transaction, isolation: str, timeout: float | None) -> None:
    """Refuse a nested block that asks for more than the savepoint of ``outer`` gives.

    Its arguments are checked as a transaction's; a level that prevents anomalies
    ``outer``'s does not is refused (the block runs in ``outer``), and the block's
    ``timeout`` cannot outlast ``outer``'s, which bounds it.
    """
    level = "serializable" if isolation == "serializable" else check_isolation(isolation)
    if timeout is not None:
        _checked_timeout(timeout)
    missing = PREVENTS[level] - PREVENTS[outer.isolation]
    if missing:
        raise ValidationError(
            f"a db.transaction() inside transaction {outer.id}'s block is a savepoint of "
            f"it and runs at its level, {outer.isolation}, which does not prevent "
            f"{', '.join(sorted(missing))} as {level} does: begin the outer transaction "
            f"at {level}, or run this one after it ends"
        )


def _check_savepoint_name(name: str) -> None:
    if not isinstance(name, str) or not _SAVEPOINT_NAME.match(name):
        raise ValidationError(
            f"savepoint name {shorten(repr(name), 80)}: use letters, digits and underscores, "
            f"not starting with a digit, at most {_SAVEPOINT_NAME_MAX} characters"
        )
    if len(name) > _SAVEPOINT_NAME_MAX:
        raise ValidationError(
            f"savepoint name {shorten(repr(name), 80)} has {len(name)} characters: use at most "
            f"{_SAVEPOINT_NAME_MAX} characters"
        )
    if _RESERVED_SAVEPOINT.match(name):
        # SQLite would release or roll back to this one instead of the transaction's
        # own (names are case-insensitive, the most recent wins).
        raise ValidationError(
            f"savepoint name {name!r} is reserved (tx<number> and nested_<number>_<number> "
            "name the transactions' own savepoints): choose another"
        )

"""The writer lease: the write connection lent to one transaction.

An interactive transaction would pay a thread hop (20-40 µs here) per statement if each
went to the writer as a message. Instead the writer *lends* its connection: it opens a
savepoint for the transaction, hands over a :class:`Lease`, and handles nobody else's
writes until the lease comes back (or expires). The transaction's statements run in its
own thread, on the write connection, under the lease's lock; the writer takes the lock
too before it revokes a lease, so the two never use the connection at once.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from time import monotonic
from typing import Any, TypeVar

import apsw

from atlas_actors.connection import TrackedConnection
from atlas_actors.errors import AtlasError, TransactionError, wrap_sqlite_error

__all__ = ["Lease", "LeaseState", "run_command"]

T = TypeVar("T")


def run_command(connection: TrackedConnection, sql: str) -> None:
    """Run a savepoint command; SQLite's errors come back typed, counted as errors."""
    try:
        connection.cursor.execute(sql)
    except apsw.Error as error:
        raise _refused(connection, error, sql) from error


def _refused(connection: TrackedConnection, error: apsw.Error, sql: str) -> BaseException:
    connection.count_error()
    return wrap_sqlite_error(error, sql)


class LeaseState(enum.Enum):
    """Where a lease is in its life."""

    ACTIVE = "active"
    RETURNED = "returned"
    REVOKED = "revoked"


_ACTIVE = LeaseState.ACTIVE
_RETURNED = LeaseState.RETURNED
_Lock = threading.Lock
_REVOKE_WAIT = 5.0
"""Seconds the writer waits for an interrupted statement to let the lease go, at most."""


class Lease:
    """The write connection lent to transaction ``tx_id`` until returned or revoked."""

    __slots__ = (
        "connection",
        "deadline",
        "error",
        "granted_at",
        "hand_over",
        "lock",
        "owner",
        "revoking",
        "savepoint",
        "state",
        "tx_id",
    )

    def __init__(
        self,
        tx_id: int,
        savepoint: str,
        connection: TrackedConnection,
        owner: int,
        timeout: float,
    ) -> None:
        self.tx_id = tx_id
        self.savepoint = savepoint
        """The savepoint the writer opened for the transaction."""
        self.connection = connection
        self.owner = owner
        """Thread id of the transaction's owner."""
        # (Locals and module names spare attribute lookups: one lease per transaction.)
        self.granted_at = now = monotonic()
        self.deadline = now + timeout
        self.lock = _Lock()
        self.state = _ACTIVE
        self.revoking = False
        """Set by the writer before it interrupts a statement to take the lease back."""
        self.error: AtlasError | None = None
        """Why the lease was revoked, raised by every later use."""
        self.hand_over: Callable[[Lease, Any], bool] | None = None
        """Set by the writer: passes the connection on to the next transaction waiting
        (``hand_over(lease, lease_return)``; False if none may take it now). A commit
        offers its return to it before sending it to the writer."""

    def run(self, fn: Callable[[TrackedConnection], T]) -> T:
        """Run ``fn`` on the lent connection, unless the lease was revoked."""
        with self.lock:
            if self.state is not _ACTIVE:
                raise self.ended_error()
            return fn(self.connection)

    def give_back(self, sql: str) -> None:
        """Run ``sql`` (release or roll back the savepoint) and end the lease.

        The lease ends even if SQLite refuses ``sql``: its owner must still send it back
        to the writer, which waits for it.
        """
        with self.lock:
            if self.state is not _ACTIVE:
                raise self.ended_error()
            connection = self.connection
            try:
                connection.cursor.execute(sql)  # (run_command, written out: once per commit)
            except apsw.Error as error:
                raise _refused(connection, error, sql) from error
            finally:
                self.state = _RETURNED

    def revoke(self, error: AtlasError, undo: Callable[[TrackedConnection], object] | None) -> bool:
        """Take the connection back (writer side); False if it had been returned already.

        A statement still running in the owner's thread is interrupted
        (``sqlite3_interrupt``) so the lock comes free; ``undo`` then rolls the
        transaction's savepoint back.
        """
        if not self.lock.acquire(timeout=0.05):
            self.revoking = True
            self.connection.connection.interrupt()
            if not self.lock.acquire(timeout=_REVOKE_WAIT):
                return False
        try:
            if self.state is not LeaseState.ACTIVE:
                return False
            self.state = LeaseState.REVOKED
            self.error = error
            if undo is not None:
                undo(self.connection)
            return True
        finally:
            self.lock.release()

    def await_revocation(self) -> None:
        """The owner's statement was interrupted by :meth:`revoke`: wait until it ends.

        Without holding the lock, which the writer waits for (a lock is not fair: the
        owner taking it again at once would see the lease still active).
        """
        deadline = monotonic() + _REVOKE_WAIT
        while self.state is _ACTIVE and monotonic() < deadline:
            time.sleep(0.0005)

    def ended_error(self) -> AtlasError:
        """The error for a use of this lease once it has ended (revoked or returned)."""
        if self.error is not None:
            return self.error
        return TransactionError(f"transaction {self.tx_id} has ended; begin a new one")

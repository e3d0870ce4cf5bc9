"""Error handling: log once, count, analyze, recover (the plan's ``ErrorHandler``).

``db.errors.analyze(exc)`` classifies an error (``errors.analyze``); ``handle`` logs
it once with its context as a structured ``logging`` extra and counts it; ``recover``
brings a transaction that failed back to a clean state and applies the strategy of its
error:

* transient (busy, locked, timeout, conflict): roll back, then retry with exponential
  backoff and jitter when given the work to retry; a retry whose COMMIT was not
  acknowledged in time (``OperationTimeout``, ``applied=None``) is not run again, as in
  ``db.transactions.run``: it may still be applied;
* a timeout of an operation that had started (``check_then_retry``): retried only if
  the transaction never sent its COMMIT (rolled back, nothing of it applied); else its
  outcome is reported uncertain until the writer's answer settles it;
* actor failure: wait until the supervisor has the actor running again;
* disk full: the writer serves reads only until space returns (it probes by itself);
  once the storage accepts writes again, the work is retried as for a transient error;
  while it refuses them, one retry per ``disk_full_probe_interval`` goes through as a
  probe (transactions are not refused: a commit that writes ends the mode);
* I/O error: run ``PRAGMA quick_check``; only if the file checks out, retry the work
  with backoff (a COMMIT that failed with an I/O error may or may not have reached the
  disk: the retried work should be idempotent, or check first);
* corruption: stop writes, run ``PRAGMA integrity_check``, resume only if it passes.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import apsw

from atlas_actors.connection import raw_connection
from atlas_actors.errors import (
    AtlasError,
    CorruptionError,
    ErrorDiagnostics,
    StorageUnavailable,
    analyze,
    wrap_sqlite_error,
)
from atlas_actors.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from atlas_actors.storage import Storage
    from atlas_actors.transaction.transaction import Transaction

__all__ = ["ErrorHandler", "RecoveryResult", "VerifyResult"]

log = logging.getLogger("atlas_actors.errors")

T = TypeVar("T")

_LEVELS = {"low": logging.INFO, "medium": logging.WARNING, "high": logging.ERROR}

_CHECK_THEN_RETRY = "check_then_retry"


@dataclass(frozen=True, slots=True)
class RecoveryResult:
    """What ``db.errors.recover(tx)`` did."""

    strategy: str
    """The strategy applied (``retry_with_backoff``, ``restart``, ``read_only``, ...)."""
    recovered: bool
    """True when the work is done or the storage serves again."""
    detail: str
    """What happened, in words (for an I/O error at COMMIT: that its outcome is uncertain)."""
    attempts: int = 0
    """Retries made (``retry_with_backoff``, ``retry``, ``read_only``, ``retry_then_verify``)."""
    result: Any = None
    """What the retried work returned."""


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of an integrity check."""

    ok: bool
    """True when SQLite reported no problem."""
    problems: tuple[str, ...]
    """What ``integrity_check`` reported (empty when ok)."""
    unchecked: bool = False
    """True when the check could not run (an I/O error, a lock): no verdict on the file."""
    error: BaseException | None = None
    """What kept the check from running (when ``unchecked``), typed: ``DiskIOError``, ..."""


class ErrorHandler:
    """``db.errors``: analyze, handle (log once + count), recover."""

    def __init__(self, storage: Storage, metrics: Metrics) -> None:
        self._storage = storage
        self._metrics = metrics
        self._verifying = threading.Lock()
        self._probing = threading.Lock()
        self._full_seen = False
        """recover() has seen the storage in disk-full mode (since it last saw it out)."""
        self._next_probe = 0.0
        """``time.monotonic()`` from which a retry may probe a full disk again."""
        self._unsettled: weakref.WeakKeyDictionary[Transaction, tuple[Transaction, Any]]
        self._unsettled = weakref.WeakKeyDictionary()
        """Failed transaction -> (its retry whose COMMIT went unacknowledged, its result)."""

    def analyze(self, error: BaseException) -> ErrorDiagnostics:
        """Classify ``error`` (see :func:`atlas_actors.errors.analyze`)."""
        return analyze(error)

    def handle(
        self, error: BaseException, context: dict[str, Any] | None = None
    ) -> ErrorDiagnostics:
        """Log and count ``error`` once; start the storage-level strategy if any."""
        diagnostics = analyze(error)
        if isinstance(error, AtlasError):
            if error.reported:
                return diagnostics
            error.reported = True
        self.log(error, {**diagnostics.context, **(context or {})}, diagnostics)
        self._metrics.add("errors")
        self._metrics.add(f"errors.{diagnostics.context['category']}")
        if isinstance(error, CorruptionError):
            self._storage.stop_and_verify(error)
        return diagnostics

    def log(
        self,
        error: BaseException,
        context: dict[str, Any],
        diagnostics: ErrorDiagnostics | None = None,
    ) -> None:
        """Log ``error`` with ``context`` as the structured extra ``atlas``."""
        diagnostics = diagnostics or analyze(error)
        routine = isinstance(error, AtlasError) and error.routine
        log.log(
            logging.DEBUG if routine else _LEVELS[diagnostics.severity],
            "%s: %s",
            diagnostics.type,
            error,
            extra={
                "atlas": {"type": diagnostics.type, "severity": diagnostics.severity, **context}
            },
        )

    def recover(
        self,
        transaction: Transaction,
        retry: Callable[[Transaction], T] | None = None,
        *,
        attempts: int = 3,
    ) -> RecoveryResult:
        """Clean up after ``transaction`` failed, and apply its error's strategy.

        The error is the one that ended the transaction, or else the last one its calls
        raised. The transaction is rolled back (its lease or reader released). With ``retry``,
        a transient failure is retried in fresh transactions of the same isolation, with
        exponential backoff and jitter, up to ``attempts`` times; so is:

        * a full disk (``read_only``) once the storage accepts writes again; while it
          refuses them, one call per ``disk_full_probe_interval`` retries as a probe (the
          first one interval after a call found the disk full; the others return at once,
          not retried); a retry that finds the disk still full stops;
        * an I/O error (``retry_then_verify``) once ``PRAGMA quick_check`` passed; when it
          found problems or could not run, nothing is retried. A COMMIT that failed with
          an I/O error may have reached the disk or not (SQLite cannot tell): the detail
          says so, and the retried work should be idempotent or check first.

        A COMMIT whose acknowledgement timed out (``OperationTimeout``, ``applied=None``),
        the transaction's own or a retry's, may still be applied: the work is not run
        again (``check_then_retry``, not recovered) until the writer's answer settles it;
        call ``recover`` again to learn it (recovered once it committed).
        """
        transaction.rollback()
        pending = self._unsettled.get(transaction)
        if pending is not None:  # a retry of it made earlier: its COMMIT is unacknowledged
            retried, result = pending
            unsettled = self._unsettled_commit(retried, "its retry", result)
            if unsettled is not None:
                return unsettled
            del self._unsettled[transaction]  # failed: the writer said so (not applied)
        unsettled = self._unsettled_commit(transaction, f"transaction {transaction.id}")
        if unsettled is not None:
            return unsettled
        error = transaction._error or transaction._last_error  # (read once it settled)
        if error is None:
            return RecoveryResult("none", True, f"transaction {transaction.id} had no error")
        diagnostics = analyze(error)
        strategy = str(diagnostics.context["strategy"])
        if strategy == _CHECK_THEN_RETRY:
            # An operation of it had started when its wait timed out (the lease request,
            # a read), but it never sent its COMMIT and is rolled back: nothing of it
            # applied, so it is retried (transactions.run's rule).
            note = "it never committed (rolled back, nothing applied); "
            return self._retry(transaction, retry, attempts, strategy, note)
        if error.transient or strategy in ("retry", "release_and_retry"):
            return self._retry(transaction, retry, attempts, strategy)
        if strategy == "restart":
            return self._await_restart(strategy)
        if strategy == "read_only":
            return self._retry_disk_full(transaction, retry, attempts, strategy)
        if strategy == "retry_then_verify":
            return self._verify_then_retry(transaction, retry, attempts, strategy, diagnostics)
        if strategy == "stop_and_verify":
            verdict = self.verify()
            if verdict.ok:
                self._storage.resume_writes()
                return RecoveryResult(strategy, True, "integrity_check passed: writes resumed")
            if verdict.unchecked:
                return RecoveryResult(
                    strategy, False, f"could not run integrity_check: {verdict.problems[:1]}"
                )
            return RecoveryResult(
                strategy,
                False,
                f"integrity_check failed: {verdict.problems[:3]}; restore from a backup",
            )
        return RecoveryResult(strategy, False, str(diagnostics.context.get("advice", "")))

    def _retry(
        self,
        transaction: Transaction,
        retry: Callable[[Transaction], T] | None,
        attempts: int,
        strategy: str,
        note: str = "",
    ) -> RecoveryResult:
        if retry is None:
            return RecoveryResult(strategy, False, f"{note}rolled back; run the transaction again")
        last: AtlasError | None = None
        made = 0
        tried: list[Transaction] = []
        returned: list[Any] = []

        def attempt_once(tx: Transaction) -> T:
            tried[:] = [tx]
            value = retry(tx)
            returned[:] = [value]
            return value

        for attempt in range(1, attempts + 1):
            time.sleep(min(0.2, 0.002 * 2**attempt) * (1 + random.random()))
            made = attempt
            tried.clear()
            try:
                result = self._storage.transactions.run(
                    attempt_once, isolation=transaction.isolation, retries=0
                )
            except AtlasError as error:
                last = error
                if tried and tried[0]._commit_sent:
                    # Its COMMIT went to the writer and the wait timed out: it may still be
                    # applied, so it is never run again (as in transactions.run).
                    value = returned[0] if returned else None
                    unsettled = self._unsettled_commit(tried[0], f"retry {attempt}", value)
                    if unsettled is None:  # failed after all (the writer's answer came)
                        last = tried[0]._error or error
                        if not last.transient:
                            break
                        continue
                    if unsettled.recovered:
                        return RecoveryResult(strategy, True, f"{note}retried", attempt, value)
                    self._unsettled[transaction] = (tried[0], value)
                    return RecoveryResult(strategy, False, f"{note}{unsettled.detail}", attempt)
                if not error.transient:
                    break
            else:
                return RecoveryResult(strategy, True, f"{note}retried", attempt, result)
        if last is not None and analyze(last).context["category"] == "disk_full":
            return RecoveryResult(
                strategy,
                False,
                f"{note}the disk is still full: writes are refused until disk space "
                f"returns; reads go on ({last})",
                made,
            )
        return RecoveryResult(strategy, False, f"{note}retries failed: {last}", made)

    def _retry_disk_full(
        self,
        transaction: Transaction,
        retry: Callable[[Transaction], T] | None,
        attempts: int,
        strategy: str,
    ) -> RecoveryResult:
        """Retry once the storage accepts writes again, or as a probe while it refuses them.

        The writer enters disk-full mode when a write of its own or a transaction's
        statement hits the full disk (a transaction's notice reaches it a moment later),
        and leaves it once a probe write or a transaction's commit wrote again. Its probe
        writes are plain writes, which an application writing only through transactions
        may never make; transactions are not refused in the mode, so a retry is itself a
        probe: one call per ``disk_full_probe_interval`` retries (its commit ends the
        mode), the first one interval after a call found the mode on (as the writer's
        first probe), and the others return at once. A retry that finds the disk still
        full stops (DiskFullError is not transient).
        """
        if retry is not None and self._storage.disk_full:
            interval = self._storage.config.disk_full_probe_interval
            now = time.monotonic()
            with self._probing:  # one caller per interval, whichever thread
                if not self._full_seen:  # just found full: the first probe after a pause,
                    self._full_seen = True  # as the writer's
                    self._next_probe = now + interval
                wait = self._next_probe - now
                if wait <= 0:
                    self._next_probe = now + interval
            if wait > 0:
                return RecoveryResult(
                    strategy,
                    False,
                    "writes are refused until disk space returns; reads go on (a retry "
                    f"probes once per disk_full_probe_interval: the next in {wait:.2f}s)",
                )
            return self._retry(transaction, retry, attempts, strategy)
        if self._storage.disk_full:
            return RecoveryResult(
                strategy, False, "writes are refused until disk space returns; reads go on"
            )
        self._full_seen = False
        return self._retry(transaction, retry, attempts, strategy)

    def _unsettled_commit(
        self, tx: Transaction, what: str, result: Any = None
    ) -> RecoveryResult | None:
        """What became of ``tx``'s COMMIT, if its acknowledgement timed out.

        None if none did, or if the writer's answer came and it failed (definitely: that
        error is diagnosed as any other).
        """
        if not tx._commit_sent:
            return None
        state = tx.state  # (set by the writer's answer, whenever it comes)
        if state == "committed":
            return RecoveryResult(
                "none", True, f"{what} committed (its acknowledgement came late)", 0, result
            )
        if state == "committing":
            return RecoveryResult(
                _CHECK_THEN_RETRY,
                False,
                f"{what}'s COMMIT was not acknowledged in time and may still be applied: its "
                "outcome is uncertain, so it is not run again; check its effect before "
                "retrying (recover() again tells once the writer answered)",
            )
        return None

    def _verify_then_retry(
        self,
        transaction: Transaction,
        retry: Callable[[Transaction], T] | None,
        attempts: int,
        strategy: str,
        diagnostics: ErrorDiagnostics,
    ) -> RecoveryResult:
        """An I/O error: check the file (quick_check); retry only if it checks out."""
        sql = str(diagnostics.context.get("sql") or "").strip().upper()
        note = (
            "the failed COMMIT's outcome is uncertain (an I/O error after its frames were "
            "written may still have made it durable); "
            if sql.startswith(("COMMIT", "END", "RELEASE"))
            else ""
        )
        verdict = self.verify(full=False)
        if verdict.unchecked:
            return RecoveryResult(
                strategy,
                False,
                f"{note}could not run quick_check ({verdict.problems[0]}): not retried; "
                "check the disk",
            )
        if not verdict.ok:
            return RecoveryResult(
                strategy,
                False,
                f"{note}quick_check found problems: {verdict.problems[:3]}; not retried; "
                "restore from a backup",
            )
        return self._retry(transaction, retry, attempts, strategy, f"{note}quick_check passed; ")

    def _await_restart(self, strategy: str) -> RecoveryResult:
        deadline = time.monotonic() + self._storage.config.default_timeout
        while time.monotonic() < deadline:
            try:
                status = self._storage.supervisor.status()
            except StorageUnavailable as error:
                return RecoveryResult(strategy, False, str(error))
            if status.state != "running":
                return RecoveryResult(strategy, False, f"the storage {status.state}")
            if all(child.state == "running" for child in status.children):
                return RecoveryResult(strategy, True, "every actor is running again")
            time.sleep(0.01)
        return RecoveryResult(strategy, False, "actors did not restart in time")

    def verify(self, *, full: bool = True) -> VerifyResult:
        """Run ``integrity_check`` (or ``quick_check``) on a fresh read-only connection.

        When the check cannot run (an I/O error, a lock), the result is ``unchecked`` and
        carries the typed error in ``error``.
        """
        pragma = "integrity_check" if full else "quick_check"
        storage = self._storage
        try:
            flags = apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI
            connection = raw_connection(storage.path, flags, storage.vfs)
            try:
                connection.set_busy_timeout(int(storage.config.busy_timeout * 1000))
                rows = [str(row[0]) for row in connection.execute(f"PRAGMA {pragma}")]
            finally:
                connection.close()
        except apsw.Error as error:
            wrapped = wrap_sqlite_error(error, pragma)
            # A damaged file may refuse to open or read: that is a verdict. An I/O error
            # or a lock is not; the check could not run.
            unchecked = not isinstance(wrapped, CorruptionError)
            return VerifyResult(
                False, (str(wrapped),), unchecked=unchecked, error=wrapped if unchecked else None
            )
        return VerifyResult(rows == ["ok"], () if rows == ["ok"] else tuple(rows))

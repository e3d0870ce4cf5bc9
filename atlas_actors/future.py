"""The future every asynchronous call returns, with a deadline and safe cancellation.

A :class:`Future` is resolved exactly once, by the actor that ran the operation. Before
running it, the actor *claims* the future; a caller whose wait times out tries the same
claim. Exactly one side wins, so a timed-out caller knows whether the operation was
withdrawn before it started (``OperationTimeout.applied is False``: safe to retry) or
had already started (``applied is None``: it may still complete).

Waiting uses one ``threading.Lock`` per future (held until the result is set): the
cheapest blocking primitive CPython has, which matters on the write path where every
call waits once. The claim needs no blocking, only an atomic test-and-set: ``next()`` on
an iterator over one item, which succeeds once (a C call that holds the GIL). It costs
a third of creating a second lock and ``acquire(False)`` on it, once per call; a range's
iterator, unlike a tuple's, is not tracked by the garbage collector.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar, overload

from atlas_actors.config import MAX_SECONDS
from atlas_actors.errors import (
    TEXT_TYPES,
    OperationTimeout,
    ParameterError,
    StatementTypeError,
    ValidationError,
    params_type_error,
    shorten,
)

__all__ = [
    "Future",
    "SqlText",
    "StatementTypeError",
    "checked_timeout",
    "parameter_sets",
    "sql_text",
    "sql_type_error",
    "statement_pairs",
    "statement_type_error",
]

T = TypeVar("T")

log = logging.getLogger(__name__)
_PENDING = object()
_ONE_CLAIM = range(1, 2)
"""What a future's claim iterator yields 1 from, once: ``next(claim, 0) == 1`` claims."""
_CALLBACKS_LOCK = threading.Lock()  # callbacks are rare (tracing); one lock is enough

SqlText = str | Sequence[tuple[str, Any]] | None
"""What a call runs, for messages: statement text, a ``write_all``'s statements (their
text is joined only when a message needs it: most calls never do), or None."""


@overload
def sql_text(sql: str | Sequence[tuple[str, Any]]) -> str: ...
@overload
def sql_text(sql: None) -> None: ...
def sql_text(sql: SqlText) -> str | None:
    """The text of ``sql``: a ``write_all``'s statements joined with ``"; "``."""
    if sql is None or isinstance(sql, str):
        return sql
    try:
        return "; ".join(str(statement) for statement, _ in sql)  # str(): never raise here
    except (TypeError, ValueError):
        return repr(sql)  # not pairs (refused at the call): messages never raise


def checked_timeout(timeout: object) -> float:
    """A call's ``timeout=`` (not None) as seconds, or :class:`ValidationError`.

    Zero or less means "do not wait". NaN, a value past ``MAX_SECONDS`` either way (a
    lock's timeout cannot take it, nor a float a huge int) or anything but a number is
    refused at the call, before the operation is queued: a NaN deadline never expires.
    """
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not -MAX_SECONDS <= timeout <= MAX_SECONDS  # (False for NaN)
    ):
        raise ValidationError(
            f"timeout={timeout!r}: pass a number of seconds, at most {MAX_SECONDS:.0e}, "
            "or None for the storage's default_timeout"
        )
    return timeout


def parameter_sets(seq_of_params: Iterable[Any], sql: object = None) -> list[Any]:
    """A copy of a ``write_many``'s parameter sets, or :class:`ParameterError`.

    A str, bytes or what is no iterable is refused at the call (a str would be sets of
    one character each).
    """
    try:
        if type(seq_of_params) in TEXT_TYPES:
            raise TypeError
        sets = list(seq_of_params)  # a copy: the caller may reuse its list
    except TypeError:
        raise params_type_error(seq_of_params, sql, many=True) from None
    for index, params in enumerate(sets):
        if type(params) is not tuple:
            if type(params) in TEXT_TYPES:  # (a set of one character per placeholder)
                raise params_type_error(params, sql)
            sets[index] = frozen_params(params)  # (and each set: see frozen_params)
    return sets


def frozen_params(params: Any) -> Any:
    """``params`` as a queued op keeps them: a tuple or a dict of its own, or None.

    The caller may reuse its list once the call returned (a future's caller does at
    once), and a generator is read only once: what is bound later must be what was
    passed. A mapping other than a plain dict is kept as passed (apsw asks it for each
    name: a ``defaultdict`` answers for names it does not hold), and so are values
    inside (a ``bytearray`` is bound as it is when the write runs). A text is left for
    the call's own check to refuse, and so is what is no iterable (apsw's binding error
    says what it is); what an iterable raises while it is read is raised as it is.
    """
    kind = type(params)
    if params is None or kind is tuple or kind in TEXT_TYPES:
        return params
    if kind is list:
        return tuple(params)
    if kind is dict:
        return dict(params)
    if isinstance(params, Mapping):
        return params
    try:
        values = iter(params)
    except TypeError:
        return params
    return tuple(values)


def statement_pairs(statements: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """A copy of a ``write_all``'s (SQL text, params) pairs, checked at the call.

    In the writer a malformed entry would fail only after its caller had let go of it,
    and every message about it (errors, timeouts, spans) joins the text. The caller
    copies the params next (:func:`freeze_pairs`): what they raise is their own.
    """
    pairs = list(statements)  # a copy: the caller may reuse its list
    try:
        for sql, params in pairs:  # ValueError or TypeError unless a pair
            if type(sql) is not str:
                raise statement_type_error(pairs)
            if type(params) in TEXT_TYPES:  # (one character per placeholder otherwise)
                raise params_type_error(params, sql)
    except (ValueError, TypeError) as error:
        if isinstance(error, StatementTypeError | ParameterError):
            raise
        raise statement_type_error(pairs) from None
    return pairs


def freeze_pairs(pairs: list[tuple[str, Any]]) -> None:
    """Give each checked (sql, params) pair its own copy of its params (frozen_params)."""
    for index, (sql, params) in enumerate(pairs):
        if type(params) is not tuple and params is not None:
            pairs[index] = (sql, frozen_params(params))


def statement_type_error(pairs: Sequence[object], verb: str = "write_all") -> StatementTypeError:
    """The error for ``write_all`` statements that are not (str, params) pairs.

    Built only to raise, after the check at the call failed: the success path pays
    nothing for the message.
    """
    for position, entry in enumerate(pairs):
        if isinstance(entry, str | bytes) or not isinstance(entry, Sequence) or len(entry) != 2:
            return StatementTypeError(
                f"{verb} statement {position}: {entry!r:.60} is not a (sql, params) pair; "
                f"pass (sql, params) pairs, e.g. {verb}([(sql, None), (sql, [1, 2])])"
            )
        sql = entry[0]
        if type(sql) is not str:
            return StatementTypeError(
                f"{verb} statement {position}: the SQL must be str, not "
                f"{type(sql).__name__} ({sql!r:.60}); pass (sql, params) pairs"
            )
    return StatementTypeError(f"{verb}: pass (sql, params) pairs with the SQL as str")


def sql_type_error(sql: object, *, built: bool = True) -> StatementTypeError:
    """The error for a statement that is not SQL text (nor, if ``built``, a query)."""
    expected = "a str or a Query (anything with build())" if built else "a str (SQL text)"
    return StatementTypeError(f"sql must be {expected}, not {type(sql).__name__} ({sql!r:.60})")


class Future(Generic[T]):
    """The result of an asynchronous call; ``get()`` waits for it, never past the deadline."""

    __slots__ = (
        "_callbacks",
        "_claim",
        "_done",
        "_error",
        "_sql",
        "_value",
        "_verb",
        "deadline",
        "report",
    )

    report: Callable[[BaseException, dict[str, Any] | None], object] | None
    """Reports the timeout ``get()`` raises (a storage's ``errors.handle``): set by whoever
    queues the operation, if anyone (unset: not reported)."""

    def __init__(self, deadline: float, verb: str, sql: SqlText = None) -> None:
        self.deadline = deadline
        """``time.monotonic()`` value after which waiting stops."""
        self._verb = verb
        self._sql = sql
        self._done = threading.Lock()
        self._done.acquire()
        self._claim: Iterator[int] = iter(_ONE_CLAIM)
        self._value: Any = _PENDING
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Future[T]], None]] | None = None

    @property
    def operation(self) -> str:
        """What the call does, for messages (``write 'INSERT INTO tasks ...'``)."""
        sql = sql_text(self._sql)
        if sql is None:
            return self._verb
        return f"{self._verb} {shorten(sql)!r}"

    # -- the actor's side ---------------------------------------------------------------

    def claim(self) -> bool:
        """Take the right to run the operation; False if a timed-out caller withdrew it."""
        return next(self._claim, 0) == 1

    def set_result(self, value: T) -> None:
        """Resolve with ``value`` and wake every waiter."""
        if self._value is not _PENDING:
            return
        self._value = value
        self._done.release()  # _finish() inlined: the writer resolves every write here
        if self._callbacks is not None:
            self._run_callbacks()

    def set_exception(self, error: BaseException) -> None:
        """Resolve with ``error`` (raised by ``get()``) and wake every waiter."""
        if self._value is not _PENDING:
            return
        self._value = None
        self._error = error
        self._finish()

    def _finish(self) -> None:
        self._done.release()
        if self._callbacks is not None:
            self._run_callbacks()

    def _run_callbacks(self) -> None:
        # Whoever swaps the list out under the lock runs it; the other side finds None.
        with _CALLBACKS_LOCK:
            callbacks, self._callbacks = self._callbacks, None
        escaped: BaseException | None = None
        for callback in callbacks or ():
            try:
                callback(self)
            except Exception:
                # As concurrent.futures does: the thread resolving the future is often an
                # actor's, resolving a whole batch; one caller's bug must not stop the
                # others' results (or restart the actor).
                log.exception("done-callback %r of %r failed", callback, self)
            except BaseException as error:  # (SystemExit...): raised once all have run
                escaped = escaped or error
        if escaped is not None:
            raise escaped

    # -- the caller's side --------------------------------------------------------------

    def done(self) -> bool:
        """True once the future holds a result or an error."""
        return self._value is not _PENDING

    def get(self, timeout: float | None = None) -> T:
        """Wait for the result and return it (or raise the call's error).

        Waits at most ``timeout`` seconds, and never past the call's deadline. On timeout
        raises :class:`~atlas_actors.errors.OperationTimeout`, withdrawing the operation
        if no actor has started it yet.
        """
        if timeout is not None:
            timeout = checked_timeout(timeout)  # (ValidationError, as every call's)
        if self._value is _PENDING:
            remaining = self.deadline - time.monotonic()
            if timeout is not None and timeout < remaining:
                remaining = timeout
            if remaining <= 0 or not self._done.acquire(True, remaining):
                self._timed_out(remaining if timeout is None else timeout)
            else:
                # Pass the lock on: every later waiter must find it free too.
                self._done.release()
        if self._error is not None:
            raise self._error
        value: T = self._value
        return value

    def _timed_out(self, waited: float) -> None:
        if self._value is not _PENDING:
            return  # resolved just as the wait gave up: use the result
        withdrawn = self.claim()
        if withdrawn:
            error = OperationTimeout(self.operation, max(waited, 0.0), applied=False)
            # Resolve for other waiters too: the operation will never run.
            self.set_exception(error)
        else:
            error = OperationTimeout(self.operation, max(waited, 0.0), applied=None)
        self._report_timeout(error)
        raise error

    def _report_timeout(self, error: OperationTimeout) -> None:
        """Report the timeout ``get()`` raises (log once, count): nothing else does.

        The actor reports what it fails an operation with; a timeout is the caller's
        own. A future of a storage overrides this, or has ``report`` set.
        """
        report = getattr(self, "report", None)  # (a slot nobody set: not reported)
        if report is not None:
            report(error, {"operation": self._verb})

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait like ``get()`` and return the call's error, or None if it succeeded."""
        try:
            self.get(timeout)
        except Exception as error:
            return error
        return None

    def add_done_callback(self, callback: Callable[[Future[T]], None]) -> None:
        """Call ``callback(self)`` once resolved (at once if it already is).

        The callback runs in the thread that resolves the future: keep it short and
        never wait on the storage from it. An exception it raises is logged, not raised.
        """
        with _CALLBACKS_LOCK:
            if self._callbacks is None:
                self._callbacks = []
            self._callbacks.append(callback)
        if self._value is not _PENDING:
            self._run_callbacks()

    def __repr__(self) -> str:
        state = "pending" if self._value is _PENDING else ("failed" if self._error else "done")
        return f"<Future {self.operation!r} {state}>"

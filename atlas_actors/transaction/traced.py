"""A transaction that makes spans: what ``db.transaction()`` returns when tracing is on.

One CLIENT span for the whole transaction (``atlas.transaction``, child of the caller's
span when it began), and a CLIENT span per call on it (``atlas.tx.execute``,
``atlas.tx.query``, savepoints, ``atlas.tx.commit``, ``atlas.tx.rollback``), children
of the transaction's span. The writer's handling of its lease messages makes CONSUMER
spans under them. A subclass, so that a storage without tracing pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span

from atlas_actors.connection import Params, WriteResult
from atlas_actors.rows import Row
from atlas_actors.telemetry.tracing import Tracing
from atlas_actors.transaction.isolation import IsolationLevel
from atlas_actors.transaction.transaction import Transaction

if TYPE_CHECKING:
    from atlas_actors.transaction.transaction import TransactionManager

__all__ = ["TracedTransaction"]

T = TypeVar("T")


class TracedTransaction(Transaction):
    """A :class:`Transaction` whose calls make spans (see the module docstring)."""

    _span: Span | None = None
    """The transaction's span until it ends (taken with ``__dict__.pop``: ended once)."""
    _calls = 0
    """Calls in progress (:meth:`_traced`): an end reached inside one ends the
    transaction's span only once the call's own span has ended (a parent outlives
    its children)."""

    def __init__(
        self,
        manager: TransactionManager,
        isolation: IsolationLevel,
        timeout: float | None,
    ) -> None:
        super().__init__(manager, isolation, timeout)
        tracing = manager.storage.tracing
        self._tracing = tracing
        self._span = tracing.start_client_span(
            "atlas.transaction",
            None,
            **{"atlas.transaction.id": self.id, "atlas.transaction.isolation": isolation},
        )
        self._span_context = trace.set_span_in_context(self._span) if self._span else None

    def _traced(self, name: str, sql: str | None, call: Callable[[], T]) -> T:
        token = otel_context.attach(self._span_context) if self._span_context else None
        self._calls += 1
        try:
            # (records an error itself; SQL that is no text is refused by the call, typed)
            with self._tracing.client_span(name, sql if isinstance(sql, str) else None):
                return call()
        finally:
            self._calls -= 1
            if token is not None:
                otel_context.detach(token)
            # The call's span has ended: if the call ended the transaction (a commit, a
            # rollback, a failure), the transaction's span ends now, after it. (_finish
            # from another thread, the tick's, sets the state before it reads _calls:
            # one of the two sees the other's change and ends the span.)
            if not self._calls and self.state != "active":
                self._end_span()

    def execute(self, sql: str, params: Params = None) -> WriteResult:
        """As :meth:`Transaction.execute`, in a span."""
        return self._traced(
            "atlas.tx.execute", sql, lambda: super(TracedTransaction, self).execute(sql, params)
        )

    def query(self, sql: str, params: Params = None) -> list[Row]:
        """As :meth:`Transaction.query`, in a span."""
        return self._traced(
            "atlas.tx.query", sql, lambda: super(TracedTransaction, self).query(sql, params)
        )

    # Savepoints (the public calls' and nested blocks'), each in a span.
    def _open_savepoint(self, name: str) -> None:
        self._traced("atlas.tx.savepoint", None, partial(Transaction._open_savepoint, self, name))

    def _rollback_to_savepoint(self, name: str) -> None:
        self._traced(
            "atlas.tx.rollback_to", None, partial(Transaction._rollback_to_savepoint, self, name)
        )

    def _release_savepoint(self, name: str) -> None:
        self._traced("atlas.tx.release", None, partial(Transaction._release_savepoint, self, name))

    def commit(self) -> None:
        """As :meth:`Transaction.commit`, in a span; ends the transaction's span."""
        try:
            self._traced("atlas.tx.commit", None, partial(Transaction.commit, self))
        finally:
            if self.state != "active":
                self._end_span()

    def rollback(self) -> None:
        """As :meth:`Transaction.rollback`, in a span; ends the transaction's span."""
        try:
            self._traced("atlas.tx.rollback", None, partial(Transaction.rollback, self))
        finally:
            self._end_span()

    def _finish(self, state: str) -> None:
        super()._finish(state)
        # (failed: a timeout, a conflict, the writer's crash; or rolled back, committed)
        if not self._calls:  # else the call ends it, once its own span has ended
            self._end_span()

    def _end_span(self) -> None:
        span: Span | None = self.__dict__.pop("_span", None)  # (atomic: ends it once)
        if span is None:
            return
        span.set_attribute("atlas.transaction.state", self.state)
        span.set_attribute("atlas.transaction.operations", self.operations)
        if self._error is not None:
            Tracing.record_error(span, self._error)
        span.end()

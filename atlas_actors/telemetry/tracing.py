"""Tracing: a span per public call, per handled message, per group commit.

The storage takes a ``TracerProvider`` as an argument and never touches the global one.
Without a provider, :class:`Tracing` is disabled and every hot path checks one boolean
(``tracing.enabled``) before doing anything, so tracing off costs nearly nothing.

Messages carry the caller's OpenTelemetry ``Context`` object itself: inside one process
that is the cheapest carrier (no serialising through a propagator per message), and an
actor starts its CONSUMER span with that context as parent, so a trace follows a call
across mailboxes. Attribute names follow the database semantic conventions
(https://opentelemetry.io/docs/specs/semconv/database/database-spans/).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

__all__ = ["Tracing", "operation_name"]

_INSTRUMENTATION = "atlas_actors"
_MAX_QUERY_TEXT = 2048


def operation_name(sql: str) -> str:
    """The statement's first keyword, upper-cased (``db.operation.name``)."""
    stripped = sql.lstrip()
    end = 0
    while end < len(stripped) and (stripped[end].isalpha() or stripped[end] == "_"):
        end += 1
    return stripped[:end].upper() or "UNKNOWN"


class Tracing:
    """Makes the library's spans when a tracer provider was given; otherwise does nothing."""

    def __init__(self, provider: trace.TracerProvider | None, db_path: str) -> None:
        self.enabled = provider is not None
        """False when no provider was given: callers skip all tracing work."""
        self._tracer: trace.Tracer | None = (
            provider.get_tracer(_INSTRUMENTATION) if provider is not None else None
        )
        self._base = {"db.system.name": "sqlite", "db.namespace": db_path}

    def _attributes(self, sql: str | None, extra: dict[str, Any] | None) -> dict[str, Any]:
        attributes: dict[str, Any] = dict(self._base)
        if sql is not None:
            # Parameter values are never recorded: they are bound, so the text has none.
            attributes["db.query.text"] = sql[:_MAX_QUERY_TEXT]
            attributes["db.operation.name"] = operation_name(sql)
        if extra:
            attributes.update(extra)
        return attributes

    def current_context(self) -> Context | None:
        """The caller's context to carry in a message (None when tracing is off)."""
        return otel_context.get_current() if self.enabled else None

    def client_span(
        self, name: str, sql: str | None = None, **extra: Any
    ) -> AbstractContextManager[Span | None]:
        """A CLIENT span around a public call, current for its duration."""
        if self._tracer is None:
            return nullcontext()
        return self._tracer.start_as_current_span(
            name, kind=SpanKind.CLIENT, attributes=self._attributes(sql, extra)
        )

    def start_client_span(self, name: str, sql: str | None = None, **extra: Any) -> Span | None:
        """Start (not activate) a CLIENT span, for calls that return a future."""
        if self._tracer is None:
            return None
        return self._tracer.start_span(
            name, kind=SpanKind.CLIENT, attributes=self._attributes(sql, extra)
        )

    @contextmanager
    def consumer_span(
        self,
        name: str,
        parent: Context | None,
        sql: str | None = None,
        **extra: Any,
    ) -> Iterator[Span | None]:
        """A CONSUMER span for a message an actor handles, child of the sender's span."""
        if self._tracer is None:
            yield None
            return
        with self._tracer.start_as_current_span(
            name,
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=self._attributes(sql, extra),
        ) as span:
            yield span

    def batch_span(
        self, name: str, members: Sequence[Span | None], **extra: Any
    ) -> AbstractContextManager[Span | None]:
        """An INTERNAL span for work done for many messages (a group commit), linked to each."""
        if self._tracer is None:
            return nullcontext()
        links = [Link(span.get_span_context()) for span in members if span is not None]
        return self._tracer.start_as_current_span(
            name,
            kind=SpanKind.INTERNAL,
            links=links,
            attributes=self._attributes(None, extra),
            context=Context(),  # a commit belongs to no single caller's trace: a new root
        )

    @staticmethod
    def span_in(parent: Context | None) -> Span | None:
        """The span active in a carried context, if any."""
        if parent is None:
            return None
        span = trace.get_current_span(parent)
        return span if span.get_span_context().is_valid else None

    @staticmethod
    def record_error(span: Span | None, error: BaseException) -> None:
        """Mark ``span`` failed with ``error`` (its type as ``error.type``)."""
        if span is None:
            return
        span.record_exception(error)
        span.set_attribute("error.type", type(error).__qualname__)
        code = getattr(error, "extended_result_code", None) or getattr(error, "result_code", None)
        if code is not None:
            span.set_attribute("db.response.status_code", str(code))
        span.set_status(Status(StatusCode.ERROR, str(error)[:200]))

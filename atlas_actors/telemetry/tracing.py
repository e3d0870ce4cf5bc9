"""Tracing: a span per public call, per handled message, per group commit.

The storage takes a ``TracerProvider`` as an argument and never touches the global one.
Without a provider, :class:`Tracing` is disabled and every hot path checks one boolean
(``tracing.enabled``) before doing anything, so tracing off costs nearly nothing.

Messages carry the caller's OpenTelemetry ``Context`` object itself: inside one process
that is the cheapest carrier (no serialising through a propagator per message), and an
actor starts its CONSUMER span with that context as parent, so a trace follows a call
across mailboxes. Attribute names follow the database semantic conventions
(https://opentelemetry.io/docs/specs/semconv/database/database-spans/). As those ask,
``db.query.text`` is sanitized: the literal values written in the SQL become ``?``
(:func:`sanitize_query_text`); bound parameter values are never recorded at all.
"""

from __future__ import annotations

import ast
import re
import traceback
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

# _TOKEN is the tokenizer's own pattern: one alternative per token kind, named by kind.
# Matching it directly (re.sub, re.finditer) avoids building a Token per token.
from atlas_actors.errors import shorten
from atlas_actors.query._tokens import _TOKEN

__all__ = [
    "Tracing",
    "batch_attributes",
    "operation_name",
    "safe_error_message",
    "sanitize_query_text",
]

_INSTRUMENTATION = "atlas_actors"
_DEFAULT_MAX_LINKS = 128
"""The SDK's default links per span (``OTEL_SPAN_LINK_COUNT_LIMIT``); beyond, dropped."""
_MAX_QUERY_TEXT = 2048
_LITERAL_KINDS = frozenset({"string", "number", "blob"})
_MAYBE_LITERAL = re.compile(r"['0-9]")  # every string, blob and number has one of these
_MAIN_VERBS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE"})


def _hide_literal(match: re.Match[str]) -> str:
    return "?" if match.lastgroup in _LITERAL_KINDS else match.group()


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'" + r'|"(?:[^"\\]|\\.)*"')
"""A Python string's repr at the start of a text (how errors quote a statement)."""
_NEAR = re.compile(r'near "((?:[^"]|"")*)"')
"""SQLite's own message quoting the token it stopped at (``near "'x'": syntax error``)."""


def batch_attributes(
    sql: str | Sequence[tuple[str, Any]] | None, parameter_sets: int | None = None
) -> dict[str, Any]:
    """``db.operation.batch.size`` and ``db.operation.name`` of a batch, or nothing.

    A ``write_all``'s statements, or one statement run with several parameter sets
    (``write_many``), are a batch of that many operations; a batch of one is a plain
    operation (the database conventions). A batch's name is ``BATCH`` and its
    statements' verb when they share one (``BATCH INSERT``).
    """
    if isinstance(sql, str):
        if parameter_sets is None or parameter_sets == 1:
            return {}
        return {
            "db.operation.batch.size": parameter_sets,
            "db.operation.name": f"BATCH {operation_name(sql)}",
        }
    if sql is None or len(sql) == 1:
        return {}
    names = {operation_name(statement) for statement, _ in sql}
    return {
        "db.operation.batch.size": len(sql),
        "db.operation.name": f"BATCH {names.pop()}" if len(names) == 1 else "BATCH",
    }


def safe_error_message(error: BaseException, message: str | None = None) -> str:
    """``error``'s message (or ``message``, any text about it) with its statement sanitized.

    The library's errors quote their statement as ``repr(shorten(sql))``: a SQLite
    error keeps the text in ``error.sql``, a timeout in its ``operation`` (``verb
    'sql'``, perhaps followed by why). SQLite's own part of a message may quote the
    token it stopped at, a literal perhaps: sanitized too.
    """
    text = str(error) if message is None else message
    sql = getattr(error, "sql", None)
    operation = getattr(error, "operation", None)
    if isinstance(sql, str) and sql:
        text = text.replace(repr(shorten(sql)), repr(shorten(sanitize_query_text(sql))))
    elif isinstance(operation, str):
        verb, _, rest = operation.partition(" ")
        quoted = _QUOTED.match(rest)
        if quoted is not None:
            try:
                statement = ast.literal_eval(quoted.group())
            except (ValueError, SyntaxError):
                statement = None
            if isinstance(statement, str):
                safe = f"{verb} {sanitize_query_text(statement)!r}{rest[quoted.end() :]}"
                text = text.replace(operation, safe)
    return _NEAR.sub(lambda near: f'near "{sanitize_query_text(near.group(1))}"', text)


def sanitize_query_text(sql: str) -> str:
    """Return ``sql`` with its string, number and blob literals replaced by ``?``.

    Everything else is kept as written: keywords, identifiers (quoted ones too),
    parameters (``?``, ``?NNN``, ``:name``, ``@name``, ``$name``), comments and spacing.
    The OpenTelemetry database conventions ask for this before recording the text of a
    statement that may carry values in it (``db.query.text``). Text that cannot hold a
    literal (no quote, no digit) is returned as is without being tokenized. A literal
    cut short by truncation (an unterminated string) is still replaced.
    """
    if _MAYBE_LITERAL.search(sql) is None:
        return sql
    return _TOKEN.sub(_hide_literal, sql)


def operation_name(sql: str) -> str:
    """The statement's verb, upper-cased (``db.operation.name``).

    Leading comments are skipped. For a statement with common table expressions
    (``WITH ... AS (...) INSERT ...``) it is the main statement's verb: the first
    SELECT, INSERT, UPDATE, DELETE or REPLACE outside parentheses after the ``WITH``
    (``WITH`` itself if there is none). ``UNKNOWN`` when the text has no leading word.
    """
    stripped = sql.lstrip()
    if stripped[:1].isalpha() or stripped[:1] == "_":  # the common case: no comment
        end = 1
        while end < len(stripped) and (stripped[end].isalnum() or stripped[end] == "_"):
            end += 1
        verb = stripped[:end].upper()
        if verb != "WITH":
            return verb
    return _verb_from_tokens(sql)


def _verb_from_tokens(sql: str) -> str:
    """The verb of a statement that starts with a comment or a ``WITH`` (see above)."""
    verb: str | None = None
    depth = 0
    for match in _TOKEN.finditer(sql):  # lazy: stops at the verb, however long the text
        kind = match.lastgroup
        if kind in ("space", "comment"):
            continue
        if verb is None:
            if kind != "word":
                return "UNKNOWN"
            verb = match.group().upper()
            if verb != "WITH":
                return verb
        elif kind == "op":
            text = match.group()
            if text == "(":
                depth += 1
            elif text == ")":
                depth -= 1
            elif text == ";" and depth == 0:
                break
        elif kind == "word" and depth == 0 and match.group().upper() in _MAIN_VERBS:
            return match.group().upper()
    return verb or "UNKNOWN"


def _link_limit(tracer: trace.Tracer | None) -> int | None:
    """How many links a span of ``tracer`` keeps (None: unlimited).

    The SDK's tracer holds its provider's ``SpanLimits`` (its own attribute: the API
    has no way to ask); any other tracer is assumed to keep the SDK's default.
    """
    limits = getattr(tracer, "_span_limits", None)
    if limits is None:
        return _DEFAULT_MAX_LINKS
    limit = getattr(limits, "max_links", _DEFAULT_MAX_LINKS)
    return limit if limit is None or isinstance(limit, int) else _DEFAULT_MAX_LINKS


class Tracing:
    """Makes the library's spans when a tracer provider was given; otherwise does nothing."""

    def __init__(self, provider: trace.TracerProvider | None, db_path: str) -> None:
        self.enabled = provider is not None
        """False when no provider was given: callers skip all tracing work."""
        self._tracer: trace.Tracer | None = (
            provider.get_tracer(_INSTRUMENTATION) if provider is not None else None
        )
        self._base = {"db.system.name": "sqlite", "db.namespace": db_path}
        self._max_links = _link_limit(self._tracer)
        """Links a span keeps (None: no limit); a batch's further links go on child spans."""

    def _attributes(self, sql: str | None, extra: dict[str, Any] | None) -> dict[str, Any]:
        attributes: dict[str, Any] = dict(self._base)
        if sql is not None:
            # Bound parameter values are never recorded; literals written in the text
            # are replaced by "?" (cut first: the cost is bounded by the cut length).
            attributes["db.query.text"] = sanitize_query_text(sql[:_MAX_QUERY_TEXT])
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
        """A CLIENT span around a public call, current for its duration.

        If the call raises, the span is marked failed by :meth:`record_error` (status
        ERROR, ``error.type``, the SQLite result code) and the error propagates.
        """
        if self._tracer is None:
            return nullcontext()
        return self._failing_span(self._tracer, name, self._attributes(sql, extra))

    @contextmanager
    def _failing_span(
        self, tracer: trace.Tracer, name: str, attributes: dict[str, Any]
    ) -> Iterator[Span | None]:
        # The SDK's own handling is off so the exception is recorded once, by record_error.
        with tracer.start_as_current_span(
            name,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except BaseException as error:
                self.record_error(span, error)
                raise

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
        """An INTERNAL span for work done for many messages (a group commit), linked to each.

        A span keeps at most the tracer's link limit (the SDK's default is 128, while a
        batch holds up to ``max_batch_size`` writes): the batch span takes the first
        links up to it, and each further run of up to that many goes on a child span
        ``atlas.batch.links`` (``atlas.batch.links.offset``: the position of its first
        link in the batch), so every member stays reachable from the batch's trace.
        """
        tracer = self._tracer
        if tracer is None:
            return nullcontext()
        links = [Link(span.get_span_context()) for span in members if span is not None]
        limit = self._max_links
        if limit is not None and len(links) > limit > 0:
            return self._batch_span_with_link_spans(tracer, name, links, limit, extra)
        return tracer.start_as_current_span(
            name,
            kind=SpanKind.INTERNAL,
            links=links,
            attributes=self._attributes(None, extra),
            context=Context(),  # a commit belongs to no single caller's trace: a new root
        )

    @contextmanager
    def _batch_span_with_link_spans(
        self,
        tracer: trace.Tracer,
        name: str,
        links: list[Link],
        limit: int,
        extra: dict[str, Any],
    ) -> Iterator[Span | None]:
        """:meth:`batch_span` for more links than a span keeps (see there)."""
        with tracer.start_as_current_span(
            name,
            kind=SpanKind.INTERNAL,
            links=links[:limit],
            attributes=self._attributes(None, extra),
            context=Context(),
        ) as span:
            parent = trace.set_span_in_context(span)
            for offset in range(limit, len(links), limit):
                tracer.start_span(
                    "atlas.batch.links",
                    context=parent,
                    kind=SpanKind.INTERNAL,
                    links=links[offset : offset + limit],
                    attributes={**self._base, "atlas.batch.links.offset": offset},
                ).end()
            yield span

    @staticmethod
    def span_in(parent: Context | None) -> Span | None:
        """The span active in a carried context, if any."""
        if parent is None:
            return None
        span = trace.get_current_span(parent)
        return span if span.get_span_context().is_valid else None

    @staticmethod
    def record_error(span: Span | None, error: BaseException) -> None:
        """Mark ``span`` failed with ``error`` (its type as ``error.type``).

        The message recorded quotes the statement with its literals hidden, as
        ``db.query.text`` does (the error's own message quotes it as written).
        """
        if span is None:
            return
        message = str(error)
        safe = safe_error_message(error, message)
        stack = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        safe_stack = safe_error_message(error, stack)  # (its causes' messages too)
        attributes = None
        if safe != message or safe_stack != stack:
            attributes = {"exception.message": safe, "exception.stacktrace": safe_stack}
        span.record_exception(error, attributes=attributes)
        span.set_attribute("error.type", type(error).__qualname__)
        code = getattr(error, "extended_result_code", None) or getattr(error, "result_code", None)
        if code is not None:
            span.set_attribute("db.response.status_code", str(code))
        span.set_status(Status(StatusCode.ERROR, safe[:200]))

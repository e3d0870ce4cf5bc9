"""The writer's spans tell what happened: every call's span ends, a group commit links
exactly the writes it committed, and a failed COMMIT is marked failed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, StatusCode

import atlas_actors as atlas
from atlas_actors.errors import AtlasError, OperationTimeout
from atlas_actors.faults import FaultyVFS
from tests.helpers import gate_writer


class _Unended(SpanProcessor):
    """Remembers the spans started and not (yet) ended."""

    def __init__(self) -> None:
        self.open: dict[int, ReadableSpan] = {}

    def on_start(self, span: Span, parent_context: object = None) -> None:
        self.open[span.get_span_context().span_id] = span  # type: ignore[assignment]

    def on_end(self, span: ReadableSpan) -> None:
        assert span.context is not None
        self.open.pop(span.context.span_id, None)


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter, _Unended]:
    exporter, unended = InMemorySpanExporter(), _Unended()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(unended)
    return provider, exporter, unended


@pytest.fixture
def traced(
    tmp_path: Path, spans: tuple[TracerProvider, InMemorySpanExporter, _Unended]
) -> Iterator[atlas.Storage]:
    with atlas.open(tmp_path / "spans.db", tracer_provider=spans[0], mailbox_size=1) as db:
        db.execute("CREATE TABLE t(x INTEGER UNIQUE)")
        yield db


def test_a_call_that_cannot_be_queued_still_ends_its_span(
    traced: atlas.Storage, spans: tuple[TracerProvider, InMemorySpanExporter, _Unended]
) -> None:
    _, exporter, unended = spans
    _, release = gate_writer(traced)
    queued = traced.writer.execute("INSERT INTO t VALUES (1)")  # the mailbox's one place
    with pytest.raises(OperationTimeout, match="mailbox is full"):
        traced.writer.execute("INSERT INTO t VALUES (2)", timeout=0.2)
    release.set()
    queued.get(5)
    assert [s.name for s in unended.open.values()] == []
    refused = [
        s
        for s in exporter.get_finished_spans()
        if s.name == "atlas.writer.submit" and "(2)" in str(s.attributes.get("db.query.text"))
    ]
    assert len(refused) == 1 and refused[0].status.status_code is StatusCode.ERROR


def test_a_group_commit_links_exactly_the_writes_it_committed(
    tmp_path: Path, spans: tuple[TracerProvider, InMemorySpanExporter, _Unended]
) -> None:
    provider, exporter, _ = spans
    with atlas.open(tmp_path / "links.db", tracer_provider=provider) as db:
        db.execute("CREATE TABLE t(x INTEGER UNIQUE)")
        _, release = gate_writer(db)
        statements = [
            "INSERT INTO t VALUES (1)",
            "INSERT INTO t VALUES (2)",
            "INSERT INTO t VALUES (1) /* taken */",  # fails: its group runs again
            "INSERT INTO t VALUES (3)",
        ]
        futures = [db.writer.execute(sql) for sql in statements]
        exporter.clear()
        release.set()
        outcomes = [future.exception(5) for future in futures]
    assert [error is None for error in outcomes] == [True, True, False, True]
    finished = exporter.get_finished_spans()
    consumers = {s.context.span_id: s for s in finished if s.name == "atlas.writer.write"}
    commits = [s for s in finished if s.name == "atlas.writer.commit" and s.links]
    assert len(commits) == 1  # (the gate's function and the writes: one batch)
    linked = [
        consumers[link.context.span_id]
        for link in commits[0].links
        if link.context.span_id in consumers  # (the gate's function has a span too)
    ]
    assert sorted(str(s.attributes["db.query.text"]) for s in linked) == sorted(
        statements[i] for i in (0, 1, 3)
    )  # once each: neither the failed write nor the runs rolled back with its group
    assert all(s.status.status_code is not StatusCode.ERROR for s in linked)


def test_a_failed_commit_marks_its_span_failed(
    tmp_path: Path, spans: tuple[TracerProvider, InMemorySpanExporter, _Unended]
) -> None:
    provider, exporter, _ = spans
    vfs = FaultyVFS()
    with atlas.open(
        tmp_path / "sync.db", tracer_provider=provider, vfs=vfs.name, synchronous="FULL"
    ) as db:
        db.execute("CREATE TABLE t(x)")
        exporter.clear()
        vfs.fail_syncs = apsw.IOError
        with pytest.raises(AtlasError):
            db.write("INSERT INTO t VALUES (1)")
        vfs.fail_syncs = None
    commits = [s for s in exporter.get_finished_spans() if s.name == "atlas.writer.commit"]
    assert commits and commits[0].status.status_code is StatusCode.ERROR
    assert commits[0].attributes["error.type"]

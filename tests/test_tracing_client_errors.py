"""A failed public call's CLIENT span says it failed, with the error's type."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import atlas_actors as atlas


@pytest.fixture
def traced(
    db_path: Path, exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> Iterator[atlas.Storage]:
    with atlas.open(db_path, tracer_provider=tracer_provider) as storage:
        storage.execute("CREATE TABLE t(x INTEGER PRIMARY KEY)")
        exporter.clear()
        yield storage


def _only(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    spans = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(spans) == 1, [s.name for s in exporter.get_finished_spans()]
    assert spans[0].kind is SpanKind.CLIENT
    return spans[0]


def test_a_failed_write_marks_its_client_span(
    traced: atlas.Storage, exporter: InMemorySpanExporter
) -> None:
    with pytest.raises(atlas.errors.SQLError):
        traced.write("INSERT INTO nowhere VALUES (1)")
    span = _only(exporter, "atlas.write")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "SQLError"
    assert span.attributes["db.response.status_code"] == "1"
    assert [e.name for e in span.events] == ["exception"]  # recorded once, not twice


def test_a_failed_query_marks_its_client_span(
    traced: atlas.Storage, exporter: InMemorySpanExporter
) -> None:
    with pytest.raises(atlas.errors.SQLError):
        traced.query("SELECT * FROM nowhere")
    span = _only(exporter, "atlas.query")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "SQLError"


def test_a_constraint_failure_reports_the_sqlite_code(
    traced: atlas.Storage, exporter: InMemorySpanExporter
) -> None:
    traced.write("INSERT INTO t VALUES (1)")
    exporter.clear()
    with pytest.raises(atlas.errors.AtlasError):
        traced.write("INSERT INTO t VALUES (1)")
    span = _only(exporter, "atlas.write")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"]
    code = span.attributes["db.response.status_code"]
    assert code == str(apsw.SQLITE_CONSTRAINT_PRIMARYKEY)


def test_a_successful_call_leaves_the_status_unset(
    traced: atlas.Storage, exporter: InMemorySpanExporter
) -> None:
    traced.write("INSERT INTO t VALUES (2)")
    span = _only(exporter, "atlas.write")
    assert span.status.status_code is StatusCode.UNSET
    assert "error.type" not in span.attributes and not span.events


def test_a_write_failing_alone_makes_one_failed_consumer_span(
    traced: atlas.Storage, exporter: InMemorySpanExporter
) -> None:
    """Alone in its group, it used to run again: two CONSUMER spans for one message, the
    first ended as if the run had succeeded."""
    traced.write("INSERT INTO t VALUES (1)")
    before = traced.writer.stats()
    counted = _writer_counts(traced)
    exporter.clear()
    with pytest.raises(atlas.errors.ConstraintError):
        traced.write("INSERT INTO t VALUES (1)")
    consumers = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    assert [s.name for s in consumers] == ["atlas.writer.write"]
    assert consumers[0].status.status_code is StatusCode.ERROR
    assert [e.name for e in consumers[0].events] == ["exception"]
    after = traced.writer.stats()
    assert after.regrouped == before.regrouped and after.failed == before.failed + 1
    assert _writer_counts(traced) == (counted[0] + 1, counted[1] + 1)  # one run, one error


def _writer_counts(db: atlas.Storage) -> tuple[int, int]:
    """The writer connection's (queries, errors)."""
    (metrics,) = [m for c, m in db.connection_metrics().items() if c.startswith("writer")]
    return metrics.queries, metrics.errors

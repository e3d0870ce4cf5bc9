"""Tracing: spans per call, per handled message, per group commit; off costs nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import atlas_actors as atlas


@pytest.fixture
def traced(db_path: Path, exporter: InMemorySpanExporter, tracer_provider: TracerProvider):
    with atlas.open(db_path, tracer_provider=tracer_provider) as storage:
        storage.execute("CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT)")
        exporter.clear()
        yield storage


def test_a_write_makes_a_client_span_a_consumer_child_and_a_linked_commit(
    traced: atlas.Storage, exporter: InMemorySpanExporter
) -> None:
    traced.write("INSERT INTO tasks(title) VALUES (?)", ["secret value"])
    spans = {s.name: s for s in exporter.get_finished_spans()}
    client, consumer, commit = (
        spans["atlas.write"],
        spans["atlas.writer.write"],
        spans["atlas.writer.commit"],
    )
    assert client.kind is SpanKind.CLIENT and consumer.kind is SpanKind.CONSUMER
    assert consumer.parent is not None and consumer.parent.span_id == client.context.span_id
    assert consumer.context.trace_id == client.context.trace_id
    assert [link.context.span_id for link in commit.links] == [consumer.context.span_id]
    assert client.attributes["db.system.name"] == "sqlite"
    assert client.attributes["db.operation.name"] == "INSERT"
    assert client.attributes["db.query.text"] == "INSERT INTO tasks(title) VALUES (?)"
    every_value = [str(v) for s in exporter.get_finished_spans() for v in s.attributes.values()]
    assert not any("secret value" in v for v in every_value)  # parameters are never recorded


def test_a_group_commit_links_every_write_of_its_batch(
    traced: atlas.Storage, exporter: InMemorySpanExporter
) -> None:
    futures = [
        traced.writer.execute("INSERT INTO tasks(title) VALUES (?)", [str(i)]) for i in range(20)
    ]
    for future in futures:
        future.get(5)
    commits = [s for s in exporter.get_finished_spans() if s.name == "atlas.writer.commit"]
    consumers = [s for s in exporter.get_finished_spans() if s.name == "atlas.writer.write"]
    linked = [link.context.span_id for c in commits for link in c.links]
    assert sorted(linked) == sorted(s.context.span_id for s in consumers)
    assert len(commits) < len(consumers)  # writes shared commits
    assert sum(c.attributes["atlas.batch.size"] for c in commits) == 20
    submits = [s for s in exporter.get_finished_spans() if s.name == "atlas.writer.submit"]
    assert len(submits) == 20 and all(s.end_time is not None for s in submits)


def test_reads_and_failures_are_traced(
    traced: atlas.Storage, exporter: InMemorySpanExporter
) -> None:
    traced.query("SELECT * FROM tasks")
    with pytest.raises(atlas.errors.SQLError):
        traced.write("INSERT INTO nowhere VALUES (1)")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["atlas.query"].attributes["db.operation.name"] == "SELECT"
    failed = spans["atlas.writer.write"]
    assert not failed.status.is_ok
    assert failed.attributes["error.type"] == "SQLError"
    assert failed.attributes["db.response.status_code"] == "1"
    queued = traced.submit_query("SELECT 1")
    queued.get(5)
    consumer = [s for s in exporter.get_finished_spans() if s.name == "atlas.reader.query"]
    assert consumer and consumer[0].kind is SpanKind.CONSUMER


def test_the_global_tracer_provider_is_never_touched(
    db_path: Path, exporter: InMemorySpanExporter
) -> None:
    before = trace.get_tracer_provider()
    provider = TracerProvider()
    with atlas.open(db_path, tracer_provider=provider) as storage:
        storage.execute("CREATE TABLE t(x)")
    assert trace.get_tracer_provider() is before


def test_without_a_provider_no_span_is_made(db: atlas.Storage) -> None:
    assert db.tracing.enabled is False
    assert db.tracing.current_context() is None
    db.write("INSERT INTO tasks(title) VALUES ('a')")  # and nothing breaks


def test_write_all_spans_carry_the_statements_text(
    traced: atlas.Storage, exporter: InMemorySpanExporter
) -> None:
    statements = [
        ("INSERT INTO tasks(title) VALUES (?)", ["a"]),
        ("UPDATE tasks SET title = 'b'", None),
    ]
    text = "INSERT INTO tasks(title) VALUES (?); UPDATE tasks SET title = ?"  # literal hidden
    traced.write_all(statements)
    traced.writer.write_all(statements).get(5)
    texts: dict[str, list[object]] = {}
    for span in exporter.get_finished_spans():
        texts.setdefault(span.name, []).append(span.attributes.get("db.query.text"))
    assert texts["atlas.write_all"] == [text]  # db.write_all: client span
    assert texts["atlas.writer.submit"] == [text]  # db.writer.write_all: client span
    assert texts["atlas.writer.write_all"] == [text, text]  # one consumer span each


def test_checkpoints_checks_and_the_optimizers_reads_make_spans_of_their_own(
    traced: atlas.Storage, exporter: InMemorySpanExporter
) -> None:
    """A checkpoint's client span was the generic atlas.writer.submit; a check of the
    file and the optimizer's reads made none."""
    traced.write("INSERT INTO tasks(title) VALUES ('a')")
    exporter.clear()
    traced.wal.checkpoint("truncate")
    assert traced.wal.verify()
    traced.optimizer.analyze("SELECT * FROM tasks WHERE title = ?", ["a"])
    spans = exporter.get_finished_spans()
    by_name = {s.name: s for s in spans}
    checkpoint = by_name["atlas.wal.checkpoint"]
    assert checkpoint.kind is SpanKind.CLIENT
    assert checkpoint.attributes["atlas.wal.mode"] == "truncate"
    handled = by_name["atlas.writer.checkpoint"]
    assert handled.parent is not None and handled.parent.span_id == checkpoint.context.span_id
    assert "atlas.writer.submit" not in by_name
    assert by_name["atlas.wal.verify"].attributes["atlas.wal.full"] is False
    optimizer = [s for s in spans if s.name == "atlas.optimizer"]
    assert optimizer and all(s.kind is SpanKind.CLIENT for s in optimizer)
    assert {s.attributes["atlas.optimizer.step"] for s in optimizer} >= {"Optimizer.analyze"}


def test_a_pool_lease_makes_spans_for_its_acquire_and_its_statements(
    traced: atlas.Storage, exporter: InMemorySpanExporter
) -> None:
    """pool.acquire() and a lease's statements made no span; a snapshot transaction's
    reads (on a lease of its own) keep their own spans, not one more each."""
    with traced.pool.connection() as lease:
        lease.execute("SELECT count(*) FROM tasks")
    with traced.transaction(isolation="repeatable_read") as tx:
        tx.query("SELECT count(*) FROM tasks")
    names = [s.name for s in exporter.get_finished_spans()]
    assert names.count("atlas.pool.acquire") == 2  # (the transaction pins one too)
    queries = [s for s in exporter.get_finished_spans() if s.name == "atlas.pool.query"]
    assert len(queries) == 1 and queries[0].kind is SpanKind.CLIENT
    assert queries[0].attributes["db.query.text"] == "SELECT count(*) FROM tasks"

"""A group commit's span reaches every write it committed, past the SDK's link limit.

A span keeps at most ``SpanLimits.max_links`` links (128 by default; the SDK drops the
rest), while a batch holds up to ``max_batch_size`` (512) writes: the commit span keeps
the first links up to the limit and ``atlas.batch.links`` children of it take the rest.
"""

from __future__ import annotations

from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import atlas_actors as atlas
from tests.helpers import gate_writer

# Each storage is opened with a long max_batch_delay: the batch stays open until the
# writer's mailbox is empty, so it takes every queued write, on a slow machine too.


def _one_batch(db: atlas.Storage, exporter: InMemorySpanExporter, writes: int) -> None:
    """Run ``writes`` inserts as one group commit (held behind the writer until all queue).

    The batch holds the gate's function too: ``writes + 1`` members.
    """
    _, release = gate_writer(db)
    futures = [db.writer.execute("INSERT INTO t(v) VALUES (?)", [i]) for i in range(writes)]
    exporter.clear()
    release.set()
    for future in futures:
        future.get(10)


def _members(finished: tuple[ReadableSpan, ...]) -> list[int]:
    """The span ids of the batch's messages: the writes and the gate's function."""
    names = ("atlas.writer.write", "atlas.writer.run")
    return sorted(s.context.span_id for s in finished if s.name in names and s.context)


def _reached(commit: ReadableSpan, finished: tuple[ReadableSpan, ...]) -> list[int]:
    """The span ids ``commit`` links, itself or through its ``atlas.batch.links`` children."""
    assert commit.context is not None
    reached = [link.context.span_id for link in commit.links]
    for span in finished:
        if span.name == "atlas.batch.links":
            assert span.parent is not None and span.parent.span_id == commit.context.span_id
            reached += [link.context.span_id for link in span.links]
    return reached


def test_a_commit_of_more_writes_than_a_span_keeps_links_reaches_every_one(
    tmp_path: Path, exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    with atlas.open(
        tmp_path / "big.db", tracer_provider=tracer_provider, max_batch_delay=5.0
    ) as db:
        db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
        _one_batch(db, exporter, 400)
    finished = exporter.get_finished_spans()
    commits = [s for s in finished if s.name == "atlas.writer.commit"]
    assert len(commits) == 1 and commits[0].attributes["atlas.batch.size"] == 401
    commit = commits[0]
    writes = _members(finished)
    assert len(writes) == 401
    assert sorted(_reached(commit, finished)) == writes  # each once, none dropped
    assert len(commit.links) == 128 and commit.dropped_links == 0
    parts = [s for s in finished if s.name == "atlas.batch.links"]
    assert [(s.attributes["atlas.batch.links.offset"], len(s.links)) for s in parts] == [
        (128, 128),
        (256, 128),
        (384, 17),
    ]
    assert all(s.dropped_links == 0 for s in parts)
    assert all(s.context.trace_id == commit.context.trace_id for s in parts)
    assert all(  # children, within the commit's span
        commit.start_time <= s.start_time and s.end_time <= commit.end_time for s in parts
    )


def test_a_commit_within_the_limit_is_one_span_as_before(
    tmp_path: Path, exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    with atlas.open(
        tmp_path / "small.db", tracer_provider=tracer_provider, max_batch_delay=5.0
    ) as db:
        db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
        _one_batch(db, exporter, 127)
    finished = exporter.get_finished_spans()
    (commit,) = [s for s in finished if s.name == "atlas.writer.commit"]
    writes = _members(finished)
    assert sorted(link.context.span_id for link in commit.links) == writes
    assert len(writes) == 128
    assert not [s for s in finished if s.name == "atlas.batch.links"]


def test_the_providers_own_link_limit_is_the_one_followed(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=SpanLimits(max_links=10))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with atlas.open(tmp_path / "limit.db", tracer_provider=provider, max_batch_delay=5.0) as db:
        db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
        _one_batch(db, exporter, 24)
    finished = exporter.get_finished_spans()
    (commit,) = [s for s in finished if s.name == "atlas.writer.commit"]
    writes = _members(finished)
    assert sorted(_reached(commit, finished)) == writes and len(writes) == 25
    parts = [s for s in finished if s.name == "atlas.batch.links"]
    assert [len(s.links) for s in [commit, *parts]] == [10, 10, 5]

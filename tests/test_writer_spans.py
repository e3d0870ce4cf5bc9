"""The writer's spans tell what happened: every call's span ends, a group commit links
exactly the writes it committed, and a failed COMMIT is marked failed."""

from __future__ import annotations

import threading
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
from atlas_actors.transaction.isolation import IsolationLevel
from tests.helpers import gate_writer, wait_until


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


def test_a_call_that_cannot_be_queued_still_ends_its_span_without_its_literals(
    traced: atlas.Storage, spans: tuple[TracerProvider, InMemorySpanExporter, _Unended]
) -> None:
    _, exporter, unended = spans
    _, release = gate_writer(traced)
    queued = traced.writer.execute("INSERT INTO t VALUES (1)")  # the mailbox's one place
    with pytest.raises(OperationTimeout, match="mailbox is full"):
        traced.writer.execute("INSERT INTO t VALUES (424242) /* refused */", timeout=0.2)
    release.set()
    queued.get(5)
    assert [s.name for s in unended.open.values()] == []
    refused = [
        s
        for s in exporter.get_finished_spans()
        if s.name == "atlas.writer.submit" and "refused" in str(s.attributes.get("db.query.text"))
    ]
    assert len(refused) == 1 and refused[0].status.status_code is StatusCode.ERROR
    texts = [refused[0].status.description or ""]
    texts += [str(v) for event in refused[0].events for v in (event.attributes or {}).values()]
    assert not any("424242" in text for text in texts)  # its error quotes it sanitized


def test_a_group_commit_links_exactly_the_writes_it_committed(
    tmp_path: Path, spans: tuple[TracerProvider, InMemorySpanExporter, _Unended]
) -> None:
    provider, exporter, _ = spans
    with atlas.open(tmp_path / "links.db", tracer_provider=provider) as db:
        db.execute("CREATE TABLE t(x INTEGER UNIQUE)")
        _, release = gate_writer(db)
        statements = [  # (told apart by their comments: span texts hide the values)
            ("INSERT INTO t VALUES (?) /* one */", [1]),
            ("INSERT INTO t VALUES (?) /* two */", [2]),
            ("INSERT INTO t VALUES (?) /* taken */", [1]),  # fails: its group runs again
            ("INSERT INTO t VALUES (?) /* three */", [3]),
        ]
        futures = [db.writer.execute(sql, params) for sql, params in statements]
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
        statements[i][0] for i in (0, 1, 3)
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


def test_a_transaction_makes_a_span_with_its_calls_and_lease_messages_under_it(
    tmp_path: Path, spans: tuple[TracerProvider, InMemorySpanExporter, _Unended]
) -> None:
    provider, exporter, unended = spans
    with atlas.open(tmp_path / "tx.db", tracer_provider=provider) as db:
        db.execute("CREATE TABLE t(x INTEGER UNIQUE)")
        exporter.clear()
        with db.transaction() as tx:
            tx.execute("INSERT INTO t VALUES (?)", [1])
            tx.query("SELECT count(*) AS n FROM t")
        with pytest.raises(AtlasError), db.transaction() as failing:
            failing.execute("INSERT INTO t VALUES (?)", [1])  # taken: the block rolls back
    finished = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    transactions = [s for s in finished if s.name == "atlas.transaction"]
    assert len(transactions) == 2
    committed, rolled_back = sorted(transactions, key=lambda s: s.start_time or 0)
    assert committed.attributes["atlas.transaction.state"] == "committed"
    assert rolled_back.attributes["atlas.transaction.state"] == "rolled_back"

    def under(span: ReadableSpan) -> list[str]:
        """Names of ``span``'s ancestors, nearest first."""
        names = []
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            names.append(span.name)
        return names

    calls = [s for s in finished if s.name.startswith("atlas.tx.")]
    assert sorted({s.name for s in calls}) == [
        "atlas.tx.commit",
        "atlas.tx.execute",
        "atlas.tx.query",
        "atlas.tx.rollback",
    ]
    assert all(under(s)[-1] == "atlas.transaction" for s in calls)
    failed = [
        s
        for s in calls
        if s.name == "atlas.tx.execute" and s.status.status_code is StatusCode.ERROR
    ]
    assert len(failed) == 1  # the taken value's statement
    assert [e.name for e in failed[0].events] == ["exception"]  # recorded once
    commit_calls = {s.context.span_id for s in calls if s.name == "atlas.tx.commit"}
    linked = {
        link.context.span_id
        for s in finished
        if s.name == "atlas.writer.commit"
        for link in s.links
    }
    assert commit_calls and commit_calls <= linked  # the group commit links the transaction
    leases = [s for s in finished if s.name == "atlas.writer.lease"]
    assert len(leases) == 2 and all("atlas.transaction" in under(s) for s in leases)
    assert [s.name for s in unended.open.values()] == []


def test_a_queued_read_makes_a_client_span_around_the_readers(
    tmp_path: Path, spans: tuple[TracerProvider, InMemorySpanExporter, _Unended]
) -> None:
    provider, exporter, _ = spans
    with atlas.open(tmp_path / "q.db", tracer_provider=provider) as db:
        exporter.clear()
        assert db.submit_query("SELECT 1 AS one").get(5)[0].one == 1
    finished = exporter.get_finished_spans()
    client = [s for s in finished if s.name == "atlas.submit_query"]
    consumer = [s for s in finished if s.name == "atlas.reader.query"]
    assert len(client) == 1 and len(consumer) == 1
    assert consumer[0].parent is not None
    assert consumer[0].parent.span_id == client[0].context.span_id


def test_a_failed_calls_span_hides_the_literals_its_error_quotes(
    tmp_path: Path, spans: tuple[TracerProvider, InMemorySpanExporter, _Unended]
) -> None:
    provider, exporter, _ = spans
    with atlas.open(tmp_path / "secret.db", tracer_provider=provider) as db:
        db.execute("CREATE TABLE users(email TEXT UNIQUE)")
        db.execute("INSERT INTO users VALUES ('alice@example.com')")
        with pytest.raises(AtlasError, match=r"alice@example\.com"):  # the caller sees it
            db.execute("INSERT INTO users VALUES ('alice@example.com')")
        with pytest.raises(AtlasError, match="syntax error"):  # SQLite quotes the token
            db.execute("INSERT INTO users VALUES (1 'carol@example.com')")
        _, release = gate_writer(db)
        with pytest.raises(OperationTimeout):
            db.writer.execute("INSERT INTO users VALUES ('bob@example.com')").get(0.05)
        release.set()
    failed = [s for s in exporter.get_finished_spans() if s.status.status_code is StatusCode.ERROR]
    assert {s.name for s in failed} >= {"atlas.write", "atlas.writer.write", "atlas.writer.submit"}
    for span in failed:
        texts = [span.status.description or ""]
        texts += [str(v) for event in span.events for v in (event.attributes or {}).values()]
        assert not any("@example.com" in text for text in texts), span.name
    assert any("INSERT INTO users VALUES (?)" in (s.status.description or "") for s in failed)


def test_a_lease_refused_at_a_hand_over_still_gets_its_failed_span(
    tmp_path: Path, spans: tuple[TracerProvider, InMemorySpanExporter, _Unended]
) -> None:
    # The next transaction waiting gets the connection from the committing one's
    # thread (a hand-over); SQLite refusing its SAVEPOINT (here: an authorizer) fails
    # that request there, and its lease span must say so, as the writer's grant does.
    # (A batch open past max_batch_delay is handed back to the writer instead: the
    # test's own waits must not reach it.)
    provider, exporter, unended = spans
    with atlas.open(tmp_path / "h.db", tracer_provider=provider, max_batch_delay=30.0) as traced:
        traced.execute("CREATE TABLE t(x INTEGER UNIQUE)")
        _refuse_a_hand_over(traced, exporter)
    assert not unended.open


def _refuse_a_hand_over(traced: atlas.Storage, exporter: InMemorySpanExporter) -> None:
    first = traced.transactions.begin()
    first.execute("INSERT INTO t VALUES (1)")  # holds the lease from here
    refused = f"tx{first.id + 1}"
    writer = traced.writer_connection
    assert writer is not None

    def deny_the_next_savepoint(action: int, arg1: object, arg2: object, *_: object) -> int:
        if action == apsw.SQLITE_SAVEPOINT and arg1 == "BEGIN" and arg2 == refused:
            return apsw.SQLITE_DENY
        return apsw.SQLITE_OK

    writer.connection.authorizer = deny_the_next_savepoint
    outcome: list[BaseException | None] = []

    def second() -> None:
        try:
            with traced.transaction() as tx:
                assert f"tx{tx.id}" == refused
                tx.execute("INSERT INTO t VALUES (2)")
        except BaseException as error:
            outcome.append(error)
        else:
            outcome.append(None)

    thread = threading.Thread(target=second)
    thread.start()
    assert wait_until(lambda: traced.transactions.status().queued == 1)
    first.commit()  # hands the connection over: the SAVEPOINT is refused there
    thread.join(10)
    writer.connection.authorizer = None
    assert len(outcome) == 1 and isinstance(outcome[0], AtlasError), outcome
    leases = [
        span
        for span in exporter.get_finished_spans()
        if span.name == "atlas.writer.lease"
        and span.attributes is not None
        and span.attributes.get("atlas.transaction.id") == first.id + 1
    ]
    assert len(leases) == 1, [span.name for span in exporter.get_finished_spans()]
    assert leases[0].status.status_code is StatusCode.ERROR
    assert leases[0].attributes is not None
    assert leases[0].attributes.get("atlas.lease.handed_over") is True
    assert traced.query("SELECT x FROM t") == [(1,)]


def _ended_before_its_transaction(finished: tuple[ReadableSpan, ...]) -> list[str]:
    """What is wrong with each transaction's span ending (empty: nothing).

    Every ``atlas.tx.*`` span must end before its ``atlas.transaction`` parent: the
    exporter gets the spans as they end, so a child after its parent ended after it.
    """
    ended_at = {s.context.span_id: i for i, s in enumerate(finished) if s.context}
    wrong = []
    for i, span in enumerate(finished):
        if span.name.startswith("atlas.tx.") and span.parent is not None:
            parent = ended_at.get(span.parent.span_id)
            if parent is None or parent < i:
                wrong.append(f"{span.name} ends after its atlas.transaction")
    return wrong


@pytest.mark.parametrize(
    "isolation", ["serializable", "repeatable_read", "read_committed", "read_uncommitted"]
)
def test_a_transactions_span_ends_after_its_commit_and_rollback_spans(
    tmp_path: Path,
    spans: tuple[TracerProvider, InMemorySpanExporter, _Unended],
    isolation: IsolationLevel,
) -> None:
    provider, exporter, unended = spans
    with atlas.open(tmp_path / "end.db", tracer_provider=provider) as db:
        db.execute("CREATE TABLE t(x INTEGER UNIQUE)")
        exporter.clear()
        with db.transaction(isolation=isolation) as tx:  # a read only
            tx.query("SELECT count(*) AS n FROM t")
        with db.transaction(isolation=isolation) as tx:  # a write
            tx.execute("INSERT INTO t VALUES (?)", [1])
        with pytest.raises(KeyError), db.transaction(isolation=isolation) as tx:
            tx.query("SELECT count(*) AS n FROM t")
            raise KeyError("leaves the block: rolled back")
        with pytest.raises(KeyError), db.transaction(isolation=isolation) as tx:
            tx.execute("INSERT INTO t VALUES (?)", [2])
            raise KeyError("leaves the block: rolled back")
        explicit = db.transactions.begin(isolation=isolation)
        explicit.query("SELECT count(*) AS n FROM t")
        explicit.rollback()
        explicit = db.transactions.begin(isolation=isolation)
        explicit.query("SELECT count(*) AS n FROM t")
        explicit.commit()
    finished = exporter.get_finished_spans()
    states = [
        s.attributes["atlas.transaction.state"]
        for s in finished
        if s.name == "atlas.transaction" and s.attributes
    ]
    blocks = ["committed", "committed", "rolled_back", "rolled_back"]
    assert states == [*blocks, "rolled_back", "committed"]  # (then the explicit two)
    ends = [s.name for s in finished if s.name in ("atlas.tx.commit", "atlas.tx.rollback")]
    assert len(ends) == 6
    assert _ended_before_its_transaction(finished) == []
    assert [s.name for s in unended.open.values()] == []


def test_a_transactions_span_ends_after_a_failed_commits_span(
    tmp_path: Path, spans: tuple[TracerProvider, InMemorySpanExporter, _Unended]
) -> None:
    provider, exporter, unended = spans
    vfs = FaultyVFS()
    with atlas.open(
        tmp_path / "fail.db", tracer_provider=provider, vfs=vfs.name, synchronous="FULL"
    ) as db:
        db.execute("CREATE TABLE t(x)")
        exporter.clear()
        vfs.fail_syncs = apsw.IOError
        try:
            with pytest.raises(AtlasError), db.transaction() as tx:
                tx.execute("INSERT INTO t VALUES (1)")  # its group's COMMIT fails
        finally:
            vfs.fail_syncs = None
    finished = exporter.get_finished_spans()
    (transaction,) = [s for s in finished if s.name == "atlas.transaction"]
    assert transaction.attributes is not None
    assert transaction.attributes["atlas.transaction.state"] == "failed"
    (commit,) = [s for s in finished if s.name == "atlas.tx.commit"]
    assert commit.status.status_code is StatusCode.ERROR
    assert _ended_before_its_transaction(finished) == []
    assert [s.name for s in unended.open.values()] == []

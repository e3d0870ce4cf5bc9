"""db.query.text never carries the literal values written in the SQL; db.operation.name
names the statement's verb even behind comments and common table expressions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import atlas_actors as atlas
from atlas_actors.telemetry.tracing import operation_name, sanitize_query_text


@pytest.fixture
def traced(
    db_path: Path, exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> Iterator[atlas.Storage]:
    with atlas.open(db_path, tracer_provider=tracer_provider) as storage:
        storage.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT, ssn TEXT, pic)")
        exporter.clear()
        yield storage


SECRETS = ("alice@example.com", "078-05-1120", "bob@example.com", "4242")


def test_literal_values_never_reach_a_span(
    traced: atlas.Storage, exporter: InMemorySpanExporter
) -> None:
    # (No blob literal here: a write with one crashes the writer in the statement
    # analysis, a separate defect; sanitizing blobs is covered by the unit test below.)
    traced.execute("INSERT INTO users(email, ssn) VALUES ('alice@example.com', '078-05-1120')")
    traced.query("SELECT * FROM users WHERE ssn = '078-05-1120' AND id <> 4242")
    traced.execute(
        "WITH v(e) AS (VALUES ('bob@example.com')) INSERT INTO users(email) SELECT e FROM v"
    )
    traced.writer.execute("UPDATE users SET ssn = '078-05-1120' WHERE id = :id", {"id": 1}).get(5)
    spans = exporter.get_finished_spans()
    texts = {
        s.name: s.attributes["db.query.text"] for s in spans if "db.query.text" in s.attributes
    }
    assert texts["atlas.query"] == "SELECT * FROM users WHERE ssn = ? AND id <> ?"
    assert texts["atlas.writer.submit"] == "UPDATE users SET ssn = ? WHERE id = :id"
    every_value = [str(v) for s in spans for v in s.attributes.values()]
    leaked = [(secret, v) for secret in SECRETS for v in every_value if secret in v]
    assert not leaked
    ops = [s.attributes["db.operation.name"] for s in spans if s.name == "atlas.write"]
    assert ops == ["INSERT", "INSERT"]  # the CTE's main statement is an INSERT


def test_operation_name_skips_leading_comments(
    traced: atlas.Storage, exporter: InMemorySpanExporter
) -> None:
    traced.query("/* report */ SELECT count(*) FROM users")
    traced.query("-- hot path\nSELECT 1")
    spans = [s for s in exporter.get_finished_spans() if s.name == "atlas.query"]
    assert [s.attributes["db.operation.name"] for s in spans] == ["SELECT", "SELECT"]
    assert [s.attributes["db.query.text"] for s in spans] == [
        "/* report */ SELECT count(*) FROM users",
        "-- hot path\nSELECT ?",
    ]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT * FROM t WHERE a = ?", "SELECT * FROM t WHERE a = ?"),
        ("SELECT * FROM t WHERE a = ?1 OR b = :b OR c = @c OR d = $d", None),
        (
            "SELECT 'it''s', \"col 1\", [x 2], `y 3` FROM t2",
            'SELECT ?, "col 1", [x 2], `y 3` FROM t2',
        ),
        ("SELECT -1.5e3, 0x1F, .5, 1_000 FROM t", "SELECT -?, ?, ?, ? FROM t"),
        ("INSERT INTO t VALUES (X'00ff', x'')", "INSERT INTO t VALUES (?, ?)"),
        ("SELECT col1, t2.c3 FROM t2 /* 'kept' 42 */", None),
        ("SELECT 'unterminated", "SELECT ?"),
        ("", ""),
    ],
)
def test_sanitize_query_text(sql: str, expected: str | None) -> None:
    assert sanitize_query_text(sql) == (sql if expected is None else expected)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("select 1", "SELECT"),
        ("  \n insert into t values (1)", "INSERT"),
        ("/* a */ /* b */ -- c\n update t set x = 1", "UPDATE"),
        ("WITH v AS (SELECT 1) DELETE FROM t WHERE x IN v", "DELETE"),
        (
            "with recursive n(i) as (select 1 union all select i + 1 from n) select i from n",
            "SELECT",
        ),
        (
            "WITH a AS (SELECT 1), b AS MATERIALIZED (SELECT 2) REPLACE INTO t SELECT * FROM a",
            "REPLACE",
        ),
        ("WITH a AS (SELECT 1)", "WITH"),
        ("-- nothing", "UNKNOWN"),
        ("(", "UNKNOWN"),
        ("", "UNKNOWN"),
    ],
)
def test_operation_name(sql: str, expected: str) -> None:
    assert operation_name(sql) == expected


def test_batches_carry_their_size_and_a_batch_operation_name(
    traced: atlas.Storage, exporter: InMemorySpanExporter
) -> None:
    """A write_all of several statements, or a write_many of several parameter sets, is a
    batch (db.operation.batch.size, BATCH <verb>); a batch of one is a plain operation."""
    insert = "INSERT INTO users(email) VALUES (?)"
    traced.write_all([(insert, ["a"]), (insert, ["b"])])
    traced.write_all([(insert, ["c"]), ("DELETE FROM users WHERE email = ?", ["a"])])
    traced.write_all([(insert, ["d"])])
    traced.write_many(insert, [["e"], ["f"], ["g"]])
    traced.writer.executemany(insert, [["h"], ["i"]]).get(5)
    seen = [
        (s.name, s.attributes.get("db.operation.name"), s.attributes.get("db.operation.batch.size"))
        for s in exporter.get_finished_spans()
        if s.name.startswith(("atlas.write_", "atlas.writer.write_", "atlas.writer.submit"))
    ]
    assert ("atlas.write_all", "BATCH INSERT", 2) in seen
    assert ("atlas.writer.write_all", "BATCH INSERT", 2) in seen
    assert ("atlas.write_all", "BATCH", 2) in seen
    assert ("atlas.write_all", "INSERT", None) in seen  # a batch of one
    assert ("atlas.write_many", "BATCH INSERT", 3) in seen
    assert ("atlas.writer.write_many", "BATCH INSERT", 3) in seen
    assert ("atlas.writer.submit", "BATCH INSERT", 2) in seen

"""Each statement run is one query of its connection, and each error one error.

The storage's ``errors`` counts every error reported to a caller once, whichever way
it reaches the caller (a call, or a future's ``get()``); a connection's ``queries`` and
``errors`` count the statements it ran, once each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

import atlas_actors as atlas
from atlas_actors.connection import ConnectionMetrics
from atlas_actors.errors import ConstraintError, OperationTimeout, ParameterError, SQLError
from tests.helpers import gate_writer

DUP = "INSERT INTO tasks(title) VALUES ('dup')"


def _counts(db: atlas.Storage, role: str) -> tuple[int, int]:
    """(queries, errors) of the connections whose role starts with ``role``."""
    metrics: list[ConnectionMetrics] = [
        c.metrics for c in db.connections() if c.role.startswith(role)
    ]
    return sum(m.queries for m in metrics), sum(m.errors for m in metrics)


def _errors(db: atlas.Storage) -> tuple[float, float]:
    snapshot = db.metrics.snapshot()
    return snapshot.get("errors", 0), snapshot.get("errors.timeout", 0)


@contextmanager
def _writer_held(db: atlas.Storage) -> Iterator[None]:
    """Keep the writer busy (a function run in it waits) until the block ends."""
    _, release = gate_writer(db)
    try:
        yield
    finally:
        release.set()


# -- the writer's connection: a split group is counted once --------------------------


def test_a_failed_write_is_one_query_and_one_error_of_the_writer_connection(
    db: atlas.Storage,
) -> None:
    db.write(DUP)
    before = _counts(db, "writer")
    with pytest.raises(ConstraintError):
        db.write(DUP)
    queries, errors = _counts(db, "writer")
    assert (queries - before[0], errors - before[1]) == (1, 1)


def test_the_writes_of_a_split_group_are_counted_once(db: atlas.Storage) -> None:
    db.write(DUP)
    before = _counts(db, "writer")
    with _writer_held(db):  # all queued meanwhile: one batch, one group
        futures = [
            db.writer.execute("INSERT INTO tasks(title) VALUES ('a')"),
            db.writer.write_all(
                [
                    ("INSERT INTO tasks(title) VALUES ('b')", None),
                    ("INSERT INTO tasks(title) VALUES ('c')", None),
                ]
            ),
            db.writer.execute(DUP),
            db.writer.write_all([("INSERT INTO tasks(title) VALUES ('d')", None), (DUP, None)]),
            db.writer.execute("INSERT INTO tasks(title) VALUES (?)", ["e"]),
        ]
    outcomes = [future.exception(10) for future in futures]
    assert [type(e).__name__ for e in outcomes] == [
        "NoneType",
        "NoneType",
        "ConstraintError",
        "ConstraintError",
        "NoneType",
    ]
    assert db.writer.stats().regrouped > 0  # (the group did fail and was split)
    queries, errors = _counts(db, "writer")
    # 1 + 2 + 1 + 2 (the second statement fails) + 1 statements run; 2 failed.
    assert (queries - before[0], errors - before[1]) == (7, 2)


# -- a reader's connection, with the cache on: a read refused as it is prepared ------


def test_a_failed_read_counts_on_its_reader_connection_with_the_cache_on(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    db = open_storage(cache=True)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    db.query("SELECT * FROM t")
    before = _counts(db, "reader")
    with pytest.raises(SQLError):
        db.query("SELECT nope FROM t")
    queries, errors = _counts(db, "reader")
    assert (queries - before[0], errors - before[1]) == (1, 1)


@pytest.mark.parametrize("cache", [False, True])
def test_text_passed_as_parameters_is_one_query_and_one_error_where_refused(
    open_storage: Callable[..., atlas.Storage], cache: bool
) -> None:
    # Refused by the connection itself (apsw would bind one character per placeholder):
    # still one run that failed, so a connection never shows more errors than queries.
    db = open_storage(cache=cache)
    db.execute("CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT)")
    for _ in range(5):  # the read path's first runs, then its fast path
        db.query("SELECT ?", [1])

    def on_a_lease() -> None:
        with db.pool.acquire() as connection:
            connection.query("SELECT ?", "x")  # type: ignore[arg-type]

    for role, refused, counted in (
        ("reader", lambda: db.query("SELECT ?", "x"), None),  # type: ignore[arg-type]
        ("reader", on_a_lease, 1),
        ("writer", lambda: _in_transaction(db, "INSERT INTO tasks(title) VALUES (?)", "x"), 1),
    ):
        for _ in range(3):
            before = _counts(db, role)
            with pytest.raises(ParameterError):
                refused()
            queries, errors = _counts(db, role)
            assert queries - before[0] == errors - before[1], role  # both, or neither
            if counted is not None:
                assert errors - before[1] == counted, role


def _in_transaction(db: atlas.Storage, sql: str, params: object) -> None:
    with db.transaction() as tx:
        tx.execute(sql, params)  # type: ignore[arg-type]


# -- the storage's errors: a future's timeout is reported once ------------------------


def test_a_writer_future_that_times_out_counts_one_error(db: atlas.Storage) -> None:
    before = _errors(db)
    with _writer_held(db):
        future = db.writer.execute("INSERT INTO tasks(title) VALUES ('late')", timeout=0.2)
        with pytest.raises(OperationTimeout):
            future.get(5)
        with pytest.raises(OperationTimeout):
            future.get(5)  # (the same error again: counted once)
    errors, timeouts = _errors(db)
    assert (errors - before[0], timeouts - before[1]) == (1, 1)


def test_a_write_that_times_out_counts_one_error(db: atlas.Storage) -> None:
    before = _errors(db)
    with _writer_held(db), pytest.raises(OperationTimeout):
        db.write("INSERT INTO tasks(title) VALUES ('late')", timeout=0.2)
    errors, timeouts = _errors(db)
    assert (errors - before[0], timeouts - before[1]) == (1, 1)


# -- the storage's errors: a queued read's error and timeout are reported once --------


def test_a_queued_read_that_fails_counts_one_error_as_a_query_does(db: atlas.Storage) -> None:
    before = _errors(db)
    with pytest.raises(SQLError):
        db.submit_query("SELECT nope FROM tasks").get(5)
    with pytest.raises(SQLError):
        db.query("SELECT nope FROM tasks")
    errors, _ = _errors(db)
    assert errors - before[0] == 2


def test_a_queued_read_that_times_out_counts_one_error(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    db = open_storage(readers=1, max_readers=1)
    before = _errors(db)
    with db.pool.acquire(timeout=5):  # the only reader connection: the read waits
        future = db.submit_query("SELECT 1", timeout=0.2)
        with pytest.raises(OperationTimeout):
            future.get(5)
        with pytest.raises(OperationTimeout):
            db.query("SELECT 2", timeout=0.2)
    errors, timeouts = _errors(db)
    assert (errors - before[0], timeouts - before[1]) == (2, 2)


def test_a_call_refused_for_a_full_mailbox_or_read_queue_counts_one_error(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    """Refused at the call (no room behind a busy writer, or in the read queue), a
    future API call raised or failed its future without being counted."""
    db = open_storage(mailbox_size=2, readers=1, max_readers=1, cache=False)
    db.execute("CREATE TABLE t(x)")
    with _writer_held(db):
        queued = [db.writer.execute("INSERT INTO t VALUES (1)") for _ in range(2)]
        before = _errors(db)
        with pytest.raises(OperationTimeout, match="mailbox is full"):
            db.writer.execute("INSERT INTO t VALUES (2)", timeout=0.1)
        with pytest.raises(OperationTimeout, match="mailbox is full"):
            db.writer.write_all([("INSERT INTO t VALUES (3)", None)], timeout=0.1)
        assert _errors(db) == (before[0] + 2, before[1] + 2)
    for future in queued:
        future.get(10)
    with db.pool.connection():  # the only reader lent: queued reads wait
        waiting = [db.submit_query("SELECT 1", timeout=10) for _ in range(2)]
        before = _errors(db)
        refused = db.submit_query("SELECT 1", timeout=10)
        with pytest.raises(OperationTimeout, match="read queue is full"):
            refused.get(1)
        assert _errors(db) == (before[0] + 1, before[1] + 1)
    for future in waiting:
        future.get(10)


# -- bytes: a sampled run stands for runs made, not for runs to come -------------------


@pytest.mark.parametrize("runs", [5, 6, 40, 69])
def test_bytes_transferred_counts_the_runs_made(
    open_storage: Callable[..., atlas.Storage], runs: int
) -> None:
    # Past its first runs a statement is sampled: one run in SAMPLE_EVERY is measured
    # and stands for the others. It stood for the 63 runs after it, so five runs of a
    # statement counted 68 (13.6 times the bytes); now it stands for those before it.
    db = open_storage(cache=False, readers=1, max_readers=1)
    db.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, v BLOB)")
    blob = b"x" * 10_000
    db.write("INSERT INTO blobs(id, v) VALUES (1, ?)", [blob])

    def grew(role: str, run: Callable[[], object]) -> int:
        before = sum(m.bytes_transferred for m in _metrics(db, role))
        for _ in range(runs):
            run()
        return sum(m.bytes_transferred for m in _metrics(db, role)) - before

    writes = grew("writer", lambda: db.write("INSERT INTO blobs(v) VALUES (?)", [blob]))
    pairs = grew("writer", lambda: db.write_all([("INSERT INTO blobs(v) VALUES (?)", [blob])]))
    reads = grew("reader", lambda: db.query("SELECT v FROM blobs WHERE id = ?", [1]))
    for name, counted in (("write", writes), ("write_all", pairs), ("read", reads)):
        # Never more than the runs made; short by the runs since the last sample (a
        # statement's own first five are each measured; the writer's runs of queued
        # writes are sampled by call, at random, so only the bound holds there).
        assert 0 < counted <= runs * 10_008, (name, counted)
        if name != "write_all":
            assert counted >= min(runs, 5) * 10_000, (name, counted)


def _metrics(db: atlas.Storage, role: str) -> list[ConnectionMetrics]:
    return [c.metrics for c in db.connections() if c.role.startswith(role)]

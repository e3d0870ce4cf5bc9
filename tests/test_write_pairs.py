"""``TrackedConnection.write_pairs``: a ``write_all``'s statements run by the writer."""

from __future__ import annotations

import random
import threading

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors.connection import _TIME_FIRST, SAMPLE_EVERY, TrackedConnection
from atlas_actors.errors import ActorCrashedError, ConstraintError, ValidationError

INSERT = "INSERT INTO t(a) VALUES (?)"
UPDATE = "UPDATE t SET a = a + 1 WHERE id <= ?"


def _connection() -> TrackedConnection:
    connection = TrackedConnection(apsw.Connection(":memory:"), "writer")
    connection.connection.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a, u UNIQUE)")
    return connection


def test_write_pairs_reports_what_write_reports_on_every_run() -> None:
    # The first runs of a statement go through write(), later ones are run in place:
    # the results must not tell the two apart.
    pairs, single = _connection(), _connection()
    for n in range(3 * SAMPLE_EVERY):
        statements = [(INSERT, [n]), (UPDATE, [0]), (UPDATE, [n + 1])]
        expected = [single.write(sql, params) for sql, params in statements]
        assert pairs.write_pairs(statements) == expected, n
    assert pairs.queries == single.queries == 9 * SAMPLE_EVERY


def test_write_pairs_hands_what_it_does_not_run_itself_to_write() -> None:
    connection = _connection()
    for n in range(2 * _TIME_FIRST):  # past the first runs of the INSERT
        connection.write_pairs([(INSERT, [n])])
    results = connection.write_pairs(
        [
            (INSERT, [100]),
            ("INSERT INTO t(a) VALUES (?) RETURNING id", [101]),
            ("WITH x(v) AS (SELECT 102) INSERT INTO t(a) SELECT v FROM x", None),
            (UPDATE, [1000]),
        ]
    )
    rowids = [result.lastrowid for result in results]
    assert rowids == [2 * _TIME_FIRST + 1, 2 * _TIME_FIRST + 2, 2 * _TIME_FIRST + 3, None]
    assert results[1].rows == ((2 * _TIME_FIRST + 2,),)
    assert results[3].rowcount == 2 * _TIME_FIRST + 3
    before = connection.queries
    with pytest.raises(ValidationError, match="controls a transaction"):
        connection.write_pairs([(INSERT, [200]), ("COMMIT", None)])
    assert connection.queries == before + 1  # the INSERT ran (its caller undoes it)


def test_write_pairs_counts_more_than_256_changes_and_fails_typed_counting_the_run() -> None:
    connection = _connection()
    connection.connection.execute(
        "WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < 300) "
        "INSERT INTO t(a) SELECT v FROM n"
    )
    for _ in range(2 * _TIME_FIRST):
        assert connection.write_pairs([(UPDATE, [1000])])[0].rowcount == 300
    unique = "INSERT INTO t(u) VALUES (?)"
    for n in range(2 * _TIME_FIRST):
        connection.write_pairs([(unique, [n])])
    before = connection.metrics()
    with pytest.raises(ConstraintError):
        connection.write_pairs([(UPDATE, [1000]), (unique, [0])])  # run in place: taken
    after = connection.metrics()
    assert after.queries - before.queries == 2  # the UPDATE and the failed INSERT
    assert after.errors - before.errors == 1


def test_write_pairs_times_calls_at_random_so_alternating_calls_are_each_measured() -> None:
    # Calls alternate between an INSERT sending 8 bytes and an UPDATE sending none.
    # With a fixed period of SAMPLE_EVERY (even) every timed call would be the same
    # kind, and the bytes estimate would be twice or none of the truth.
    connection = _connection()
    random.seed(20261127)  # the timed calls are drawn at random: the same ones each run
    calls = 400 * SAMPLE_EVERY
    for n in range(calls // 2):
        connection.write_pairs([(INSERT, [n])])
        connection.write_pairs([("UPDATE t SET a = a WHERE id = 1", None)])
    # ~400 timed calls, half of them INSERTs at random (about 6% off at one standard
    # deviation); a fixed period would time only one kind: twice the bytes, or none.
    assert connection.metrics().bytes_transferred == pytest.approx(8 * calls // 2, rel=0.15)
    assert connection.metrics().latency > 0


def test_an_op_the_writer_dies_of_fails_as_maybe_applied_and_the_writer_restarts(
    db: atlas.Storage,
) -> None:
    # A unit of work that closes the writer's connection: the writer's own RELEASE of
    # the unit's savepoint then fails, outside the unit, and the writer dies of it. The
    # unit was running: its caller must hear "may have", not wait it out.
    def closes(connection: apsw.Connection) -> None:
        connection.close(True)

    with pytest.raises(ActorCrashedError, match="may or may not have taken effect"):
        db.writer.run(closes).get(5)
    assert db.write("INSERT INTO tasks(title) VALUES ('after')").rowcount == 1
    assert [row.title for row in db.query("SELECT title FROM tasks")] == ["after"]


def test_write_alls_from_many_threads_land_once_with_their_own_results(
    open_storage: object,
) -> None:
    # Small batches and a small mailbox: the writer's runs of queued write_alls end
    # at the batch bound, and senders wait for room while it takes them.
    db: atlas.Storage = open_storage(max_batch_size=8, mailbox_size=4)  # type: ignore[operator]
    db.execute("CREATE TABLE log(thread INTEGER, seq INTEGER, UNIQUE (thread, seq))")
    db.execute("CREATE TABLE seen(thread INTEGER PRIMARY KEY, n INTEGER)")
    threads, per_thread = 24, 60
    insert = "INSERT INTO log(thread, seq) VALUES (?, ?)"
    bump = "UPDATE seen SET n = n + 1 WHERE thread = ?"
    db.write_many("INSERT INTO seen(thread, n) VALUES (?, 0)", [[t] for t in range(threads)])
    wrong: list[object] = []

    def work(thread: int) -> None:
        for seq in range(per_thread):
            results = db.write_all([(insert, [thread, seq]), (bump, [thread])])
            row = db.query("SELECT thread, seq FROM log WHERE rowid = ?", [results[0].lastrowid])
            if row != [(thread, seq)] or results[1][:2] != (1, None):
                wrong.append((thread, seq, results, row))

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not wrong
    assert db.query("SELECT count(*) FROM log") == [(threads * per_thread,)]
    assert db.query("SELECT min(n), max(n) FROM seen") == [(per_thread, per_thread)]
    assert db.writer.stats().max_batch <= 8

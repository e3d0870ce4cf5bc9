"""The deadlock guard: a call that would wait on itself fails at once."""

from __future__ import annotations

import time

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors.errors import DeadlockError


def test_a_function_in_the_writer_that_writes_through_the_storage_gets_deadlock_error(
    db: atlas.Storage,
) -> None:
    def nested(connection: apsw.Connection) -> None:
        db.write("INSERT INTO tasks(title) VALUES ('inner')")

    started = time.monotonic()
    with pytest.raises(DeadlockError, match="use the connection it was given"):
        db.run_in_writer(nested)
    assert time.monotonic() - started < 1.0  # at once, not after a timeout
    assert db.write("INSERT INTO tasks(title) VALUES ('outer')").rowcount == 1


def test_waiting_on_a_writer_future_inside_the_writer_gets_deadlock_error(
    db: atlas.Storage,
) -> None:
    def waits(connection: apsw.Connection) -> None:
        db.writer.execute("INSERT INTO tasks(title) VALUES ('x')").get(timeout=5)

    with pytest.raises(DeadlockError) as caught:
        db.run_in_writer(waits)
    assert caught.value.cycle[0] == "writer thread"


def test_reads_from_inside_the_writer_are_allowed(db: atlas.Storage) -> None:
    db.write("INSERT INTO tasks(title) VALUES ('a')")
    assert db.run_in_writer(lambda c: db.query("SELECT title FROM tasks")) == [("a",)]

"""Exceptions that are no ``Exception``, and failing done-callbacks, inside the writer.

User code runs in the writer's thread: ``run_in_writer`` functions and done-callbacks of
the futures it resolves. pykka stops *every* actor of the process when a
``BaseException`` that is no ``Exception`` escapes one, after a graceful ``on_stop``
(which would commit the batch, half a function's work with it), and the callers wait
until their deadline. None of that may happen: such a function fails its own call,
a callback cannot keep a batch from being acknowledged, and anything else that
escapes is a crash of the writer alone, which the supervisor restarts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors.future import Future
from tests.helpers import gate_writer, wait_until


class Bail(BaseException):
    """What a test framework's ``pytest.fail()`` or a cancellation raises: no Exception."""


def _storage(open_storage: Callable[..., atlas.Storage], **options: object) -> atlas.Storage:
    db = open_storage(**options)
    db.execute("CREATE TABLE t(a INTEGER)")
    return db


def _restarts(db: atlas.Storage, role: str = "writer") -> int:
    return next(c.restarts for c in db.supervisor.status().children if c.role == role)


@pytest.mark.parametrize("raised", [SystemExit("bye"), Bail("stop")], ids=["SystemExit", "own"])
def test_a_function_raising_a_base_exception_fails_its_own_call_only(
    open_storage: Callable[..., atlas.Storage], raised: BaseException
) -> None:
    db = _storage(open_storage)

    def insert_then_raise(connection: apsw.Connection) -> None:
        connection.execute("INSERT INTO t(a) VALUES (1)")
        raise raised

    _, release = gate_writer(db)
    before = db.writer.execute("INSERT INTO t(a) VALUES (0)")  # in the same batch
    failing = db.writer.run(insert_then_raise, timeout=5)
    after = db.writer.execute("INSERT INTO t(a) VALUES (2)")
    release.set()
    started = time.monotonic()
    with pytest.raises(type(raised)) as caught:
        failing.get()
    assert caught.value is raised  # the caller gets the original, as concurrent.futures does
    assert time.monotonic() - started < 2  # at once, not at the deadline
    assert before.get().rowcount == 1 and after.get().rowcount == 1
    assert [a for (a,) in db.query("SELECT a FROM t ORDER BY a")] == [0, 2]  # its insert undone
    assert db.write("INSERT INTO t(a) VALUES (3)").rowcount == 1
    assert _restarts(db) == 0  # nothing crashed


def test_a_failing_done_callback_is_logged_and_every_write_of_the_batch_acknowledged(
    open_storage: Callable[..., atlas.Storage], caplog: pytest.LogCaptureFixture
) -> None:
    db = _storage(open_storage)
    _, release = gate_writer(db)
    futures = [db.writer.execute("INSERT INTO t(a) VALUES (?)", [n]) for n in range(6)]

    def explode(_: Future[object]) -> None:
        raise RuntimeError("a callback that fails")

    futures[1].add_done_callback(explode)
    with caplog.at_level(logging.ERROR, logger="atlas_actors.future"):
        release.set()
        assert [f.get(5).rowcount for f in futures] == [1] * 6
        deadline = time.monotonic() + 5
        while "a callback that fails" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
    assert "a callback that fails" in caplog.text
    assert _restarts(db) == 0


def test_a_base_exception_escaping_the_writer_restarts_it_alone(
    open_storage: Callable[..., atlas.Storage], tmp_path: Path
) -> None:
    # A done-callback raising one, after its batch committed: every write of the batch
    # is acknowledged, the writer is restarted, and the process's other actors (another
    # storage's) keep running.
    db = _storage(open_storage)
    other = _storage(open_storage, path=tmp_path / "other.db")
    _, release = gate_writer(db)
    futures = [db.writer.execute("INSERT INTO t(a) VALUES (?)", [n]) for n in range(6)]

    def bail(_: Future[object]) -> None:
        raise Bail("from a callback")

    futures[0].add_done_callback(bail)
    release.set()
    assert [f.get(5).rowcount for f in futures] == [1] * 6
    deadline = time.monotonic() + 5
    while _restarts(db) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _restarts(db) == 1
    assert db.write("INSERT INTO t(a) VALUES (6)").rowcount == 1
    assert [a for (a,) in db.query("SELECT a FROM t ORDER BY a")] == list(range(7))
    assert other.write("INSERT INTO t(a) VALUES (1)").rowcount == 1
    assert _restarts(other) == 0


def test_a_base_exception_in_a_write_rolls_its_batch_back(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    # Raised while a write_all runs (here by a SQL function the writer calls back): the
    # writer dies of it. Its batch, half that write_all's statements with it, is rolled
    # back, not committed by a graceful stop; the other writes of the batch run again.
    db = _storage(open_storage)

    def fragile(value: int) -> int:
        if value == 99:
            raise Bail("in a SQL function")
        return value

    def register(connection: apsw.Connection) -> None:
        connection.create_scalar_function("fragile", fragile, 1)

    db.run_in_writer(register)
    _, release = gate_writer(db)
    before = db.writer.execute("INSERT INTO t(a) VALUES (1)")
    half = db.writer.write_all(
        [("INSERT INTO t(a) VALUES (2)", None), ("INSERT INTO t(a) VALUES (fragile(99))", None)]
    )
    release.set()
    with pytest.raises(atlas.errors.AtlasError):
        half.get(5)
    assert before.get(5).rowcount == 1  # replayed by the next incarnation
    rows = [a for (a,) in db.query("SELECT a FROM t ORDER BY a")]
    assert rows == [1], rows  # 2 was never committed on its own
    assert _restarts(db) == 1


def test_every_done_callback_of_a_batch_runs_even_after_one_raises_a_base_exception(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    db = _storage(open_storage)
    _, release = gate_writer(db)
    futures = [db.writer.execute("INSERT INTO t(a) VALUES (?)", [n]) for n in range(3)]
    ran: list[int] = []

    def bail(_: Future[object]) -> None:
        raise Bail("the first callback")

    futures[0].add_done_callback(bail)
    futures[0].add_done_callback(lambda _: ran.append(0))  # same future, after it
    futures[1].add_done_callback(lambda _: ran.append(1))
    futures[2].add_done_callback(lambda _: ran.append(2))
    release.set()
    assert [f.get(5).rowcount for f in futures] == [1, 1, 1]
    assert wait_until(lambda: sorted(ran) == [0, 1, 2]), ran
    assert wait_until(lambda: _restarts(db) == 1)  # then the writer died of it

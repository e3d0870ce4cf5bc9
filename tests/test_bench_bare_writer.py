"""The writes benchmark's ``bare-writer`` yardstick: every acknowledged operation lands once."""

from __future__ import annotations

import sqlite3
import sys
import threading
from pathlib import Path

import apsw
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from _common import CellResult
from writes import SCHEMA, BareWriterPeer, judge

from tests.helpers import run_in_threads


def _prepared(tmp_path: Path) -> Path:
    path = tmp_path / "bare.db"
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.executescript(SCHEMA)
    connection.close()
    return path


def test_many_threads_each_operation_lands_once(tmp_path: Path) -> None:
    path = _prepared(tmp_path)
    peer = BareWriterPeer()
    peer.open(path, "NORMAL")
    done = [0] * 8

    def worker(index: int) -> None:
        op, finish = peer.thread_op(index)
        for _ in range(50):
            op()
            done[index] += 1
        finish()

    run_in_threads(8, worker)
    peer.close()
    assert done == [50] * 8
    connection = sqlite3.connect(path)
    assert connection.execute("SELECT count(*) FROM tasks").fetchone() == (400,)
    assert connection.execute("SELECT value FROM counters").fetchone() == (400,)
    connection.close()


def test_a_failing_operation_fails_alone(tmp_path: Path) -> None:
    path = _prepared(tmp_path)
    peer = BareWriterPeer()
    peer.open(path, "NORMAL")
    try:
        boxes: list[list[apsw.Error | None]] = [[], [], []]
        locks = [threading.Lock() for _ in boxes]
        for lock in locks:
            lock.acquire()
        good = ("INSERT INTO tasks(worker, title, created) VALUES (?, ?, ?)", (1, "a", 0.0))
        bad = ("INSERT INTO tasks(id, worker, title, created) VALUES (1, 1, NULL, 0)", None)
        peer._run_batch(
            [
                ([good], locks[0], boxes[0]),
                ([bad], locks[1], boxes[1]),
                ([good], locks[2], boxes[2]),
            ]
        )
        assert boxes[0] == [None] and boxes[2] == [None]
        assert isinstance(boxes[1][0], apsw.ConstraintError)
        assert all(not lock.locked() for lock in locks)
    finally:
        peer.close()
    connection = sqlite3.connect(path)
    assert connection.execute("SELECT count(*) FROM tasks").fetchone() == (2,)
    connection.close()


def test_the_failure_is_raised_and_the_operation_undone(tmp_path: Path) -> None:
    path = _prepared(tmp_path)
    peer = BareWriterPeer()
    peer.open(path, "NORMAL")
    op, _ = peer.thread_op(0)
    op()
    sqlite3.connect(path).execute("DROP TABLE counters").connection.commit()
    with pytest.raises(apsw.SQLError):
        op()
    peer.close()
    connection = sqlite3.connect(path)
    # The failed operation's INSERT was undone with it (its savepoint).
    assert connection.execute("SELECT count(*) FROM tasks").fetchone() == (1,)
    connection.close()


def test_the_writes_target_names_the_yardstick_and_atlas_share_of_it() -> None:
    cells = [
        CellResult("atlas", 64, ops_per_s=36_000.0),
        CellResult("conn-per-thread", 64, ops_per_s=50_000.0),
        CellResult("bare-writer", 64, ops_per_s=43_000.0),
    ]
    (normal, _) = judge("normal", cells)
    assert normal.passed is False
    assert "; bare-writer 0.860x, atlas 84% of it" in normal.measured
    (without, _) = judge("normal", cells[:2])
    assert "bare-writer" not in without.measured

"""A lease request made while another transaction holds the lease skips the mailbox.

It joins the writer's lease queue from the requesting thread
(``WriterActor.take_lease_request``), so the writer thread is not woken once per
transaction; the holder hands the lease straight on. It must not overtake anything its
own thread sent to the writer before it: a write still on its way runs first.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import atlas_actors as atlas
from atlas_actors.actors import writer as writer_module
from atlas_actors.actors.writer_ops import LeaseRequest, WriteOp
from tests.helpers import wait_until


@pytest.fixture
def db(tmp_path: Path) -> Any:
    with atlas.open(tmp_path / "intake.db", cache=False) as storage:
        storage.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        yield storage


def _writer(db: atlas.Storage) -> writer_module.WriterActor:
    actor = db._writer_actor()
    assert actor is not None
    return actor


def _waiting(writer: writer_module.WriterActor) -> int:
    """Messages waiting for the writer: its lease queue, its stash and its mailbox."""
    return len(writer._lease_queue) + len(writer._stash) + writer.mailbox.qsize()


def test_a_request_during_a_lease_skips_the_writer_thread(
    db: atlas.Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: list[str] = []
    handle = writer_module.WriterActor._handle_receive

    def noting(self: writer_module.WriterActor, message: Any) -> Any:
        if isinstance(message, LeaseRequest) and self._lease is not None:
            received.append(f"transaction {message.tx_id}")
        return handle(self, message)

    monkeypatch.setattr(writer_module.WriterActor, "_handle_receive", noting)
    writer = _writer(db)
    handovers = db.writer.stats().handovers
    outcome: list[object] = []

    def second() -> None:
        with db.transaction() as tx:
            tx.execute("INSERT INTO t(v) VALUES ('second')")
        outcome.append("committed")

    with db.transaction() as tx:
        tx.execute("INSERT INTO t(v) VALUES ('first')")
        thread = threading.Thread(target=second)
        thread.start()
        assert wait_until(lambda: len(writer._lease_queue) == 1)
    thread.join(10)

    assert outcome == ["committed"]
    assert received == []  # the writer thread never saw the request
    assert db.writer.stats().handovers == handovers + 1  # the holder passed the lease on
    assert [r.v for r in db.query("SELECT v FROM t ORDER BY id")] == ["first", "second"]


def test_a_request_does_not_overtake_its_own_threads_write(
    db: atlas.Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer has taken the thread's write but not yet queued it behind the lease
    (a thread switch there): the thread's transaction, begun after the write was sent,
    must still see it."""
    in_hand = threading.Event()
    let_go = threading.Event()
    handle = writer_module.WriterActor._handle_receive

    def slow(self: writer_module.WriterActor, message: Any) -> Any:
        if isinstance(message, WriteOp) and "'early'" in message.statement:
            in_hand.set()
            let_go.wait(10)
        return handle(self, message)

    monkeypatch.setattr(writer_module.WriterActor, "_handle_receive", slow)
    writer = _writer(db)
    seen: list[object] = []

    def later() -> None:
        early = db.writer.execute("INSERT INTO t(v) VALUES ('early')")  # not waited for
        assert in_hand.wait(10)
        with db.transaction() as tx:
            seen.append(tx.query("SELECT count(*) AS n FROM t WHERE v = 'early'")[0].n)
        early.get()

    with db.transaction() as tx:
        tx.execute("INSERT INTO t(v) VALUES ('holder')")
        thread = threading.Thread(target=later)
        thread.start()
        # The write is in the writer's hands, the request queued somewhere behind it.
        assert wait_until(lambda: in_hand.is_set() and _waiting(writer) >= 1)
        let_go.set()  # (the commit below waits for the writer, which needs to go on)
    thread.join(10)

    assert seen == [1]

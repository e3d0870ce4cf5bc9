"""A thread's messages reach the writer in the order it sent them, leases included.

docs/isolation.md: until a lease comes back, every other write waits in the writer, in
order. A lease request must not overtake a write its own thread sent before it, even
while the writer has that write in hand: the thread's transaction sees the write. (A
request that skipped the mailbox while a lease was out, tried in 0d3b242 and reverted,
broke this unless the thread's own earlier ops were checked.)
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import atlas_actors as atlas
from atlas_actors.actors import writer as writer_module
from atlas_actors.actors.writer_ops import WriteOp
from tests.helpers import wait_until


@pytest.fixture
def db(tmp_path: Path) -> Any:
    with atlas.open(tmp_path / "order.db", cache=False) as storage:
        storage.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        yield storage


def _writer(db: atlas.Storage) -> writer_module.WriterActor:
    actor = db._writer_actor()
    assert actor is not None
    return actor


def _waiting(writer: writer_module.WriterActor) -> int:
    """Messages waiting for the writer: its lease queue, its stash and its mailbox."""
    return len(writer._lease_queue) + len(writer._stash) + writer.mailbox.qsize()


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

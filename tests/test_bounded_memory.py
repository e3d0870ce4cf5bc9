"""Guarantee 7: what grows with use is bounded, and overload gives backpressure.

Real storages on real files; the bounds are lowered where reaching the real ones would
take too long (the code reads them at each use).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pykka
import pytest

import atlas_actors as atlas
from atlas_actors import connection as connection_module
from atlas_actors.actors import pool as pool_module
from atlas_actors.actors.base import Mailbox, Op
from atlas_actors.actors.cache import CacheActor
from atlas_actors.actors.writer import WriterActor
from atlas_actors.cache import manager as manager_module
from atlas_actors.config import MAX_READERS
from atlas_actors.errors import ConfigError, OperationTimeout, ValidationError
from atlas_actors.future import Future
from atlas_actors.memo import MAX_MEMO_CHARS, TextMemo
from tests.helpers import wait_until


def test_reads_of_ever_new_texts_keep_the_pools_name_cache_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An application that formats values into its SQL makes a new text per read."""
    monkeypatch.setattr(connection_module, "_MAX_COUNTED", 50)
    monkeypatch.setattr(pool_module, "_MAX_COUNTED", 50)
    with atlas.open(tmp_path / "a.db", cache=False) as db:
        db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        db.write("INSERT INTO t(v) VALUES ('x')")
        for n in range(300):
            rows = db.query(f"SELECT v, {n} AS n FROM t")
            assert [(row.v, row.n) for row in rows] == [("x", n)]  # (named: learned or not)
        assert len(db.pool._names) <= 50


def test_long_texts_are_bounded_in_characters_not_only_in_number(tmp_path: Path) -> None:
    """What is remembered per text was bounded in texts only: 20,000 distinct texts of
    20 KB (values formatted into a bulk INSERT, say) held 400 MB, and the memory cache
    counted its results' bytes, not their keys': 40,000 short results of long reads
    held 1.6 GB under a 64 MiB bound."""
    pad = "x" * 20_000
    capacity = 1 << 20
    with atlas.open(tmp_path / "a.db", cache_memory_bytes=capacity) as db:
        db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        for n in range(300):  # 6 million characters of distinct texts each way
            db.write(f"INSERT INTO t(v) VALUES ({n}) -- {pad}")
            for _ in range(2):  # (admitted to the cache on the second miss)
                assert db.query(f"SELECT v FROM t WHERE id = 1 -- {n} {pad}") == [(0,)]
        writer = db._writer_actor()
        assert writer is not None and writer.connection is not None
        memos: list[dict[str, object]] = [
            db.transactions.statements.known,
            writer.connection._written,
            db.pool._names,
            db.cache._costs,
            db.cache._reuse,
            connection_module._write_kinds,
            connection_module._schema_statements,
            connection_module._writer_pragma_verdicts,
        ]
        for memo in memos:
            assert sum(map(len, memo)) <= MAX_MEMO_CHARS
        l1 = db.cache.l1
        assert l1 is not None and l1.bytes <= capacity and len(l1) < capacity // 20_000


def test_reads_of_ever_new_texts_keep_the_caches_cost_table_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager_module, "_TRACKED_STATEMENTS", 50)
    with atlas.open(tmp_path / "a.db", cache=True) as db:
        db.execute("CREATE TABLE t(v)")
        for n in range(300):
            assert db.query(f"SELECT {n} AS n FROM t") == []
        assert len(db.cache._costs) <= 50


@contextmanager
def _lease_held(db: atlas.Storage, value: object) -> Iterator[threading.Thread]:
    """A transaction in another thread writes ``value`` into t and holds the writer lease
    until the block ends; it commits then (the thread is joined)."""
    holding, done = threading.Event(), threading.Event()

    def hold_the_lease() -> None:
        with db.transaction() as tx:
            tx.execute("INSERT INTO t VALUES (?)", [value])
            holding.set()
            done.wait(30)

    holder = threading.Thread(target=hold_the_lease)
    holder.start()
    assert holding.wait(10)
    try:
        yield holder
    finally:
        done.set()
        holder.join(10)


def test_writes_queued_behind_a_transaction_meet_backpressure(tmp_path: Path) -> None:
    """While a transaction holds the writer lease, the writes that wait behind it count
    against ``mailbox_size``: a sender waits for room (then times out, not applied)
    instead of piling writes up in memory. The lease comes back through all the same."""
    with atlas.open(tmp_path / "a.db", mailbox_size=10, cache=False) as db:
        db.execute("CREATE TABLE t(v)")
        with _lease_held(db, "tx") as holder:
            # Ten fill the bound (held by the writer behind the lease, or still queued) ...
            accepted = [
                db.writer.execute("INSERT INTO t VALUES (?)", [n], timeout=10) for n in range(10)
            ]
            writer = db._writer_actor()
            assert writer is not None
            assert wait_until(lambda: len(writer._stash) == 10)
            # ... and the next senders wait for room, then give up: nothing was queued.
            for n in range(5):
                with pytest.raises(OperationTimeout, match="mailbox is full") as refused:
                    db.writer.execute("INSERT INTO t VALUES (?)", [100 + n], timeout=0.1)
                assert refused.value.applied is False
            assert len(writer._stash) == 10
        # The transaction committed: its return is never held up by the bound.
        assert not holder.is_alive()
        for future in accepted:
            future.get(10)
        count = db.query("SELECT count(*) AS n FROM t")[0].n
        assert count == 1 + len(accepted)


def test_writes_given_up_behind_a_transaction_take_no_room_and_are_no_queue(
    tmp_path: Path,
) -> None:
    """Writes and lease requests that timed out behind a lease stayed held until it
    ended: the next write was refused as "the mailbox is full" while nothing waited,
    and transactions.status() counted them as queued, their wait growing."""
    with atlas.open(tmp_path / "a.db", mailbox_size=8, cache=False) as db:
        db.execute("CREATE TABLE t(v)")
        with _lease_held(db, "tx"):
            gave_up = [
                db.writer.execute("INSERT INTO t VALUES (?)", [n], timeout=0.2) for n in range(8)
            ]
            for future in gave_up:
                with pytest.raises(OperationTimeout) as caught:
                    future.get()
                assert caught.value.applied is False
            assert db.transactions.status().queued == 0
            waits = db.writer.execute("INSERT INTO t VALUES ('after')", timeout=10)  # room
            assert wait_until(lambda: db.transactions.status().queued == 1)
        assert waits.get(10).rowcount == 1
        assert sorted(r.v for r in db.query("SELECT v FROM t")) == ["after", "tx"]


def test_writes_given_up_behind_a_lease_do_not_pile_up_in_the_writer(tmp_path: Path) -> None:
    """Given up, they took no room in the bound, but the writer kept each until the
    lease ended: 6,500 held in 3 s against a bound of 50 (memory without limit)."""
    with atlas.open(tmp_path / "a.db", mailbox_size=20, cache=False) as db:
        db.execute("CREATE TABLE t(v)")
        with _lease_held(db, -1):
            writer = db._writer_actor()
            assert writer is not None
            sent, most_held = [], 0
            for n in range(400):
                sent.append(db.writer.execute("INSERT INTO t VALUES (?)", [n], timeout=0.01))
                most_held = max(most_held, len(writer._stash))
                time.sleep(0.001)
            assert most_held <= 2 * 20 + 1, most_held
        # (Their deadlines passed: get() would not wait for the writer's answer.)
        assert wait_until(lambda: all(future.done() for future in sent), timeout=10)
        applied = 0
        for future in sent:
            error = future.exception(0)
            if error is None:
                applied += 1
            else:  # (given up behind the lease: never applied)
                assert isinstance(error, OperationTimeout) and error.applied is False
        assert db.query("SELECT count(*) AS n FROM t")[0].n == 1 + applied


def test_ops_put_back_in_front_count_against_the_mailbox_bound() -> None:
    """When a lease ends, the writes held behind it go back in front of the mailbox: they
    were not counted there, so senders could queue another ``mailbox_size`` on top."""
    mailbox = Mailbox("writer", 3)

    def op(timeout: float) -> Op:
        return Op(Future(time.monotonic() + timeout, "write"), 0, None)

    mailbox.replay([op(10) for _ in range(3)])  # (as the writer's _release_stash does)
    with pytest.raises(OperationTimeout, match="mailbox is full"):
        mailbox.send(op(0.1))
    sent = threading.Thread(target=mailbox.send, args=(op(10),))
    sent.start()
    assert wait_until(lambda: mailbox._senders_waiting == 1)
    assert mailbox.take_nowait() is not None  # room for one: the waiting sender goes on
    sent.join(5)
    assert not sent.is_alive() and mailbox.qsize() == 3


def test_results_sent_to_the_disk_cache_stay_within_the_mailbox_bound(tmp_path: Path) -> None:
    """Each L2 store is a message holding a whole result: past the bound it is skipped."""
    with atlas.open(
        tmp_path / "a.db", cache=True, cache_disk_min_seconds=0.0, mailbox_size=5
    ) as db:
        db.execute("CREATE TABLE t(v)")
        db.write("INSERT INTO t VALUES (randomblob(20000))")
        cache_mailbox = _cache_actor(db).mailbox
        peak = 0
        for n in range(400):
            db.query(f"SELECT v, {n} FROM t")  # a new result to store each time
            db.query(f"SELECT v, {n} FROM t")
            peak = max(peak, cache_mailbox.qsize())
        assert peak <= 5 + 1


def _cache_actor(db: atlas.Storage) -> CacheActor:
    for ref in pykka.ActorRegistry.get_by_class(CacheActor):
        actor = ref._actor_weakref()  # type: ignore[attr-defined]
        if isinstance(actor, CacheActor) and actor.manager is db.cache:
            return actor
    raise AssertionError("no cache actor")


def test_the_pool_is_never_resized_past_its_bound(tmp_path: Path) -> None:
    with atlas.open(tmp_path / "a.db", cache=False) as db:
        with pytest.raises(ValidationError, match=f"at most {MAX_READERS} readers"):
            db.pool.resize(1_000_000)
        assert db.pool.status().total <= db.config.max_readers  # nothing started
        db.pool.resize(3)
        assert wait_until(lambda: db.pool.status().total == 3)
    with pytest.raises(ConfigError, match=f"at most {MAX_READERS}"):
        atlas.open(tmp_path / "b.db", readers=MAX_READERS + 1, max_readers=MAX_READERS + 1)


def test_a_new_writer_incarnation_starts_with_nothing_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An incarnation that died without its crash clean-up (forced here) leaves its held
    count behind: the next one starts from zero, or the bound would shrink for good."""
    with atlas.open(tmp_path / "a.db", mailbox_size=10, cache=False) as db:
        db.execute("CREATE TABLE t(v)")
        monkeypatch.setattr(WriterActor, "on_crash", lambda self, *_: self._close("crash"))
        db._writer_mailbox.held = 10  # what a dead incarnation holding ten writes counted
        restarts = db.supervisor.status().restarts
        db.supervisor.kill("writer")
        assert wait_until(lambda: db.supervisor.status().restarts > restarts)
        db.write("INSERT INTO t VALUES (1)", timeout=5)  # room: nothing is held now
        assert db.query("SELECT count(*) AS n FROM t")[0].n == 1


def test_a_text_forgotten_and_learned_again_counts_once() -> None:
    """The pool forgets a text whose columns changed and learns it again at its next read:
    counted twice, a memo filled up with nothing in it and took no new text again."""
    memo: TextMemo[int] = TextMemo(max_entries=10, max_chars=100)
    text = "x" * 60
    for _ in range(5):
        assert memo.remember(text, 1)
        memo.forget(text)
    memo.forget(text)  # not held: nothing happens
    assert memo.chars == 0
    assert memo.remember("y" * 100, 2)

"""Read your writes: once acknowledged, every later read from any thread sees a write."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

import atlas_actors as atlas


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
def test_reads_from_other_threads_see_every_acknowledged_write(
    open_storage: Callable[..., atlas.Storage], cache: bool
) -> None:
    """With the cache off, every read reaches a reader's snapshot: a read path that kept
    an old one (a BEGIN left open on the fast path) went unnoticed with the cache on,
    whose hits answer nearly every read."""
    db = open_storage(cache=cache)
    db.execute("CREATE TABLE counter(id INTEGER PRIMARY KEY, n INTEGER)")
    db.write("INSERT INTO counter VALUES (1, 0)")
    acknowledged = [0]
    stop = threading.Event()
    stale: list[tuple[int, int]] = []
    reads = [0]

    def writer() -> None:
        for n in range(1, 301):
            db.write("UPDATE counter SET n = ? WHERE id = 1", [n])
            acknowledged[0] = n  # published only after the acknowledgement
        stop.set()

    def reader(queued: bool) -> None:
        while not stop.is_set():
            floor = acknowledged[0]
            if queued:
                seen = db.submit_query("SELECT n FROM counter WHERE id = 1").get(5)[0].n
            else:
                seen = db.query("SELECT n FROM counter WHERE id = 1")[0].n
            reads[0] += 1
            if seen < floor:
                stale.append((seen, floor))

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader, args=(i % 2 == 0,)) for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not stale, stale[:5]
    assert reads[0] > 100


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
def test_a_connection_held_across_writes_sees_each_acknowledged_write(
    open_storage: Callable[..., atlas.Storage], cache: bool
) -> None:
    # A lease does not pin a snapshot: each statement starts a fresh read transaction.
    db = open_storage(cache=cache)
    db.execute("CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT)")
    with db.pool.connection() as lease:
        for i in range(20):
            db.write("INSERT INTO tasks(title) VALUES (?)", [f"t{i}"])
            assert lease.query("SELECT count(*) FROM tasks") == [(i + 1,)]

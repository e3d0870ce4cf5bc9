"""Other processes' commits: a reader never serves what one of them changed."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors.cache.changes import ExternalChanges


def test_the_drop_runs_before_the_new_count_is_published() -> None:
    # A reader that finds the counter equal to the published value takes the cache as
    # current; so while the drop for a change runs, the change must still show.
    value = [7]
    changes = ExternalChanges(lambda: value[0])
    value[0] += 1  # another process
    during: list[bool] = []
    assert changes.check(lambda: during.append(changes.moved()))
    assert during == [True]
    assert not changes.moved() and not changes.check(lambda: during.append(False))
    assert during == [True]


def test_a_failed_drop_leaves_the_change_to_the_next_check() -> None:
    value = [7]
    changes = ExternalChanges(lambda: value[0])
    value[0] += 1

    def fail() -> None:
        raise RuntimeError("drop failed")

    with pytest.raises(RuntimeError):
        changes.check(fail)
    assert changes.moved() and changes.check()


def test_no_reader_serves_data_older_than_a_commit_it_started_after(
    open_storage: Callable[..., atlas.Storage], db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another connection (for the wal-index, the same as another process) commits n, then
    # publishes n: a read that starts after seeing n published must see at least n. The
    # first reader to notice a commit drops the cache; the others must not be served
    # the old entry meanwhile. A drop that takes a while (a big memory level) and a tiny
    # switch interval make the window wide if there is one.
    db = open_storage(readers=4, cache_disk=False)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, n INTEGER)")
    db.write("INSERT INTO t VALUES (1, 0)")
    invalidate_all = db.cache.invalidate_all

    def slow_invalidate_all(reason: str) -> None:
        time.sleep(0.001)
        invalidate_all(reason)

    monkeypatch.setattr(db.cache, "invalidate_all", slow_invalidate_all)
    other = apsw.Connection(str(db_path))
    other.set_busy_timeout(5000)
    published = [0]
    stop = threading.Event()
    stale: list[tuple[int, int]] = []

    def read() -> None:
        while not stop.is_set():
            floor = published[0]
            got = int(db.query("SELECT n FROM t WHERE id = 1")[0][0])
            if got < floor:
                stale.append((floor, got))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    threads = [threading.Thread(target=read) for _ in range(6)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 2
        n = 0
        while time.monotonic() < deadline and not stale:
            n += 1
            other.execute("UPDATE t SET n = ? WHERE id = 1", (n,))  # committed: durable
            published[0] = n
            time.sleep(0.002)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        sys.setswitchinterval(interval)
        other.close()
    assert n > 10, "too few commits to tell"
    assert not stale, f"stale reads (committed, read): {stale[:5]}"

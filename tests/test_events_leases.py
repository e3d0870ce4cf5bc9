"""``checkout`` and ``checkin`` events come in pairs, one pair per lease of a connection.

Every read path is covered (``db.query`` with the cache on and off, ``db.submit_query``,
``pool.acquire()``, a transaction's pinned reader), and so is what happens to the pool
meanwhile (new readers joining, resize, recycling, health checks, a reader crashing):
for each connection id the events must alternate checkout, checkin, ... and end on a
checkin once the storage is quiet. Real storage files, real threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import atlas_actors as atlas
from atlas_actors.events import LifecycleEvent

OpenStorage = Callable[..., atlas.Storage]


class LeaseLog:
    """Records checkout/checkin events (from any thread) and checks that they pair up."""

    def __init__(self, db: atlas.Storage) -> None:
        self._lock = threading.Lock()
        self.seen: list[tuple[str, str | None]] = []
        self._off = [db.events.on(name, self._record) for name in ("checkout", "checkin")]

    def _record(self, event: LifecycleEvent) -> None:
        with self._lock:
            self.seen.append((event.name, event.connection_id))

    def stop(self) -> None:
        """Unsubscribe both handlers."""
        for off in self._off:
            off()

    def count(self, name: str) -> int:
        """How many ``name`` events were seen."""
        with self._lock:
            return sum(1 for seen, _ in self.seen if seen == name)

    def problems(self) -> list[str]:
        """What breaks the pairing so far: a checkin without a checkout, two checkouts..."""
        with self._lock:
            seen = list(self.seen)
        out: set[str] = set()
        problems: list[str] = []
        for index, (name, connection_id) in enumerate(seen):
            if connection_id is None:
                problems.append(f"#{index} {name} without a connection id")
            elif name == "checkout":
                if connection_id in out:
                    problems.append(f"#{index} {connection_id} checked out twice")
                out.add(connection_id)
            elif connection_id not in out:
                problems.append(f"#{index} {connection_id} checked in, never checked out")
            else:
                out.discard(connection_id)
        problems.extend(f"{connection_id} never checked in" for connection_id in sorted(out))
        return problems

    def assert_paired(self, timeout: float = 5.0) -> None:
        """Wait until every lease ended (queued reads check in just after they resolve)."""
        deadline = time.monotonic() + timeout
        while self.problems() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.problems() == []


@pytest.fixture
def leases() -> Iterator[list[LeaseLog]]:
    """LeaseLogs made in a test, unsubscribed at its end."""
    made: list[LeaseLog] = []
    yield made
    for log in made:
        log.stop()


def _watch(db: atlas.Storage, made: list[LeaseLog]) -> LeaseLog:
    log = LeaseLog(db)
    made.append(log)
    return log


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("path", ["query", "submit_query"])
def test_every_checkout_has_one_checkin_on_each_read_path(
    open_storage: OpenStorage, leases: list[LeaseLog], cache: bool, path: str
) -> None:
    # Subscribed at once: the readers are still starting and join the pool meanwhile,
    # which must not look like a checkin.
    db = open_storage(cache=cache, readers=2)
    log = _watch(db, leases)
    for i in range(6):
        sql = f"SELECT {i % 3}"  # misses, then (with the cache) hits
        if path == "query":
            assert db.query(sql)[0][0] == i % 3
        else:
            assert db.submit_query(sql).get(5)[0][0] == i % 3
    log.assert_paired()
    assert log.count("checkout") >= 1


def test_leases_pair_up_with_threads_reading_every_way_at_once(
    open_storage: OpenStorage, leases: list[LeaseLog], tmp_path: Path
) -> None:
    db = open_storage(cache=False, readers=2, max_readers=4)
    cached = open_storage(tmp_path / "cached.db", readers=1, max_readers=3)
    for storage in (db, cached):
        storage.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
        storage.write("INSERT INTO t VALUES (1, 10), (2, 20)")
    logs = [_watch(db, leases), _watch(cached, leases)]
    failures: list[BaseException] = []

    def reader(n: int) -> None:
        try:
            for i in range(150):
                key = 1 + (i + n) % 2
                storage = cached if i % 3 == 0 else db
                if i % 5 == 0:
                    assert storage.submit_query("SELECT v FROM t WHERE id = ?", [key]).get(5)
                elif i % 7 == 0:
                    with storage.pool.connection() as lease:
                        assert lease.execute("SELECT v FROM t WHERE id = ?", [key])
                else:
                    assert storage.query("SELECT v FROM t WHERE id = ?", [key])[0][0] == key * 10
        except BaseException as error:  # reported by the main thread
            failures.append(error)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == []
    for log in logs:
        log.assert_paired()
        assert log.count("checkout") > 0


def test_acquire_transactions_resize_and_health_checks_pair_up(
    open_storage: OpenStorage, leases: list[LeaseLog]
) -> None:
    db = open_storage(cache=False, readers=1, health_check_interval=0.05)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
    db.write("INSERT INTO t VALUES (1, 0)")
    log = _watch(db, leases)
    with db.pool.connection() as lease:
        assert lease.execute("SELECT v FROM t")[0][0] == 0
    lease = db.pool.acquire()
    lease.release()
    lease.release()  # harmless, and no second checkin
    with db.transaction(isolation="repeatable_read") as tx:
        assert tx.query("SELECT v FROM t")[0][0] == 0  # pins a reader for the snapshot
    db.pool.resize(3)  # two new connections join: neither a checkout nor a checkin
    deadline = time.monotonic() + 5
    while db.pool.status().total < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert db.pool.status().total == 3
    time.sleep(0.3)  # several health checks per connection
    for i in range(10):
        db.query("SELECT ?", [i])
    db.pool.resize(1)  # two retire
    for i in range(10):
        db.query("SELECT ?", [i])
    log.assert_paired()
    assert log.count("checkout") >= 23


def test_recycling_a_connection_checks_in_the_old_one_only(
    open_storage: OpenStorage, leases: list[LeaseLog]
) -> None:
    db = open_storage(cache=False, readers=1, recycle_after_queries=5)
    log = _watch(db, leases)
    recycled: list[dict[str, Any]] = []
    off = db.events.on("recycle", lambda e: recycled.append(dict(e.detail)))
    try:
        for i in range(23):
            assert db.query("SELECT ?", [i])[0][0] == i
        deadline = time.monotonic() + 5
        while len(recycled) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        off()
    assert len(recycled) >= 4
    log.assert_paired()
    assert log.count("checkout") == 23


def test_a_lease_on_a_reader_that_crashes_still_checks_in_once(
    open_storage: OpenStorage, leases: list[LeaseLog]
) -> None:
    db = open_storage(cache=False, readers=1)
    db.query("SELECT 1")  # the reader is up
    log = _watch(db, leases)
    lease = db.pool.acquire()
    role = lease.id.split("#")[0]
    db.supervisor.kill(role)
    time.sleep(0.2)  # the reader restarted; the lent connection closes when released
    lease.release()
    assert db.submit_query("SELECT 2").get(5)[0][0] == 2
    log.assert_paired()
    assert log.count("checkout") >= 2


def test_a_lease_taken_before_anyone_listened_ends_without_a_checkin(
    open_storage: OpenStorage, leases: list[LeaseLog]
) -> None:
    db = open_storage(cache=False, readers=1)
    lease = db.pool.acquire()
    log = _watch(db, leases)
    lease.release()
    db.query("SELECT 1")
    assert [name for name, _ in log.seen] == ["checkout", "checkin"]


def test_a_checkin_listener_alone_sees_every_lease_end(
    open_storage: OpenStorage,
) -> None:
    db = open_storage(cache=False, readers=1)
    checkins: list[str | None] = []
    off = db.events.on("checkin", lambda e: checkins.append(e.connection_id))
    try:
        db.query("SELECT 1")
        db.query("SELECT 1")
        db.submit_query("SELECT 1").get(5)
        deadline = time.monotonic() + 5
        while len(checkins) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
    finally:
        off()
    assert len(checkins) == 3
    db.query("SELECT 1")  # nobody listens: nothing recorded, nothing emitted
    assert len(checkins) == 3

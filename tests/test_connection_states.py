"""Connection states, each observed for real in ``db.connections()``.

Real files in tmp_path, real threads, real faults: a VFS that fails reads of the WAL
(:class:`~atlas_actors.faults.FaultyVFS`), injected crashes (``db.supervisor.kill``),
and opens of the database file held at a gate where a state must be caught mid-way.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors import ConnectionInfo, ConnectionState
from tests.helpers import GatedOpenVFS, wait_until

CONNECTING = ConnectionState.CONNECTING
IDLE = ConnectionState.IDLE
ACTIVE = ConnectionState.ACTIVE
RECYCLING = ConnectionState.RECYCLING
FAILED = ConnectionState.FAILED
CLOSED = ConnectionState.CLOSED


@pytest.fixture
def vfs() -> Iterator[GatedOpenVFS]:
    """Fails reads of the WAL on demand (``fail_reads``), holds opens at ``gate``."""
    gated = GatedOpenVFS()
    gated.only = "atlas.db-wal"
    yield gated
    gated.gate.set()
    gated.unregister()


def _open(path: Path, **options: Any) -> atlas.Storage:
    options = {"readers": 2, "max_readers": 2, "cache": False, "default_timeout": 10.0} | options
    return atlas.open(path / "atlas.db", **options)


def _role(db: atlas.Storage, role: str) -> list[tuple[str | None, ConnectionState]]:
    return [(c.id, c.state) for c in db.connections() if c.role == role]


def _serving(db: atlas.Storage, role: str) -> bool:
    """True once ``role`` has one connection, open and serving (IDLE or ACTIVE)."""
    found = _role(db, role)
    return len(found) == 1 and found[0][0] is not None and found[0][1] in (IDLE, ACTIVE)


def test_the_snapshot_covers_the_writer_and_every_reader_idle_or_active(tmp_path: Path) -> None:
    assert "ConnectionInfo" in atlas.__all__
    with _open(tmp_path) as db:
        db.execute("CREATE TABLE t(x)")
        db.write("INSERT INTO t VALUES (1)")
        assert db.query("SELECT x FROM t") == [(1,)]  # (this thread adopts a connection)
        infos = db.connections()
        assert all(isinstance(info, ConnectionInfo) for info in infos)
        assert [info.role for info in infos] == ["writer", "reader-0", "reader-1"]
        # A thread's adopted connection is no claim: between its reads it is IDLE.
        assert [info.state for info in infos] == [IDLE, IDLE, IDLE]
        assert {info.id for info in infos} == set(db.connection_metrics())
        writer = infos[0]
        assert writer.metrics.queries >= 2 and writer.last_used is not None

        lease = db.pool.acquire()
        assert lease.query("SELECT x FROM t") == [(1,)]
        assert lease.state is ACTIVE
        assert _role(db, lease.id.partition("#")[0]) == [(lease.id, ACTIVE)]
        others = [c for c in db.connections() if c.id != lease.id]
        assert all(c.state is IDLE for c in others)
        lent = next(c for c in db.connections() if c.id == lease.id)
        assert lent.metrics.queries >= 1
        lease_id = lease.id
        lease.release()
        assert next(c for c in db.connections() if c.id == lease_id).state is IDLE

        # The writer is ACTIVE while a write transaction is open on it.
        with db.transaction() as tx:
            tx.execute("INSERT INTO t VALUES (2)")
            assert _role(db, "writer")[0][1] is ACTIVE
        assert _role(db, "writer")[0][1] is IDLE


def test_a_reader_connection_is_active_exactly_while_a_read_claims_it(tmp_path: Path) -> None:
    # Not lent by acquire(): a read's own claim (what db.query takes too) makes it ACTIVE.
    with _open(tmp_path) as db:
        entered = threading.Event()
        go_on = threading.Event()
        used: list[str] = []

        def read(raw: apsw.Connection) -> None:
            used.extend(c.id for c in db.connections() if c.state is ACTIVE and c.id)
            entered.set()
            go_on.wait(5)

        reader = threading.Thread(target=db.pool.run_function, args=(read,))
        reader.start()
        assert entered.wait(5)
        assert len(used) == 1 and used[0].startswith("reader-")
        assert [c.state for c in db.connections() if c.id == used[0]] == [ACTIVE]
        go_on.set()
        reader.join(5)
        assert [c.state for c in db.connections() if c.id == used[0]] == [IDLE]


def test_a_reader_reopening_after_a_fault_is_connecting_until_it_serves(
    tmp_path: Path, vfs: GatedOpenVFS
) -> None:
    with _open(tmp_path, vfs=vfs.name, health_check_interval=0.05) as db:
        db.execute("CREATE TABLE t(x)")
        db.write("INSERT INTO t VALUES (1)")  # readers must read the WAL to see it
        before = {c.role: c.id for c in db.connections()}
        seen: list[tuple[str | None, list[tuple[str | None, ConnectionState]]]] = []
        db.events.on("recycle", lambda e: seen.append((e.connection_id, _role(db, e.role))))
        vfs.fail_reads = apsw.IOError
        db.write("INSERT INTO t VALUES (2)")  # (a reader that read the first has it cached)
        # Both lost their connections (failed checks) and retry with backoff: no id yet.
        assert wait_until(
            lambda: [c.state for c in db.connections()[1:]] == [CONNECTING, CONNECTING]
        )
        down = db.connections()[1:]
        assert [(c.id, c.metrics.queries, c.last_used) for c in down] == [(None, 0, None)] * 2
        assert db.pool.fault() is not None
        vfs.fail_reads = None
        assert wait_until(lambda: _serving(db, "reader-0") and _serving(db, "reader-1"))
        after = {c.role: c.id for c in db.connections()}
        assert after["reader-0"] != before["reader-0"] and after["writer"] == before["writer"]
        # The recycle event of a reopen comes once the fresh connection serves.
        assert wait_until(lambda: len(seen) == 2)
        for fresh, states in seen:
            assert states == [(fresh, IDLE)] or states == [(fresh, ACTIVE)]


def test_a_restarting_reader_is_connecting_until_its_next_incarnation_serves(
    tmp_path: Path,
) -> None:
    options = {"restart_backoff_initial": 0.3, "restart_backoff_jitter": 0.0}
    with _open(tmp_path, **options) as db:
        old = _role(db, "reader-0")[0][0]
        restarted = threading.Event()
        db.events.on("restart", lambda e: restarted.set())
        db.supervisor.kill("reader-0")
        assert wait_until(lambda: _role(db, "reader-0") == [(None, CONNECTING)])
        assert not restarted.is_set()
        assert restarted.wait(5)
        assert wait_until(lambda: _serving(db, "reader-0"))
        assert _role(db, "reader-0")[0][0] != old


def test_a_restarting_writer_is_connecting_until_its_next_incarnation_serves(
    tmp_path: Path,
) -> None:
    options = {"restart_backoff_initial": 0.3, "restart_backoff_jitter": 0.0}
    with _open(tmp_path, **options) as db:
        old = _role(db, "writer")[0][0]
        assert old is not None
        restarted = threading.Event()
        states_at_restart: list[list[tuple[str | None, ConnectionState]]] = []

        def on_restart(event: atlas.LifecycleEvent) -> None:
            states_at_restart.append(_role(db, "writer"))
            restarted.set()

        db.events.on("restart", on_restart)
        db.supervisor.kill("writer")
        assert wait_until(lambda: _role(db, "writer") == [(None, CONNECTING)])
        assert not restarted.is_set()  # (still in its backoff)
        assert restarted.wait(5)
        [(fresh, state)] = states_at_restart[0]
        assert fresh not in (None, old) and state is IDLE
        db.write("CREATE TABLE t(x)")
        assert _role(db, "writer") == [(fresh, IDLE)]


def test_a_reader_added_by_resize_is_connecting_until_it_has_opened(
    tmp_path: Path, vfs: GatedOpenVFS
) -> None:
    with _open(tmp_path, vfs=vfs.name, readers=1, max_readers=2) as db:
        assert [c.role for c in db.connections()] == ["writer", "reader-0"]
        vfs.gate.clear()
        db.pool.resize(2)
        assert vfs.waiting.wait(5)  # reader-1 opens its connection, held at the gate
        assert _role(db, "reader-1") == [(None, CONNECTING)]
        assert _serving(db, "reader-0")
        vfs.gate.set()
        assert wait_until(lambda: _serving(db, "reader-1"))


def test_a_connection_is_recycling_from_its_choice_until_it_is_replaced(
    tmp_path: Path, vfs: GatedOpenVFS
) -> None:
    options = {"readers": 1, "max_readers": 1, "recycle_after_queries": 5}
    with _open(tmp_path, vfs=vfs.name, health_check_interval=0, **options) as db:
        seen: list[list[tuple[str | None, ConnectionState]]] = []
        closed: list[str | None] = []
        db.events.on("recycle", lambda e: seen.append(_role(db, e.role)))
        db.events.on("disconnect", lambda e: closed.append(e.connection_id))
        vfs.gate.clear()  # the replacement's open will wait at the gate
        with db.pool.connection() as lease:
            old = lease.id
            for _ in range(5):
                lease.query("SELECT 1")
            assert lease.state is ACTIVE
        # Given back past its query budget: chosen, and RECYCLING from that moment ...
        assert _role(db, "reader-0") == [(old, RECYCLING)]
        assert vfs.waiting.wait(5)
        # ... and still while its replacement opens, itself closed by now.
        assert closed == [old]
        assert _role(db, "reader-0") == [(old, RECYCLING)]
        assert not seen
        vfs.gate.set()
        assert wait_until(lambda: _serving(db, "reader-0") and _role(db, "reader-0")[0][0] != old)
        assert wait_until(lambda: len(seen) == 1)
        [(fresh, state)] = seen[0]  # at the recycle event: replaced, the fresh one serving
        assert fresh != old and state in (IDLE, ACTIVE)


def test_a_connection_lent_when_its_reader_crashes_is_failed_until_given_back(
    tmp_path: Path,
) -> None:
    options = {"readers": 1, "max_readers": 1, "restart_backoff_initial": 0.05}
    with _open(tmp_path, **options) as db:
        lease = db.pool.acquire()
        lent = lease.id
        db.supervisor.kill("reader-0")
        assert wait_until(lambda: (lent, FAILED) in _role(db, "reader-0"))
        assert lease.state is FAILED
        lease.release()
        assert wait_until(lambda: _serving(db, "reader-0"))
        assert all(info.id != lent for info in db.connections())  # closed, gone


def test_every_connection_is_closed_after_close(tmp_path: Path) -> None:
    db = _open(tmp_path)
    opened = [c.id for c in db.connections()]
    db.close()
    infos = db.connections()
    assert [c.id for c in infos] == opened
    assert [c.state for c in infos] == [CLOSED] * 3


def test_each_role_shows_once_while_connections_are_recycled_under_reads(
    tmp_path: Path,
) -> None:
    """The snapshot is taken as connections join and leave: never a role twice, missing,
    or CLOSED while the storage runs (a connection is replaced every third read)."""
    with _open(tmp_path, readers=1, max_readers=1, recycle_after_queries=3) as db:
        stop = threading.Event()
        recycles: list[object] = []
        db.events.on("recycle", recycles.append)
        seen: list[list[tuple[str | None, ConnectionState]]] = []

        def read() -> None:
            while not stop.is_set():
                db.query("SELECT 1")

        def observe() -> None:
            while not stop.is_set():
                seen.append(_role(db, "reader-0"))

        threads = [threading.Thread(target=read), threading.Thread(target=observe)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(recycles) >= 300, timeout=3.0)
        stop.set()
        for thread in threads:
            thread.join(10)
        odd = [found for found in seen if len(found) != 1 or found[0][1] is CLOSED]
        assert len(recycles) >= 50 and len(seen) >= 1000
        assert odd == [], odd[:5]


def test_a_recycle_is_announced_before_the_fresh_connection_is_first_lent(
    tmp_path: Path,
) -> None:
    """A ``recycle`` handler hears of the connection before its first checkout."""
    with _open(tmp_path, readers=1, max_readers=1, recycle_after_queries=2) as db:
        events: list[tuple[str, str]] = []
        for kind in ("recycle", "checkout"):
            db.events.on(kind, lambda e: events.append((e.name, e.connection_id or "")))
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                db.submit_query("SELECT 1").get()  # (queued reads emit checkouts)

        threads = [threading.Thread(target=read) for _ in range(4)]
        for thread in threads:
            thread.start()
        wait_until(lambda: sum(kind == "recycle" for kind, _ in events) >= 200, timeout=3.0)
        stop.set()
        for thread in threads:
            thread.join(10)
        announced: set[str] = set()
        early = []
        recycled = {connection for kind, connection in events if kind == "recycle"}
        for kind, connection in list(events):
            if kind == "recycle":
                announced.add(connection)
            elif connection in recycled and connection not in announced:
                early.append(connection)
        assert len(recycled) >= 20 and early == [], early[:5]


def test_a_connection_whose_reader_crashed_as_it_was_lent_stays_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crash lands between the hand-over and acquire() marking the connection
    ACTIVE (forced here: the reader marks it as its crash does): FAILED stays."""
    with _open(tmp_path, readers=1, max_readers=1) as db:
        take = db.pool._take

        def crashed_meanwhile(timeout: float | None) -> Any:
            connection = take(timeout)
            connection.usable = False  # as ReaderActor.on_crash, in its order
            connection.state = FAILED
            return connection

        monkeypatch.setattr(db.pool, "_take", crashed_meanwhile)
        lease = db.pool.acquire()
        assert lease.state is FAILED
        monkeypatch.undo()
        lease.release()

"""Supervision: crashed and silently stopped actors restart; storms escalate."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pykka
import pytest
from pykka._envelope import Envelope

import atlas_actors as atlas
from atlas_actors.actors.base import Crash
from atlas_actors.actors.reader import ReaderActor
from atlas_actors.actors.supervisor import CLEANUP_GRACE, ChildStatus
from atlas_actors.actors.writer import WriterActor
from atlas_actors.errors import AtlasError, StorageUnavailable, ValidationError
from atlas_actors.runtime import Runtime
from tests.helpers import delay_on_crash, wait_until


def _child(db: atlas.Storage, role: str) -> ChildStatus:
    """The supervisor's status of ``role``."""
    return next(c for c in db.supervisor.status().children if c.role == role)


def _wait_for_restart(db: atlas.Storage, role: str) -> Callable[[float], bool]:
    """Return a function that waits until ``role`` restarts (a 'restart' event)."""
    restarted = threading.Event()
    db.events.on("restart", lambda e: restarted.set() if e.role == role else None)
    return restarted.wait


def _writers(
    db: atlas.Storage, stop: threading.Event, acked: list[int], failed: list[BaseException]
) -> list[threading.Thread]:
    counter = iter(range(10**9))
    lock = threading.Lock()

    def work() -> None:
        while not stop.is_set():
            with lock:
                n = next(counter)
            try:
                db.write("INSERT INTO tasks(id, title) VALUES (?, ?)", [n + 1, f"t{n}"])
            except Exception as error:
                failed.append(error)
            else:
                acked.append(n + 1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    return threads


def test_a_crashed_writer_restarts_and_writes_resume_within_a_second_losing_nothing(
    db: atlas.Storage,
) -> None:
    stop, acked, failed = threading.Event(), [], []
    threads = _writers(db, stop, acked, failed)
    time.sleep(0.1)
    restarted = _wait_for_restart(db, "writer")
    killed_at = time.monotonic()
    assert db.supervisor.kill("writer", how="crash") == 1
    assert restarted(5)
    count_at_restart = len(acked)
    while len(acked) == count_at_restart and time.monotonic() - killed_at < 5:
        time.sleep(0.001)
    resumed_after = time.monotonic() - killed_at
    time.sleep(0.1)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert resumed_after < 1.0
    assert not failed, failed[:3]  # queued and rolled-back writes were replayed, not failed
    stored = {row.id for row in db.query("SELECT id FROM tasks")}
    assert set(acked) <= stored
    assert len(stored) == len(acked)  # and none applied twice or without acknowledgement
    writer = _child(db, "writer")
    assert (writer.incarnation, writer.restarts, writer.state) == (2, 1, "running")
    assert "InjectedCrash" in (writer.last_error or "")


def test_a_silently_stopped_writer_is_noticed_by_the_liveness_check(db: atlas.Storage) -> None:
    restarted = _wait_for_restart(db, "writer")
    db.supervisor.kill("writer", how="stop")
    assert restarted(5)
    assert db.write("INSERT INTO tasks(title) VALUES ('after')").rowcount == 1
    writer = _child(db, "writer")
    assert writer.last_error == "stopped without reporting"


def test_a_crashed_writer_is_restarted_only_after_it_cleaned_up(
    db: atlas.Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pykka marks a failing actor stopped before its on_failure runs; the liveness
    # check must not start the next incarnation while the dying one still rolls back
    # (two write connections, the old one's batch not yet put back in the mailbox).
    cleaned_up_at: list[float] = []
    delay_on_crash(
        monkeypatch,
        WriterActor,
        before=lambda: time.sleep(0.3),  # six liveness checks
        after=lambda: cleaned_up_at.append(time.monotonic()),
    )
    restarted_at: list[float] = []
    db.events.on("restart", lambda e: restarted_at.append(time.monotonic()))
    db.supervisor.kill("writer", how="crash")
    assert db.write("INSERT INTO tasks(title) VALUES ('after')").rowcount == 1
    assert len(cleaned_up_at) == 1 and len(restarted_at) == 1
    assert restarted_at[0] >= cleaned_up_at[0]
    writer = _child(db, "writer")
    assert (writer.incarnation, writer.restarts) == (2, 1)
    assert "InjectedCrash" in (writer.last_error or "")  # its own report, not the liveness check


def test_a_writer_stuck_in_its_clean_up_is_restarted_after_the_grace(
    db: atlas.Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    unstuck = threading.Event()
    delay_on_crash(monkeypatch, WriterActor, before=lambda: unstuck.wait(10))
    restarted = _wait_for_restart(db, "writer")
    killed_at = time.monotonic()
    db.supervisor.kill("writer", how="crash")
    try:
        assert restarted(5)
        waited = time.monotonic() - killed_at
        assert CLEANUP_GRACE <= waited < CLEANUP_GRACE + 3.0
        writer = _child(db, "writer")
        assert writer.last_error == "stopped without reporting"
    finally:
        unstuck.set()
    assert db.write("INSERT INTO tasks(title) VALUES ('after')").rowcount == 1


def test_a_crash_report_queued_behind_a_liveness_tick_keeps_its_error(
    open_storage: Callable[..., atlas.Storage], monkeypatch: pytest.MonkeyPatch
) -> None:
    # While the supervisor is busy, ticks queue up ahead of the writer's own failure
    # report; the tick that finds the writer's thread ended must leave the restart to
    # that report, not restart it as "stopped without reporting".
    busy, slow_once = threading.Event(), threading.Event()
    original = Runtime._tick

    def slow_tick(self: Runtime, now: float) -> None:
        if slow_once.is_set():
            slow_once.clear()
            busy.set()
            time.sleep(0.4)
        original(self, now)

    monkeypatch.setattr(Runtime, "_tick", slow_tick)
    db = open_storage()
    db.execute("CREATE TABLE t(a)")
    slow_once.set()
    assert busy.wait(5)
    time.sleep(0.1)  # a tick queues meanwhile
    # What kill(how="crash") does, without asking the busy supervisor.
    db._writer_mailbox.replay_control(Envelope(Crash("report behind a tick")))
    assert db.write("INSERT INTO t VALUES (1)").rowcount == 1
    writer = _child(db, "writer")
    assert "report behind a tick" in (writer.last_error or ""), writer


def test_a_crashed_reader_restarts_while_reads_keep_being_served(db: atlas.Storage) -> None:
    db.write("INSERT INTO tasks(title) VALUES ('a')")
    stop = threading.Event()
    failures: list[BaseException] = []
    reads = [0]

    def read() -> None:
        while not stop.is_set():
            try:
                assert db.query("SELECT title FROM tasks") == [("a",)]
                reads[0] += 1
            except BaseException as error:
                failures.append(error)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for thread in readers:
        thread.start()
    restarted = _wait_for_restart(db, "reader-0")
    db.supervisor.kill("reader-0")
    assert restarted(5)
    time.sleep(0.05)
    stop.set()
    for thread in readers:
        thread.join(10)
    assert not failures, failures[:3]
    assert reads[0] > 0
    reader = _child(db, "reader-0")
    assert reader.incarnation == 2 and reader.state == "running"


def test_a_restart_storm_escalates_to_storage_unavailable(open_storage: object) -> None:
    db: atlas.Storage = open_storage(restart_max=2, restart_window=30)  # type: ignore[operator]
    db.execute("CREATE TABLE t(x)")
    escalated = threading.Event()
    db.events.on("escalate", lambda e: escalated.set())
    for expected in (1, 2):
        restarted = _wait_for_restart(db, "writer")
        assert db.supervisor.kill("writer") == expected
        assert restarted(5)
    db.supervisor.kill("writer")  # the third failure within the window
    assert escalated.wait(5)
    with pytest.raises(StorageUnavailable, match="restart intensity"):
        db.write("INSERT INTO t VALUES (1)")
    with pytest.raises(StorageUnavailable):
        db.query("SELECT * FROM t")
    health = db.health()
    assert health.status == "failed" and "writer failed" in (health.failure or "")
    assert health.restarts == 2  # (not 0 once failed: the restarts are why)
    metrics = db.metrics.snapshot()
    assert metrics["restarts"] == 2 and metrics["restarts.writer"] == 2
    for role in ("writer", "reader-0", "cache"):  # (not "writer is stopped": why it is)
        with pytest.raises(StorageUnavailable, match="restart intensity"):
            db.supervisor.kill(role)


def test_restarts_older_than_the_window_no_longer_count_toward_escalation(
    open_storage: object,
) -> None:
    """Restart intensity is R restarts in T seconds: a storage whose writer failed now
    and then must not fail for good after its R-th failure in its whole life."""
    db: atlas.Storage = open_storage(  # type: ignore[operator]
        restart_max=2, restart_window=0.5, restart_backoff_initial=0.01
    )
    db.execute("CREATE TABLE t(x)")
    for pause in (0.0, 0.0, 0.7, 0.0):  # two within the window, then two more after it
        time.sleep(pause)
        restarted = _wait_for_restart(db, "writer")
        db.supervisor.kill("writer")
        assert restarted(5)
    assert db.health().status == "ok"
    assert db.write("INSERT INTO t VALUES (1)").rowcount == 1


def test_restart_backoff_doubles_per_recent_restart_up_to_its_maximum(
    open_storage: object,
) -> None:
    db: atlas.Storage = open_storage(  # type: ignore[operator]
        restart_max=10,
        restart_window=30,
        restart_backoff_initial=0.1,
        restart_backoff_max=0.4,
        restart_backoff_jitter=0.0,
    )
    took = []
    for _ in range(4):
        restarted = _wait_for_restart(db, "writer")
        started = time.monotonic()
        db.supervisor.kill("writer")
        assert restarted(5)
        took.append(time.monotonic() - started)
    # 0.1, 0.2, 0.4, then 0.4 again (the maximum), each plus the start of the writer.
    assert took[0] >= 0.1 and took[1] >= 0.2 and took[2] >= 0.4 and took[3] >= 0.4, took
    assert took[3] < 0.8, took  # not 0.8: capped


def test_a_role_that_cannot_be_recreated_escalates_instead_of_staying_down(
    open_storage: Callable[..., atlas.Storage], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = open_storage(restart_max=2, restart_window=30)
    escalated = threading.Event()
    db.events.on("escalate", lambda e: escalated.set())
    original = WriterActor.__init__

    def unbuildable(self: WriterActor, **options: Any) -> None:
        if options["incarnation"] > 1:
            raise RuntimeError("cannot build the writer")
        original(self, **options)

    monkeypatch.setattr(WriterActor, "__init__", unbuildable)
    restarts: list[int] = []
    db.events.on("restart", lambda e: restarts.append(e.detail["incarnation"]))
    db.supervisor.kill("writer")
    assert escalated.wait(5)  # each failed build counts as a restart
    assert restarts == []  # and none of them is announced as a restart
    with pytest.raises(StorageUnavailable, match="cannot build the writer"):
        db.write("INSERT INTO tasks(title) VALUES ('x')")


def test_a_thread_that_cannot_start_on_restart_counts_as_a_failure_and_leaves_no_actor(
    db: atlas.Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = ReaderActor._start_actor_loop
    refused: list[ReaderActor] = []

    def start_loop(self: ReaderActor) -> None:
        if self.incarnation == 2:  # the first restart cannot get a thread
            refused.append(self)
            raise RuntimeError("can't start new thread")
        original(self)

    monkeypatch.setattr(ReaderActor, "_start_actor_loop", start_loop)
    restarted = _wait_for_restart(db, "reader-0")
    db.supervisor.kill("reader-0")
    assert restarted(5)  # after backoff, the next incarnation starts
    reader = _child(db, "reader-0")
    assert reader.incarnation == 3 and reader.state == "running" and reader.restarts == 2
    assert refused and pykka.ActorRegistry.get_by_urn(refused[0].actor_urn) is None
    assert db.query("SELECT 1") == [(1,)]


def test_a_role_that_cannot_be_built_at_open_fails_open_with_its_error(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unbuildable(self: ReaderActor, **options: Any) -> None:
        raise RuntimeError("cannot build a reader")

    monkeypatch.setattr(ReaderActor, "__init__", unbuildable)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="cannot build a reader"):
        atlas.open(db_path, default_timeout=10)
    assert time.monotonic() - started < 5  # at once, not after the start timeout


def test_status_lists_every_child_and_kill_rejects_unknown_roles(db: atlas.Storage) -> None:
    status = db.supervisor.status()
    roles = [c.role for c in status.children]
    assert roles[:2] == ["cache", "writer"] and {"reader-0", "reader-1"} <= set(roles)
    assert status.state == "running" and status.restarts == 0
    with pytest.raises(ValidationError, match="no child 'writre'"):
        db.supervisor.kill("writre")
    with pytest.raises(ValidationError, match="how='explode'"):
        db.supervisor.kill("writer", how="explode")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"no child \['writer'\]"):
        db.supervisor.kill(["writer"])  # type: ignore[arg-type]  # (not hashable)


def test_restart_events_carry_the_role_and_incarnation(db: atlas.Storage) -> None:
    events: list[atlas.LifecycleEvent] = []
    done = threading.Event()

    def seen(event: atlas.LifecycleEvent) -> None:
        events.append(event)
        done.set()

    db.events.on("restart", seen)
    db.supervisor.kill("reader-1")
    assert done.wait(5)
    assert events[0].role == "reader-1" and events[0].detail["incarnation"] == 2


def test_escalation_closes_the_reader_pool_before_the_storage_reports_failed(
    open_storage: Callable[..., atlas.Storage], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without cache or tracing, db.query's fast path checks only the pool: were the
    # storage failed first, a read in between would still be served.
    db = open_storage(cache=False)
    for _ in range(10):  # past a statement's first runs: the fast path serves it
        db.query("SELECT 1")
    states: list[str] = []
    close = db.pool.close

    def watched(error: Any = None) -> None:
        states.append(db._state)
        close(error)

    monkeypatch.setattr(db.pool, "close", watched)
    db._on_escalate(StorageUnavailable("restart intensity exceeded (in a test)"))
    assert states == ["running"]  # the pool refused before the state said failed
    with pytest.raises(StorageUnavailable):
        db.query("SELECT 1")


def test_restarts_are_counted_when_scheduled_as_the_supervisor_counts_them(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    """A restart still waiting out its backoff counts: in the metrics, in health(), and
    once the storage failed (a restart that never happened is still why it failed)."""
    db = open_storage(
        readers=1, restart_max=1, restart_backoff_initial=0.5, restart_backoff_jitter=0.0
    )
    db.supervisor.kill("reader-0")
    assert wait_until(lambda: db.supervisor.status().restarts == 1)
    assert db.metrics.get("restarts") == 1 and db.metrics.get("restarts.reader") == 1
    assert db.health().restarts == 1
    escalated = threading.Event()
    db.events.on("escalate", lambda e: escalated.set())
    db.supervisor.kill("writer")  # past restart_max: the storage fails
    assert escalated.wait(5)
    assert db.health().status == "failed" and db.health().restarts == 1


def test_a_crash_whose_clean_up_fails_still_lets_the_next_writer_write(
    db: atlas.Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crashed writer's connection holds SQLite's write lock (a lease is out): if
    its clean-up fails halfway, the connection must still close, or every later
    incarnation's BEGIN IMMEDIATE meets SQLITE_BUSY for good."""

    def failing_clean_up(self: WriterActor) -> list[object]:
        raise RuntimeError("the clean-up failed")

    tx = db.transactions.begin()
    tx.execute("INSERT INTO tasks(title) VALUES ('in the lease')")
    monkeypatch.setattr(WriterActor, "_take_lease_queue", failing_clean_up)
    db.supervisor.kill("writer")
    monkeypatch.undo()
    with pytest.raises(AtlasError):
        tx.commit()  # revoked by the crash: rolled back
    assert db.write("INSERT INTO tasks(title) VALUES ('after')", timeout=5).rowcount == 1
    assert db.query("SELECT title FROM tasks") == [("after",)]


def test_writes_queued_while_the_writer_waits_to_restart_fail_at_once_on_close(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    """Nothing handled them: their callers waited out their whole deadline after close()."""
    db = open_storage(default_timeout=10.0, restart_backoff_initial=3.0, restart_backoff_max=3.0)
    db.execute("CREATE TABLE t(k TEXT)")
    db.supervisor.kill("writer")
    assert wait_until(lambda: _writer_state(db) == "restarting")
    queued = [db.writer.execute("INSERT INTO t VALUES (?)", [str(i)]) for i in range(3)]
    db.close()
    started = time.monotonic()
    for future in queued:
        with pytest.raises(StorageUnavailable, match="closed"):
            future.get()
    assert time.monotonic() - started < 1.0


def _writer_state(db: atlas.Storage) -> str:
    return next(c.state for c in db.supervisor.status().children if c.role == "writer")


def test_after_escalation_the_children_stopped_with_it_say_so(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    db = open_storage(restart_max=2, restart_window=10, restart_backoff_initial=0.01)
    for _ in range(3):
        assert wait_until(lambda: _writer_state(db) in ("running", "failed"))
        if _writer_state(db) == "failed":
            break
        db.supervisor.kill("writer")
        time.sleep(0.1)
    assert wait_until(lambda: db.supervisor.status().state == "failed")
    states = {c.role: c.state for c in db.supervisor.status().children}
    assert states.pop("writer") == "failed"
    assert set(states.values()) == {"stopped"}, states  # not 'running' with no thread


def test_a_second_kill_of_the_same_incarnation_does_not_kill_the_next(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    """The role's mailbox outlives incarnations: a Crash queued for one that died was
    handled by the next, an extra restart counted against the intensity."""
    db = open_storage(restart_backoff_initial=0.01)
    busy, release = threading.Event(), threading.Event()

    def hold(connection: object) -> None:
        busy.set()
        release.wait(5)

    held = db.writer.run(hold)
    assert busy.wait(5)
    assert db.supervisor.kill("writer") == 1
    for how in ("crash", "stop"):  # (queued, either would wait for incarnation 2)
        with pytest.raises(ValidationError, match="incarnation 1 is being killed"):
            db.supervisor.kill("writer", how=how)  # type: ignore[arg-type]
    release.set()
    with contextlib.suppress(AtlasError):
        held.get(5)
    assert wait_until(lambda: _writer_state(db) == "running")
    time.sleep(0.3)  # (nothing of the first kill may reach incarnation 2)
    writer = next(c for c in db.supervisor.status().children if c.role == "writer")
    assert (writer.incarnation, writer.restarts, writer.state) == (2, 1, "running")
    assert db.write("CREATE TABLE t(x)", timeout=5).rowcount == 0


@pytest.mark.parametrize("role", ["writer", "reader-0"])
def test_a_stop_aimed_at_an_incarnation_that_crashed_first_spares_the_next(
    open_storage: Callable[..., atlas.Storage], role: str
) -> None:
    """kill(how="stop") queued pykka's own stop, aimed at no incarnation: when the one
    hit failed another way first, the stop waited in the role's mailbox and stopped the
    next one too (a second restart; with restart_max=1 the storage failed)."""
    db = open_storage(
        readers=1,
        max_readers=1,
        cache=False,
        restart_max=1,
        restart_backoff_initial=0.01,
        max_batch_delay=0.0,  # (the writer commits, and crashes, before it takes the stop)
    )
    busy, release = threading.Event(), threading.Event()

    def hold(_: object) -> int:
        busy.set()
        release.wait(5)
        return 1

    def crash_the_actor(_: object) -> None:
        raise SystemExit("a done-callback exits: its actor crashes")

    if role == "writer":
        held: Any = db.writer.run(hold)
    else:  # a read long enough to be busy with when the stop comes
        held = db.submit_query(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
            "WHERE x < 1000000) SELECT count(*) FROM c"
        )
        busy.set() if wait_until(lambda: db.pool.status().active == 1) else None
    held.add_done_callback(crash_the_actor)  # runs in the actor that resolves it
    assert busy.wait(5)
    assert db.supervisor.kill(role, how="stop") == 1  # queued behind the held call
    release.set()
    with contextlib.suppress(AtlasError):
        held.get(10)
    child = lambda: next(c for c in db.supervisor.status().children if c.role == role)  # noqa: E731
    assert wait_until(lambda: child().incarnation == 2 and child().state == "running")
    time.sleep(0.3)  # (the stop, had it waited for incarnation 2, would have hit it)
    assert (child().incarnation, child().restarts) == (2, 1)
    assert db.supervisor.status().state == "running"
    db.write("CREATE TABLE t(x)", timeout=5)
    assert db.query("SELECT count(*) FROM t", timeout=5)[0][0] == 0


def test_close_lets_a_stopped_writer_commit_what_it_accepted(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    """pykka marks a stopping actor stopped before its on_stop runs the writes queued
    behind a lease: close() failed them as if nobody would (7cdd85e's first version)."""
    db = open_storage(default_timeout=20.0)
    db.execute("CREATE TABLE t(x)")
    tx = db.transactions.begin()
    tx.execute("INSERT INTO t VALUES (-1)")  # holds the lease: the writes below queue
    queued = [db.writer.execute("INSERT INTO t VALUES (?)", [i]) for i in range(2000)]
    db.supervisor.kill("writer", how="stop")
    assert wait_until(lambda: _writer_state(db) != "running" or not _writer_alive(db))
    db.close()
    outcomes = {"committed": 0, "failed": 0}
    for future in queued:
        try:
            future.get(10)
            outcomes["committed"] += 1
        except AtlasError:
            outcomes["failed"] += 1
    assert outcomes == {"committed": 2000, "failed": 0}


def _writer_alive(db: atlas.Storage) -> bool:
    supervisor = db._supervisor_ref._actor_weakref()  # type: ignore[attr-defined]
    actor = supervisor._children["writer"].actor
    return actor is not None and actor.actor_ref.is_alive()


def test_the_restart_event_comes_once_the_new_incarnation_runs(
    open_storage: Callable[..., atlas.Storage], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A writer restart verifies the file first (quick_check): slow on a large file.
    # "restart" says the writer is back, so it must not come while that still runs.
    db = open_storage()
    db.execute("CREATE TABLE t(x)")
    original = WriterActor.on_start
    starting, finish = threading.Event(), threading.Event()

    def slow_start(self: WriterActor) -> None:
        if self.incarnation == 2:
            starting.set()
            finish.wait(10)
        original(self)

    monkeypatch.setattr(WriterActor, "on_start", slow_start)
    restarted = _wait_for_restart(db, "writer")
    db.supervisor.kill("writer")
    assert starting.wait(5)
    assert not restarted(0.3)  # still starting
    finish.set()
    assert restarted(5)
    db.write("INSERT INTO t VALUES (1)", timeout=1)  # running: it writes at once


def test_an_incarnation_that_fails_to_start_is_not_announced_as_a_restart(
    open_storage: Callable[..., atlas.Storage], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = open_storage()
    original = WriterActor.on_start

    def failing_start(self: WriterActor) -> None:
        if self.incarnation == 2:
            raise RuntimeError("cannot open the file (in a test)")
        original(self)

    monkeypatch.setattr(WriterActor, "on_start", failing_start)
    incarnations: list[int] = []
    third = threading.Event()

    def seen(event: atlas.LifecycleEvent) -> None:
        incarnations.append(event.detail["incarnation"])
        if event.detail["incarnation"] == 3:
            third.set()

    db.events.on("restart", seen)
    db.supervisor.kill("writer")
    assert third.wait(5)
    assert incarnations == [3]  # not 2, which never ran
    assert _child(db, "writer").restarts == 2


def test_a_stopped_writer_fails_its_lease_holder_as_restarting_and_keeps_the_queue(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    """kill("writer", how="stop") is one incarnation's stop, not the storage's close: the
    lease holder was told "the storage is closing" and a transaction waiting for the
    lease got StorageClosedError, though the storage went on (a review's repro)."""
    db = open_storage(cache=False, default_timeout=5)
    db.execute("CREATE TABLE t(x)")
    holding, outcomes = threading.Event(), {}

    def hold_the_lease() -> None:
        try:
            with db.transaction() as tx:
                tx.execute("INSERT INTO t VALUES (1)")
                holding.set()
                time.sleep(0.5)
                tx.execute("INSERT INTO t VALUES (2)")
            outcomes["holder"] = "committed"
        except AtlasError as error:
            outcomes["holder"] = f"{type(error).__name__}: {error}"

    def wait_for_it() -> None:
        try:
            with db.transaction() as tx:
                tx.execute("INSERT INTO t VALUES (3)")
            outcomes["waiter"] = "committed"
        except AtlasError as error:
            outcomes["waiter"] = f"{type(error).__name__}: {error}"

    holder = threading.Thread(target=hold_the_lease)
    holder.start()
    assert holding.wait(5)
    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    assert wait_until(lambda: db.transactions.status().queued >= 1)
    db.supervisor.kill("writer", how="stop")
    holder.join(10)
    waiter.join(10)
    assert outcomes["holder"].startswith("TransactionAborted: the writer was stopped")
    assert "run it again" in outcomes["holder"]
    assert outcomes["waiter"] == "committed"
    assert sorted(row.x for row in db.query("SELECT x FROM t")) == [3]


def test_resizing_the_pool_of_a_failed_or_closed_storage_raises(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    db = open_storage(cache=False, restart_max=1)
    for _ in range(2):  # a restart storm: the storage escalates to failed
        with contextlib.suppress(AtlasError):
            db.supervisor.kill("reader-0")
        time.sleep(0.1)
    assert wait_until(lambda: db.health().status == "failed")
    with pytest.raises(StorageUnavailable):
        db.pool.resize(4)
    db.close()
    with pytest.raises(AtlasError):
        db.pool.resize(3)


def test_escalate_handlers_see_the_storage_failed(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    """The event came before the storage closed its pool: a handler listing connections
    saw every role CONNECTING (restarting), though nothing restarts after escalation."""
    db = open_storage(restart_max=1, restart_window=30)
    seen: list[set[atlas.ConnectionState]] = []
    db.events.on("escalate", lambda e: seen.append({c.state for c in db.connections()}))
    for _ in range(3):
        with contextlib.suppress(AtlasError):
            db.supervisor.kill("writer")
        if wait_until(lambda: bool(seen), timeout=1):
            break
    assert seen and atlas.ConnectionState.CONNECTING not in seen[0], seen


def test_asking_the_supervisor_from_its_own_event_handler_is_refused_at_once(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    """Handlers of 'restart' and 'escalate' run in the supervisor: its status() waited
    for itself until default_timeout, then said the call 'may still complete'."""
    db = open_storage(default_timeout=5.0)
    outcomes: list[tuple[str, float]] = []

    def asks(event: atlas.LifecycleEvent) -> None:
        started = time.monotonic()
        try:
            db.supervisor.status()
            outcomes.append(("answered", time.monotonic() - started))
        except AtlasError as error:
            outcomes.append((type(error).__name__, time.monotonic() - started))

    db.events.on("restart", asks)
    db.supervisor.kill("reader-0")
    assert wait_until(lambda: bool(outcomes), timeout=5)
    (name, waited), *_ = outcomes
    assert name == "DeadlockError" and waited < 1.0
    assert db.metrics.snapshot().get("errors.deadlock") == 1  # (counted, as every one)
    assert db.supervisor.status().state == "running"  # (from another thread: answered)


def test_a_thread_given_the_closed_supervisors_ident_is_told_the_storage_closed(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    # Linux gives a new thread the ident of one that ended at once: after close(), such
    # a thread was taken for the supervisor's own and refused as a deadlock.
    db = open_storage()
    actor = db.supervisor._ref._actor_weakref()
    ident = getattr(actor, "thread_ident", None)
    db.close()
    outcome: list[str] = []

    def probe() -> None:
        if threading.get_ident() == ident:
            try:
                db.supervisor.status()
            except AtlasError as error:
                outcome.append(type(error).__name__)

    for _ in range(2000):
        thread = threading.Thread(target=probe)
        thread.start()
        thread.join()
        if outcome:
            break
    if not outcome:
        pytest.skip("no new thread got the supervisor's ident")
    assert outcome == ["StorageClosedError"]

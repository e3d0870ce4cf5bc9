"""Lifecycle events: subscribe, unsubscribe, handlers that fail."""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
from collections.abc import Callable

import pytest

import atlas_actors as atlas
from atlas_actors.errors import ValidationError
from atlas_actors.events import EventBus, LifecycleEvent


def test_checkout_and_checkin_events_follow_each_lease(db: atlas.Storage) -> None:
    seen: list[tuple[str, str | None]] = []
    off_out = db.events.on("checkout", lambda e: seen.append((e.name, e.connection_id)))
    db.events.on("checkin", lambda e: seen.append((e.name, e.connection_id)))
    db.query("SELECT 1")
    assert [name for name, _ in seen] == ["checkout", "checkin"]
    assert seen[0][1] == seen[1][1] and (seen[0][1] or "").startswith("reader-")
    off_out()
    db.query("SELECT 1")
    assert [name for name, _ in seen] == ["checkout", "checkin", "checkin"]


def test_connect_and_disconnect_events_follow_restarts(db: atlas.Storage) -> None:
    connected, disconnected = threading.Event(), threading.Event()
    db.events.on("connect", lambda e: connected.set() if e.role == "writer" else None)
    db.events.on("disconnect", lambda e: disconnected.set() if e.role == "writer" else None)
    db.supervisor.kill("writer")
    assert disconnected.wait(5) and connected.wait(5)


def test_a_failing_handler_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    got: list[LifecycleEvent] = []
    bus.on("recycle", lambda e: 1 / 0)  # type: ignore[func-returns-value]
    bus.on("recycle", got.append)
    bus.emit("recycle", "reader-0", "reader-0#1", reason="test")
    assert got[0].detail == {"reason": "test"}
    assert "failed" in caplog.text


def test_a_handler_that_exits_in_an_actor_thread_is_logged_and_breaks_nothing(
    open_storage: Callable[..., atlas.Storage], caplog: pytest.LogCaptureFixture
) -> None:
    """sys.exit() in a ``recycle`` handler (run by the reader) crashed the reader at
    each recycle, until the restart intensity failed the whole storage."""
    db = open_storage(readers=1, max_readers=1, cache=False, recycle_after_queries=5)
    db.execute("CREATE TABLE t(x)")
    recycled: list[str | None] = []

    def exits(event: LifecycleEvent) -> None:
        recycled.append(event.connection_id)
        sys.exit("a handler exits")

    db.events.on("recycle", exits)
    for _ in range(200):
        db.query("SELECT 1")
        if len(recycled) >= 3:
            break
    assert len(recycled) >= 3
    db.write("INSERT INTO t VALUES (1)")
    assert db.query("SELECT count(*) FROM t")[0][0] == 1
    assert db.supervisor.status().restarts == 0
    assert db.health().status == "ok"
    failed = [r for r in caplog.records if r.getMessage().endswith("for 'recycle' failed")]
    assert failed and "exits" in failed[0].getMessage()
    assert failed[0].exc_info is not None and failed[0].exc_info[0] is SystemExit


@pytest.mark.parametrize("escaping", [KeyboardInterrupt, SystemExit])
def test_ctrl_c_or_exit_in_a_handler_in_the_main_thread_reaches_the_caller_after_the_others(
    escaping: type[BaseException],
) -> None:
    assert threading.current_thread() is threading.main_thread()
    bus = EventBus()
    got: list[str] = []

    def interrupted(event: LifecycleEvent) -> None:
        got.append("first")
        raise escaping

    bus.on("checkout", interrupted)
    bus.on("checkout", lambda e: got.append("second"))
    bus.on("checkout", interrupted)  # (the first one raised wins)
    with pytest.raises(escaping):
        bus.emit("checkout", "reader-0", "reader-0#1")
    assert got == ["first", "second", "first"]


@pytest.mark.parametrize("escaping", [KeyboardInterrupt, SystemExit])
def test_ctrl_c_or_exit_in_a_handler_in_another_thread_is_logged_and_ignored(
    escaping: type[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    bus = EventBus()
    got: list[str] = []
    escaped: list[BaseException] = []

    def interrupted(event: LifecycleEvent) -> None:
        raise escaping

    bus.on("restart", interrupted)
    bus.on("restart", lambda e: got.append(e.role))

    def emit() -> None:
        try:
            bus.emit("restart", "writer", incarnation=2)
        except BaseException as error:  # (what reached the emitting thread)
            escaped.append(error)
        got.append("emitted")

    thread = threading.Thread(target=emit)
    with caplog.at_level(logging.ERROR, logger="atlas_actors.events"):
        thread.start()
        thread.join(5)
    assert escaped == [] and got == ["writer", "emitted"]
    assert "for 'restart' failed" in caplog.text and escaping.__name__ in caplog.text


def test_unknown_event_names_are_rejected() -> None:
    with pytest.raises(ValidationError, match="unknown event 'restrat'"):
        EventBus().on("restrat", print)
    with pytest.raises(ValidationError, match=r"unknown event \['restart'\]"):
        EventBus().on(["restart"], print)  # type: ignore[arg-type]  # (not hashable)
    assert not EventBus().wants("restart")


@pytest.mark.parametrize("handler", ["not a function", None, 42])
def test_a_handler_that_is_not_callable_is_refused_when_subscribing(handler: object) -> None:
    bus = EventBus()
    with pytest.raises(ValidationError, match=r"must be callable.*pass a function"):
        bus.on("restart", handler)  # type: ignore[arg-type]
    assert not bus.wants("restart")  # nothing was subscribed


class _Listener:
    """A handler as a bound method: each attribute access makes a new method object."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_restart(self, event: LifecycleEvent) -> None:
        self.seen.append(event.name)


def test_off_removes_a_bound_method_subscribed_earlier(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    db = open_storage(cache=False, readers=1)
    listener = _Listener()
    db.events.on("restart", listener.on_restart)
    db.events.off("restart", listener.on_restart)  # an equal, not the same, object
    assert not db.events.wants("restart")
    assert "restart" not in db.events.active
    restarted = threading.Event()
    db.events.on("restart", lambda e: restarted.set())
    db.supervisor.kill("writer")
    assert restarted.wait(5)
    assert listener.seen == []


def test_off_removes_one_subscription_of_a_handler_subscribed_twice() -> None:
    bus = EventBus()
    calls: list[str] = []

    def handler(event: LifecycleEvent) -> None:
        calls.append(event.name)

    unsubscribe_first = bus.on("recycle", handler)
    bus.on("recycle", handler)
    unsubscribe_first()
    unsubscribe_first()  # undoes its own subscription only, and only once
    bus.emit("recycle", "reader-0")
    assert calls == ["recycle"]
    bus.off("recycle", handler)
    bus.emit("recycle", "reader-0")
    assert calls == ["recycle"]
    assert not bus.wants("recycle") and "recycle" not in bus.active
    bus.off("recycle", handler)  # not subscribed any more: no error


def test_off_removes_the_most_recent_subscription() -> None:
    bus = EventBus()
    order: list[str] = []
    first, second = _Listener(), _Listener()
    bus.on("restart", lambda e: order.append("a"))
    bus.on("restart", first.on_restart)
    bus.on("restart", lambda e: order.append("b"))
    bus.on("restart", first.on_restart)
    bus.on("restart", second.on_restart)
    bus.off("restart", first.on_restart)
    bus.emit("restart", "writer")
    assert order == ["a", "b"] and first.seen == ["restart"] and second.seen == ["restart"]


def test_handlers_may_subscribe_and_unsubscribe_while_an_event_is_delivered() -> None:
    bus = EventBus()
    calls: list[str] = []

    def late(event: LifecycleEvent) -> None:
        calls.append("late")

    def once(event: LifecycleEvent) -> None:
        calls.append("once")
        bus.off("recycle", once)
        bus.on("recycle", late)  # from the next event on

    bus.on("recycle", once)
    bus.on("recycle", lambda e: calls.append("other"))
    bus.emit("recycle", "reader-0")
    assert calls == ["once", "other"]
    bus.emit("recycle", "reader-0")
    assert calls == ["once", "other", "other", "late"]


def test_subscribing_and_unsubscribing_from_many_threads_loses_nothing() -> None:
    bus = EventBus()
    listeners = [_Listener() for _ in range(8)]
    stop = threading.Event()
    emitted = 0

    def churn(listener: _Listener) -> None:
        for _ in range(200):
            off = bus.on("restart", listener.on_restart)
            bus.on("restart", listener.on_restart)
            off()
            bus.off("restart", listener.on_restart)

    def emit() -> None:
        nonlocal emitted
        while not stop.is_set():
            bus.emit("restart", "writer")
            emitted += 1

    emitter = threading.Thread(target=emit)
    emitter.start()
    threads = [threading.Thread(target=churn, args=(listener,)) for listener in listeners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    stop.set()
    emitter.join(30)
    assert emitted > 0
    assert not bus.wants("restart") and bus.active == frozenset()
    before = [len(listener.seen) for listener in listeners]
    bus.emit("restart", "writer")
    assert [len(listener.seen) for listener in listeners] == before


def test_the_function_on_returns_undoes_its_own_subscription_among_equal_ones() -> None:
    @dataclasses.dataclass
    class Recorder:
        name: str
        calls: list[str]

        def __call__(self, event: LifecycleEvent) -> None:
            self.calls.append(self.name)

    calls: list[str] = []
    bus = EventBus()
    undo_a = bus.on("recycle", Recorder("same", calls))
    b = Recorder("same", calls)
    assert b == Recorder("same", calls)  # equal handlers, distinct objects
    bus.on("recycle", b)
    undo_a()
    bus.emit("recycle", "reader-0")
    assert calls == ["same"]
    remaining = bus._handlers["recycle"]
    assert len(remaining) == 1 and remaining[0].handler is b  # a's went, b's stayed

    order: list[str] = []

    def h(event: LifecycleEvent) -> None:
        order.append("h")

    def g(event: LifecycleEvent) -> None:
        order.append("g")

    undo_first_h = bus.on("connect", h)
    bus.on("connect", g)
    bus.on("connect", h)
    undo_first_h()
    bus.emit("connect", "writer")
    assert order == ["g", "h"]  # the first h went, not the last


@pytest.mark.parametrize("event", ["checkout", "checkin"])
@pytest.mark.parametrize("how", ["query", "acquire"])
@pytest.mark.parametrize("escaping", [KeyboardInterrupt, SystemExit])
def test_ctrl_c_or_exit_in_a_checkout_handler_gives_the_connection_back(
    open_storage: Callable[..., atlas.Storage],
    event: str,
    how: str,
    escaping: type[BaseException],
) -> None:
    """The connection used to stay claimed: with one reader, every later read waited
    for it until its deadline."""
    assert threading.current_thread() is threading.main_thread()
    db = open_storage(readers=1, max_readers=1, cache=False)
    raised: list[str] = []

    def interrupted(e: LifecycleEvent) -> None:
        if not raised:
            raised.append(e.name)
            raise escaping

    db.events.on(event, interrupted)
    with pytest.raises(escaping):
        if how == "query":
            db.query("SELECT 1")
        else:
            with db.pool.acquire() as connection:
                connection.query("SELECT 1")
    assert raised == [event]
    status = db.pool.status()
    assert (status.total, status.active, status.idle) == (1, 0, 1)
    assert db.query("SELECT 2", timeout=2.0)[0][0] == 2
    with db.pool.acquire(timeout=2.0) as connection:
        assert connection.query("SELECT 3")[0][0] == 3


def test_ctrl_c_in_a_checkin_handler_as_a_snapshot_ends_leaves_no_hold_in_the_graph(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    """The reader went back to the pool, but the deadlock graph kept this thread as its
    holder: its next wait for a reader another thread held briefly was refused at once
    as a deadlock with itself."""
    db = open_storage(readers=1, max_readers=1, cache=False)
    db.execute("CREATE TABLE t(x)")
    db.write("INSERT INTO t VALUES (1)")
    raised: list[str] = []

    def interrupted(e: LifecycleEvent) -> None:
        if not raised:
            raised.append(e.name)
            raise KeyboardInterrupt

    off = db.events.on("checkin", interrupted)
    tx = db.transactions.begin("repeatable_read")
    tx.query("SELECT x FROM t")
    with pytest.raises(KeyboardInterrupt):
        tx.rollback()
    off()
    assert raised == ["checkin"] and tx.state == "rolled_back"
    held, free = threading.Event(), threading.Event()

    def hold() -> None:
        with db.pool.acquire() as connection:
            connection.query("SELECT 1")
            held.set()
            free.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(5)
    threading.Timer(0.3, free.set).start()
    with db.transaction(isolation="repeatable_read") as again:  # waits for the reader
        assert again.query("SELECT x FROM t")[0].x == 1
    holder.join(5)

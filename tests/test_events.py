"""Lifecycle events: subscribe, unsubscribe, handlers that fail."""

from __future__ import annotations

import threading

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


def test_unknown_event_names_are_rejected() -> None:
    with pytest.raises(ValidationError, match="unknown event 'restrat'"):
        EventBus().on("restrat", print)
    assert not EventBus().wants("restart")

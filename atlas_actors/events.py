"""Lifecycle events that user code can subscribe to (``db.events.on("restart", fn)``).

Events: ``connect``, ``checkout``, ``checkin``, ``health_check_failed``, ``recycle``,
``disconnect``, ``restart``, ``escalate``, ``degraded`` and ``recovered`` (disk full,
corruption checks). Handlers run in the thread that emits the
event (an actor's or a caller's): keep them short and never wait on the storage from one.
A handler that raises is logged and otherwise ignored, so it cannot break the runtime.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from atlas_actors.errors import ValidationError

__all__ = ["EVENT_NAMES", "EventBus", "LifecycleEvent"]

log = logging.getLogger(__name__)

EVENT_NAMES = frozenset(
    {
        "connect",
        "checkout",
        "checkin",
        "health_check_failed",
        "recycle",
        "disconnect",
        "restart",
        "escalate",
        "degraded",
        "recovered",
    }
)
"""Every event name :class:`EventBus` accepts."""


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """One lifecycle event."""

    name: str
    """One of :data:`EVENT_NAMES`."""
    role: str
    """The actor role concerned (``writer``, ``reader-3``, ...)."""
    connection_id: str | None = None
    """The connection concerned, if any."""
    detail: dict[str, Any] = field(default_factory=dict)
    """Event-specific facts (incarnation, error, reason, ...)."""
    time: float = field(default_factory=time.time)
    """Wall-clock time of the event (``time.time()``)."""


Handler = Callable[[LifecycleEvent], None]


class EventBus:
    """Subscribe to and emit lifecycle events; emitting with no subscriber is nearly free."""

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[Handler, ...]] = {}
        self._lock = threading.Lock()
        self.active: frozenset[str] = frozenset()
        """Names of events that have at least one handler (a cheap test for hot paths)."""
        self.watches_checkouts = False
        """True while someone listens to ``checkout`` or ``checkin`` (the read path's test)."""

    def on(self, name: str, handler: Handler) -> Callable[[], None]:
        """Call ``handler(event)`` on every ``name`` event; returns a function that unsubscribes."""
        if name not in EVENT_NAMES:
            raise ValidationError(f"unknown event {name!r}; known events: {sorted(EVENT_NAMES)}")
        with self._lock:
            self._handlers[name] = (*self._handlers.get(name, ()), handler)
            self._changed()
        return lambda: self.off(name, handler)

    def off(self, name: str, handler: Handler) -> None:
        """Stop calling ``handler`` for ``name`` events (no error if it was not subscribed)."""
        with self._lock:
            remaining = tuple(h for h in self._handlers.get(name, ()) if h is not handler)
            self._handlers[name] = remaining
            self._changed()

    def _changed(self) -> None:
        self.active = frozenset(n for n, hs in self._handlers.items() if hs)
        self.watches_checkouts = bool(self.active & {"checkout", "checkin"})

    def wants(self, name: str) -> bool:
        """True if someone listens to ``name`` (lets hot paths skip building events)."""
        return bool(self._handlers.get(name))

    def emit(
        self,
        name: str,
        role: str,
        connection_id: str | None = None,
        **detail: Any,
    ) -> None:
        """Deliver an event to its handlers, in the calling thread."""
        handlers = self._handlers.get(name)
        if not handlers:
            return
        event = LifecycleEvent(name=name, role=role, connection_id=connection_id, detail=detail)
        for handler in handlers:
            try:
                handler(event)
            except Exception:
                log.exception("event handler %r for %r failed", handler, name)

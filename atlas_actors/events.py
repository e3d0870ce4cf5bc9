"""Lifecycle events that user code can subscribe to (``db.events.on("restart", fn)``).

Events: ``connect``, ``checkout``, ``checkin``, ``health_check_failed``, ``recycle``,
``disconnect``, ``restart`` (once the new incarnation has started), ``escalate``,
``degraded`` and ``recovered`` (disk full, corruption checks; role ``pool``: readers
lost their connections and reconnect, then all have again), and ``alert`` (an alert
rule changed state: ``db.alerts``). ``health_check_failed`` with ``reopening=True`` is a
failed try to reopen a reader's connection during such a fault. Handlers
run in the thread that emits the event (an actor's or a caller's): keep them short and
never wait on the storage from one.
A handler that raises is logged and otherwise ignored, so it cannot break the runtime:
also ``SystemExit`` or ``KeyboardInterrupt``, except in the main thread (a caller's,
never an actor's), where such a one reaches the caller once every handler has run.

``checkout`` and ``checkin`` come in pairs, one pair per lease of a reader connection,
both with the connection's id: a ``db.query`` run on it (a cache hit uses none), a batch
of queued reads from ``db.submit_query``, a ``pool.acquire()`` until its ``release()``,
a transaction's pinned reader until the transaction ends. The checkin comes when the
lease ends, also when the connection then closes instead of going back. A connection
opening, being health-checked or recycled by the pool is no lease and emits neither.
Only leases that begin while someone listens to either event are tracked, so with
nobody listening the read path pays nothing for them. The pairs are per lease, not per
handler: one subscribed in the middle of a lease that someone else watched from its
start may see that lease's checkin without its checkout.
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
        "alert",
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


class _Subscription:
    """One ``on()``: its own object, so that undoing it removes this one and no other."""

    __slots__ = ("handler",)

    def __init__(self, handler: Handler) -> None:
        self.handler = handler


class EventBus:
    """Subscribe to and emit lifecycle events; emitting with no subscriber is nearly free."""

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[_Subscription, ...]] = {}
        self._lock = threading.Lock()
        self.active: frozenset[str] = frozenset()
        """Names of events that have at least one handler (a cheap test for hot paths)."""
        self.watches_checkouts = False
        """True while someone listens to ``checkout`` or ``checkin`` (the read path's test)."""

    def on(self, name: str, handler: Handler) -> Callable[[], None]:
        """Call ``handler(event)`` on every ``name`` event; returns a function that unsubscribes.

        Subscribing the same handler twice calls it twice per event; the returned
        function undoes this one subscription, once (see :meth:`off`). An unknown
        ``name`` or a ``handler`` that is not callable raises
        :class:`~atlas_actors.errors.ValidationError` here, not when an event comes.
        """
        if not isinstance(name, str) or name not in EVENT_NAMES:  # (a list is no name)
            raise ValidationError(f"unknown event {name!r}; known events: {sorted(EVENT_NAMES)}")
        if not callable(handler):
            raise ValidationError(
                f"the handler for {name!r} events must be callable, not "
                f"{type(handler).__name__} {handler!r}: pass a function that takes the "
                "event, e.g. db.events.on(name, lambda event: print(event.role))"
            )
        subscription = _Subscription(handler)
        with self._lock:
            self._handlers[name] = (*self._handlers.get(name, ()), subscription)
            self._changed()

        def unsubscribe() -> None:
            """Undo this subscription (not another of an equal handler); then a no-op."""
            self._remove(name, lambda entry: entry is subscription)

        return unsubscribe

    def off(self, name: str, handler: Handler) -> None:
        """Undo one subscription of ``handler`` to ``name`` (no error if there is none).

        Handlers are compared with ``==``, so ``off(name, obj.method)`` undoes
        ``on(name, obj.method)`` although each attribute access makes a new bound method.
        A handler subscribed several times loses only its most recent subscription
        (each ``on()`` needs its own ``off()``, as the function ``on()`` returns does).
        An event being delivered meanwhile still reaches the handlers it started with.
        """
        if not self._remove(name, lambda entry: entry.handler is handler):
            self._remove(name, lambda entry: entry.handler == handler)

    def _remove(self, name: str, matches: Callable[[_Subscription], bool]) -> bool:
        """Remove the most recent subscription to ``name`` that ``matches``; True if one."""
        with self._lock:
            handlers = self._handlers.get(name, ())
            for index in range(len(handlers) - 1, -1, -1):
                if matches(handlers[index]):
                    # A new tuple: emit() iterates the one it read, unchanged.
                    self._handlers[name] = handlers[:index] + handlers[index + 1 :]
                    self._changed()
                    return True
            return False

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
        """Deliver an event to its handlers, in the calling thread.

        The handlers are those subscribed when delivery starts: one that subscribes or
        unsubscribes a handler meanwhile changes the next events, not this one. What a
        handler raises is logged; in the main thread a ``BaseException`` that is no
        ``Exception`` (Ctrl-C, ``sys.exit()``) is raised again once all have run.
        """
        handlers = self._handlers.get(name)
        if not handlers:
            return
        event = LifecycleEvent(name=name, role=role, connection_id=connection_id, detail=detail)
        escaped: BaseException | None = None
        for subscription in handlers:
            try:
                subscription.handler(event)
            except Exception:
                log.exception("event handler %r for %r failed", subscription.handler, name)
            except BaseException as error:  # (SystemExit, KeyboardInterrupt...)
                if threading.current_thread() is threading.main_thread():
                    # The program's own thread, never an actor's: a Ctrl-C or sys.exit()
                    # there is the caller's, raised once all have run (as done-callbacks).
                    escaped = escaped or error
                else:
                    # An actor's thread (or a user's, which no signal reaches): raised,
                    # it would crash the actor, restarted each time until the storage fails.
                    log.exception("event handler %r for %r failed", subscription.handler, name)
        if escaped is not None:
            raise escaped

"""The supervisor: starts, watches and restarts the writer and the readers.

Strategy one-for-one, after Erlang/OTP's supervisor and Akka's backoff supervisor
(https://www.erlang.org/doc/system/sup_princ.html): a failed child is restarted alone,
after an exponential backoff with jitter; if more than ``restart_max`` restarts happen
within ``restart_window`` seconds the supervisor escalates: the storage enters a failed
state, every call raises ``StorageUnavailable``, and the children are stopped.

Failures reach the supervisor two ways: a child's ``on_failure`` reports itself
(:class:`ChildFailed`), and a liveness check on every tick notices a child that stopped
without a word. The tick also runs the reader pool's maintenance, which raises
:class:`~atlas_actors.actors.base.Unrecoverable` when readers cannot reopen their
connections for ``reader_fault_timeout``: the supervisor escalates then too.

Restarts are for crashes (bugs). A reader connection that fails its health check or
cannot be opened is a fault of the file, which every reader sees at once: the pool
reopens such connections with its own backoff (``pool.py``), and they count no restart.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pykka
from pykka._envelope import Envelope
from pykka.messages import _ActorStop

from atlas_actors.actors.base import Crash, Mailbox, RoleActor, Unrecoverable
from atlas_actors.config import StorageConfig
from atlas_actors.errors import (
    AtlasError,
    StorageClosedError,
    StorageUnavailable,
    ValidationError,
)
from atlas_actors.events import EventBus

__all__ = ["CLEANUP_GRACE", "ChildStatus", "KillMode", "SupervisorActor", "SupervisorStatus"]

CLEANUP_GRACE = 1.0
"""Seconds a stopped child's thread may go on cleaning up before the liveness check
restarts the role without its failure report."""

log = logging.getLogger(__name__)

KillMode = Literal["crash", "stop"]
"""``crash``: the actor raises as if it had a bug (its ``on_failure`` reports it);
``stop``: the actor stops without a word (the liveness check must notice)."""

ChildFactory = Callable[[str, int, Mailbox], RoleActor]


@dataclass(frozen=True, slots=True)
class ChildStatus:
    """One supervised child."""

    role: str
    """``writer`` or ``reader-N``."""
    incarnation: int
    """1 for the first start, +1 per restart."""
    restarts: int
    """Restarts of this role so far."""
    state: str
    """``running``, ``restarting``, ``stopped`` or ``failed``."""
    last_error: str | None
    """The error of the last failure, if any."""


@dataclass(frozen=True, slots=True)
class SupervisorStatus:
    """The supervision tree at one moment."""

    state: str
    """``running``, ``failed`` (escalated) or ``stopped``."""
    children: tuple[ChildStatus, ...]
    """Every child, in start order: cache, writer, readers."""
    restarts: int
    """Restarts of all children so far."""
    failure: str | None
    """Why the storage failed, once it has."""


@dataclass
class _Child:
    role: str
    factory: ChildFactory
    mailbox: Mailbox
    actor: RoleActor | None = None
    incarnation: int = 0
    restarts: int = 0
    state: str = "starting"
    last_error: str | None = None
    recent: deque[float] = field(default_factory=deque)
    dying_since: float | None = None
    """When the liveness check first saw the incarnation stopped with its thread alive."""
    killed: int = 0
    """The incarnation ``kill()`` was last aimed at (one kill per incarnation)."""


@dataclass(frozen=True, slots=True)
class ChildFailed:
    """A child incarnation died (reported by its ``on_failure``)."""

    role: str
    incarnation: int
    error: BaseException | None


@dataclass(frozen=True, slots=True)
class Restart:
    """The backoff of ``role`` elapsed: start its next incarnation."""

    role: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class Running:
    """Incarnation ``incarnation`` of ``role`` finished ``on_start``: it serves now."""

    role: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class Tick:
    """Periodic liveness check and maintenance."""


class SupervisorActor(pykka.ThreadingActor):
    """Root of the supervision tree. Talk to it through its proxy or ``tell``."""

    use_daemon_thread = True

    def __init__(
        self,
        *,
        config: StorageConfig,
        events: EventBus,
        on_escalate: Callable[[StorageUnavailable], None],
        on_tick: Callable[[float], None],
        db_name: str,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.events = events
        self.on_escalate = on_escalate
        self.thread_ident: int | None = None
        """The supervisor's thread, once started (its event handlers run there)."""
        self.on_tick = on_tick
        self.on_restart = on_restart
        """Told the role of every restart counted (scheduled), for the metrics."""
        self.db_name = db_name
        self._children: dict[str, _Child] = {}
        self._state = "running"
        self._failure: str | None = None
        self._restarts = 0
        self._restart_times: deque[float] = deque()
        self._ticker: threading.Thread | None = None
        self._stop_ticker = threading.Event()
        self._random = random.Random()

    # -- lifecycle ---------------------------------------------------------------------

    def _start_actor_loop(self) -> None:
        thread = threading.Thread(
            target=self._actor_loop, name=f"supervisor:{self.db_name}", daemon=True
        )
        thread.start()

    def on_start(self) -> None:
        """Start the ticker that drives liveness checks."""
        self.thread_ident = threading.get_ident()
        ref = self.actor_ref
        interval = self.config.liveness_interval

        def tick() -> None:
            while not self._stop_ticker.wait(interval):
                try:
                    ref.tell(Tick())
                except pykka.ActorDeadError:
                    return

        self._ticker = threading.Thread(target=tick, name=f"ticker:{self.db_name}", daemon=True)
        self._ticker.start()

    def on_stop(self) -> None:
        """Stop the ticker."""
        self._stop_ticker.set()
        self.thread_ident = None  # (the thread ends: another may get its ident)

    def on_failure(self, *exc_info: Any) -> None:
        """A bug in the supervisor itself: fail the storage rather than run unsupervised."""
        self._stop_ticker.set()
        error = exc_info[1]
        self._escalate(f"the supervisor itself failed: {error!r}")

    # -- children ----------------------------------------------------------------------

    def add_child(
        self,
        role: str,
        factory: ChildFactory,
        mailbox: Mailbox,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        """Start a new child role (its first incarnation) and supervise it.

        If it cannot start, the error is raised (into the returned future) and, for
        callers that do not wait for that future, also passed to ``on_error``.
        """
        try:
            if self._state != "running":
                raise StorageUnavailable(f"cannot start {role}: the storage is {self._state}")
            if role in self._children:
                raise ValidationError(f"a child named {role!r} exists already")
            child = _Child(role=role, factory=factory, mailbox=mailbox)
            self._children[role] = child
            try:
                self._start(child)
            except Exception:
                del self._children[role]
                raise
        except Exception as error:
            if on_error is not None:
                on_error(error)
            raise

    def remove_child(self, role: str, *, timeout: float = 5.0) -> None:
        """Stop a child role for good (pool shrink); its mailbox is closed."""
        child = self._children.pop(role, None)
        if child is None:
            return
        child.state = "stopped"
        child.mailbox.closed = StorageUnavailable(f"{role} was retired")
        actor = child.actor
        if actor is not None and actor.actor_ref.is_alive():
            actor.actor_ref.stop(block=False)
        else:
            child.mailbox.fail_all(child.mailbox.closed)

    def _start(self, child: _Child) -> None:
        child.incarnation += 1
        child.actor = None
        child.dying_since = None
        try:
            actor = child.factory(child.role, child.incarnation, child.mailbox)
        except Exception as error:
            log.exception("could not create %s", child.role)
            if child.state == "restarting":
                # Count it as a failure of the new incarnation: backoff, then escalation.
                child.state = "running"
                self._failed(child, error)
                return
            raise  # the first start: whoever added the role gets the error
        # pykka's Actor.start() builds the actor itself; we need the instance built by
        # the factory, so register and start it the way Actor.start() does.
        if child.state == "restarting":
            # "restart" is announced once the new incarnation runs, not when its thread
            # starts: its on_start (opening the file, the writer's quick_check) may fail.
            ref = self.actor_ref
            running = Running(child.role, child.incarnation)
            actor.on_running = lambda: _tell_quietly(ref, running)
        pykka.ActorRegistry.register(actor.actor_ref)
        log.debug("starting %s incarnation %d (%s)", child.role, child.incarnation, type(actor))
        try:
            actor._start_actor_loop()
        except Exception as error:  # e.g. "can't start new thread"
            pykka.ActorRegistry.unregister(actor.actor_ref)
            log.exception("could not start %s", child.role)
            if child.state == "restarting":
                child.state = "running"
                self._failed(child, error)
                return
            raise
        child.actor = actor
        child.state = "running"

    def on_receive(self, message: Any) -> Any:
        """Handle failure reports, restart timers and ticks."""
        if isinstance(message, ChildFailed):
            child = self._children.get(message.role)
            if child is not None and child.incarnation == message.incarnation:
                self._failed(child, message.error)
        elif isinstance(message, Restart):
            child = self._children.get(message.role)
            if (
                child is not None
                and child.state == "restarting"
                and child.incarnation == message.incarnation
                and self._state == "running"
            ):
                self._start(child)
        elif isinstance(message, Running):
            child = self._children.get(message.role)
            if (
                child is not None
                and child.incarnation == message.incarnation
                and child.state == "running"
                and self._state == "running"
            ):
                self.events.emit("restart", child.role, incarnation=child.incarnation)
        elif isinstance(message, Tick):
            self._tick()
        else:
            return super().on_receive(message)
        return None

    def report(self, role: str, incarnation: int, error: BaseException | None) -> None:
        """Thread-safe entry for children: queue a :class:`ChildFailed`."""
        with contextlib.suppress(pykka.ActorDeadError):  # shutting down
            self.actor_ref.tell(ChildFailed(role, incarnation, error))

    def _tick(self) -> None:
        now = time.monotonic()
        for child in list(self._children.values()):
            actor = child.actor
            if child.state == "running" and actor is not None:
                thread = actor.thread
                ended = thread is not None and not thread.is_alive()
                if ended and not actor.reported:
                    self._failed(child, None)
                elif ended or not actor.actor_ref.is_alive():
                    # pykka marks a failing actor stopped before on_failure runs: its
                    # thread is still cleaning up (rolling back, detaching the cache)
                    # and reports when done, or its report already waits behind this
                    # tick. Starting the next incarnation meanwhile would let the two
                    # overlap (or lose the report's error), so wait for the report, and
                    # restart without it only after a grace.
                    if child.dying_since is None:
                        child.dying_since = now
                    elif now - child.dying_since >= CLEANUP_GRACE:
                        self._failed(child, None)
        if self._state == "running":
            try:
                self.on_tick(now)
            except Unrecoverable as error:
                self._escalate(str(error))
            except Exception:
                log.exception("maintenance tick failed")

    def _failed(self, child: _Child, error: BaseException | None) -> None:
        """A child died: restart it after a backoff, or escalate."""
        if child.state != "running" or self._state != "running":
            return
        reason = repr(error) if error is not None else "stopped without reporting"
        child.last_error = reason
        child.state = "restarting"
        now = time.monotonic()
        window = self.config.restart_window
        times = self._restart_times
        while times and now - times[0] > window:
            times.popleft()
        if len(times) >= self.config.restart_max:
            self._escalate(
                f"{child.role} failed ({reason}) after {len(times)} restarts within "
                f"{window:g}s (restart intensity restart_max={self.config.restart_max})"
            )
            return
        times.append(now)
        recent = child.recent
        while recent and now - recent[0] > window:
            recent.popleft()
        recent.append(now)
        child.restarts += 1
        self._restarts += 1
        if self.on_restart is not None:
            try:
                self.on_restart(child.role)
            except Exception:
                log.exception("counting the restart of %s failed", child.role)
        delay = min(
            self.config.restart_backoff_initial * 2 ** (len(recent) - 1),
            self.config.restart_backoff_max,
        ) * (1 + self.config.restart_backoff_jitter * self._random.random())
        log.warning("%s failed (%s); restarting in %.3fs", child.role, reason, delay)
        ref = self.actor_ref
        message = Restart(child.role, child.incarnation)
        timer = threading.Timer(delay, lambda: _tell_quietly(ref, message))
        timer.daemon = True
        timer.start()

    def _escalate(self, why: str) -> None:
        if self._state == "failed":
            return
        self._state = "failed"
        self._failure = why
        log.error("storage %s failed: %s", self.db_name, why)
        error = StorageUnavailable(
            f"storage {self.db_name!r} failed: {why}. The runtime stopped instead of "
            "restarting in a loop; check the logs, fix the cause and reopen the storage"
        )
        for child in self._children.values():
            # The one that failed for the last time, and the others stopped with it.
            child.state = "failed" if child.state == "restarting" else "stopped"
            child.mailbox.closed = error
            actor = child.actor
            if actor is not None and actor.actor_ref.is_alive():
                # In front: nothing queued is handled any more; teardown fails it all.
                child.mailbox.replay_control(Envelope(_ActorStop()))
            else:
                child.mailbox.fail_all(error)
        try:
            self.on_escalate(error)  # (first: the event's handlers see the storage failed)
        except Exception:
            log.exception("escalation callback failed")
        self.events.emit("escalate", "supervisor", reason=why)

    # -- queries and fault injection ---------------------------------------------------

    def status(self) -> SupervisorStatus:
        """Every child with its incarnation, restarts and state."""
        children = tuple(
            ChildStatus(
                role=c.role,
                incarnation=c.incarnation,
                restarts=c.restarts,
                state=c.state,
                last_error=c.last_error,
            )
            for c in self._children.values()
        )
        return SupervisorStatus(
            state=self._state,
            children=children,
            restarts=self._restarts,
            failure=self._failure,
        )

    def kill(self, role: str, how: KillMode = "crash") -> int:
        """Inject a failure into ``role``; returns the incarnation that was hit."""
        child = self._children.get(role) if isinstance(role, str) else None
        if child is None:
            known = sorted(self._children)
            raise ValidationError(f"no child {role!r}; children: {known}")
        actor = child.actor
        if actor is None or child.state != "running":
            if self._state == "failed" and isinstance(child.mailbox.closed, AtlasError):
                raise child.mailbox.closed  # (as every other call: StorageUnavailable)
            raise ValidationError(f"{role} is {child.state}; nothing to kill")
        if child.killed == child.incarnation:
            # (A second stop or crash would wait in the role's mailbox, which outlives
            # the incarnation, and kill the next one.)
            raise ValidationError(f"{role} incarnation {child.incarnation} is being killed")
        if how not in ("crash", "stop"):
            raise ValidationError(f"how={how!r}; use 'crash' or 'stop'")
        child.killed = child.incarnation
        if how == "crash":
            # In front of the mailbox: the actor fails before handling anything else.
            crash = Crash(f"kill({role!r}, how='crash')", child.incarnation)
            child.mailbox.replay_control(Envelope(crash))
        else:
            # Behind what is queued: the incarnation stops once it has handled that.
            stop = Crash(f"kill({role!r}, how='stop')", child.incarnation, stop=True)
            child.mailbox.put(Envelope(stop))
        return child.incarnation

    def stop_children(self, timeout: float) -> None:
        """Stop every child, readers first and the writer last, waiting up to ``timeout``."""
        self._state = "stopped" if self._state == "running" else self._state
        deadline = time.monotonic() + timeout
        # Readers, then the writer (its queued writes commit), then the cache (it
        # records the final state of the files).
        order = {"writer": 1, "cache": 2}
        ordered = sorted(self._children.values(), key=lambda c: order.get(c.role, 0))
        for child in ordered:
            actor = child.actor
            if actor is not None and actor.actor_ref.is_alive():
                try:
                    actor.actor_ref.stop(block=True, timeout=max(0.01, deadline - time.monotonic()))
                except pykka.Timeout:
                    log.warning("%s did not stop within %.1fs", child.role, timeout)
            else:
                # Stopped already, or no incarnation at all (one waiting out its restart
                # backoff, say). A stopped one's thread may still be running what it
                # accepted (pykka marks it stopped before on_stop): let it finish. Then
                # whatever is left gets the closed error now, not at its deadline.
                thread = actor.thread if actor is not None else None
                if thread is not None and thread.is_alive():
                    thread.join(max(0.01, deadline - time.monotonic()))
                closed = child.mailbox.closed
                child.mailbox.fail_all(
                    closed if closed is not None else StorageClosedError(self.db_name)
                )
            child.state = "stopped"


def _tell_quietly(ref: pykka.ActorRef[Any], message: Any) -> None:
    with contextlib.suppress(pykka.ActorDeadError):  # the supervisor stopped meanwhile
        ref.tell(message)

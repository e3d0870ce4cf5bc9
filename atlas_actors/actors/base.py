"""What every atlas actor shares.

A mailbox that outlives incarnations, the message envelope fields, thread naming, and
failure reporting to the supervisor.

pykka facts this module relies on (pykka 4, ``pykka/_actor.py``):

* an exception raised while handling a ``tell`` stops the actor and calls
  ``on_failure`` in the actor's thread; one raised while handling an ``ask`` goes back to
  the caller and the actor lives on;
* ``on_start`` failing stops the actor *without* calling ``on_failure``;
* on stopping, pykka drains the inbox and fails queued asks with ``ActorDeadError``;
* a ``BaseException`` that is no ``Exception`` (``SystemExit``, a test framework's
  outcome) raised while handling a message makes pykka stop the actor gracefully
  (``on_stop``) and then *every* actor of the process. The actors here raise it again
  as :class:`Escaped`, an ``Exception``: a crash of that actor alone, restarted by the
  supervisor.

A role (``writer``, ``reader-2``) keeps one :class:`Mailbox` for its whole life. Each
incarnation of the role reads from it, so a message that a dead incarnation never took
out of the mailbox is simply handled by the next one: nothing needs resending. To make
that work, :class:`RoleActor` replaces pykka's inbox with the role's mailbox and does not
drain it when it dies (only when the role itself is shut down).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import pykka
from opentelemetry.context import Context

# pykka's Envelope is internal, but it is what pykka's loop expects to find in the inbox;
# pinned by pykka>=4.1,<5 in pyproject.toml.
from pykka._envelope import Envelope

from atlas_actors.errors import (
    ActorCrashedError,
    AtlasError,
    OperationTimeout,
    StorageClosedError,
)
from atlas_actors.future import Future

__all__ = [
    "Crash",
    "Escaped",
    "InjectedCrash",
    "Mailbox",
    "Notice",
    "Op",
    "RoleActor",
    "Unrecoverable",
    "sort_out",
]

log = logging.getLogger(__name__)

_op_ids = itertools.count(1)


class InjectedCrash(RuntimeError):
    """Raised inside an actor by ``db.supervisor.kill(role, how="crash")``."""


class Unrecoverable(Exception):
    """A part of the storage cannot recover by itself: the supervisor escalates.

    Raised by the maintenance the supervisor's tick runs (readers that cannot reopen
    their connections); the supervisor escalates with its message, as when the restart
    intensity is exceeded.
    """


class Escaped(Exception):
    """A ``BaseException`` that is no ``Exception``, raised in an actor, carried as one.

    pykka would stop every actor of the process for the original (see the module
    docstring); as an ``Exception`` it fails the one actor, which the supervisor
    restarts. A function run in the writer that raises one fails only its own call,
    whose caller gets the original (as ``concurrent.futures`` does).
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(f"{type(original).__name__} raised inside an actor: {original!r}")
        self.original = original


class Notice:
    """A control message that tells the actor something, not to stop or crash.

    A wait that ends early for a stop or a crash goes on past a notice.
    """

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Crash:
    """Fault injection: make the receiving actor fail as if it had a bug (or stop it)."""

    reason: str = "injected crash"
    incarnation: int | None = None
    """The incarnation aimed at (None: whichever gets it). The role's mailbox outlives
    its incarnations: one queued for an incarnation that died meanwhile is ignored."""
    stop: bool = False
    """Stop the incarnation instead, as pykka's own stop message would
    (``kill(how="stop")``), but aimed as above: pykka's, left behind by an incarnation
    that died another way first, would stop the next one."""


class Op:
    """A request to an actor, with the envelope fields every message carries."""

    __slots__ = (
        "claimed",
        "deadline",
        "enqueued_at",
        "future",
        "id",
        "result",
        "session",
        "trace_context",
    )

    result: Any
    """What running the op produced, held until its batch commits (set by the writer)."""

    replayable = True
    """True when a rolled-back attempt had no effect, so a new incarnation may run it again."""

    # An op is its own pykka envelope (pykka's loop reads .message and .reply_to), which
    # saves building one per message on the write path.
    reply_to = None

    @property
    def message(self) -> Op:
        """The op itself, as pykka's loop expects of an envelope."""
        return self

    def __init__(
        self,
        future: Future[Any],
        session: int,
        trace_context: Context | None,
    ) -> None:
        self.id = next(_op_ids)
        """Operation id, unique in the process."""
        self.future = future
        """Resolved by the actor with the result or the error."""
        self.session = session
        """The caller's session: its thread id (transactions add their own)."""
        self.deadline = future.deadline
        """``time.monotonic()`` after which the op is not started any more."""
        self.enqueued_at = time.monotonic()
        """When the op entered the mailbox (queue-wait metrics)."""
        self.trace_context = trace_context
        """The caller's OpenTelemetry context (None when tracing is off)."""
        self.claimed = False
        """True once an actor claimed the future (a replayed op is not claimed again)."""

    def claim(self) -> bool:
        """Take the right to run this op; False if its caller withdrew it (timed out)."""
        if not self.claimed:
            # Future.claim() inlined: this runs once per operation.
            self.claimed = next(self.future._claim, 0) == 1
        return self.claimed

    def describe(self) -> str:
        """A short description for errors and spans."""
        return self.future.operation

    def fail(self, error: BaseException) -> None:
        """Resolve the op's future with ``error``."""
        self.future.set_exception(error)

    def awaited(self, now: float) -> bool:
        """Whether its caller still waits: not given up (resolved), not past its deadline."""
        return not self.future.done() and now <= self.deadline

    def too_late(self, now: float) -> OperationTimeout:
        """The error of an op taken up past its deadline: never started, safe to retry."""
        return OperationTimeout(self.describe(), now - self.enqueued_at, applied=False)


OpT = TypeVar("OpT", bound=Op)


def sort_out(ops: Iterable[OpT], now: float) -> tuple[list[OpT], list[OpT]]:
    """Ops queued or held for a while: (those still awaited, those past their deadline).

    Ops given up (resolved by a caller that timed out) are in neither. The late ones are
    claimed here: fail each with :meth:`Op.too_late` (outside any lock held meanwhile:
    failing runs the future's callbacks).
    """
    awaited: list[OpT] = []
    late: list[OpT] = []
    for op in ops:
        if op.awaited(now):
            awaited.append(op)
        elif not op.future.done() and op.claim():
            late.append(op)
    return awaited, late


Letter = Any
"""What a mailbox holds: a pykka ``Envelope``, or an :class:`Op` (its own envelope)."""


class Mailbox:
    """A bounded mailbox that survives the incarnations of one role.

    Ops sent with :meth:`send` count against ``capacity``, and so do those the actor
    holds back (``held``) or put back in front; a sender finding the mailbox full waits
    until its deadline (backpressure), then gets :class:`OperationTimeout`.
    The bound is checked without a lock, so concurrent senders may overshoot it by at
    most their number. pykka's own control messages (``put``) are never refused, so
    stopping an actor never waits behind a full mailbox. Ops an incarnation had started
    but rolled back are put in front (:meth:`replay`) so the next one runs them first,
    in their original order.
    """

    def __init__(self, role: str, capacity: int) -> None:
        self.role = role
        self.capacity = capacity
        self._queue: queue.SimpleQueue[Letter] = queue.SimpleQueue()
        self._front: deque[Letter] = deque()
        self._room = threading.Condition(threading.Lock())
        self._senders_waiting = 0
        self.held = 0
        """Ops the actor took out but holds back (the writer's, behind a lease): they
        count against ``capacity`` as if they were still queued."""
        self.count_held: Callable[[], int] | None = None
        """Those of ``held`` someone still waits for (set by the actor), asked by a sender
        that finds the mailbox full: ops given up behind a lease take no room."""
        self.closed: BaseException | None = None
        """Set (to the error senders get) once the role is shut down."""
        self.refuse_wait: Callable[[Op], None] | None = None
        """Set by the storage: raises if the calling sender's wait for room could never
        end (the writer's: a thread holding the writer lease, behind which the mailbox
        fills)."""

    # pykka's inbox protocol: put / get / empty.
    def put(self, envelope: Letter, /) -> None:
        """Queue a control message (never refused)."""
        self._queue.put(envelope)

    def get(self) -> Letter:
        """Take the next message, replayed ones first; blocks while there is none."""
        letter = self.take_nowait()
        if letter is None:
            letter = self._queue.get()
            if self._senders_waiting:
                self._wake_a_sender()
        return letter

    def take_nowait(self) -> Letter | None:
        """Take the next message like :meth:`get`, or None at once if there is none."""
        if self._front:
            try:
                letter = self._front.popleft()
            except IndexError:
                pass
            else:
                if self._senders_waiting:
                    self._wake_a_sender()
                return letter
        try:
            envelope = self._queue.get_nowait()
        except queue.Empty:
            return None
        if self._senders_waiting:
            self._wake_a_sender()
        return envelope

    def _wake_a_sender(self) -> None:
        """A message was taken: one sender waiting for room may queue its own."""
        with self._room:
            self._room.notify()

    def put_back(self, envelope: Letter) -> None:
        """Return a message just taken to the front, to be taken again first."""
        self._front.appendleft(envelope)

    def empty(self) -> bool:
        """Return True when no message waits."""
        return not self._front and self._queue.empty()

    def qsize(self) -> int:
        """Messages waiting (approximate)."""
        return len(self._front) + self._queue.qsize()

    def send(self, op: Op, *, bounded: bool = True) -> None:
        """Queue ``op``, waiting for room until its deadline.

        ``bounded=False``: never waits. What ends a hold (a transaction giving the
        writer lease back) must get through.
        """
        if self.closed is not None:
            raise self.closed
        if bounded and self._queue.qsize() + self.held + len(self._front) >= self.capacity:
            if self.refuse_wait is not None:
                self.refuse_wait(op)
            self._wait_for_room(op)
        self._queue.put(op)  # an op is its own envelope
        if self.closed is not None:
            # Closed while we queued: make sure nobody waits on it forever.
            self.fail_all(self.closed)

    def _wait_for_room(self, op: Op) -> None:
        with self._room:
            self._senders_waiting += 1
            try:
                while self._queue.qsize() + self.held_awaited() + len(self._front) >= self.capacity:
                    remaining = op.deadline - time.monotonic()
                    if remaining <= 0:
                        raise OperationTimeout(
                            f"{op.describe()} (the {self.role} mailbox is full: "
                            f"{self.capacity} messages wait)",
                            op.deadline - op.enqueued_at,
                            applied=False,
                        )
                    if self.closed is not None:
                        raise self.closed
                    # Woken by get(); the short timeout also covers a missed wake-up.
                    self._room.wait(min(remaining, 0.05))
            finally:
                self._senders_waiting -= 1

    def has_room(self) -> bool:
        """Whether the mailbox has room now (held ops given up take none)."""
        return self._queue.qsize() + self.held_awaited() + len(self._front) < self.capacity

    def held_awaited(self) -> int:
        """The held ops someone still waits for."""
        count = self.count_held
        return self.held if count is None else min(self.held, count())

    def control_waiting(self) -> bool:
        """Whether a stop or a crash (a control message, no :class:`Notice`) waits."""
        return any(
            not isinstance(letter, Op) and not isinstance(letter.message, Notice)
            for letter in list(self._front)
        )

    def release_held(self) -> None:
        """The actor holds nothing back any more: senders waiting for room may go on."""
        self.held = 0
        if self._senders_waiting:
            with self._room:
                self._room.notify_all()

    def replay(self, ops: Sequence[Op]) -> None:
        """Put ops back in front, to be taken again before anything else, in order."""
        for op in reversed(ops):
            self._front.appendleft(op)  # its own envelope

    def take_replayed(self) -> Op | None:
        """The op put back in front by :meth:`replay` and not yet taken, or None."""
        front = self._front
        if front and isinstance(front[0], Op):
            op: Op = front.popleft()
            if self._senders_waiting:
                self._wake_a_sender()
            return op
        return None

    def replay_control(self, envelope: Letter) -> None:
        """Put a control message in front of everything (fault injection, escalation)."""
        self._front.appendleft(envelope)
        # Wake an actor blocked on the queue: it finds the front message next time.
        self._queue.put(Envelope(_Wake()))

    def fail_all(self, error: BaseException) -> None:
        """Fail every waiting op and pykka ask with ``error`` (role shut down)."""
        while True:
            try:
                envelope = self._front.popleft()
            except IndexError:
                try:
                    envelope = self._queue.get_nowait()
                except queue.Empty:
                    return
            if isinstance(envelope.message, Op):
                envelope.message.fail(error)
            elif envelope.reply_to is not None:
                envelope.reply_to.set_exception(exc_info=(type(error), error, None))


class _Wake:
    """A no-op message that wakes an actor blocked on an empty mailbox."""


FailureCallback = Callable[[str, int, BaseException | None], None]


class RoleActor(pykka.ThreadingActor):
    """Base of the atlas actors: one incarnation of a role, reading the role's mailbox."""

    use_daemon_thread = True  # an unclosed storage must not keep the process alive

    def __init__(
        self,
        *,
        role: str,
        incarnation: int,
        mailbox: Mailbox,
        db_name: str,
        on_failure_report: FailureCallback,
    ) -> None:
        super().__init__()
        self.role = role
        self.incarnation = incarnation
        self.db_name = db_name
        self._report = on_failure_report
        self._reported = False
        self._current: Op | None = None
        # The role's mailbox replaces pykka's per-actor inbox (see the module docstring).
        self.actor_inbox = mailbox
        self._actor_ref.actor_inbox = mailbox
        self.mailbox = mailbox
        self.thread: threading.Thread | None = None
        self.stopping_alone = False
        """Set when this incarnation is stopped while the storage runs on (a next one
        follows): its ``on_stop`` must not act as if the storage were closing."""
        self.on_running: Callable[[], None] | None = None
        """Called in the actor's thread once ``on_start`` returned (set by the supervisor
        before the thread starts): the incarnation is up, not merely starting."""

    def _start_actor_loop(self) -> None:
        # Threads named after their role and database, so a thread dump reads.
        self.thread = threading.Thread(
            target=self._actor_loop,
            name=f"{self.role}:{self.db_name}#{self.incarnation}",
            daemon=True,
        )
        self.thread.start()

    def _actor_loop_setup(self) -> None:
        try:
            self.on_start()
        except Exception as error:
            self._handle_failure(type(error), error, error.__traceback__)
            self.report_failure(error)
            return
        running = self.on_running
        if running is not None:
            try:
                running()
            except Exception:
                log.exception("announcing that %s runs failed", self.role)

    def _handle_receive(self, message: Any) -> Any:
        if type(message) is _Wake:
            return None
        try:
            return super()._handle_receive(message)
        except Exception:
            raise
        except BaseException as error:
            raise Escaped(error) from error

    def _actor_loop_teardown(self) -> None:
        # Unlike pykka's default, keep the mailbox for the next incarnation unless the
        # role is being shut down for good.
        if self.mailbox.closed is not None:
            self.mailbox.fail_all(self.mailbox.closed)

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Release resources and tell the supervisor (runs in the dying actor's thread)."""
        current, self._current = self._current, None
        try:
            self.on_crash(current, exception_value)
        finally:
            self.report_failure(exception_value)

    def on_crash(self, current: Op | None, error: BaseException | None) -> None:
        """Subclass hook: clean up after a crash; ``current`` was being handled."""
        if current is not None:
            current.fail(ActorCrashedError(self.role, current.describe(), error))

    @property
    def reported(self) -> bool:
        """True once this incarnation told the supervisor it died."""
        return self._reported

    def crash_if_mine(self, crash: Crash) -> None:
        """Fail (or stop) as :class:`Crash` asks, unless aimed at an earlier incarnation."""
        if crash.incarnation is not None and crash.incarnation != self.incarnation:
            return
        if crash.stop:
            self.stopping_alone = True  # (the storage runs on: a next incarnation follows)
            self._stop()  # what pykka does on its own stop message
            return
        raise InjectedCrash(crash.reason)

    def report_failure(self, error: BaseException | None) -> None:
        """Tell the supervisor this incarnation died (once)."""
        if self._reported:
            return
        self._reported = True
        try:
            self._report(self.role, self.incarnation, error)
        except Exception:
            log.exception("could not report the failure of %s", self.role)

    def closed_error(self) -> AtlasError:
        """The error for ops that arrive once the role is shut down."""
        closed = self.mailbox.closed
        return closed if isinstance(closed, AtlasError) else StorageClosedError(self.db_name)

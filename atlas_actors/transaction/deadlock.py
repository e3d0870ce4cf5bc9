"""Deadlock detection: who waits for whom, and refusing a wait that closes a cycle.

Sessions (threads) hold resources (the writer lease, reader connections) and wait for
them. Before a session blocks, :meth:`WaitForGraph.check` follows the holders of what
it wants, and what *they* wait for, and so on; if the path comes back to the session,
the wait would never end, so it is refused at once with :class:`DeadlockError` naming
the cycle. A resource with several units (the reader pool) only closes a cycle when
every holder leads back to the waiter and the pool cannot grow.

A wait can only close a cycle if the waiting session holds something, so the common
case (a session holding nothing) is answered without a lock (what a session holds only
changes by its own actions while it is not waiting), and its wait is not recorded: a
search only follows the waits of holders, so it could never pass through it. A resource
whose holders some other part keeps already (the writer lease) is *tracked* instead of
copied: the graph reads that mapping when it searches, and its owner changes it under
:attr:`lock`, so a search sees one consistent state.

Callers keep their own cheap test of "may this thread close a cycle?" (a set of thread
ids, read on every write): :meth:`watch` tells them when a session starts holding a
recorded resource (a pinned reader) and when it holds none any more.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping

from atlas_actors.errors import DeadlockError

__all__ = ["WaitForGraph"]


def _always() -> bool:
    return True


_Exhaustion = tuple[
    Callable[[], bool], Callable[[], int] | None, Callable[[Collection[int]], int] | None
]
"""How to tell a resource's units are all taken: (all taken?, how many in use, how many
lent to the given sessions), as :meth:`WaitForGraph.check` was given them."""


class WaitForGraph:
    """Holders and waiters of named resources; thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        """Held while the graph searches: hold it to change a tracked mapping."""
        self._holders: defaultdict[str, dict[int, str]] = defaultdict(dict)
        self._held: dict[int, int] = {}
        """Session → how many resources it holds (recorded ones; tracked ones apart)."""
        self._times: dict[tuple[int, str], int] = {}
        """(session, resource) → how many times it holds it (two snapshots pin two
        readers): it still holds the resource until it released every one."""
        self._tracked: dict[str, tuple[Mapping[int, object], str]] = {}
        self._tracked_holders: tuple[Mapping[int, object], ...] = ()
        """The tracked mappings (what :meth:`check`'s lock-free answer looks at)."""
        self._waiting: dict[int, str] = {}
        self._exhaustion: dict[str, _Exhaustion] = {}
        """Resource → how to tell whether every unit is taken (from :meth:`check`): a
        wait for a resource of several units passed through mid-search is a link of a
        cycle only if every unit is taken by its holders."""
        self._on_hold: Callable[[int], None] | None = None
        self._on_free: Callable[[int], None] | None = None

    def watch(self, on_hold: Callable[[int], None], on_free: Callable[[int], None]) -> None:
        """Be told when a session starts holding a recorded resource, and stops.

        ``on_hold(session)`` when it starts holding one, ``on_free(session)`` when it
        holds none any more (or is forgotten).

        Both run under :attr:`lock`, in the thread that changed the graph: they must be
        quick and must not call the graph.
        """
        self._on_hold = on_hold
        self._on_free = on_free

    def holds(self, session: int) -> bool:
        """Whether ``session`` holds a recorded resource (call under :attr:`lock`)."""
        return session in self._held

    def track(self, resource: str, holders: Mapping[int, object], label: str) -> None:
        """Take ``resource``'s holders from a live mapping (session → what it holds by).

        ``label`` formats a value of the mapping for messages (``"transaction {}"``).
        The mapping's owner keeps it up to date, under :attr:`lock`; the graph only
        reads it.
        """
        self._tracked[resource] = (holders, label)
        self._tracked_holders = tuple(mapping for mapping, _ in self._tracked.values())

    def hold(self, session: int, resource: str, label: str) -> None:
        """Record that ``session`` holds ``resource`` (once more, if it holds it already).

        ``label`` names it in messages.
        """
        with self.lock:
            holders = self._holders[resource]
            if session not in holders:
                held = self._held.get(session, 0) + 1
                self._held[session] = held
                if held == 1 and self._on_hold is not None:
                    self._on_hold(session)
            holders[session] = label
            key = (session, resource)
            self._times[key] = self._times.get(key, 0) + 1

    def release(self, session: int, resource: str) -> None:
        """Record that ``session`` holds ``resource`` once less (no longer, after the last)."""
        with self.lock:
            key = (session, resource)
            times = self._times.pop(key, 0) - 1
            if times > 0:
                self._times[key] = times
                return
            if self._holders[resource].pop(session, None) is not None:
                left = self._held.pop(session) - 1
                if left:
                    self._held[session] = left
                elif self._on_free is not None:
                    self._on_free(session)

    def _units_held(self, resource: str) -> int:
        """Units of ``resource`` its holders hold (a recorded session may hold several)."""
        if resource in self._tracked:
            return len(self._holders_of(resource))  # (one each)
        holders = self._holders.get(resource, {})
        return sum(self._times.get((session, resource), 1) for session in holders)

    def holders(self, resource: str) -> dict[int, str]:
        """Sessions holding ``resource``, with their labels."""
        with self.lock:
            return self._holders_of(resource)

    def _holders_of(self, resource: str) -> dict[int, str]:
        tracked = self._tracked.get(resource)
        if tracked is None:
            return dict(self._holders.get(resource, {}))
        mapping, label = tracked
        return {session: label.format(value) for session, value in list(mapping.items())}

    def check(
        self,
        session: int,
        resource: str,
        *,
        all_units_taken: Callable[[], bool] = _always,
        units_in_use: Callable[[], int] | None = None,
        units_lent_to: Callable[[Collection[int]], int] | None = None,
        advice: str | Callable[[], str] = "",
        record: bool = False,
    ) -> bool:
        """Raise DeadlockError if ``session`` waiting for ``resource`` closes a cycle.

        ``advice`` (text, or a function making it) says what to do instead. Returns
        whether ``session`` holds anything: only then can another session's search pass
        through its wait. ``record``: also record the wait then, in the same locked step
        as the check (call :meth:`done_waiting` after it), so two sessions that each hold
        what the other is about to wait for cannot both pass. ``units_in_use``: how many
        units of ``resource`` are taken, by recorded holders or not; more than the
        recorded holders means one will come free (a plain read's), so no cycle.
        """
        if session not in self._held:
            for mapping in self._tracked_holders:
                if session in mapping:
                    break
            else:
                return False  # every cycle through a wait passes through what the waiter holds
        with self.lock:
            self._exhaustion[resource] = (all_units_taken, units_in_use, units_lent_to)
            exhausted = self._exhausted(resource, ())
            cycle = self._cycle(session, resource, exhausted)
            if cycle is None and record:
                self._waiting[session] = resource
        if cycle is not None:
            text = advice() if callable(advice) else advice
            raise DeadlockError(
                cycle, text or "the wait could never end; end the transaction you hold first"
            )
        return True

    def forget(self, session: int) -> None:
        """Session ``session`` ended: drop everything it holds and waits for."""
        with self.lock:
            self._waiting.pop(session, None)
            if self._held.pop(session, None) is not None and self._on_free is not None:
                self._on_free(session)
            for holders in self._holders.values():
                holders.pop(session, None)
            for key in [key for key in self._times if key[0] == session]:
                del self._times[key]

    def waiting(self, session: int, resource: str) -> None:
        """Record that ``session`` now waits for ``resource`` (call ``done_waiting`` after)."""
        with self.lock:
            self._waiting[session] = resource

    def done_waiting(self, session: int) -> None:
        """Record that ``session`` stopped waiting."""
        with self.lock:
            self._waiting.pop(session, None)

    def waits(self) -> dict[int, str]:
        """Recorded waits: sessions that hold something, with the resource each waits for."""
        with self.lock:
            return dict(self._waiting)

    def _exhausted(self, resource: str, cycle: Collection[int]) -> bool:
        """Whether every unit of ``resource`` is taken for good (searching ``cycle``).

        Taken for good: by its recorded holders, or lent to a session of ``cycle``, the
        holders the search passed through (each goes on only at the cycle's end; the
        searching session's own lease is not counted: another thread may release it).
        Any other unit comes free (an ordinary read's reader, another thread's lease),
        and so does one the pool can still add: then a wait for it is no link of a
        cycle. Unknown (no check seen for it): taken, as a one-unit resource is.
        """
        known = self._exhaustion.get(resource)
        if known is None:
            return True
        all_units_taken, units_in_use, units_lent_to = known
        exhausted = all_units_taken()
        if exhausted and units_in_use is not None:
            stuck = self._units_held(resource)
            if units_lent_to is not None:
                stuck += units_lent_to(cycle)
            exhausted = units_in_use() <= stuck
        return exhausted

    def _cycle(self, start: int, resource: str, exhausted: bool) -> list[str] | None:
        """A path start → ... → start through holders and waits, or None."""
        path = [f"thread {start}", f"waits for {resource}"]
        return self._search(start, resource, exhausted, path, set())

    def _search(
        self,
        start: int,
        resource: str,
        exhausted: bool,
        path: list[str],
        seen: set[int],
    ) -> list[str] | None:
        holders = self._holders_of(resource)
        if not holders:
            return None
        multi = len(holders) > 1 or resource.startswith("pool:")
        if multi and not exhausted:
            return None  # a free unit will come: no deadlock
        found: list[str] | None = None
        for holder, label in holders.items():
            step = [*path, f"held by thread {holder} ({label})"]
            if holder == start:
                found = step
            elif holder in seen:
                found = None
            else:
                next_resource = self._waiting.get(holder)
                found = (
                    self._search(
                        start,
                        next_resource,
                        self._exhausted(next_resource, {*seen, holder}),
                        [*step, f"which waits for {next_resource}"],
                        seen | {holder},
                    )
                    if next_resource is not None
                    else None
                )
            if multi and found is None:
                return None  # one holder can finish and free a unit
            if not multi and found is not None:
                return found
        return found

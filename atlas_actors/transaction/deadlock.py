"""Deadlock detection: who waits for whom, and refusing a wait that closes a cycle.

Sessions (threads) hold resources (the writer lease, reader connections) and wait for
them. Before a session blocks, :meth:`WaitForGraph.check` follows the holders of what
it wants, and what *they* wait for, and so on; if the path comes back to the session,
the wait would never end, so it is refused at once with :class:`DeadlockError` naming
the cycle. A resource with several units (the reader pool) only closes a cycle when
every holder leads back to the waiter and the pool cannot grow.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

from atlas_actors.errors import DeadlockError

__all__ = ["WaitForGraph"]


class WaitForGraph:
    """Holders and waiters of named resources; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders: defaultdict[str, dict[int, str]] = defaultdict(dict)
        self._waiting: dict[int, str] = {}

    def hold(self, session: int, resource: str, label: str) -> None:
        """Record that ``session`` holds ``resource`` (``label`` names it in messages)."""
        with self._lock:
            self._holders[resource][session] = label

    def release(self, session: int, resource: str) -> None:
        """Record that ``session`` no longer holds ``resource``."""
        with self._lock:
            self._holders[resource].pop(session, None)

    def holders(self, resource: str) -> dict[int, str]:
        """Sessions holding ``resource``, with their labels."""
        with self._lock:
            return dict(self._holders[resource])

    def check(
        self,
        session: int,
        resource: str,
        *,
        all_units_taken: Callable[[], bool] = lambda: True,
        advice: str = "",
    ) -> None:
        """Raise DeadlockError if ``session`` waiting for ``resource`` closes a cycle."""
        with self._lock:
            cycle = self._cycle(session, resource, all_units_taken())
        if cycle is not None:
            raise DeadlockError(
                cycle,
                advice or "the wait could never end; end the transaction you hold first",
            )

    def waiting(self, session: int, resource: str) -> None:
        """Record that ``session`` now waits for ``resource`` (call ``done_waiting`` after)."""
        with self._lock:
            self._waiting[session] = resource

    def done_waiting(self, session: int) -> None:
        """Record that ``session`` stopped waiting."""
        with self._lock:
            self._waiting.pop(session, None)

    def waits(self) -> dict[int, str]:
        """Sessions currently waiting, with the resource each waits for."""
        with self._lock:
            return dict(self._waiting)

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
        holders = self._holders.get(resource, {})
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
                        True,
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

"""Small helpers shared by the tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import apsw
import pytest

from atlas_actors.faults import FaultyVFS


def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def run_in_threads(count: int, work: Callable[[int], object], timeout: float = 60.0) -> None:
    """Run ``work(index)`` in ``count`` threads at once and wait for them all."""
    threads = [threading.Thread(target=work, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)


def delay_on_crash(
    monkeypatch: pytest.MonkeyPatch,
    actor_class: type[Any],
    before: Callable[[], object],
    after: Callable[[], object] | None = None,
) -> None:
    """Make ``actor_class.on_crash`` call ``before()`` first and ``after()`` when done.

    Stretches the window in which pykka already counts the actor stopped but its
    clean-up has not run yet.
    """
    original = actor_class.on_crash

    def on_crash(self: Any, current: Any, error: BaseException | None) -> None:
        before()
        try:
            original(self, current, error)
        finally:
            if after is not None:
                after()

    monkeypatch.setattr(actor_class, "on_crash", on_crash)


def gate_writer(db: Any) -> tuple[threading.Event, threading.Event]:
    """Block ``db``'s writer in a function until the returned ``release`` is set.

    Everything sent meanwhile waits in the mailbox, so it runs as one batch after it.
    Returns (entered, release).
    """
    entered, release = threading.Event(), threading.Event()

    def hold(_: object) -> None:
        entered.set()
        release.wait(10)

    db.writer.run(hold)
    assert entered.wait(5)
    return entered, release


class GatedOpenVFS(FaultyVFS):
    """A :class:`FaultyVFS` whose opens of the database file wait while ``gate`` is shut."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()
        """Set once an open of the database file waits at the shut gate."""
        self.opens_waiting = 0
        """How many opens wait at the gate now."""

    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:
        filename = str(name.filename() if hasattr(name, "filename") else name)
        if filename.endswith("atlas.db") and not self.gate.is_set():
            with self.lock:
                self.opens_waiting += 1
            self.waiting.set()
            self.gate.wait(30)
            with self.lock:
                self.opens_waiting -= 1
        return super().xOpen(name, flags)


def xy(db: Any) -> tuple[int, int]:
    """The values of x and y in the ``kv`` fixture's table."""
    rows = db.query("SELECT v FROM kv ORDER BY k")
    return int(rows[0].v), int(rows[1].v)

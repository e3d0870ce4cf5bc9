"""Small helpers shared by the tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest


def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


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

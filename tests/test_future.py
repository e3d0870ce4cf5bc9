"""Future: results, errors, deadlines, withdrawal, callbacks."""

from __future__ import annotations

import threading
import time

import pytest

from atlas_actors.errors import OperationTimeout, ValidationError
from atlas_actors.future import Future


def _future(seconds: float = 5.0) -> Future[int]:
    return Future(time.monotonic() + seconds, "test op", "SELECT 1")


def test_get_returns_the_result_set_by_another_thread() -> None:
    future = _future()
    threading.Timer(0.01, future.set_result, args=(42,)).start()
    assert future.get() == 42
    assert future.get() == 42  # every later waiter passes too


def test_get_raises_the_error_the_actor_set() -> None:
    future = _future()
    future.set_exception(KeyError("boom"))
    with pytest.raises(KeyError, match="boom"):
        future.get()
    assert isinstance(future.exception(), KeyError)


def test_a_timeout_before_any_actor_claims_withdraws_the_operation() -> None:
    future = _future()
    with pytest.raises(OperationTimeout) as caught:
        future.get(timeout=0.01)
    assert caught.value.applied is False
    assert "safe to retry" in str(caught.value)
    assert future.claim() is False  # the actor must not run it any more
    with pytest.raises(OperationTimeout):
        future.get()


def test_a_timeout_after_an_actor_claimed_says_the_outcome_is_unknown() -> None:
    future = _future()
    assert future.claim()
    with pytest.raises(OperationTimeout) as caught:
        future.get(timeout=0.01)
    assert caught.value.applied is None
    future.set_result(7)
    assert future.get() == 7


def test_the_deadline_bounds_every_wait_even_without_a_timeout() -> None:
    future = _future(seconds=0.05)
    started = time.monotonic()
    with pytest.raises(OperationTimeout):
        future.get()
    assert time.monotonic() - started < 1.0


def test_callbacks_run_once_whether_added_before_or_after_resolution() -> None:
    seen: list[int] = []
    future = _future()
    future.add_done_callback(lambda f: seen.append(f.get()))
    future.set_result(1)
    future.add_done_callback(lambda f: seen.append(f.get() + 1))
    future.set_result(99)  # a second resolution is ignored
    assert seen == [1, 2]
    assert future.get() == 1


def test_many_threads_waiting_on_one_future_all_wake() -> None:
    future = _future()
    results: list[int] = []
    waiters = [threading.Thread(target=lambda: results.append(future.get())) for _ in range(16)]
    for waiter in waiters:
        waiter.start()
    future.set_result(5)
    for waiter in waiters:
        waiter.join(5)
    assert results == [5] * 16


def test_operation_names_the_statement_for_messages() -> None:
    assert _future().operation == "test op 'SELECT 1'"
    assert "pending" in repr(_future())


@pytest.mark.parametrize("timeout", ["1", True, float("nan"), [1]])
def test_a_timeout_that_is_no_number_of_seconds_is_refused_as_every_calls(
    timeout: object,
) -> None:
    for future in (_future(), _future()):
        with pytest.raises(ValidationError, match="timeout"):
            future.get(timeout)  # type: ignore[arg-type]
        future.set_result(1)  # (resolved: the same answer, not a value that depends on timing)
        with pytest.raises(ValidationError, match="timeout"):
            future.get(timeout)  # type: ignore[arg-type]

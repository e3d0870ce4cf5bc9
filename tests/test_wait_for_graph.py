"""The wait-for graph on its own (pure logic, no threads): cycles, tracked holders."""

from __future__ import annotations

import pytest

from atlas_actors.errors import DeadlockError
from atlas_actors.transaction.deadlock import WaitForGraph


def test_a_wait_for_what_the_session_holds_itself_is_a_cycle() -> None:
    graph = WaitForGraph()
    graph.hold(1, "lease", "transaction 7")
    with pytest.raises(DeadlockError, match="transaction 7"):
        graph.check(1, "lease")


def test_a_cycle_through_another_session_names_every_step() -> None:
    graph = WaitForGraph()
    graph.hold(1, "a", "tx 1")
    graph.hold(2, "b", "tx 2")
    graph.waiting(2, "a")  # 2 holds b and waits for a, which 1 holds
    with pytest.raises(DeadlockError) as caught:
        graph.check(1, "b")  # 1 waiting for b would close the cycle
    text = str(caught.value)
    assert "held by thread 2 (tx 2)" in text
    assert "which waits for a" in text
    assert "held by thread 1 (tx 1)" in text
    graph.done_waiting(2)
    graph.check(1, "b")  # 2 no longer waits: no cycle


def test_holders_of_a_tracked_resource_come_from_the_live_mapping() -> None:
    graph = WaitForGraph()
    owners: dict[int, int] = {}
    graph.track("lease", owners, "transaction {}")
    graph.check(1, "lease")  # nobody holds it
    owners[1] = 42
    assert graph.holders("lease") == {1: "transaction 42"}
    with pytest.raises(DeadlockError, match="transaction 42"):
        graph.check(1, "lease")
    del owners[1]
    graph.check(1, "lease")


def test_a_session_that_holds_nothing_is_never_refused() -> None:
    graph = WaitForGraph()
    graph.hold(2, "a", "tx 2")
    graph.waiting(2, "a")  # inconsistent on purpose: 2 waits for what it holds
    graph.check(1, "a")  # 1 holds nothing, so no cycle can pass through it


def test_holding_twice_needs_two_releases() -> None:
    """Two snapshots of one thread pin two readers: ending one leaves the other held."""
    graph = WaitForGraph()
    graph.hold(1, "a", "first")
    graph.hold(1, "a", "second")
    assert graph.holders("a") == {1: "second"}
    graph.release(1, "a")
    assert graph.holders("a") == {1: "second"}
    with pytest.raises(DeadlockError):
        graph.check(1, "a")  # still its own
    graph.release(1, "a")
    assert graph.holders("a") == {}
    graph.release(1, "a")  # releasing what is not held changes nothing
    graph.check(1, "a")
    graph.hold(1, "a", "again")
    assert graph.holders("a") == {1: "again"}  # (no count left over from before)
    graph.release(1, "a")
    assert graph.holders("a") == {}


def test_advice_may_be_made_only_when_a_cycle_is_found() -> None:
    graph = WaitForGraph()
    made: list[int] = []

    def advice() -> str:
        made.append(1)
        return "commit first"

    graph.check(1, "a", advice=advice)
    assert made == []
    graph.hold(1, "a", "tx 1")
    with pytest.raises(DeadlockError, match="commit first"):
        graph.check(1, "a", advice=advice)
    assert made == [1]


def test_a_pool_cycle_needs_every_unit_taken() -> None:
    graph = WaitForGraph()
    graph.hold(1, "lease", "tx 1")
    graph.hold(2, "pool:readers", "tx 2")
    graph.waiting(2, "lease")
    graph.check(1, "pool:readers", all_units_taken=lambda: False)  # the pool can grow
    with pytest.raises(DeadlockError):
        graph.check(1, "pool:readers", all_units_taken=lambda: True)


def test_check_says_whether_the_wait_needs_recording() -> None:
    # Only a session that holds something can lie on another session's cycle, so only
    # its waits are recorded (the transactions skip waiting()/done_waiting() otherwise).
    graph = WaitForGraph()
    owners: dict[int, int] = {}
    graph.track("lease", owners, "transaction {}")
    assert graph.check(1, "lease") is False  # holds nothing
    graph.hold(1, "pool:readers", "transaction 5")
    assert graph.check(1, "lease") is True  # holds a reader, nobody holds the lease
    graph.release(1, "pool:readers")
    owners[2] = 9
    assert graph.check(2, "pool:readers") is True  # holds the (tracked) lease


def test_a_recorded_check_checks_and_records_in_one_step() -> None:
    # Two sessions each holding what the other is about to wait for: the second to
    # begin its wait finds the first one's, recorded in the same locked step as its check.
    graph = WaitForGraph()
    graph.hold(1, "a", "tx 1")
    graph.hold(2, "b", "tx 2")
    assert graph.check(1, "b", record=True) is True
    assert graph.waits() == {1: "b"}
    with pytest.raises(DeadlockError, match="held by thread 1"):
        graph.check(2, "a", record=True)
    assert graph.waits() == {1: "b"}  # the refused wait is not recorded
    graph.done_waiting(1)
    assert graph.check(3, "a", record=True) is False  # holds nothing: not recorded
    assert graph.waits() == {}


def test_watchers_hear_when_a_session_starts_and_stops_holding() -> None:
    # The storage keeps a cheap set of threads to guard (read on every write): a thread
    # pinning a reader joins it with its first hold and leaves it with its last release.
    graph = WaitForGraph()
    heard: list[tuple[str, int]] = []
    graph.watch(lambda s: heard.append(("hold", s)), lambda s: heard.append(("free", s)))
    graph.hold(1, "pool:readers", "transaction 5")
    graph.hold(1, "pool:readers", "transaction 6")  # a second snapshot: already holding
    graph.hold(1, "b", "tx 1")
    assert heard == [("hold", 1)]
    assert graph.holds(1)
    graph.release(1, "pool:readers")
    graph.release(1, "pool:readers")
    assert heard == [("hold", 1)]  # still holds b
    graph.release(1, "b")
    assert heard == [("hold", 1), ("free", 1)]
    assert not graph.holds(1)
    graph.release(1, "b")  # nothing held: nothing heard
    graph.hold(2, "pool:readers", "transaction 7")
    graph.forget(2)  # the thread ended: its ident may be given to another one
    graph.forget(2)
    assert heard == [("hold", 1), ("free", 1), ("hold", 2), ("free", 2)]

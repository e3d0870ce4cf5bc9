"""Isolation levels: each anomaly reproduced with real threads where a level allows it,
and shown impossible where the level prevents it.

The expected matrix is written out here (from docs/isolation.md), not read from
``isolation.PREVENTS``: a wrong edit to that table must fail the tests, not move them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

import atlas_actors as atlas
from atlas_actors.errors import TransactionConflict
from atlas_actors.transaction.isolation import ANOMALIES, PREVENTS

LEVELS = ["read_uncommitted", "read_committed", "repeatable_read", "serializable"]

# docs/isolation.md, "Anomalies, level by level": True = prevented, False = occurs.
#                        read_uncommitted, read_committed, repeatable_read, serializable
EXPECTED: dict[str, tuple[bool, bool, bool, bool]] = {
    "dirty_write": (True, True, True, True),
    "dirty_read": (True, True, True, True),
    "lost_update": (False, False, True, True),
    "read_skew": (False, False, True, True),
    "write_skew": (False, False, True, True),
    "phantom": (False, False, True, True),
}


def prevented(level: str, anomaly: str) -> bool:
    """Whether the documented matrix says ``level`` prevents ``anomaly``."""
    return EXPECTED[anomaly][LEVELS.index(level)]


STEP = 0.3  # how long one side waits for the other before going on (a blocked peer)
JOIN_TIMEOUT = 30.0  # how long all of a schedule's threads together may take


class Script:
    """Two transactions in two threads, stepping through a schedule by events."""

    def __init__(self) -> None:
        self.events: dict[str, threading.Event] = {}
        self.errors: list[BaseException] = []
        self.conflicts = 0

    def signal(self, name: str) -> None:
        self.events.setdefault(name, threading.Event()).set()

    def wait(self, name: str) -> None:
        # A peer blocked behind the writer lease never signals: go on after STEP.
        self.events.setdefault(name, threading.Event()).wait(STEP)

    def run(self, *bodies: Callable[[], None]) -> None:
        def guarded(body: Callable[[], None]) -> None:
            try:
                body()
            except TransactionConflict:
                self.conflicts += 1
            except BaseException as error:
                self.errors.append(error)

        # Daemon threads: one that hangs must fail the test, not keep pytest from exiting.
        threads = [
            threading.Thread(target=guarded, args=(b,), name=f"T{i}:{b.__qualname__}", daemon=True)
            for i, b in enumerate(bodies, 1)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + JOIN_TIMEOUT
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        hung = [thread.name for thread in threads if thread.is_alive()]
        assert not hung, f"transaction thread(s) still running after {JOIN_TIMEOUT:g}s: {hung}"
        if self.errors:
            raise self.errors[0]


def _value(db: atlas.Storage, key: str) -> int:
    return int(db.query("SELECT v FROM kv WHERE k = ?", [key])[0].v)


def dirty_write(db: atlas.Storage, level: str) -> bool:
    """T1 writes x and rolls back; T2's write of x must not be undone by that rollback."""
    s = Script()

    def t1() -> None:
        tx = db.transactions.begin(level)
        tx.execute("UPDATE kv SET v = 1 WHERE k = 'x'")
        s.signal("t1 wrote")
        s.wait("t2 wrote")
        tx.rollback()

    def t2() -> None:
        s.wait("t1 wrote")
        with db.transaction(level) as tx:
            tx.execute("UPDATE kv SET v = 2 WHERE k = 'x'")
        s.signal("t2 wrote")

    s.run(t1, t2)
    return _value(db, "x") != 2


def dirty_read_aborted(db: atlas.Storage, level: str) -> bool:
    """T2 must not read a value T1 wrote and then rolled back."""
    s, seen = Script(), []

    def t1() -> None:
        tx = db.transactions.begin(level)
        tx.execute("UPDATE kv SET v = 99 WHERE k = 'x'")
        s.signal("t1 wrote")
        s.wait("t2 read")
        tx.rollback()

    def t2() -> None:
        s.wait("t1 wrote")
        with db.transaction(level) as tx:
            seen.append(tx.query("SELECT v FROM kv WHERE k = 'x'")[0].v)
        s.signal("t2 read")

    s.run(t1, t2)
    return 99 in seen


def dirty_read_intermediate(db: atlas.Storage, level: str) -> bool:
    """T2 must not read T1's intermediate value (T1 writes 1, then 2, then commits)."""
    s, seen = Script(), []

    def t1() -> None:
        with db.transaction(level) as tx:
            tx.execute("UPDATE kv SET v = 1 WHERE k = 'x'")
            s.signal("t1 wrote once")
            s.wait("t2 read")
            tx.execute("UPDATE kv SET v = 2 WHERE k = 'x'")

    def t2() -> None:
        s.wait("t1 wrote once")
        with db.transaction(level) as tx:
            seen.append(tx.query("SELECT v FROM kv WHERE k = 'x'")[0].v)
        s.signal("t2 read")

    s.run(t1, t2)
    return 1 in seen


def lost_update(db: atlas.Storage, level: str) -> bool:
    """Both read x = 0, both write x + 1: one increment lost if x ends at 1."""
    s = Script()

    def increment(me: str, other: str) -> Callable[[], None]:
        def body() -> None:
            with db.transaction(level) as tx:
                x = tx.query("SELECT v FROM kv WHERE k = 'x'")[0].v
                s.signal(f"{me} read")
                s.wait(f"{other} read")
                tx.execute("UPDATE kv SET v = ? WHERE k = 'x'", [x + 1])

        return body

    s.run(increment("t1", "t2"), increment("t2", "t1"))
    return _value(db, "x") + s.conflicts < 2


def read_skew(db: atlas.Storage, level: str) -> bool:
    """x + y = 100 always; T1 reading x before and y after T2's transfer sees 125."""
    s, seen = Script(), []

    def t1() -> None:
        with db.transaction(level) as tx:
            x = tx.query("SELECT v FROM kv WHERE k = 'x'")[0].v
            s.signal("t1 read x")
            s.wait("t2 committed")
            y = tx.query("SELECT v FROM kv WHERE k = 'y'")[0].v
            seen.append(x + y)

    def t2() -> None:
        s.wait("t1 read x")
        with db.transaction(level) as tx:
            tx.execute("UPDATE kv SET v = v - 25 WHERE k = 'x'")
            tx.execute("UPDATE kv SET v = v + 25 WHERE k = 'y'")
        s.signal("t2 committed")

    s.run(t1, t2)
    return seen != [100]


def write_skew(db: atlas.Storage, level: str) -> bool:
    """Rule: x + y >= 1. Each sees the other on call and goes off: both end at 0."""
    s = Script()

    def go_off(me: str, other: str, key: str) -> Callable[[], None]:
        def body() -> None:
            with db.transaction(level) as tx:
                on_call = tx.query("SELECT sum(v) AS n FROM kv WHERE k IN ('x', 'y')")[0].n
                s.signal(f"{me} checked")
                s.wait(f"{other} checked")
                if on_call >= 2:
                    tx.execute("UPDATE kv SET v = 0 WHERE k = ?", [key])

        return body

    db.write("UPDATE kv SET v = 1 WHERE k IN ('x', 'y')")
    s.run(go_off("t1", "t2", "x"), go_off("t2", "t1", "y"))
    return _value(db, "x") + _value(db, "y") < 1


def phantom(db: atlas.Storage, level: str) -> bool:
    """T1 counts matching rows twice; T2 inserts one in between: the count changes."""
    s, counts = Script(), []

    def t1() -> None:
        with db.transaction(level) as tx:
            counts.append(tx.query("SELECT count(*) AS n FROM kv WHERE v >= 0")[0].n)
            s.signal("t1 counted")
            s.wait("t2 inserted")
            counts.append(tx.query("SELECT count(*) AS n FROM kv WHERE v >= 0")[0].n)

    def t2() -> None:
        s.wait("t1 counted")
        with db.transaction(level) as tx:
            tx.execute("INSERT INTO kv VALUES ('z', 5)")
        s.signal("t2 inserted")

    s.run(t1, t2)
    return counts[0] != counts[1]


SCENARIOS: dict[str, list[Callable[[atlas.Storage, str], bool]]] = {
    "dirty_write": [dirty_write],
    "dirty_read": [dirty_read_aborted, dirty_read_intermediate],
    "lost_update": [lost_update],
    "read_skew": [read_skew],
    "write_skew": [write_skew],
    "phantom": [phantom],
}


@pytest.fixture
def kv(open_storage: Callable[..., atlas.Storage]) -> atlas.Storage:
    db = open_storage(transaction_timeout=10)
    db.execute("CREATE TABLE kv(k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
    db.write_many("INSERT INTO kv VALUES (?, ?)", [("x", 50), ("y", 50)])
    return db


def test_every_anomaly_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(ANOMALIES) == set(EXPECTED)


def test_the_implementation_table_matches_the_documented_matrix() -> None:
    assert set(PREVENTS) == set(LEVELS)
    documented = {
        level: frozenset(anomaly for anomaly in EXPECTED if prevented(level, anomaly))
        for level in LEVELS
    }
    assert documented == PREVENTS


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("anomaly", ANOMALIES)
def test_each_level_prevents_exactly_the_anomalies_it_claims(
    kv: atlas.Storage, level: str, anomaly: str
) -> None:
    for scenario in SCENARIOS[anomaly]:
        kv.write("UPDATE kv SET v = CASE k WHEN 'x' THEN 0 ELSE 100 END")
        kv.write("DELETE FROM kv WHERE k NOT IN ('x', 'y')")
        if anomaly == "read_skew":
            kv.write("UPDATE kv SET v = 50")
        happened = scenario(kv, level)
        if prevented(level, anomaly):
            assert not happened, f"{scenario.__name__} occurred under {level}"
        else:
            assert happened, f"{scenario.__name__} was not reproduced under {level}"

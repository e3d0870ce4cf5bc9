"""The workload recorder: fingerprints, totals, bounds, threads, speed."""

from __future__ import annotations

import threading

import pytest

from atlas_actors.errors import ValidationError
from atlas_actors.query import QueryStats, WorkloadRecorder
from atlas_actors.query.workload import MAX_SQL_LENGTH, fingerprint


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("select * from Tasks where id = 5", "SELECT *\n FROM tasks WHERE id=-12 -- note"),
        ("SELECT * FROM t WHERE a IN (1, 2, 3)", "SELECT * FROM t WHERE a IN (?)"),
        ("SELECT * FROM t WHERE b = 'it''s'", "SELECT * FROM t WHERE b = x'00ff'"),
        ("SELECT * FROM t LIMIT 10 OFFSET 20", "select * from t limit :n offset @m;"),
        # numbers inside ORDER BY / GROUP BY terms are values, not column positions
        ("SELECT a FROM t ORDER BY a + 1", "SELECT a FROM t ORDER BY a + 2"),
        ("SELECT a FROM t ORDER BY 1 LIMIT 5", "SELECT a FROM t ORDER BY 1 LIMIT 6"),
        ("SELECT a FROM t ORDER BY -1, 2.5", "SELECT a FROM t ORDER BY -2, 3.5"),
        ("SELECT a FROM t GROUP BY a HAVING a > 1", "SELECT a FROM t GROUP BY a HAVING a > 2"),
        (
            "SELECT a, b FROM t ORDER BY 1, 2 LIMIT 1, 2",
            "SELECT a, b FROM t ORDER BY 1, 2 LIMIT 3, 4",
        ),
        ("SELECT f(a, 1) FROM t ORDER BY 1", "SELECT f(a, 2) FROM t ORDER BY 1"),
        (
            "SELECT * FROM t WHERE a IN (1, 2) ORDER BY 1",
            "SELECT * FROM t WHERE a IN (3) ORDER BY 1",
        ),
    ],
)
def test_statements_differing_only_in_values_share_a_fingerprint(a: str, b: str) -> None:
    assert fingerprint(a) == fingerprint(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("SELECT * FROM t WHERE a = 1", "SELECT * FROM t WHERE b = 1"),
        ('SELECT "A" FROM t', 'SELECT "a" FROM t'),  # quoted names keep their case
        ("SELECT a - 1 FROM t", "SELECT a FROM t"),
        # a whole ORDER BY / GROUP BY term that is an integer names a result column
        ("SELECT a, b FROM t WHERE c = 1 ORDER BY 1", "SELECT a, b FROM t WHERE c = 1 ORDER BY 2"),
        ("SELECT a, count(*) FROM t GROUP BY 1", "SELECT a, count(*) FROM t GROUP BY 2"),
        ("SELECT a, b FROM t ORDER BY 2 DESC, 1", "SELECT a, b FROM t ORDER BY 1 DESC, 2"),
        ("SELECT a, b FROM t ORDER BY a, 1", "SELECT a, b FROM t ORDER BY a, 2"),
        (
            "SELECT a, b FROM t ORDER BY 1 COLLATE NOCASE",
            "SELECT a, b FROM t ORDER BY 2 COLLATE NOCASE",
        ),
        ("SELECT a FROM t ORDER BY 1 NULLS LAST", "SELECT a FROM t ORDER BY 2 NULLS LAST"),
        ("SELECT a, b FROM t GROUP BY 1 HAVING 1", "SELECT a, b FROM t GROUP BY 2 HAVING 1"),
        (
            "SELECT x FROM (SELECT a, b FROM t ORDER BY 1)",
            "SELECT x FROM (SELECT a, b FROM t ORDER BY 2)",
        ),
        (
            "SELECT a FROM t UNION SELECT b FROM u ORDER BY 1",
            "SELECT a FROM t UNION SELECT b FROM u ORDER BY 2",
        ),
    ],
)
def test_statements_with_different_shapes_keep_different_fingerprints(a: str, b: str) -> None:
    assert fingerprint(a) != fingerprint(b)


def test_order_by_positions_stay_in_the_fingerprint() -> None:
    assert fingerprint("SELECT a, b FROM t ORDER BY 2 DESC, 1 LIMIT 10") == (
        "SELECT a, b FROM t ORDER BY 2 DESC, 1 LIMIT ?"
    )
    assert fingerprint("SELECT a, count(*) FROM t GROUP BY 1 ORDER BY a + 1") == (
        "SELECT a, count (*) FROM t GROUP BY 1 ORDER BY a + ?"
    )


def test_record_accumulates_calls_time_maximum_and_rows() -> None:
    w = WorkloadRecorder()
    w.record("SELECT * FROM t WHERE id = 1", 0.010, rows=1)
    w.record("SELECT * FROM t WHERE id = 2", 0.030, rows=1)
    w.record("SELECT count(*) FROM t", 0.001, rows=1)
    first, second = w.top(2)
    assert first == QueryStats(
        "SELECT * FROM t WHERE id = ?", "SELECT * FROM t WHERE id = 1", 2, 0.040, 0.030, 2
    )
    assert first.mean_seconds == pytest.approx(0.020)
    assert second.calls == 1


def test_slow_queries_uses_the_mean_latency() -> None:
    w = WorkloadRecorder()
    for _ in range(9):
        w.record("SELECT 1", 0.001)
    w.record("SELECT 1", 0.5)  # one stall does not make a statement slow
    w.record("SELECT * FROM big", 0.2)
    assert [s.fingerprint for s in w.slow_queries(threshold_ms=100)] == ["SELECT * FROM big"]


def test_distinct_strings_are_folded_so_memory_stays_bounded() -> None:
    w = WorkloadRecorder(max_statements=50, max_fingerprints=10)
    for i in range(1000):
        w.record(f"SELECT * FROM t WHERE id = {i}", 0.001)
    for i in range(100):
        w.record(f"SELECT * FROM t{i}", 0.0001 * i)
    assert all(len(buffer) <= 50 for _, buffer in w._buffers) and len(w._folded) <= 10
    (top,) = [s for s in w.snapshot() if s.fingerprint == "SELECT * FROM t WHERE id = ?"]
    assert top.calls == 1000
    # the shapes with the least time were evicted, and their calls counted
    kept = sum(s.calls for s in w.snapshot())
    assert kept + w.dropped == 1100 and w.dropped > 0


def test_very_long_statements_are_recorded_truncated() -> None:
    w = WorkloadRecorder()
    w.record("SELECT " + "1, " * 5000 + "1", 0.1)
    assert len(w.top(1)[0].example) == MAX_SQL_LENGTH


def test_concurrent_records_lose_nothing() -> None:
    w = WorkloadRecorder(max_statements=20)
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        start.wait()
        for i in range(5000):
            w.record(f"SELECT {n % 3} FROM t WHERE x = {i % 40}", 0.001, rows=1)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    stats = w.snapshot()
    assert sum(s.calls for s in stats) == 40_000
    assert sum(s.rows for s in stats) == 40_000
    assert sum(s.total_seconds for s in stats) == pytest.approx(40.0)


def test_reset_forgets_everything() -> None:
    w = WorkloadRecorder()
    w.record("SELECT 1", 0.1)
    w.reset()
    assert w.snapshot() == [] and w.dropped == 0


def test_the_buffers_of_threads_that_ended_are_folded_not_kept() -> None:
    w = WorkloadRecorder()

    def run(i: int) -> None:
        w.record(f"SELECT * FROM t WHERE id = {i}", 0.001)

    for i in range(50):
        thread = threading.Thread(target=run, args=(i,))
        thread.start()
        thread.join()
    w.record("SELECT 1", 0.001)  # registering a thread folds the ended ones
    assert len(w._buffers) <= 2
    (shape,) = [s for s in w.snapshot() if s.fingerprint == "SELECT * FROM t WHERE id = ?"]
    assert shape.calls == 50


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((None, 0.1), {}, "sql must be a str"),
        (("SELECT 1", "0.5"), {}, "seconds must be a number"),
        (("SELECT 1", float("nan")), {}, "finite and non-negative"),
        (("SELECT 1", -0.5), {}, "finite and non-negative"),
        (("SELECT 1", float("inf")), {}, "finite and non-negative"),
        (("SELECT 1", 10**400), {}, "finite and non-negative"),
        (("SELECT 1", 0.1, -1), {}, "rows must be"),
        (("SELECT 1", 0.1), {"calls": 0}, "calls must be at least 1"),
    ],
)
def test_bad_records_are_refused_and_the_recorder_keeps_working(
    args: tuple[object, ...], kwargs: dict[str, object], message: str
) -> None:
    rec = WorkloadRecorder()
    rec.record("SELECT 1", 0.25, 2)
    for _ in range(2):  # on a new statement, and on one already recorded
        with pytest.raises(ValidationError, match=message):
            rec.record(*args, **kwargs)  # type: ignore[arg-type]
        rec.record("SELECT 2", 0.25)
    (stats,) = rec.top(5)
    assert stats.calls == 3 and stats.total_seconds == pytest.approx(0.75)
    assert rec.slow_queries(100) == [stats]
    rec.record("SELECT 3", 1)  # an int is a number of seconds too
    assert rec.top(1)[0].total_seconds == pytest.approx(1.75)
    with pytest.raises(ValidationError, match="threshold_ms"):
        rec.slow_queries("x")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="non-negative int"):
        rec.top(-1)

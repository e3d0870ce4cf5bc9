"""bench/instructions.py: its workloads run, and the count arithmetic is right."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from instructions import (
    MIN_SPAN,
    WORKLOADS,
    main,
    parse_collected,
    per_operation,
    run_reads,
    run_transactions,
    run_writes,
)


def _first_row(path: Path, sql: str) -> tuple[object, ...]:
    connection = sqlite3.connect(path)
    try:
        row: tuple[object, ...] = connection.execute(sql).fetchone()
        return row
    finally:
        connection.close()


@pytest.mark.parametrize("peer", WORKLOADS["writes"])
def test_the_writes_workload_runs_and_lands(tmp_path: Path, peer: str) -> None:
    path = tmp_path / "w.db"
    run_writes(peer, 30, path)
    assert _first_row(path, "SELECT count(*) FROM tasks") == (30,)
    assert _first_row(path, "SELECT value FROM counters") == (30,)


@pytest.mark.parametrize("peer", WORKLOADS["transactions"])
def test_the_transactions_workload_runs(tmp_path: Path, peer: str) -> None:
    path = tmp_path / "t.db"
    run_transactions(peer, 10, path)
    assert _first_row(path, "SELECT count(*) FROM ledger") == (20,)


@pytest.mark.parametrize("peer", WORKLOADS["reads"])
def test_the_reads_workload_runs_the_benchmarks_checked_read(tmp_path: Path, peer: str) -> None:
    path = tmp_path / "r.db"
    run_reads(peer, 50, path)  # reads.py's op raises on a wrong row
    assert _first_row(path, "SELECT count(*) FROM tasks") == (10_000,)


def test_counts_are_read_from_valgrind_and_divided_per_operation() -> None:
    stderr = "==1== Events    : Ir\n==1== Collected : 2221610287\n==1== I   refs: ..."
    assert parse_collected(stderr, "x") == 2_221_610_287
    with pytest.raises(RuntimeError, match="no count for x"):
        parse_collected("valgrind: command not found", "x")
    assert per_operation(100, 1_100, 5_000_000, 85_000_000) == 80_000
    with pytest.raises(ValueError):
        per_operation(100, 100, 1, 2)


def test_a_span_too_small_to_rise_above_the_noise_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--few", "100", "--many", str(100 + MIN_SPAN - 1)]) == 2
    assert "at least" in capsys.readouterr().err

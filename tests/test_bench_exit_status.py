"""A benchmark exits 1 when a cell had errors, hangs or mismatches; 0 otherwise, even if
it missed a performance target (those are reported, not failures)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WRITES = [
    "bench/writes.py",
    *("--pass", "full", "--peers", "atlas,conn-per-thread", "--threads", "2"),
    *("--duration", "0.3", "--rounds", "1"),
]


def _run(command: list[str], **environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *command],
        cwd=ROOT,
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_bench_whose_cell_had_errors_exits_1_and_says_which() -> None:
    # Titles longer than 10 bytes: every atlas call fails; the sqlite3 peer's work.
    run = _run(WRITES, ATLAS_MAX_VALUE_BYTES="10")
    assert run.returncode == 1, run.stdout + run.stderr
    trouble = run.stdout[run.stdout.index("TROUBLE") :]
    assert "atlas x2: " in trouble and " errors" in trouble
    assert "conn-per-thread" not in trouble


def test_a_bench_whose_cells_were_clean_exits_0() -> None:
    run = _run(WRITES)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "TROUBLE" not in run.stdout

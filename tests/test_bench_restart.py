"""The restart benchmark, run for real with its smallest options."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHORT = ["--kills", "1", "--fresh", "1", "--spacing", "0.3", "--window", "0.2"]


def _restart_bench(*options: str, **environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "bench/restart.py", *options],
        cwd=ROOT,
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_reader_series_kills_readers_not_the_cache() -> None:
    """Its roles were every child but the writer, sorted: the cache actor came first."""
    run = _restart_bench(*SHORT)
    kills = re.findall(r"^  (\S+) kill +\d+/\d+:", run.stdout, re.MULTILINE)
    assert kills == ["writer", "reader-0"], run.stdout + run.stderr


def test_a_run_with_failed_calls_exits_1_and_says_what_failed() -> None:
    # A file of at most 4 pages: after a few hundred rows every write fails, disk full.
    run = _restart_bench(*SHORT, ATLAS_MAX_PAGE_COUNT="4")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "background call(s) failed" in run.stdout[run.stdout.index("TROUBLE") :]


def test_a_run_that_only_misses_its_latency_target_exits_0() -> None:
    """Restarts 100 ms after each crash: the 50 ms target is missed, nothing failed."""
    run = _restart_bench(*SHORT, ATLAS_RESTART_BACKOFF_INITIAL="0.1")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "MISS     restart: writer kill -> first accepted write" in run.stdout
    assert "TROUBLE" not in run.stdout

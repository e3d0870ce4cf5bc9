"""The restart benchmark, run for real with its smallest options."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHORT = ["--kills", "1", "--fresh", "1", "--spacing", "0.3", "--window", "0.2"]


def _restart_bench(*options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "bench/restart.py", *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_reader_series_kills_readers_not_the_cache() -> None:
    """Its roles were every child but the writer, sorted: the cache actor came first."""
    run = _restart_bench(*SHORT)
    kills = re.findall(r"^  (\S+) kill +\d+/\d+:", run.stdout, re.MULTILINE)
    assert kills == ["writer", "reader-0"], run.stdout + run.stderr

"""The simulations run and pass (short versions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "command",
    [
        ["simulations/chaos.py", "--seconds", "1.5", "--threads", "6", "--kill-every", "0.2"],
        ["simulations/io_faults.py", "--seconds", "1", "--threads", "4", "--fault-every", "0.25"],
    ],
)
def test_simulation_passes(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("PASS")
    assert "lost" in result.stdout

"""The benchmarks refuse options that would make a run meaningless, with a usage error."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.parametrize(
    ("script", "option", "value"),
    [
        # nan passed every `<= 0` test: a closed loop never ended (reported as atlas HUNG)
        ("writes", "--duration", "nan"),
        ("writes", "--duration", "inf"),
        ("writes", "--rounds", "0"),
        ("busy", "--duration", "nan"),
        ("busy", "--warmup", "nan"),
        ("busy", "--writers", "0"),
        ("reads", "--duration", "nan"),
        ("reads", "--rows", "0"),
        ("cache", "--duration", "nan"),
        ("cache", "--zipf", "nan"),
        ("transactions", "--duration", "nan"),
        ("transactions", "--warmup", "-1"),
        ("restart", "--window", "0"),  # (a ConfigError traceback once the run started)
        ("restart", "--window", "nan"),
        ("restart", "--spacing", "nan"),
        ("restart", "--kills", "0"),
        ("instructions", "--few", "0"),
    ],
)
def test_a_bench_refuses_a_count_or_duration_out_of_range(
    capsys: pytest.CaptureFixture[str], script: str, option: str, value: str
) -> None:
    bench = importlib.import_module(script)
    with pytest.raises(SystemExit) as exited:
        bench.parse_args([option, value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err
    assert f"argument {option}: must be a finite number " in err and f"not {value}" in err


@pytest.mark.parametrize(
    ("script", "options"),
    [
        ("bench/queries.py", ["--tasks", "100", "--runs", "0"]),  # (a StatisticsError)
        ("bench/restart.py", ["--window", "0"]),
    ],
)
def test_a_bench_run_with_an_option_out_of_range_exits_2_before_it_starts(
    script: str, options: list[str]
) -> None:
    run = subprocess.run(
        [sys.executable, script, *options], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "usage:" in run.stderr and "Traceback" not in run.stderr
    assert run.stdout == ""

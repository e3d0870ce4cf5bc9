"""The simulations run and pass (short versions), and their verdicts catch what they must."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import atlas_actors as atlas
from atlas_actors.workload import LatencySummary, WorkloadReport

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "simulations" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


io_faults = _load("io_faults")


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


def _passing(**changes: Any) -> Any:
    outcome = io_faults.Outcome(
        fault_windows=4,
        acknowledged=1000,
        acknowledged_after_faults=50,
        errors=Counter({"DiskIOError": 10}),
        integrity="ok",
    )
    for name, value in changes.items():
        setattr(outcome, name, value)
    return outcome


def test_io_faults_verdict_passes_a_good_run() -> None:
    assert io_faults.failures(_passing()) == []


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"errors": Counter()}, "no injected fault surfaced"),
        ({"fault_windows": 0}, "no fault window"),
        ({"acknowledged_after_faults": 0}, "after the last fault window"),
        ({"crashed": ["KeyError: 'x'"]}, "unexpected exceptions"),
        ({"hung": ["worker-3"]}, "still running"),
        ({"lost": 1}, "acknowledged writes lost"),
        ({"integrity": "*** in database main ***"}, "integrity_check"),
    ],
)
def test_io_faults_verdict_fails_each_broken_invariant(
    changes: dict[str, Any], reason: str
) -> None:
    reasons = io_faults.failures(_passing(**changes))
    assert len(reasons) == 1 and reason in reasons[0], reasons


def test_io_faults_reports_a_worker_killed_by_an_unexpected_exception(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write, calls = atlas.Storage.write, Counter[str]()

    def flaky_write(self: atlas.Storage, *args: Any, **kwargs: Any) -> Any:
        calls["write"] += 1
        if calls["write"] == 20:
            raise RuntimeError("not an AtlasError")
        return write(self, *args, **kwargs)

    monkeypatch.setattr(atlas.Storage, "write", flaky_write)
    outcome = io_faults.simulate(seconds=0.3, threads=2, fault_every=0.1, recover_within=5)
    assert outcome.crashed == ["RuntimeError: not an AtlasError"]
    assert any("unexpected exceptions" in reason for reason in io_faults.failures(outcome))


@pytest.mark.parametrize(
    ("script", "option", "value"),
    [
        ("chaos", "--kill-every", "0"),  # (no crash: a PASS that tested nothing)
        ("chaos", "--kill-every", "nan"),
        ("chaos", "--threads", "-3"),  # (no worker: a PASS that ran nothing)
        ("chaos", "--seconds", "-1"),
        ("io_faults", "--fault-every", "nan"),  # (a traceback once the workers ran)
        ("io_faults", "--threads", "0"),
        ("io_faults", "--recover-within", "-1"),
    ],
)
def test_a_simulation_refuses_an_option_out_of_range(script: str, option: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, f"simulations/{script}.py", "--seconds", "0.3", option, value],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"argument {option}: must be a " in result.stderr and "usage:" in result.stderr
    assert result.stdout == ""


def test_chaos_fails_a_run_in_which_no_crash_was_injected() -> None:
    options = ["--seconds", "0.3", "--threads", "2", "--kill-every", "5"]
    result = subprocess.run(
        [sys.executable, "simulations/chaos.py", *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL: no crash was injected" in result.stdout
    assert result.stdout.strip().endswith("FAIL")


@pytest.mark.parametrize("script", ["chaos", "io_faults"])
def test_each_simulation_option_says_what_it_does(script: str) -> None:
    result = subprocess.run(
        [sys.executable, f"simulations/{script}.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    options = result.stdout[result.stdout.index("options:") :]
    for option in ("--seconds", "--threads"):
        described = options[options.index(option) :].split("\n  -")[0]
        assert "default" in described, options


def test_chaos_fails_a_run_that_acknowledged_no_write() -> None:
    chaos = _load("chaos")
    report = WorkloadReport(
        seconds=1.0,
        writes=LatencySummary.of([]),
        reads=LatencySummary.of([0.001]),
        errors={},
        kills=3,
        restarts=3,
        mean_batch=0.0,
        lost_writes=0,
    )
    assert chaos.failures(report, "ok") == ["no write was acknowledged"]

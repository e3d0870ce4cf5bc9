"""The atlas-actors command: demo, check, config, --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import apsw
import pytest

from atlas_actors.cli import main


def test_demo_runs_the_workload_and_reports_no_lost_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "demo.db"
    status = main(["demo", "--db", str(db), "--threads", "4", "--seconds", "1", "--no-progress"])
    out = capsys.readouterr().out
    assert status == 0
    assert "operations" in out and "p99" in out
    assert "lost writes  none" in out
    assert "errors       none" in out
    assert main(["check", str(db)]) == 0


def test_demo_with_chaos_restarts_actors_and_still_loses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "chaos.db"
    status = main(
        [
            "demo",
            "--db",
            str(db),
            "--threads",
            "4",
            "--seconds",
            "1.5",
            "--chaos",
            "0.3",
            "--no-progress",
            "--synchronous",
            "NORMAL",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    crashes = next(line for line in out.splitlines() if "crashes" in line)
    injected = int(crashes.split()[1])
    assert injected >= 2 and f"{injected} restarts" in crashes
    assert "lost writes  none" in out and "errors       none" in out


def test_check_reports_a_damaged_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.db"
    connection = apsw.Connection(str(path))
    connection.execute("CREATE TABLE t(x); CREATE INDEX t_x ON t(x);")
    connection.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) "
        "INSERT INTO t SELECT i FROM n"
    )
    connection.close()
    # Damage the index's pages: integrity_check must notice.
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    for offset in range(page_size * 3, min(len(data), page_size * 6)):
        data[offset] = 0xFF
    path.write_bytes(bytes(data))
    assert main(["check", str(path), "--full"]) == 2
    assert "problem" in capsys.readouterr().out
    assert main(["check", str(tmp_path / "missing.db")]) == 1


def test_config_lists_every_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATLAS_READERS", "7")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "ATLAS_READERS" in out and "7" in out and "ATLAS_SYNCHRONOUS" in out


def test_bad_configuration_is_reported_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATLAS_READERS", "lots")
    assert main(["demo", "--db", str(tmp_path / "x.db"), "--seconds", "0.1"]) == 1
    assert "ATLAS_READERS='lots'" in capsys.readouterr().err


def test_help_lists_the_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "atlas_actors.cli", "--help"], capture_output=True, text=True
    ).stdout
    assert "demo" in out and "check" in out and "config" in out and "ATLAS_" in out


def test_python_dash_m_atlas_actors_runs_the_command() -> None:
    help_run = subprocess.run(
        [sys.executable, "-m", "atlas_actors", "--help"], capture_output=True, text=True
    )
    assert help_run.returncode == 0, help_run.stderr
    assert "demo" in help_run.stdout and "check" in help_run.stdout
    config_run = subprocess.run(
        [sys.executable, "-m", "atlas_actors", "config"], capture_output=True, text=True
    )
    assert config_run.returncode == 0 and "ATLAS_READERS" in config_run.stdout


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--threads", "0", "must be a finite number above 0"),
        ("--threads", "-1", "must be a finite number above 0"),
        ("--seconds", "-1", "must be a finite number above 0"),
        ("--chaos", "-1", "must be a finite number 0 or more"),
        ("--seconds", "nan", "must be a finite number above 0"),
        ("--seconds", "inf", "must be a finite number above 0"),
        ("--chaos", "nan", "must be a finite number 0 or more"),
        ("--chaos", "inf", "must be a finite number 0 or more"),
    ],
)
def test_demo_refuses_counts_and_durations_out_of_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--db", str(tmp_path / "x.db"), option, value])
    assert exited.value.code == 2  # argparse's usage error, before anything runs
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.db").exists()

"""README: its two entry points (the demo and the Python example) in one directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from atlas_actors.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _readme_example() -> str:
    """The first ```python block of README.md."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```python\n") + len("```python\n")
    return text[start : text.index("```", start)]


def test_the_demo_and_the_readme_example_run_in_one_directory_in_either_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    demo = ["demo", "--seconds", "0.3", "--threads", "2", "--no-progress"]
    assert main(demo) == 0, capsys.readouterr().err
    assert (tmp_path / "atlas.db").exists()  # the demo's documented default file
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(2):  # after the demo, then before the next run of it
        example = subprocess.run(
            [sys.executable, "-c", _readme_example()],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert example.returncode == 0, example.stderr
        assert main(demo) == 0, capsys.readouterr().err

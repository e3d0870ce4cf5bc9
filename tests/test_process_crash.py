"""Durable acknowledgement across a process crash: SIGKILL, reopen, nothing acknowledged lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import atlas_actors as atlas

CHILD = textwrap.dedent(
    """
    import sys
    import atlas_actors as atlas
    db = atlas.open(sys.argv[1])
    db.execute("CREATE TABLE IF NOT EXISTS acks(id INTEGER PRIMARY KEY)")
    i = 0
    while True:
        i += 1
        db.write("INSERT INTO acks(id) VALUES (?)", [i])
        print(i, flush=True)  # printed only after the acknowledgement
    """
)


def test_every_acknowledged_write_survives_sigkill_of_the_process(db_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    acknowledged = []
    for line in child.stdout:
        acknowledged.append(int(line))
        if len(acknowledged) >= 300:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    assert child.returncode == -signal.SIGKILL
    with atlas.open(db_path) as db:
        stored = {row.id for row in db.query("SELECT id FROM acks")}
        assert db.query("PRAGMA integrity_check") == [("ok",)]
    assert set(acknowledged) <= stored
    # At most the writes in flight at the kill landed without an acknowledgement.
    assert len(stored) <= len(acknowledged) + 64

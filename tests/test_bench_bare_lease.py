"""The transactions benchmark's ``bare-lease`` yardstick: acknowledged transfers all land."""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import threading
from pathlib import Path

import apsw
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from transactions import BareLeasePeer, prepare, verify

from tests.helpers import run_in_threads

ACCOUNTS = 50


def _opened(tmp_path: Path) -> tuple[Path, BareLeasePeer]:
    """A fresh accounts file and the yardstick open on it."""
    path = tmp_path / "lease.db"
    prepare(path, ACCOUNTS)
    peer = BareLeasePeer()
    peer.open(path, "NORMAL", cache=False)
    return path, peer


def test_many_threads_every_acknowledged_transfer_lands(tmp_path: Path) -> None:
    path, peer = _opened(tmp_path)
    done = [0] * 8

    def worker(index: int) -> None:
        op, finish = peer.thread_op(index, ACCOUNTS)
        for _ in range(60):
            op()
            done[index] += 1
        finish()

    run_in_threads(8, worker)
    peer.close()
    assert done == [60] * 8
    assert verify(path, ACCOUNTS, acknowledged=480) == []


def test_a_failing_transfer_is_undone_and_the_lease_goes_on(tmp_path: Path) -> None:
    path, peer = _opened(tmp_path)
    op, _ = peer.thread_op(0, ACCOUNTS)
    op()
    refuse = sqlite3.connect(path, isolation_level=None)
    refuse.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON ledger BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    with pytest.raises(apsw.ConstraintError):
        op()  # its debit and credit ran, then the ledger refused: all undone
    refuse.execute("DROP TRIGGER refuse")
    refuse.close()
    op()
    peer.close()
    assert verify(path, ACCOUNTS, acknowledged=2) == []


@pytest.mark.parametrize("how", ["sqlite rolls back everything", "not an SQLite error"])
def test_the_lease_comes_back_after_any_failure(tmp_path: Path, how: str) -> None:
    path, peer = _opened(tmp_path)
    op, _ = peer.thread_op(0, ACCOUNTS)
    op()
    change = sqlite3.connect(path, isolation_level=None)
    if how == "sqlite rolls back everything":
        change.execute(
            "CREATE TRIGGER r BEFORE INSERT ON ledger BEGIN SELECT RAISE(ROLLBACK, 'no'); END"
        )
    else:  # the transfer's amount refuses a balance that is not an integer (TypeError)
        change.execute("UPDATE accounts SET balance = balance + 0.5")
    change.close()
    with pytest.raises((apsw.Error, TypeError)):
        op()
    finished = threading.Event()

    def another() -> None:
        with contextlib.suppress(apsw.Error, TypeError):
            peer.thread_op(1, ACCOUNTS)[0]()
        finished.set()

    threading.Thread(target=another, daemon=True).start()
    assert finished.wait(10), "the next transaction never got the connection"
    peer.close()

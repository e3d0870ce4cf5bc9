"""What happens to messages when the writer crashes: replay, or a typed error."""

from __future__ import annotations

import threading

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors.errors import ActorCrashedError


def _blocking_unit(started: threading.Event, release: threading.Event, title: str):
    def unit(connection: apsw.Connection) -> str:
        connection.execute("INSERT INTO tasks(title) VALUES (?)", [title])
        started.set()
        assert release.wait(10)
        return title

    return unit


def test_rolled_back_writes_are_replayed_once_and_functions_fail_with_a_typed_error(
    db: atlas.Storage,
) -> None:
    started, release = threading.Event(), threading.Event()
    first = db.writer.execute("INSERT INTO tasks(title) VALUES ('w1')")
    second = db.writer.execute("INSERT INTO tasks(title) VALUES ('w2')")
    unit = db.writer.run(_blocking_unit(started, release, "fn"))
    queued = db.writer.execute("INSERT INTO tasks(title) VALUES ('w3')")
    assert started.wait(5)
    # w1, w2 and the function ran in the open batch; the crash comes before its commit.
    db.supervisor.kill("writer", how="crash")
    release.set()
    assert first.get(5).rowcount == 1  # replayed by the next incarnation
    assert second.get(5).rowcount == 1
    assert queued.get(5).rowcount == 1  # never handled before: simply handled next
    with pytest.raises(ActorCrashedError, match="may or may not have taken effect"):
        unit.get(5)
    titles = sorted(r.title for r in db.query("SELECT title FROM tasks"))
    assert titles == ["w1", "w2", "w3"]  # each once; the function's insert rolled back


def test_writes_queued_while_the_writer_is_down_run_after_the_restart(
    open_storage: object,
) -> None:
    db: atlas.Storage = open_storage(restart_backoff_initial=0.2)  # type: ignore[operator]
    db.execute("CREATE TABLE t(x)")
    db.supervisor.kill("writer")
    # The writer is waiting out its backoff: these sit in the role's mailbox meanwhile.
    futures = [db.writer.execute("INSERT INTO t VALUES (?)", [i]) for i in range(20)]
    assert [f.get(5).rowcount for f in futures] == [1] * 20
    assert db.query("SELECT count(*) FROM t") == [(20,)]

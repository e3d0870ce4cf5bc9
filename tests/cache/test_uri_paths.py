"""A storage opened through a ``file:`` URI watches, and caches next to, the file it names.

The wal-index (``-shm``), the WAL and the default cache directory are the real file's,
not the URI text's: otherwise no other process's commit is ever noticed, in session or
between sessions. Where the wal-index cannot be watched, the cache is off.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors import runtime
from atlas_actors.cache import changes
from tests.helpers import wait_until

READ = "SELECT v FROM kv WHERE k = ?"

# Another process: its commits reach the file, not this storage's connections.
OTHER_PROCESS_WRITES = textwrap.dedent(
    """
    import sys, apsw
    connection = apsw.Connection(sys.argv[1])
    connection.set_busy_timeout(5000)
    connection.execute("UPDATE kv SET v = ? WHERE k = 1", (sys.argv[2],))
    connection.close()
    """
)


def _other_process_writes(path: Path, value: str) -> None:
    subprocess.run([sys.executable, "-c", OTHER_PROCESS_WRITES, str(path), value], check=True)


def _v(db: atlas.Storage) -> str:
    return str(db.query(READ, [1])[0].v)


def _uri_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    path = tmp_path / "t.db"
    return f"file:{path}", path


def _uri_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    monkeypatch.chdir(tmp_path)
    return "file:t.db", tmp_path / "t.db"


def _uri_encoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    # An authority, a percent-encoded space and parameters: SQLite decodes them all.
    directory = tmp_path / "a b"
    directory.mkdir()
    path = directory / "t.db"
    return f"file://localhost{urllib.parse.quote(str(path))}?cache=private&psow=1", path


def _uri_mode_rwc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    # Wider than the readers' read-only open: SQLite refuses that ("access mode not
    # allowed") unless each connection's open narrows it.
    path = tmp_path / "t.db"
    return f"file:{path}?mode=rwc&cache=private", path


def _uri_mode_rw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    path = tmp_path / "t.db"
    apsw.Connection(str(path)).close()  # mode=rw opens an existing file only
    return f"file:{path}?MODE=x&mode=rw", path  # (names are case-sensitive: MODE is no mode)


URIS = pytest.mark.parametrize(
    "make_uri",
    [_uri_absolute, _uri_relative, _uri_encoded, _uri_mode_rwc, _uri_mode_rw],
    ids=["absolute", "relative", "encoded", "mode=rwc", "mode=rw"],
)

MakeUri = Callable[[Path, pytest.MonkeyPatch], tuple[str, Path]]


def _open(uri: str) -> atlas.Storage:
    return atlas.open(uri, cache_disk_min_seconds=0, default_timeout=10.0)


def _cached_on_disk(db: atlas.Storage) -> None:
    db.execute("CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT)")
    db.write("INSERT INTO kv VALUES (1, 'old')")
    assert _v(db) == _v(db) == "old"  # admitted on the second miss, bound for L2
    assert wait_until(lambda: db.cache.stats().l2_entries == 1)
    assert _v(db) == "old" and db.cache.stats().l1_hits >= 1  # served from the cache


@URIS
def test_another_process_commit_is_seen_by_the_next_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_uri: MakeUri
) -> None:
    uri, path = make_uri(tmp_path, monkeypatch)
    with _open(uri) as db:
        _cached_on_disk(db)
        _other_process_writes(path, "new")
        assert _v(db) == "new"


@URIS
def test_another_process_commit_while_closed_is_read_after_reopening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_uri: MakeUri
) -> None:
    uri, path = make_uri(tmp_path, monkeypatch)
    with _open(uri) as db:
        _cached_on_disk(db)
    # Unchanged files: the clean session's L2 is kept (the fingerprint is the real
    # file's, not that of a name that does not exist, which nothing would change).
    with _open(uri) as db:
        assert wait_until(lambda: db.cache.stats().l2_entries == 1)
        assert _v(db) == "old"
    _other_process_writes(path, "new")
    with _open(uri) as db:
        assert db.cache.stats().l2_entries == 0  # the changed file: L2 not trusted
        assert _v(db) == "new"


@URIS
def test_the_default_cache_directory_is_next_to_the_real_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_uri: MakeUri
) -> None:
    uri, path = make_uri(tmp_path, monkeypatch)
    with _open(uri) as db:
        assert db.cache.directory == f"{path}.cache"
        assert db.cache.l2 is not None
    assert path.exists()
    assert sorted(os.listdir(path.parent)) == ["t.db", "t.db.cache"]


def test_the_wal_index_and_fingerprint_follow_a_symbolic_link(tmp_path: Path) -> None:
    # SQLite opens the link's target, and keeps its -wal and -shm next to the target.
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "t.db"
    link = tmp_path / "link.db"
    link.symlink_to(real)
    with _open(str(link)) as db:
        assert db.shm_counter is not None
        _cached_on_disk(db)
        _other_process_writes(real, "new")
        assert _v(db) == "new"


def _refuse_to_map(database: str, vfs: str | None = None) -> changes.ShmCounter:
    raise OSError("refused for the test")


def test_the_cache_is_off_when_the_wal_index_cannot_be_watched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(changes, "ShmCounter", _refuse_to_map)
    monkeypatch.setattr(runtime, "ShmCounter", _refuse_to_map)
    path = tmp_path / "t.db"
    with caplog.at_level(logging.WARNING, logger="atlas_actors"):
        db = _open(f"file:{path}")
    with db:
        assert not db.config.cache
        assert not db._cached  # (reads skip the cache manager too: the pool serves them)
        assert any(
            "result cache is off" in record.getMessage()
            and "refused for the test" in record.getMessage()
            for record in caplog.records
        )
        db.execute("CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT)")
        db.write("INSERT INTO kv VALUES (1, 'old')")
        assert _v(db) == _v(db) == _v(db) == "old"
        _other_process_writes(path, "new")
        assert _v(db) == "new"
        assert db.cache.stats().hits == 0


def test_the_cache_is_off_when_sqlite_names_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runtime, "database_file", lambda database, vfs=None: None)
    with caplog.at_level(logging.WARNING, logger="atlas_actors"):
        db = _open(f"file:{tmp_path / 't.db'}")
    with db:
        assert not db.config.cache
        assert any("result cache is off" in record.getMessage() for record in caplog.records)
    assert not (tmp_path / "t.db.cache").exists()


def test_a_session_without_a_watched_wal_index_leaves_no_trusted_disk_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing told that session of other processes' commits: its close cannot vouch for
    # the cache directory, whatever the files look like.
    path = tmp_path / "t.db"
    with _open(f"file:{path}") as db:
        _cached_on_disk(db)
    with monkeypatch.context() as patched:
        patched.setattr(changes, "ShmCounter", _refuse_to_map)
        patched.setattr(runtime, "ShmCounter", _refuse_to_map)
        with _open(f"file:{path}") as db:
            assert not db.config.cache
    with _open(f"file:{path}") as db:
        assert db.cache.stats().l2_entries == 0
        assert _v(db) == "old"


@URIS
def test_the_wal_size_is_read_off_the_real_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_uri: MakeUri
) -> None:
    """db.wal.monitor().size looked for '<the URI text>-wal' and found none: 0."""
    uri, path = make_uri(tmp_path, monkeypatch)
    with _open(uri) as db:
        db.execute("CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT)")
        db.write("INSERT INTO kv VALUES (1, 'x')")
        size = db.wal.monitor().size
        assert size > 0 and size == Path(f"{path}-wal").stat().st_size

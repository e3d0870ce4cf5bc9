"""The disk level across sessions: storages that open one database at the same moment.

Every process opening a database file shares its ``.cache`` directory. A clean close
leaves a record there (epoch, table versions, fingerprint of the files) that lets the
next session trust the entries again; only one opener may take it up, or two live
storages count in the same epoch and trust each other's entries at different states
of the database.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import apsw
import diskcache
import pytest

import atlas_actors as atlas
from atlas_actors.cache.disk import DiskStore
from tests.helpers import wait_until

READ = "SELECT v FROM kv"


def _v(db: atlas.Storage) -> object:
    return db.query(READ)[0].v


def _on_disk(db: atlas.Storage, value: object) -> bool:
    """Whether L2 holds the result of READ with ``value``."""
    l2 = db.cache.l2
    return l2 is not None and any(
        document.get("sql") == READ and [tuple(row) for row in rows] == [(value,)]
        for document, rows in l2.items()
    )


def _record(db_path: Path) -> dict[str, Any]:
    l2 = DiskStore(str(db_path) + ".cache", 1 << 20)
    try:
        meta = l2.load_meta()
    finally:
        l2.close()
    assert meta is not None
    return meta


def _closed_cleanly_with_a_result_on_disk(db_path: Path) -> int:
    """A session that read ``kv`` (v = 0) into L2 and closed cleanly; its epoch."""
    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        db.execute("CREATE TABLE kv(v)")
        db.write("INSERT INTO kv VALUES (0)")
        assert _v(db) == _v(db) == 0  # admitted on the second miss, bound for L2
        assert wait_until(lambda: _on_disk(db, 0))
    meta = _record(db_path)
    assert meta["clean"]
    return int(meta["epoch"])


def test_two_storages_opening_at_once_do_not_both_resume_the_last_session(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both read the clean record before either marked it not clean, and resumed the
    same epoch and versions: after another process's two commits, one storage served
    the result the other had stored on disk between them (a reviewer's repro, 1 hit in
    6-10 tries with two processes; the first opener is held here between reading the
    record and marking it, until the second has opened, or for 0.5 s at most)."""
    recorded = _closed_cleanly_with_a_result_on_disk(db_path)
    load_meta = DiskStore.load_meta
    first_read, second_opened = threading.Event(), threading.Event()
    reads: list[object] = []

    def held_after_the_first_read(self: DiskStore) -> dict[str, Any] | None:
        meta = load_meta(self)
        reads.append(meta)
        if len(reads) == 1:
            first_read.set()
            second_opened.wait(0.5)  # the second opener resumes meanwhile, if it can
        return meta

    monkeypatch.setattr(DiskStore, "load_meta", held_after_the_first_read)
    opened: dict[str, atlas.Storage] = {}

    def open_first() -> None:
        opened["first"] = atlas.open(db_path, cache_disk_min_seconds=0)

    opening = threading.Thread(target=open_first)
    opening.start()
    other = apsw.Connection(str(db_path))
    try:
        assert first_read.wait(10)
        opened["second"] = atlas.open(db_path, cache_disk_min_seconds=0)
        second_opened.set()
        opening.join(10)
        monkeypatch.undo()
        first, second = opened["first"], opened["second"]
        # Only the first, which read the record first, takes up the last session.
        assert first.cache.epoch == recorded
        assert second.cache.epoch != recorded
        assert not _record(db_path)["clean"]

        other.set_busy_timeout(5000)
        other.execute("UPDATE kv SET v = 1")
        assert _v(first) == _v(first) == 1
        assert wait_until(lambda: _on_disk(first, 1))  # stored under the first's epoch
        other.execute("UPDATE kv SET v = 2")
        assert _v(second) == 2  # not the first's entry from before the second commit
    finally:
        second_opened.set()
        opening.join(10)
        other.close()
        for db in opened.values():
            db.close()


def test_a_record_that_cannot_be_locked_is_not_resumed(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the disk level's lock cannot be had (diskcache.Timeout), another opener may
    be taking up the last session: this one starts afresh rather than share it."""
    recorded = _closed_cleanly_with_a_result_on_disk(db_path)

    def no_lock(self: DiskStore) -> Any:
        raise diskcache.Timeout

    monkeypatch.setattr(DiskStore, "exclusive", no_lock)
    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        assert db.cache.epoch != recorded
        # The last session's entry is of another epoch: warming drops it.
        assert wait_until(lambda: db.cache.stats().l2_entries == 0)
        assert db.cache.stats().size == 0
        assert _v(db) == 0


def test_a_session_that_started_afresh_leaves_no_clean_record_behind_its_clear(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starting afresh empties L2 outside the lock. Keeping the record through that by
    reading it first and writing it back put back a clean record that another opener
    had taken up (and marked not clean) meanwhile: a third could take it up again."""
    _closed_cleanly_with_a_result_on_disk(db_path)
    l2 = DiskStore(str(db_path) + ".cache", 1 << 20)
    try:
        clean = l2.load_meta()
        assert clean is not None and clean["clean"]
        cache = l2._cache
        assert cache is not None
        clear = diskcache.Cache.clear

        def taken_up_meanwhile(self: diskcache.Cache, *args: Any, **kwargs: Any) -> int:
            l2.save_meta({"clean": False, "epoch": clean["epoch"]})  # another opener
            return int(clear(self, *args, **kwargs))

        monkeypatch.setattr(diskcache.Cache, "clear", taken_up_meanwhile)
        l2.clear()
        monkeypatch.undo()
        meta = l2.load_meta()
        assert meta is None or not meta["clean"]
        assert l2.stats()[0] == 0
    finally:
        l2.close()


def test_a_cache_actor_stopped_alone_does_not_record_the_session_as_closed(
    db_path: Path,
) -> None:
    """Its stop wrote a clean record while the storage ran on in the same epoch: another
    process opening then resumed it, and the two counted in one epoch, trusting each
    other's entries at different states of the file (a stale read, as above)."""
    recorded = _closed_cleanly_with_a_result_on_disk(db_path)
    with atlas.open(db_path, cache_disk_min_seconds=0) as running:
        assert running.cache.epoch == recorded

        def cache() -> Any:
            return next(c for c in running.supervisor.status().children if c.role == "cache")

        incarnation = cache().incarnation
        running.supervisor.kill("cache", how="stop")
        assert wait_until(lambda: cache().incarnation > incarnation and cache().state == "running")
        assert not _record(db_path)["clean"]
        with atlas.open(db_path, cache_disk_min_seconds=0) as other:
            assert other.cache.epoch != running.cache.epoch

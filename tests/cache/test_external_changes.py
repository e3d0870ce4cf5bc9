"""Other processes' commits: noticed at a clean close, and never half-noticed by a reader."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import pytest

import atlas_actors as atlas
from atlas_actors import runtime
from atlas_actors.actors import cache as cache_actor
from atlas_actors.cache.changes import ExternalChanges
from atlas_actors.cache.disk import DiskStore, fingerprint
from tests.helpers import wait_until

READ = "SELECT v FROM kv WHERE k = ?"

CHILD_WRITE = textwrap.dedent(
    """
    import sys, apsw
    connection = apsw.Connection(sys.argv[1])
    connection.set_busy_timeout(5000)
    connection.execute("UPDATE kv SET v = ? WHERE k = 1", (sys.argv[2],))
    connection.close()
    """
)


def _v(db: atlas.Storage, k: int) -> str:
    return str(db.query(READ, [k])[0].v)


def _cache_on_disk(db: atlas.Storage) -> None:
    db.execute("CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT); CREATE TABLE other(x)")
    db.write("INSERT INTO kv VALUES (1, 'old')")
    assert _v(db, 1) == _v(db, 1) == "old"  # admitted on the second miss, bound for L2
    assert wait_until(lambda: db.cache.stats().l2_entries == 1)


def test_a_commit_by_another_process_before_a_clean_close_is_not_served_after_it(
    db_path: Path,
) -> None:
    # The close records the files as they are, the other process's commit included: the
    # next session must not take L2 for a picture of them.
    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        _cache_on_disk(db)
        subprocess.run([sys.executable, "-c", CHILD_WRITE, str(db_path), "new"], check=True)
        # closed without reading again: only the close can notice
    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        stats = db.cache.stats()
        assert stats.l2_entries == 0 and stats.size == 0  # dropped at start, none warmed
        assert _v(db, 1) == "new"


HOLDING_WRITE = textwrap.dedent(
    """
    import sys, apsw
    connection = apsw.Connection(sys.argv[1])
    connection.set_busy_timeout(5000)
    connection.execute("UPDATE kv SET v = 'new' WHERE k = 1")
    print("committed", flush=True)
    sys.stdin.read()  # the database stays open until the test says
    connection.close()
    """
)


def test_a_commit_by_a_process_that_opened_after_our_last_connection_is_noticed(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Were the counter's wal-index gone with our last connection, a process opening the
    # database next would have a wal-index of its own, and its commits would not move
    # the counter the close checks. Here one commits as the fingerprint is taken and
    # keeps the database open.
    children: list[subprocess.Popen[str]] = []

    def fingerprint_after_a_commit(database: str) -> dict[str, Any]:
        if not children:
            child = subprocess.Popen(
                [sys.executable, "-c", HOLDING_WRITE, str(db_path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            children.append(child)
            assert child.stdout is not None and child.stdout.readline().strip() == "committed"
        return fingerprint(database)

    try:
        with atlas.open(db_path, cache_disk_min_seconds=0) as db:
            _cache_on_disk(db)
            monkeypatch.setattr(cache_actor, "fingerprint", fingerprint_after_a_commit)
        monkeypatch.undo()
        assert len(children) == 1
        # Reopened while that process still has the database open: the files are as
        # the fingerprint saw them.
        with atlas.open(db_path, cache_disk_min_seconds=0) as db:
            assert db.cache.stats().l2_entries == 0
            assert _v(db, 1) == "new"
    finally:
        for child in children:
            child.communicate("", timeout=10)


def test_our_own_writes_before_a_clean_close_keep_the_disk_level(db_path: Path) -> None:
    # The close-time check subtracts this storage's commits: they are not another's.
    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        _cache_on_disk(db)
        db.write_many("INSERT INTO other VALUES (?)", [(i,) for i in range(3)])
        # closed without reading again: the counter moved by our commits only
    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        assert wait_until(lambda: db.cache.stats().size == 1)
        assert _v(db, 1) == "old"
        assert db.cache.stats().l1_hits == 1


def test_a_commit_by_another_process_while_this_one_opens_is_noticed(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache trusts the last session's entries when it starts, before the writer;
    the wal-index is counted only after the writer opened. Another process's commit in
    between was counted by nothing, and L1 (warmed from L2) served the old result."""
    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        _cache_on_disk(db)

    class CommitFirst(runtime.ShmCounter):  # (a real process commits at that moment)
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            child = [sys.executable, "-c", CHILD_WRITE, str(db_path), "new"]
            subprocess.run(child, check=True, timeout=30)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(runtime, "ShmCounter", CommitFirst)
    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        monkeypatch.undo()
        time.sleep(0.2)  # (warming L1 from L2 runs on its own)
        assert _v(db, 1) == "new"


def test_the_drop_runs_before_the_new_count_is_published() -> None:
    # A reader that finds the counter equal to the published value takes the cache as
    # current; so while the drop for a change runs, the change must still show.
    value = [7]
    changes = ExternalChanges(lambda: value[0])
    value[0] += 1  # another process
    during: list[bool] = []
    assert changes.check(lambda: during.append(changes.moved()))
    assert during == [True]
    assert not changes.moved() and not changes.check(lambda: during.append(False))
    assert during == [True]


def test_a_failed_drop_leaves_the_change_to_the_next_check() -> None:
    value = [7]
    changes = ExternalChanges(lambda: value[0])
    value[0] += 1

    def fail() -> None:
        raise RuntimeError("drop failed")

    with pytest.raises(RuntimeError):
        changes.check(fail)
    assert changes.moved() and changes.check()


def test_no_reader_serves_data_older_than_a_commit_it_started_after(
    open_storage: Callable[..., atlas.Storage], db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another connection (for the wal-index, the same as another process) commits n, then
    # publishes n: a read that starts after seeing n published must see at least n. The
    # first reader to notice a commit drops the cache; the others must not be served
    # the old entry meanwhile. A drop that takes a while (a big memory level) and a tiny
    # switch interval make the window wide if there is one.
    db = open_storage(readers=4, cache_disk=False)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, n INTEGER)")
    db.write("INSERT INTO t VALUES (1, 0)")
    invalidate_all = db.cache.invalidate_all

    def slow_invalidate_all(reason: str) -> None:
        time.sleep(0.001)
        invalidate_all(reason)

    monkeypatch.setattr(db.cache, "invalidate_all", slow_invalidate_all)
    other = apsw.Connection(str(db_path))
    other.set_busy_timeout(5000)
    published = [0]
    stop = threading.Event()
    stale: list[tuple[int, int]] = []

    def read() -> None:
        while not stop.is_set():
            floor = published[0]
            got = int(db.query("SELECT n FROM t WHERE id = 1")[0][0])
            if got < floor:
                stale.append((floor, got))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    threads = [threading.Thread(target=read) for _ in range(6)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 2
        n = 0
        while time.monotonic() < deadline and not stale:
            n += 1
            other.execute("UPDATE t SET n = ? WHERE id = 1", (n,))  # committed: durable
            published[0] = n
            time.sleep(0.002)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        sys.setswitchinterval(interval)
        other.close()
    assert n > 10, "too few commits to tell"
    assert not stale, f"stale reads (committed, read): {stale[:5]}"


def test_a_read_while_the_writer_drops_for_another_process_waits_for_the_drop(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer is the first to see another process's commit (at its BEGIN): it
    published the new count and dropped the cache after, so a read in between was
    served the entry from before that commit."""
    db = atlas.open(db_path)
    try:
        db.execute("CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT); CREATE TABLE other(x)")
        db.write("INSERT INTO kv VALUES (1, 'old')")
        assert _v(db, 1) == _v(db, 1) == "old"  # cached
        other = apsw.Connection(str(db_path))
        other.execute("UPDATE kv SET v = 'new' WHERE k = 1")
        other.close()
        manager = type(db.cache)
        original = manager.invalidate_all
        dropping = threading.Event()

        def slow_drop(self: Any, reason: str) -> None:
            if threading.current_thread().name.startswith("writer"):
                dropping.set()
                time.sleep(0.3)  # a large cache takes a while to clear
            original(self, reason)

        monkeypatch.setattr(manager, "invalidate_all", slow_drop)
        writing = threading.Thread(target=lambda: db.write("INSERT INTO other VALUES (1)"))
        writing.start()  # the writer's BEGIN notices the other process's commit first
        assert dropping.wait(5)
        assert _v(db, 1) == "new"  # waits for the drop instead of taking the old entry
        writing.join(5)
    finally:
        db.close()


def test_a_disk_level_kept_under_other_caching_rules_is_dropped(db_path: Path) -> None:
    """Entries an older version stored (a read it cached and this one no longer does)
    were warmed and served after the upgrade until their TTL."""
    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        _cache_on_disk(db)
    l2 = DiskStore(str(db_path) + ".cache", 1 << 20)
    try:
        meta = l2.load_meta()
        assert meta is not None and meta["clean"] and meta["rules"] == cache_actor.CACHE_RULES
        l2.save_meta({**meta, "rules": cache_actor.CACHE_RULES - 1})
    finally:
        l2.close()
    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        assert db.cache.stats().l2_entries == 0


@pytest.mark.parametrize("writer_settles_meanwhile", [True, False])
def test_another_process_commit_behind_ours_that_wrote_nothing_is_never_served_stale(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, writer_settles_meanwhile: bool
) -> None:
    """Our COMMIT wrote no page; another process committed right after it. A reader
    took that commit's increment for ours and published it, and the writer dropped the
    cache only later, when it learnt ours wrote nothing: a read in between was served
    the entry from before the other process's (acknowledged) commit. The reader now
    waits for the writer to settle the step, or drops if it does not in time."""
    committed = runtime.Runtime._writer_committed
    armed, paused, resume = threading.Event(), threading.Event(), threading.Event()

    def pause_before_settling(self: Any, tables: Any, wrote: bool, rows: Any) -> None:
        if armed.is_set() and not wrote and not paused.is_set():
            paused.set()  # our COMMIT returned; the writer has not settled it yet
            resume.wait(10)
        committed(self, tables, wrote, rows)

    monkeypatch.setattr(runtime.Runtime, "_writer_committed", pause_before_settling)
    db = atlas.open(db_path, cache_disk=False)
    try:
        db.execute("CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT)")
        db.write("INSERT INTO kv VALUES (1, 'old')")
        assert _v(db, 1) == _v(db, 1) == "old"  # cached
        armed.set()
        writing = threading.Thread(target=lambda: db.write("UPDATE kv SET v = 'x' WHERE k = -1"))
        writing.start()  # changes no row: its COMMIT writes no WAL frame
        served: list[str] = []
        reading = threading.Thread(target=lambda: served.append(_v(db, 1)))
        try:
            assert paused.wait(5)
            subprocess.run([sys.executable, "-c", CHILD_WRITE, str(db_path), "new"], check=True)
            reading.start()  # the other process's commit is durable: it must be seen
            if writer_settles_meanwhile:
                time.sleep(0.01)
                resume.set()
            reading.join(10)
        finally:
            resume.set()
            writing.join(10)
        assert served == ["new"]
        assert _v(db, 1) == "new"
    finally:
        db.close()


def test_a_process_that_opens_commits_and_closes_just_before_the_close_is_recorded_is_noticed(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The close took its fingerprint of the files after this storage's last connection
    had closed: a process that opened, committed and closed in between left no
    wal-index behind and its change in the files, which the fingerprint took for the
    state the cache matched. The next session served its entry from before that commit."""
    commits: list[str] = []

    def fingerprint_after_a_commit(database: str) -> dict[str, Any]:
        if not commits:
            commits.append("new")
            subprocess.run([sys.executable, "-c", CHILD_WRITE, str(db_path), "new"], check=True)
        return fingerprint(database)

    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        _cache_on_disk(db)
        monkeypatch.setattr(cache_actor, "fingerprint", fingerprint_after_a_commit)
    monkeypatch.undo()
    assert commits == ["new"]
    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        assert db.cache.stats().l2_entries == 0
        assert _v(db, 1) == "new"


@pytest.mark.parametrize("when", ["before our last connection closes", "after the close"])
def test_a_commit_after_the_close_recorded_the_files_changes_them(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    # After the counter's last check, a commit lands in the WAL the close emptied, and
    # reaches the database file with new times: the fingerprint no longer matches.
    save_meta = DiskStore.save_meta

    def save_then_commit(self: DiskStore, meta: dict[str, Any]) -> None:
        save_meta(self, meta)
        if meta.get("clean"):  # the close's record, not the start's
            subprocess.run([sys.executable, "-c", CHILD_WRITE, str(db_path), "new"], check=True)

    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        _cache_on_disk(db)
        if when == "before our last connection closes":
            monkeypatch.setattr(DiskStore, "save_meta", save_then_commit)
    monkeypatch.undo()
    if when == "after the close":
        subprocess.run([sys.executable, "-c", CHILD_WRITE, str(db_path), "new"], check=True)
    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        assert db.cache.stats().l2_entries == 0
        assert _v(db, 1) == "new"


class _ScrambledFile(apsw.VFSFile):
    """Every byte of the database and its WAL inverted on disk (not the -shm index)."""

    def __init__(self, name: object, flags: list[int]) -> None:
        text = str(name.filename() if hasattr(name, "filename") else name)  # type: ignore[attr-defined]
        self._scramble = not text.endswith("-shm")
        super().__init__("", name, flags)  # type: ignore[arg-type]

    def xRead(self, amount: int, offset: int) -> bytes:
        data = super().xRead(amount, offset)
        return bytes(b ^ 0xFF for b in data) if self._scramble else data

    def xWrite(self, data: bytes, offset: int) -> None:
        super().xWrite(bytes(b ^ 0xFF for b in data) if self._scramble else data, offset)


class _ScramblingVFS(apsw.VFS):
    """A VFS without which the file cannot be read (as an encrypting one)."""

    def __init__(self) -> None:
        self.name = "scrambling"
        super().__init__(self.name, "")

    def xOpen(self, name: object, flags: list[int]) -> apsw.VFSFile:  # type: ignore[override]
        return _ScrambledFile(name, flags)


def test_the_wal_index_is_held_through_the_storages_vfs(tmp_path: Path) -> None:
    # The connection that holds the wal-index open (and empties the WAL at close) must
    # read the file as the storage's other connections do: through its VFS. Through the
    # default one, a file only its VFS can read fails to open, and the cache loses its
    # view of other processes' commits.
    vfs = _ScramblingVFS()
    try:
        with atlas.open(tmp_path / "scrambled.db", vfs=vfs.name) as db:
            db.execute("CREATE TABLE t(x)")
            db.write("INSERT INTO t VALUES (1)")
            assert db.query("SELECT x FROM t") == [(1,)]
            assert db.cache.external is not None
        with atlas.open(tmp_path / "scrambled.db", vfs=vfs.name) as db:
            assert db.query("SELECT x FROM t") == [(1,)]
    finally:
        vfs.unregister()

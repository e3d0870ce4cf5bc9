"""The cache's pure parts: LRU, codec, statement analysis, external-change counting."""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
from pathlib import Path

import apsw
import pytest

from atlas_actors.cache import disk
from atlas_actors.cache.changes import ExternalChanges
from atlas_actors.cache.codec import CodecError, decode, encode
from atlas_actors.cache.dependencies import ROWID, Dependency
from atlas_actors.cache.lru import ByteLRU, Entry, measure
from atlas_actors.cache.manager import CacheManager
from atlas_actors.cache.statements import analyze
from atlas_actors.rows import make_rows


def _entry(
    key: str, tables: frozenset[str] = frozenset({"t"}), ttl: float = 60, n: int = 1
) -> Entry:
    rows = make_rows(["v"], [(f"{key}-{i}",) for i in range(n)])
    return Entry(key, "SELECT", (), rows, tables, {}, 0, time.monotonic() + ttl)


def test_sizes_are_measured_from_the_objects() -> None:
    rows = make_rows(["a", "b"], [(1, "x" * 100), (2, b"y" * 50)])
    expected = sys.getsizeof(rows) + sum(
        sys.getsizeof(r) + sum(sys.getsizeof(v) for v in r) for r in rows
    )
    assert measure(rows) == expected


def test_the_lru_stays_within_its_bytes_evicting_the_least_recently_used() -> None:
    entry = _entry("a")
    one = measure(entry.rows, entry.sql, entry.params)
    lru = ByteLRU(capacity=one * 3 + 10)
    for key in "abc":
        assert lru.put(_entry(key))
    assert lru.get("a") is not None  # a is now the most recently used
    lru.put(_entry("d"))
    assert lru.get("b") is None and lru.get("a") is not None
    assert lru.bytes <= lru.capacity and lru.evictions == 1
    assert not lru.put(_entry("huge", n=1000))  # bigger than the whole cache


def test_expired_entries_are_not_served() -> None:
    lru = ByteLRU(10_000)
    lru.put(_entry("a", ttl=-1))
    assert lru.get("a") is None and len(lru) == 0 and lru.bytes == 0


def test_dropping_a_table_drops_exactly_its_entries() -> None:
    lru = ByteLRU(100_000)
    lru.put(_entry("t1", frozenset({"tasks"})))
    lru.put(_entry("both", frozenset({"tasks", "projects"})))
    lru.put(_entry("p1", frozenset({"projects"})))
    assert lru.drop_tables(["tasks"]) == 2
    assert [e.key for e in lru.entries()] == ["p1"]
    assert lru.clear() == 1 and lru.bytes == 0


def _dependent(key: str, column: int, *values: object, table: str = "tasks") -> Entry:
    entry = _entry(key, frozenset({table}))
    entry.dependency = Dependency(table, ((column, frozenset(values)),))
    return entry


def test_a_change_drops_only_the_dependent_entries_its_rows_match() -> None:
    lru = ByteLRU(100_000)
    lru.put(_dependent("task 1", 0, 1))
    lru.put(_dependent("task 2", 0, 2))
    lru.put(_dependent("project 7", 1, 7))
    lru.put(_dependent("rowid 2", ROWID, 2))
    lru.put(_entry("count", frozenset({"tasks"})))  # no dependency: any change drops it
    lru.put(_entry("other", frozenset({"projects"})))
    # task 2 moves from project 7 to project 8: old and new images
    images = [(2, (2, 7, "open")), (2, (2, 8, "done"))]
    assert lru.drop_changes({"tasks": images}) == 4
    assert sorted(e.key for e in lru.entries()) == ["other", "task 1"]
    # rows unknown: every entry of the table goes; another table is untouched
    lru.put(_dependent("task 3", 0, 3))
    assert lru.drop_changes({"tasks": None}) == 2
    assert [e.key for e in lru.entries()] == ["other"]


def test_no_changed_rows_keep_dependent_entries_but_not_the_others() -> None:
    lru = ByteLRU(100_000)
    lru.put(_dependent("task 1", 0, 1))
    lru.put(_entry("count", frozenset({"tasks"})))
    assert lru.drop_changes({"tasks": ()}) == 1
    assert [e.key for e in lru.entries()] == ["task 1"]


def test_a_row_from_a_table_that_changed_shape_drops_every_dependent_entry() -> None:
    lru = ByteLRU(100_000)
    lru.put(_dependent("status", 5, "open"))
    assert lru.drop_changes({"tasks": [(1, (1, 2))]}) == 1  # no column 5 any more


def test_removing_entries_leaves_no_index_behind() -> None:
    lru = ByteLRU(100_000)
    for k in range(50):
        lru.put(_dependent(f"task {k}", 0, k, k + 1))
        lru.put(_entry(f"count {k}", frozenset({"tasks", "projects"})))
    lru.drop_changes({"tasks": None})
    assert len(lru) == 0 and lru.bytes == 0
    assert not lru._by_table and not lru._dependent and not lru._by_value and not lru._columns


def test_a_store_racing_an_unrelated_row_change_is_kept() -> None:
    manager = CacheManager(config=None, pool=None, changes=None, directory="")  # type: ignore[arg-type]
    began = manager.generation
    manager.tables_written(["tasks"], {"tasks": [(9, (9, 1))]})
    assert manager.unaffected_since(began, _dependent("task 2", 0, 2))
    assert not manager.unaffected_since(began, _dependent("task 9", 0, 9))
    assert not manager.unaffected_since(began, _entry("count", frozenset({"tasks"})))
    assert manager.unaffected_since(began, _entry("other", frozenset({"projects"})))
    manager.invalidate_all("test")
    assert not manager.unaffected_since(began, _entry("other", frozenset({"projects"})))


def test_a_store_older_than_the_invalidation_log_is_refused() -> None:
    manager = CacheManager(config=None, pool=None, changes=None, directory="")  # type: ignore[arg-type]
    began = manager.generation
    for k in range(300):  # more than the log keeps
        manager.tables_written(["projects"], {"projects": [(k, (k,))]})
    assert not manager.unaffected_since(began, _entry("other", frozenset({"tasks"})))
    assert manager.unaffected_since(manager.generation, _entry("o", frozenset({"tasks"})))


def test_the_codec_round_trips_every_sqlite_type() -> None:
    rows = [(None, 1, -(2**63), 1.5, "text ☃", b"\x00\xff")]
    document, back = decode(encode({"names": ["a"]}, rows))
    assert back == rows and document == {"names": ["a"]}


@pytest.mark.parametrize(
    "blob",
    [
        b"not zlib",
        pickle.dumps({"f": 1, "d": {}, "r": []}),
        __import__("zlib").compress(b'{"f": 1, "d": {}, "r": [[{"x": 1}]]}'),
        __import__("zlib").compress(b'{"f": 2, "d": {}, "r": []}'),
        __import__("zlib").compress(b"[1, 2]"),
    ],
)
def test_the_codec_rejects_anything_it_did_not_write(blob: bytes) -> None:
    with pytest.raises(CodecError):
        decode(blob)


def test_the_codec_refuses_values_sqlite_cannot_return() -> None:
    with pytest.raises(CodecError):
        encode({}, [(object(),)])


@pytest.fixture
def schema(tmp_path: Path) -> apsw.Connection:
    connection = apsw.Connection(str(tmp_path / "s.db"))
    connection.execute(
        """
        CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT, due TEXT);
        CREATE TABLE audit(task INTEGER);
        CREATE VIEW open_tasks AS SELECT id, title FROM tasks;
        CREATE TRIGGER log_insert AFTER INSERT ON tasks BEGIN
            INSERT INTO audit VALUES (new.id);
        END;
        """
    )
    return connection


def test_analysis_finds_tables_through_views_and_triggers(schema: apsw.Connection) -> None:
    view = analyze(schema, "SELECT title FROM open_tasks WHERE id = ?", (1,))
    assert "tasks" in view.reads and view.cacheable and not view.writes
    insert = analyze(schema, "INSERT INTO tasks(title) VALUES (?)", ("x",))
    assert insert.writes == {"tasks", "audit"} and not insert.cacheable
    assert schema.execute("SELECT count(*) FROM tasks").fetchall() == [(0,)]  # nothing ran


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT random() FROM tasks",
        "SELECT id FROM tasks WHERE due < date('now')",
        "SELECT CURRENT_TIMESTAMP, id FROM tasks",
        "SELECT changes() FROM tasks",
        "PRAGMA table_info(tasks)",
        "SELECT 1",
    ],
)
def test_non_deterministic_or_table_less_statements_are_not_cacheable(
    schema: apsw.Connection, sql: str
) -> None:
    assert not analyze(schema, sql).cacheable


@pytest.mark.parametrize(
    ("sql", "plain"),
    [
        ("INSERT INTO tasks(title) VALUES ('a')", True),  # its trigger writes audit
        ("UPDATE tasks SET title = upper(title) WHERE id = 1", True),
        ("DELETE FROM tasks WHERE id IN (SELECT task FROM audit)", True),
        ("INSERT INTO counters(name) VALUES ('a')", True),  # AUTOINCREMENT: sqlite_sequence
        ("SELECT * FROM open_tasks", True),
        ("CREATE INDEX tasks_due ON tasks(due)", False),
        ("ALTER TABLE tasks ADD COLUMN done INTEGER", False),
        ("DROP VIEW open_tasks", False),
        ("PRAGMA user_version = 3", False),
        ("ANALYZE", False),
        ("UPDATE sqlite_schema SET sql = sql WHERE name = 'audit'", False),
        ("BEGIN", False),
        ("INSERT INTO tasks(title) VALUES (random())", True),  # built-in: cannot write
        ("INSERT INTO tasks(title) VALUES (user_function())", False),  # may run DDL
    ],
)
def test_only_statements_that_just_read_and_change_rows_are_plain(
    schema: apsw.Connection, sql: str, plain: bool
) -> None:
    # The writer skips its schema check after a batch of plain statements only.
    schema.execute("CREATE TABLE counters(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT)")
    schema.execute("PRAGMA writable_schema = ON")  # or sqlite_schema cannot be written
    schema.create_scalar_function("user_function", lambda: 1)
    assert analyze(schema, sql).plain is plain


def test_reads_of_temp_tables_are_not_cacheable(schema: apsw.Connection) -> None:
    schema.execute("CREATE TEMP TABLE scratch(x)")
    assert not analyze(schema, "SELECT x FROM scratch").cacheable
    assert analyze(schema, "SELECT upper(title), count(*) FROM tasks GROUP BY 1").cacheable


class Counter:
    def __init__(self) -> None:
        self.value = 7

    def __call__(self) -> int:
        return self.value


def test_own_commits_are_not_mistaken_for_other_processes() -> None:
    counter = Counter()
    changes = ExternalChanges(counter)
    assert not changes.check()
    assert not changes.writer_holds_lock()  # BEGIN: nobody else committed
    changes.before_commit()
    counter.value += 1  # our COMMIT (the WAL hook fired)
    assert not changes.after_commit(wrote=True)
    assert not changes.check()
    counter.value += 1  # another process
    assert changes.check()
    assert not changes.check()


def _settle_in_a_thread(changes: ExternalChanges) -> tuple[threading.Thread, list[bool]]:
    """A reader's check, started; its answer lands in the list."""
    answer: list[bool] = []
    reader = threading.Thread(target=lambda: answer.append(changes.check()))
    reader.start()
    return reader, answer


def test_a_reader_seeing_our_commit_before_the_writer_settles_waits_for_it() -> None:
    # One step past the announcement may be ours or another process's: only the writer
    # knows (did the COMMIT write frames?), so the reader waits for it to say.
    counter = Counter()
    changes = ExternalChanges(counter, writer_settles=10)
    changes.writer_holds_lock()
    changes.before_commit()
    counter.value += 1
    reader, answer = _settle_in_a_thread(changes)
    reader.join(0.05)
    assert reader.is_alive() and changes.moved()  # waiting, nothing published
    assert not changes.after_commit(wrote=True)  # it was ours: nothing to drop
    reader.join(5)
    assert answer == [False] and not changes.moved()


def test_an_external_commit_racing_ours_is_detected() -> None:
    counter = Counter()
    changes = ExternalChanges(counter)
    changes.writer_holds_lock()
    changes.before_commit()
    counter.value += 2  # our COMMIT, and another process's right after it
    assert changes.after_commit(wrote=True)
    assert not changes.check()


def test_a_reader_seeing_two_steps_past_the_announcement_drops_for_both() -> None:
    counter = Counter()
    changes = ExternalChanges(counter)
    changes.writer_holds_lock()
    changes.before_commit()
    counter.value += 2  # at least one is another process's
    dropped: list[bool] = []
    assert changes.check(lambda: dropped.append(changes.moved()))
    assert dropped == [True] and not changes.moved()
    assert not changes.after_commit(wrote=False)  # the drop covered our step too
    counter.value += 1
    assert changes.check()


def test_a_commit_before_our_begin_is_detected_at_begin() -> None:
    counter = Counter()
    changes = ExternalChanges(counter)
    counter.value += 1  # another process, before our BEGIN IMMEDIATE
    assert changes.writer_holds_lock()
    changes.before_commit()
    counter.value += 1
    assert not changes.after_commit(wrote=True)
    assert not changes.check()


def test_a_commit_that_wrote_nothing_never_hides_an_external_one() -> None:
    counter = Counter()
    changes = ExternalChanges(counter, writer_settles=10)
    changes.writer_holds_lock()
    changes.before_commit()
    # Our COMMIT wrote no frame (say, only a TEMP table), and another process committed
    # before the writer settled: a reader cannot tell that step from ours.
    counter.value += 1
    reader, answer = _settle_in_a_thread(changes)
    reader.join(0.05)
    assert reader.is_alive() and changes.moved()
    dropped: list[bool] = []
    assert changes.after_commit(False, lambda: dropped.append(changes.moved()))
    assert dropped == [True]  # the drop ran before the step was published
    reader.join(5)
    assert answer == [False]  # the writer dropped for it, before the reader went on
    assert not changes.moved()


def test_a_commit_that_wrote_nothing_withdraws_its_announcement() -> None:
    counter = Counter()
    changes = ExternalChanges(counter)
    changes.before_commit()
    assert not changes.after_commit(wrote=False)
    counter.value += 1  # then another process
    assert changes.check()


def test_an_announcement_never_settled_counts_as_another_process_at_the_next_begin() -> None:
    counter = Counter()
    changes = ExternalChanges(counter, writer_settles=10)
    changes.writer_holds_lock()
    changes.before_commit()
    counter.value += 1  # the COMMIT happened; the writer died before settling it
    reader, answer = _settle_in_a_thread(changes)
    assert changes.writer_holds_lock()  # its next incarnation: cannot tell, so drop
    reader.join(5)
    assert answer == [False] and not changes.moved()


def test_a_reader_waits_for_the_writer_to_settle_only_so_long() -> None:
    counter = Counter()
    changes = ExternalChanges(counter, writer_settles=0.01)
    changes.writer_holds_lock()
    changes.before_commit()
    counter.value += 1  # the writer never settles it
    dropped: list[bool] = []
    assert changes.check(lambda: dropped.append(changes.moved()))  # taken for another's
    assert dropped == [True] and not changes.moved()
    assert not changes.after_commit(wrote=True)  # the drop covered it


def test_the_counter_wraps_around() -> None:
    counter = Counter()
    counter.value = 0xFFFFFFFF
    changes = ExternalChanges(counter)
    changes.before_commit()
    counter.value = 0
    assert not changes.after_commit(wrote=True)
    assert not changes.check()


def test_a_write_after_outlasting_the_timestamps_changes_them(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a")
    assert disk.outlast_timestamps(str(path))
    before = disk.fingerprint(str(path))
    path.write_bytes(b"b")  # same size
    assert disk.fingerprint(str(path)) != before


def test_timestamps_in_the_future_are_not_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a")
    later = time.time_ns() + 10 * 1_000_000_000
    os.utime(path, ns=(later, later))
    started = time.monotonic()
    assert not disk.outlast_timestamps(str(path))
    assert time.monotonic() - started < 1


class _ClosedAfterOneLook(disk.DiskStore):
    """A disk level whose cache the cache actor's crash closes right after it is read."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory, 1 << 20)  # (its assignments go to the setter)
        self.looks = 0

    @property  # type: ignore[override]
    def _cache(self) -> object:
        self.looks += 1
        return self._real if self.looks == 1 else None

    @_cache.setter
    def _cache(self, value: object) -> None:
        self._real = value


@pytest.mark.parametrize("call", ["delete", "clear", "stats", "get", "put", "items"])
def test_the_disk_level_reads_its_cache_once_per_call(tmp_path: Path, call: str) -> None:
    """It checked that its cache was open, then used it: closed in between (the cache
    actor crashed), the call failed with a raw AttributeError on None."""
    store = _ClosedAfterOneLook(str(tmp_path / "l2"))
    calls = {
        "delete": lambda: store.delete("SELECT 1", ()),
        "clear": store.clear,
        "stats": store.stats,
        "get": lambda: store.get("SELECT 1", ()),
        "put": lambda: store.put("SELECT 1", (), {}, [(1,)], 60),
        "items": store.items,
    }
    calls[call]()  # no AttributeError
    assert store.looks == 1

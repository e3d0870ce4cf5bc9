"""The cache's pure parts: LRU, codec, statement analysis, external-change counting."""

from __future__ import annotations

import pickle
import sys
import time
from pathlib import Path

import apsw
import pytest

from atlas_actors.cache.changes import ExternalChanges
from atlas_actors.cache.codec import CodecError, decode, encode
from atlas_actors.cache.lru import ByteLRU, Entry, measure
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
    one = measure(_entry("a").rows)
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


def test_a_reader_seeing_our_commit_before_the_writer_settles_is_fine() -> None:
    counter = Counter()
    changes = ExternalChanges(counter)
    changes.writer_holds_lock()
    changes.before_commit()
    counter.value += 1
    assert not changes.check()  # the reader takes the increment for ours: right
    assert not changes.after_commit(wrote=True)


def test_an_external_commit_racing_ours_is_detected() -> None:
    counter = Counter()
    changes = ExternalChanges(counter)
    changes.writer_holds_lock()
    changes.before_commit()
    counter.value += 2  # our COMMIT, and another process's right after it
    assert not changes.after_commit(wrote=True)
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
    changes = ExternalChanges(counter)
    changes.before_commit()
    # Our COMMIT wrote no frame (say, only a TEMP table), and a reader took another
    # process's commit for ours before the writer settled.
    counter.value += 1
    assert not changes.check()
    assert changes.after_commit(wrote=False)  # so the writer reports it


def test_a_commit_that_wrote_nothing_withdraws_its_announcement() -> None:
    counter = Counter()
    changes = ExternalChanges(counter)
    changes.before_commit()
    assert not changes.after_commit(wrote=False)
    counter.value += 1  # then another process
    assert changes.check()


def test_the_counter_wraps_around() -> None:
    counter = Counter()
    counter.value = 0xFFFFFFFF
    changes = ExternalChanges(counter)
    changes.before_commit()
    counter.value = 0
    assert not changes.after_commit(wrote=True)
    assert not changes.check()

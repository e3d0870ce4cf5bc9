"""The cache in the running storage: hits, invalidation, other processes, restarts, safety."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import apsw
import diskcache
import pytest

import atlas_actors as atlas
from atlas_actors.actors.cache import CacheActor
from atlas_actors.actors.supervisor import CLEANUP_GRACE
from atlas_actors.cache import manager
from tests.helpers import delay_on_crash, wait_until

ROOT = Path(__file__).resolve().parent.parent.parent
READ = "SELECT v FROM kv WHERE k = ?"


@pytest.fixture
def kv(open_storage: Callable[..., atlas.Storage]) -> atlas.Storage:
    db = open_storage(cache_disk_min_seconds=0)
    db.execute(
        "CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT); CREATE TABLE other(k INTEGER, v TEXT)"
    )
    db.write_many("INSERT INTO kv VALUES (?, ?)", [(i, f"v{i}") for i in range(50)])
    db.write_many("INSERT INTO other VALUES (?, ?)", [(i, f"o{i}") for i in range(50)])
    return db


def _v(db: atlas.Storage, k: int) -> str:
    return str(db.query(READ, [k])[0].v)


def _cached(db: atlas.Storage, k: int) -> str:
    """Read twice: a result is admitted to the cache the second time it is missed."""
    _v(db, k)
    return _v(db, k)


def _cached_query(db: atlas.Storage, sql: str) -> list[atlas.Row]:
    db.query(sql)
    return db.query(sql)


def test_a_repeated_read_is_served_from_memory(kv: atlas.Storage) -> None:
    assert _cached(kv, 1) == "v1"
    before = kv.cache.stats()
    for _ in range(10):
        assert _v(kv, 1) == "v1"
    after = kv.cache.stats()
    assert after.l1_hits - before.l1_hits == 10 and after.misses == before.misses
    assert after.size >= 1 and after.memory_usage > 0 and 0 < after.hit_rate <= 1
    assert 0 <= after.page_cache_hit_rate <= 1


def test_statements_that_differ_only_in_layout_are_cached_apart(
    kv: atlas.Storage,
) -> None:
    # The key is the exact text: a literal's spaces are its content, and SQLite names
    # an expression's column after the text as written.
    kv.write_many("INSERT INTO other VALUES (?, ?)", [(100, "a b"), (101, "a  b"), (102, "a--b")])
    one = "SELECT k FROM other WHERE v = 'a b'"
    assert _cached_query(kv, one) == [(100,)]
    assert kv.query("SELECT k FROM other WHERE v = 'a  b'") == [(101,)]
    named = 'SELECT k AS "the key" FROM other WHERE k = 100'
    assert _cached_query(kv, named)[0]._fields == ("the key",)
    assert kv.query(named.replace("the key", "the  key"))[0]._fields == ("the  key",)
    assert kv.query("SELECT k FROM other WHERE v = 'a--b'") == [(102,)]
    counted = "SELECT count(*) FROM other WHERE k < 3"
    assert _cached_query(kv, counted)[0]._fields == ("count(*)",)
    assert kv.query(counted.replace("(*)", "( * )"))[0]._fields == ("count( * )",)


def test_the_caller_cannot_change_what_the_cache_holds(kv: atlas.Storage) -> None:
    _cached(kv, 2)
    rows = kv.query(READ, [2])
    rows.append("junk")  # type: ignore[arg-type]
    assert kv.query(READ, [2]) == [("v2",)]


def test_an_acknowledged_write_is_seen_by_the_next_read_from_any_thread(
    kv: atlas.Storage,
) -> None:
    assert _cached(kv, 3) == "v3"
    kv.write("UPDATE kv SET v = 'new' WHERE k = 3")
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.append(_v(kv, 3)))
    reader.start()
    reader.join(5)
    assert _v(kv, 3) == "new" and seen == ["new"]


def test_a_write_drops_only_the_entries_of_the_tables_it_changed(kv: atlas.Storage) -> None:
    _cached_query(kv, "SELECT count(*) FROM other")
    _cached(kv, 1)
    kv.write("UPDATE other SET v = ? WHERE k = ?", ["x", 2])  # parameters: analysed too
    before = kv.cache.stats()
    kv.query(READ, [1])
    assert kv.cache.stats().l1_hits == before.l1_hits + 1  # kv entry survived
    assert kv.query("SELECT count(*) FROM other") == [(50,)]
    assert kv.cache.stats().misses == before.misses + 1  # the count was dropped


def test_a_write_drops_only_the_entries_whose_rows_it_changed(kv: atlas.Storage) -> None:
    # "WHERE k = ?" results depend on the rows with that k: a write to another row
    # leaves them cached; a write to their row, or moving a row into them, drops them.
    other = "SELECT v FROM other WHERE k = ?"
    for k in (1, 2, 3):
        _cached_query_params(kv, other, [k])
    kv.write("UPDATE other SET v = 'x' WHERE k = 2")
    kv.write("UPDATE other SET k = ? WHERE k = ?", [3, 40])  # a row moves into k = 3
    before = kv.cache.stats()
    assert kv.query(other, [1]) == [("o1",)]
    assert kv.cache.stats().hits == before.hits + 1
    assert kv.query(other, [2]) == [("x",)]
    assert sorted(r.v for r in kv.query(other, [3])) == ["o3", "o40"]
    assert kv.cache.stats().misses == before.misses + 2


def test_row_images_are_collected_only_while_something_can_use_them(kv: atlas.Storage) -> None:
    # Write-only stretches skip the writer's per-row hook (whole tables are dropped
    # then, and nothing depends on rows); reads bring row-level invalidation back.
    other = "SELECT v FROM other WHERE k = ?"
    kv.cache.invalidate("*")
    kv.cache.wants_row_images()  # (the fixture's own reads)
    assert kv.cache.wants_row_images() is False  # no reads since the last ask, no entries
    for k in range(5):
        kv.write("UPDATE other SET v = ? WHERE k = ?", [f"w{k}", k + 100])
    assert kv.cache.wants_row_images() is False
    _cached_query_params(kv, other, [1])
    assert kv.cache.wants_row_images() is True  # reads came through the cache
    kv.write("UPDATE other SET v = 'x' WHERE k = 2")  # its batch collects row images
    before = kv.cache.stats()
    assert kv.query(other, [1]) == [("o1",)]
    assert kv.cache.stats().hits == before.hits + 1  # another row changed: still cached
    assert kv.cache.wants_row_images() is True  # a row-dependent entry is held
    kv.write("UPDATE other SET v = 'y' WHERE k = 1")
    assert kv.query(other, [1]) == [("y",)]


def _cached_query_params(db: atlas.Storage, sql: str, params: list[object]) -> None:
    db.query(sql, params)
    db.query(sql, params)


@pytest.mark.parametrize(
    "write",
    [
        lambda db: db.write_all([("UPDATE kv SET v = 'changed' WHERE k = 4", None)]),
        lambda db: db.write_many("UPDATE kv SET v = ? WHERE k = ?", [("changed", 4)]),
        lambda db: db.run_in_writer(lambda c: c.execute("UPDATE kv SET v = 'changed' WHERE k = 4")),
        lambda db: db.writer.execute("UPDATE kv SET v = 'changed' WHERE k = 4").get(5),
    ],
)
def test_every_way_of_writing_invalidates(kv: atlas.Storage, write: Callable[..., object]) -> None:
    assert _cached(kv, 4) == "v4"
    write(kv)
    assert _v(kv, 4) == "changed"


def test_transactions_invalidate_what_they_changed(kv: atlas.Storage) -> None:
    assert _cached(kv, 5) == "v5"
    with kv.transaction() as tx:
        tx.execute("UPDATE kv SET v = 'tx' WHERE k = 5")
    assert _v(kv, 5) == "tx"
    with pytest.raises(RuntimeError), kv.transaction() as tx:
        tx.execute("UPDATE kv SET v = 'rolled back' WHERE k = 5")
        raise RuntimeError
    assert _v(kv, 5) == "tx"


@pytest.mark.parametrize(
    ("known", "method"),
    [(False, "execute"), (True, "execute"), (False, "query"), (True, "query")],
    ids=["new-text", "analysed-before", "query-new-text", "query-analysed-before"],
)
def test_a_schema_change_inside_a_transaction_drops_what_it_changed(
    kv: atlas.Storage, known: bool, method: str
) -> None:
    # A transaction of statements that leave the schema alone skips the writer's schema
    # check; one holding DDL must not, whether its text is new to the analysis (noted at
    # the statement) or known from before (noted from the analysis's cache).
    alter = "ALTER TABLE kv ADD COLUMN extra INTEGER DEFAULT 7"
    if known:
        kv.run_in_writer(lambda connection: kv.statements.analyze(connection, alter))
    assert _cached_query(kv, "SELECT * FROM kv WHERE k = 3") == [(3, "v3")]
    with kv.transaction() as tx:
        tx.execute("UPDATE kv SET v = 'tx' WHERE k = 4")  # plain: known after the first
        getattr(tx, method)(alter)
    assert kv.query("SELECT * FROM kv WHERE k = 3") == [(3, "v3", 7)]
    # And a later plain transaction's commit skips the check without harm.
    with kv.transaction() as tx:
        tx.execute("UPDATE kv SET v = 'again' WHERE k = 4")
    assert _cached_query(kv, "SELECT * FROM kv WHERE k = 4") == [(4, "again", 7)]


def test_a_trigger_written_table_is_invalidated_too(kv: atlas.Storage) -> None:
    kv.execute(
        "CREATE TRIGGER mirror AFTER UPDATE ON kv BEGIN "
        "UPDATE other SET v = new.v WHERE k = new.k; END"
    )
    assert _cached_query(kv, "SELECT v FROM other WHERE k = 6") == [("o6",)]
    kv.write("UPDATE kv SET v = 'via trigger' WHERE k = 6")
    assert kv.query("SELECT v FROM other WHERE k = 6") == [("via trigger",)]


def test_a_temp_trigger_dropped_in_the_same_batch_still_invalidates_what_it_wrote(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    """The batch's tables are worked out at COMMIT: by then the trigger is gone, and the
    INSERT alone no longer shows that it wrote to b."""
    db = open_storage(cache_disk_min_seconds=0, max_batch_delay=2.0)
    db.execute("CREATE TABLE a(x); CREATE TABLE b(x); CREATE TABLE busy(x)")
    db.execute("CREATE TEMP TRIGGER copy AFTER INSERT ON a BEGIN INSERT INTO b VALUES (new.x); END")
    count = "SELECT count(*) AS n FROM b"
    assert [db.query(count)[0].n for _ in range(3)] == [0, 0, 0]  # cached now
    slow = db.writer.execute(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000) "
        "INSERT INTO busy SELECT x FROM c"
    )
    insert = db.writer.execute("INSERT INTO a VALUES (42)")  # queued behind it: one batch
    drop = db.writer.execute("DROP TRIGGER IF EXISTS temp.copy")
    slow.get(10), insert.get(10), drop.get(10)
    assert db.writer.stats().max_batch >= 2
    assert db.query(count)[0].n == 1


def test_schema_changes_and_writer_restarts_drop_everything(kv: atlas.Storage) -> None:
    _cached(kv, 7)
    assert kv.cache.stats().size >= 1
    kv.execute("CREATE INDEX kv_v ON kv(v)")
    assert kv.cache.stats().size == 0
    _cached(kv, 7)
    restarted = threading.Event()
    kv.events.on("restart", lambda e: restarted.set())
    kv.supervisor.kill("writer")
    assert restarted.wait(5)
    assert wait_until(lambda: kv.cache.stats().size == 0)


def test_a_cheap_result_is_admitted_the_second_time_it_is_missed(
    open_storage: Callable[..., atlas.Storage],
) -> None:
    db = open_storage()  # default: only expensive results go straight in
    db.execute("CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT)")
    db.write("INSERT INTO kv VALUES (20, 'v20')")
    _v(db, 20)
    assert db.cache.stats().size == 0  # asked for once: not stored
    _v(db, 20)
    assert db.cache.stats().size == 1
    before = db.cache.stats().l1_hits
    _v(db, 20)
    assert db.cache.stats().l1_hits == before + 1


@pytest.fixture
def small_reuse_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Judge reuse after 8 misses and skip 20 reads (instead of 4,096 and 65,536)."""
    monkeypatch.setattr(manager, "_REUSE_WINDOW", 8)
    monkeypatch.setattr(manager, "_SKIP_READS", 20)


@pytest.fixture
def fresh(open_storage: Callable[..., atlas.Storage]) -> atlas.Storage:
    """A storage with default admission (a cheap result is stored at its second read)."""
    db = open_storage()
    db.execute("CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT)")
    db.write_many("INSERT INTO kv VALUES (?, ?)", [(i, f"v{i}") for i in range(20)])
    return db


@pytest.mark.usefixtures("small_reuse_window")
def test_a_statement_whose_results_are_never_asked_for_again_skips_the_cache(
    fresh: atlas.Storage,
) -> None:
    for k in range(8):  # 8 different results, each asked for once: no repeat
        assert _v(fresh, k) == f"v{k}"
    before = fresh.cache.stats()
    assert before.skipped == 0
    assert _v(fresh, 1) == "v1"
    after = fresh.cache.stats()
    assert (after.skipped, after.misses, after.hits) == (1, before.misses + 1, 0)
    # Skipped reads are never stale: they run the query.
    fresh.write("UPDATE kv SET v = 'new' WHERE k = 1")
    assert _v(fresh, 1) == "new"
    # Other statements still go through the cache.
    other = "SELECT v FROM kv WHERE k = ? AND 1"
    hits = fresh.cache.stats().hits
    for _ in range(3):
        assert fresh.query(other, [5])[0].v == "v5"
    assert fresh.cache.stats().hits == hits + 1
    # After its skipped reads, the statement goes through the cache again.
    for _ in range(18):
        _v(fresh, 2)
    assert fresh.cache.stats().skipped == 20
    misses = fresh.cache.stats().misses
    _v(fresh, 2)
    assert fresh.cache.stats().misses == misses + 1
    assert fresh.cache.stats().skipped == 20


@pytest.mark.usefixtures("small_reuse_window")
def test_warming_a_skipping_statement_puts_it_back_through_the_cache(
    fresh: atlas.Storage,
) -> None:
    for k in range(8):
        _v(fresh, k)
    _v(fresh, 3)
    assert fresh.cache.stats().skipped == 1
    assert fresh.cache.warm([(READ, [3])]) == 1
    hits = fresh.cache.stats().hits
    assert _v(fresh, 3) == "v3"
    assert fresh.cache.stats().hits == hits + 1
    assert fresh.cache.stats().skipped == 1


@pytest.mark.usefixtures("small_reuse_window")
def test_a_cold_start_or_a_long_tail_is_not_taken_for_no_reuse(fresh: atlas.Storage) -> None:
    # A cold start: 5 results read in turn miss twice each before the first hit; the
    # second misses are repeats.
    for _ in range(3):
        for k in range(5):
            assert _v(fresh, k) == f"v{k}"
    assert (fresh.cache.stats().skipped, fresh.cache.stats().hits) == (0, 5)
    # A long tail: every miss from now on is a first read, but the hits are repeats.
    for k in range(5, 20):
        assert _v(fresh, 0) == "v0"
        assert _v(fresh, k) == f"v{k}"
    stats = fresh.cache.stats()
    assert (stats.skipped, stats.hits) == (0, 20)


def test_non_deterministic_reads_are_never_cached(kv: atlas.Storage) -> None:
    before = kv.cache.stats()
    first = kv.query("SELECT random() AS r FROM kv LIMIT 1")
    second = kv.query("SELECT random() AS r FROM kv LIMIT 1")
    assert first != second
    assert kv.cache.stats().bypassed == before.bypassed + 2


def test_invalidate_by_table_glob_or_statement_glob(kv: atlas.Storage) -> None:
    _cached(kv, 8)
    _cached_query(kv, "SELECT v FROM other WHERE k = 8")
    assert kv.cache.invalidate("kv:*") == 1
    assert kv.cache.invalidate("oth*") == 1
    _cached(kv, 9)
    assert kv.cache.invalidate("SELECT v FROM kv*") == 1
    assert kv.cache.invalidate("nothing") == 0


def test_warm_runs_the_given_queries(kv: atlas.Storage) -> None:
    assert kv.cache.warm([(READ, [10]), (READ, [11]), "SELECT count(*) FROM kv"]) == 3
    # warm() stores what it runs, without waiting for a second request.
    before = kv.cache.stats()
    _v(kv, 10)
    assert kv.cache.stats().l1_hits == before.l1_hits + 1


CHILD_WRITE = textwrap.dedent(
    """
    import sys, apsw
    connection = apsw.Connection(sys.argv[1])
    connection.set_busy_timeout(5000)
    connection.execute("UPDATE kv SET v = ? WHERE k = 12", (sys.argv[2],))
    """
)


def test_another_process_writing_is_seen_by_the_next_cached_read(
    kv: atlas.Storage, db_path: Path
) -> None:
    for round_ in range(5):
        assert _v(kv, 12) in ("v12", f"external {round_ - 1}")
        subprocess.run(
            [sys.executable, "-c", CHILD_WRITE, str(db_path), f"external {round_}"], check=True
        )
        assert _v(kv, 12) == f"external {round_}"


def test_read_uncommitted_may_serve_the_cache_without_checking_other_processes(
    kv: atlas.Storage, db_path: Path
) -> None:
    assert _cached(kv, 13) == "v13"
    other = apsw.Connection(str(db_path))
    other.execute("UPDATE kv SET v = 'elsewhere' WHERE k = 13")
    other.close()
    with kv.transaction("read_uncommitted") as tx:
        assert tx.query(READ, [13]) == [("v13",)]  # served from cache, unchecked
    with kv.transaction("read_committed") as tx:
        assert tx.query(READ, [13]) == [("elsewhere",)]


def test_a_cache_actor_crash_bypasses_then_warms_without_stale_entries(
    kv: atlas.Storage,
) -> None:
    _cached(kv, 14)
    _cached_query(kv, "SELECT v FROM other WHERE k = 14")
    assert wait_until(lambda: kv.cache.stats().l2_entries >= 2)  # written to disk
    restarted = threading.Event()
    kv.events.on("restart", lambda e: restarted.set() if e.role == "cache" else None)
    kv.supervisor.kill("cache")
    kv.write("UPDATE kv SET v = 'while down' WHERE k = 14")  # invalidated, cache or not
    assert restarted.wait(5)
    # The new incarnation attaches an empty L1 first and warms it from L2 afterwards
    # (a message to itself): wait for the warming, not only the attach, or the next
    # read may be a promotion from L2 instead of an L1 hit. Nothing else fills L1 here.
    assert wait_until(lambda: kv.cache.stats().size >= 1)
    assert _v(kv, 14) == "while down"
    before = kv.cache.stats()
    assert kv.query("SELECT v FROM other WHERE k = 14") == [("o14",)]
    assert kv.cache.stats().l1_hits == before.l1_hits + 1  # warmed from L2


def test_a_dying_cache_actor_leaves_the_next_incarnations_levels_alone(
    kv: atlas.Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pykka marks a failing actor stopped before its on_failure runs, so the
    # supervisor's liveness check may restart it first. The dying incarnation's
    # clean-up must then not switch off the levels the new one attached.
    cleaned_up = threading.Event()
    attached: list[bool] = []
    dying_l1 = kv.cache.l1
    # Once the clean-up outlasts CLEANUP_GRACE, the liveness check restarts the role
    # without waiting for it: let the successor attach its levels first.
    delay_on_crash(
        monkeypatch,
        CacheActor,
        before=lambda: attached.append(
            wait_until(
                lambda: kv.cache.l1 is not None and kv.cache.l1 is not dying_l1,
                timeout=CLEANUP_GRACE + 4,
            )
        ),
        after=cleaned_up.set,
    )
    kv.supervisor.kill("cache")
    assert cleaned_up.wait(CLEANUP_GRACE + 10)
    assert attached == [True]  # the successor was there before the late clean-up
    assert kv.cache.l1 is not None
    _cached(kv, 3)
    before = kv.cache.stats()
    assert _v(kv, 3) == "v3"
    assert kv.cache.stats().l1_hits == before.l1_hits + 1


def test_reads_while_the_cache_actor_dies_get_rows_not_actor_errors(
    kv: atlas.Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Until a dying incarnation's on_crash detaches the levels, reads still use them and
    # send admitted entries to the (dead) actor for L2: they must keep getting rows.
    crashing = threading.Event()
    delay_on_crash(monkeypatch, CacheActor, before=lambda: (crashing.set(), time.sleep(0.3)))
    kv.supervisor.kill("cache")
    assert crashing.wait(5)
    for k in range(20):
        assert _cached(kv, k) == f"v{k}"  # admitted on the second miss, bound for L2


def test_reopening_warms_memory_from_disk(db_path: Path) -> None:
    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        db.execute("CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT)")
        db.write("INSERT INTO kv VALUES (1, 'one')")
        _cached(db, 1)
        assert wait_until(lambda: db.cache.stats().l2_entries == 1)
    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        assert wait_until(lambda: db.cache.stats().size == 1)
        assert _v(db, 1) == "one"
        assert db.cache.stats().l1_hits == 1 and db.cache.stats().misses == 0


def test_changes_made_while_closed_drop_what_was_on_disk(db_path: Path) -> None:
    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        db.execute("CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT)")
        db.write("INSERT INTO kv VALUES (1, 'one')")
        _cached(db, 1)
        assert wait_until(lambda: db.cache.stats().l2_entries == 1)
    other = apsw.Connection(str(db_path))
    other.execute("UPDATE kv SET v = 'changed while closed'")
    other.close()
    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        assert db.cache.stats().size == 0
        assert _v(db, 1) == "changed while closed"


KILLED = textwrap.dedent(
    """
    import sys, atlas_actors as atlas
    db = atlas.open(sys.argv[1], cache_disk_min_seconds=0)
    db.execute("CREATE TABLE IF NOT EXISTS kv(k INTEGER PRIMARY KEY, v TEXT)")
    db.write("INSERT OR REPLACE INTO kv VALUES (1, 'one')")
    db.query("SELECT v FROM kv WHERE k = ?", [1])
    db.query("SELECT v FROM kv WHERE k = ?", [1])
    import time
    while db.cache.stats().l2_entries < 1:
        time.sleep(0.01)
    print("cached", flush=True)
    time.sleep(60)
    """
)


def test_after_an_unclean_stop_nothing_on_disk_is_trusted(db_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(db_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "cached"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        assert db.cache.stats().size == 0 and db.cache.stats().l2_entries == 0


def test_the_cache_directory_is_owner_only(kv: atlas.Storage, db_path: Path) -> None:
    directory = Path(f"{db_path}.cache")
    assert directory.is_dir() and directory.stat().st_mode & 0o777 == 0o700


def test_a_directory_owned_by_someone_else_is_not_used(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to give the directory to another user")
    directory = tmp_path / "shared-cache"
    directory.mkdir()
    os.chown(directory, 65534, 65534)
    with atlas.open(tmp_path / "x.db", cache_dir=str(directory)) as db:
        db.execute("CREATE TABLE t(x)")
        db.query("SELECT x FROM t")
        assert db.cache.l2 is None  # memory only
        assert db.query("SELECT count(*) FROM t") == [(0,)]


def test_a_planted_pickle_is_never_unpickled_and_counts_as_a_miss(
    db_path: Path, tmp_path: Path
) -> None:
    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        db.execute("CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT)")
        db.write("INSERT INTO kv VALUES (1, 'one')")
        _cached(db, 1)
        assert wait_until(lambda: db.cache.stats().l2_entries == 1)
    # Someone with write access replaces every entry with a pickle that runs code.
    marker = tmp_path / "pwned"
    plain = diskcache.Cache(f"{db_path}.cache")
    for key in list(plain.iterkeys()):
        if key != "atlas:meta":
            plain.set(key, _Exploit(str(marker)))
    plain.close()
    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        assert _v(db, 1) == "one"
    assert not marker.exists()


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (open, (self.path, "w"))  # would create the file if unpickled


def test_an_unreadable_entry_is_a_miss(db_path: Path) -> None:
    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        db.execute("CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT)")
        db.write("INSERT INTO kv VALUES (1, 'one')")
        _cached(db, 1)
        assert wait_until(lambda: db.cache.stats().l2_entries == 1)
    plain = diskcache.Cache(f"{db_path}.cache")
    for key in list(plain.iterkeys()):
        if key != "atlas:meta":
            plain.set(key, b"garbage")
    plain.close()
    with atlas.open(db_path, cache_disk_min_seconds=0) as db:
        assert db.cache.stats().size == 0  # nothing warmed
        assert _v(db, 1) == "one"


def test_with_the_cache_off_reads_still_work(open_storage: Callable[..., atlas.Storage]) -> None:
    db = open_storage(cache=False)
    db.execute("CREATE TABLE t(x)")
    db.write("INSERT INTO t VALUES (1)")
    assert db.query("SELECT x FROM t") == [(1,)]
    assert db.cache.stats().hits == 0
    assert "cache" not in [c.role for c in db.supervisor.status().children]


def test_the_disk_level_can_be_turned_off(
    open_storage: Callable[..., atlas.Storage], db_path: Path
) -> None:
    shutil.rmtree(f"{db_path}.cache", ignore_errors=True)
    db = open_storage(cache_disk=False)
    db.execute("CREATE TABLE t(x)")
    db.query("SELECT x FROM t")
    db.query("SELECT x FROM t")
    assert db.cache.l2 is None and not Path(f"{db_path}.cache").exists()


def test_watching_the_wal_index_keeps_sqlites_lock_on_it(kv: atlas.Storage, db_path: Path) -> None:
    # POSIX drops a process's locks on a file when it closes any descriptor of it: if the
    # watcher ever did, the next process would rebuild the wal-index, resetting its
    # counter. Each write by another process must move it by exactly one.
    external = kv.cache.external
    assert external is not None
    counter = external._counter
    for round_ in range(3):
        before = counter()
        subprocess.run(
            [sys.executable, "-c", CHILD_WRITE, str(db_path), f"lock {round_}"], check=True
        )
        assert counter() == before + 1


def test_two_storages_never_share_what_a_statement_touches(
    open_storage: Callable[..., atlas.Storage], tmp_path: Path
) -> None:
    # The same text on another database: here a trigger writes a second table, and a
    # table's columns stand in another order (a row-level template's column index).
    plain = open_storage(tmp_path / "plain.db", cache_disk_min_seconds=0)
    other = open_storage(tmp_path / "other.db", cache_disk_min_seconds=0)
    plain.execute("CREATE TABLE t(a INTEGER, b INTEGER)")
    other.execute(
        "CREATE TABLE t(b INTEGER, a INTEGER); CREATE TABLE audit(x);"
        "CREATE TRIGGER t_audit AFTER INSERT ON t BEGIN INSERT INTO audit VALUES (new.a); END"
    )
    insert, count, by_a = (
        "INSERT INTO t(a, b) VALUES (?, ?)",
        "SELECT count(*) FROM audit",
        "SELECT b FROM t WHERE a = ?",
    )
    plain.write(insert, [5, 1])  # analysed on the storage without the trigger
    plain.query(by_a, [5])  # and its template, with a as column 0
    other.write(insert, [5, 1])
    assert _cached_query(other, count) == [(1,)]
    assert other.query(by_a, [5]) == other.query(by_a, [5]) == [(1,)]
    other.write(insert, [6, 2])  # its trigger writes audit
    other.write("UPDATE t SET b = 99 WHERE a = 5")
    assert other.query(count) == [(2,)]
    assert other.query(by_a, [5]) == [(99,)]

"""A hypothesis state machine: writes (ours and another connection's), cached reads from
several threads, invalidations and restarts of the writer and the cache actor, against
a dict model. No read after an acknowledged write may return pre-write data."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import apsw
import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import atlas_actors as atlas

keys = st.integers(min_value=0, max_value=7)
values = st.sampled_from(["", "a", "b", "ab"]) | st.text(alphabet="abc", max_size=3)
WATCHED = ("", "a", "b", "ab")
BY_VALUE = "SELECT k FROM kv WHERE v = ? ORDER BY k"  # depends on the rows with that v
READ = "SELECT v FROM kv WHERE k = ?"


class CachedStorage(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.path = str(Path(self.dir.name) / "cache.db")
        self.db = atlas.open(
            self.path,
            restart_max=1000,
            restart_backoff_initial=0.001,
            cache_disk_min_seconds=0,
            default_timeout=10,
        )
        self.db.execute("CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        self.other = apsw.Connection(self.path)
        self.other.set_busy_timeout(5000)
        self.model: dict[int, str] = {}
        self.restarted = threading.Event()
        self.db.events.on("restart", lambda e: self.restarted.set())

    def _read(self, k: int) -> list[str]:
        return [r.v for r in self.db.query(READ, [k])]

    def _expect(self, k: int) -> list[str]:
        return [self.model[k]] if k in self.model else []

    @rule(k=keys, v=values, how=st.sampled_from(["write", "all", "tx", "fn", "future"]))
    def write(self, k: int, v: str, how: str) -> None:
        self._read(k)  # make sure a stale entry would be there to serve
        sql, params = "INSERT OR REPLACE INTO kv VALUES (?, ?)", [k, v]
        if how == "write":
            self.db.write(sql, params)
        elif how == "all":
            self.db.write_all([(sql, params)])
        elif how == "tx":
            with self.db.transaction() as tx:
                tx.execute(sql, params)
        elif how == "fn":
            self.db.run_in_writer(lambda c: c.execute(sql, params))
        else:
            self.db.writer.execute(sql, params).get(10)
        self.model[k] = v
        assert self._read(k) == [v]

    @rule(k=keys, v=values)
    def another_connection_writes(self, k: int, v: str) -> None:
        self._read(k)
        self.other.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (k, v))
        self.model[k] = v
        assert self._read(k) == [v]

    @rule(k=keys)
    def delete(self, k: int) -> None:
        self._read(k)
        self.db.write("DELETE FROM kv WHERE k = ?", [k])
        self.model.pop(k, None)
        assert self._read(k) == []

    @rule(k=keys, to=keys)
    def move(self, k: int, to: int) -> None:
        """A row changes its key (its rowid): both keys' cached reads must follow."""
        self._read(k)
        self._read(to)
        self.db.write("DELETE FROM kv WHERE k = ? AND ? <> ?", [to, k, to])
        self.db.write("UPDATE kv SET k = ? WHERE k = ?", [to, k])
        if k in self.model and k != to:
            self.model[to] = self.model.pop(k)
        elif k != to:
            self.model.pop(to, None)
        assert self._read(to) == self._expect(to)

    @rule(k=keys)
    def read_from_threads(self, k: int) -> None:
        seen: list[list[str]] = []
        threads = [threading.Thread(target=lambda: seen.append(self._read(k))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert seen == [self._expect(k)] * 4

    @rule(k=keys)
    def writes_racing_reads(self, k: int) -> None:
        """Readers must never see a value older than one acknowledged before they read."""
        acked = [-1]
        stale: list[tuple[int, int]] = []
        done = threading.Event()

        def writer() -> None:
            for n in range(15):
                self.db.write("INSERT OR REPLACE INTO kv VALUES (?, ?)", [k, str(n)])
                acked[0] = n
            done.set()

        def reader() -> None:
            while not done.is_set():
                floor = acked[0]
                rows = self._read(k)
                seen = int(rows[0]) if rows and rows[0].isdigit() else -1
                if seen < floor:
                    stale.append((seen, floor))

        threads = [threading.Thread(target=writer)] + [
            threading.Thread(target=reader) for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        self.model[k] = "14"
        assert not stale, stale[:3]

    @rule(pattern=st.sampled_from(["kv", "kv:*", "k*", "SELECT v FROM kv*", "nothing"]))
    def invalidate(self, pattern: str) -> None:
        self.db.cache.invalidate(pattern)

    @rule(role=st.sampled_from(["writer", "cache", "reader-0"]))
    def kill(self, role: str) -> None:
        self.restarted.clear()
        self.db.supervisor.kill(role)
        assert self.restarted.wait(10)

    @invariant()
    def every_key_reads_as_the_model(self) -> None:
        for k in range(8):
            assert self._read(k) == self._expect(k), k

    @invariant()
    def reads_by_value_and_counts_match_the_model(self) -> None:
        for v in WATCHED:
            found = [r.k for r in self.db.query(BY_VALUE, [v])]
            assert found == sorted(k for k, value in self.model.items() if value == v), v
        assert self.db.query("SELECT count(*) FROM kv") == [(len(self.model),)]

    def teardown(self) -> None:
        self.other.close()
        self.db.close()
        self.dir.cleanup()


CachedStorage.TestCase.settings = settings(
    max_examples=15,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCachedStorage = CachedStorage.TestCase

"""A hypothesis state machine drives writes, reads and kills against a dict model."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import atlas_actors as atlas
from atlas_actors.errors import ConstraintError

keys = st.integers(min_value=0, max_value=20)
values = st.text(max_size=8)


class StorageModel(RuleBasedStateMachine):
    """The storage must behave like a dict, whatever fails around it."""

    cache = True

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.db = atlas.open(
            Path(self.dir.name) / "model.db",
            restart_max=1000,
            restart_backoff_initial=0.001,
            default_timeout=10,
            readers=2,
            cache=self.cache,
        )
        self.db.execute("CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT NOT NULL CHECK (v != 'x'))")
        self.model: dict[int, str] = {}
        self.restarted = threading.Event()
        self.db.events.on("restart", lambda e: self.restarted.set())

    @rule(k=keys, v=values.filter(lambda v: v != "x"))
    def put(self, k: int, v: str) -> None:
        self.db.write("INSERT OR REPLACE INTO kv VALUES (?, ?)", [k, v])
        self.model[k] = v

    @rule(k=keys)
    def delete(self, k: int) -> None:
        result = self.db.write("DELETE FROM kv WHERE k = ?", [k])
        assert result.rowcount == (1 if k in self.model else 0)
        self.model.pop(k, None)

    @rule(k=keys)
    def rejected_put_changes_nothing(self, k: int) -> None:
        try:
            self.db.write("INSERT OR REPLACE INTO kv VALUES (?, 'x')", [k])
        except ConstraintError:
            return
        raise AssertionError("the CHECK constraint did not fire")

    def _put_from_threads(self, items: dict[int, str], kill: str | None = None) -> None:
        """Write ``items`` from a thread each (killing ``kill`` while they are in flight):
        every write must be acknowledged (writes are replayed after a crash)."""
        failed: list[BaseException] = []
        started = threading.Barrier(len(items) + 1)

        def put(k: int, v: str) -> None:
            started.wait(10)
            try:
                self.db.write("INSERT OR REPLACE INTO kv VALUES (?, ?)", [k, v])
            except BaseException as error:
                failed.append(error)

        threads = [threading.Thread(target=put, args=item) for item in items.items()]
        for thread in threads:
            thread.start()
        started.wait(10)
        if kill is not None:
            self.restarted.clear()
            self.db.supervisor.kill(kill)
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads), "a write hung"
        assert not failed, failed
        if kill is not None:
            assert self.restarted.wait(10)
        self.model.update(items)

    @rule(items=st.dictionaries(keys, values.filter(lambda v: v != "x"), max_size=12))
    def concurrent_puts(self, items: dict[int, str]) -> None:
        self._put_from_threads(items)

    @rule(
        items=st.dictionaries(keys, values.filter(lambda v: v != "x"), min_size=1, max_size=12),
        role=st.sampled_from(["writer", "reader-0"]),
    )
    def concurrent_puts_during_a_kill(self, items: dict[int, str], role: str) -> None:
        self._put_from_threads(items, kill=role)

    @rule(k=keys, queued=st.booleans())
    def get(self, k: int, queued: bool) -> None:
        sql, params = "SELECT v FROM kv WHERE k = ?", [k]
        rows = self.db.submit_query(sql, params).get(10) if queued else self.db.query(sql, params)
        assert [r.v for r in rows] == ([self.model[k]] if k in self.model else [])

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), queued=st.booleans())
    def get_a_stored_key(self, data: st.DataObject, queued: bool) -> None:
        self.get(data.draw(st.sampled_from(sorted(self.model))), queued)

    @rule(role=st.sampled_from(["writer", "reader-0", "reader-1"]))
    def kill(self, role: str) -> None:
        self.restarted.clear()
        self.db.supervisor.kill(role)
        assert self.restarted.wait(10)

    @invariant()
    def table_equals_model(self) -> None:
        rows = self.db.query("SELECT k, v FROM kv ORDER BY k")
        assert {r.k: r.v for r in rows} == self.model

    def teardown(self) -> None:
        self.db.close()
        self.dir.cleanup()


class StorageModelWithoutCache(StorageModel):
    """The same, every read answered by a reader's snapshot (no cache hit hides one)."""

    cache = False


for _machine in (StorageModel, StorageModelWithoutCache):
    _machine.TestCase.settings = settings(
        max_examples=25,
        stateful_step_count=20,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
TestStorageModel = StorageModel.TestCase
TestStorageModelWithoutCache = StorageModelWithoutCache.TestCase

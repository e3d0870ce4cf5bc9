"""Group commit under many threads: exactly once, failure isolation, batching."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import atlas_actors as atlas
from atlas_actors.errors import ConstraintError


def test_64_threads_times_200_writes_all_land_exactly_once(db: atlas.Storage) -> None:
    threads, per_thread = 64, 200
    db.execute("CREATE TABLE log(thread INTEGER, seq INTEGER, PRIMARY KEY (thread, seq))")
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for seq in range(per_thread):
                db.write("INSERT INTO log(thread, seq) VALUES (?, ?)", [thread, seq])
        except BaseException as error:
            errors.append(error)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert not errors
    count, distinct = db.query("SELECT count(*), count(DISTINCT thread * 1000 + seq) FROM log")[0]
    assert count == distinct == threads * per_thread
    stats = db.writer.stats()
    # Group commit happened: far fewer commits than writes.
    assert stats.mean_batch > 2, stats


def test_a_constraint_violation_inside_a_busy_batch_fails_only_its_own_call(
    db: atlas.Storage,
) -> None:
    db.write("INSERT INTO tasks(title) VALUES ('taken')")

    def insert(i: int) -> str:
        title = "taken" if i % 10 == 0 else f"t{i}"
        try:
            db.write("INSERT INTO tasks(title) VALUES (?)", [title])
        except ConstraintError:
            return "constraint"
        return "ok"

    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(insert, range(400)))
    assert outcomes.count("constraint") == 40
    assert outcomes.count("ok") == 360
    assert db.query("SELECT count(*) FROM tasks")[0][0] == 361
    assert db.writer.stats().mean_batch > 1


def test_futures_of_one_batch_resolve_only_after_its_commit(db: atlas.Storage) -> None:
    # Queue many writes without waiting: they share batches; each resolved future's row
    # must be visible to a reader at once (acknowledged means committed).
    futures = [
        db.writer.execute("INSERT INTO tasks(title) VALUES (?)", [f"t{i}"]) for i in range(300)
    ]
    for i, future in enumerate(futures):
        future.get(timeout=10)
        assert db.query("SELECT 1 FROM tasks WHERE title = ?", [f"t{i}"]) == [(1,)]

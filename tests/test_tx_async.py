"""``with db.transaction()`` from asyncio tasks that share one thread.

A thread's open blocks make a ``db.transaction()`` inside them a savepoint. Two tasks
of one event loop run in the same thread: a block one task opened is open while the
other runs, but is not "inside" it. Such a call is refused, and says what to do.
"""

from __future__ import annotations

import asyncio

import pytest

import atlas_actors as atlas
from atlas_actors.errors import ValidationError
from tests.helpers import xy


def test_a_block_another_task_opened_is_not_a_savepoint_of_it(kv: atlas.Storage) -> None:
    log: list[object] = []

    async def task_a() -> None:
        with kv.transaction() as tx:
            tx.execute("UPDATE kv SET v = 1 WHERE k = 'x'")
            await asyncio.sleep(0.05)  # task B runs meanwhile
        log.append(("A", tx.state))

    async def task_b() -> None:
        await asyncio.sleep(0.01)
        try:
            with kv.transaction() as tx:
                tx.execute("UPDATE kv SET v = 2 WHERE k = 'y'")
        except ValidationError as error:
            log.append(("B", str(error)))

    async def main() -> None:
        await asyncio.gather(task_a(), task_b())

    asyncio.run(main())
    assert log[1] == ("A", "committed")
    said = log[0][1]  # type: ignore[index]
    assert log[0][0] == "B"
    assert "another asyncio task" in said and "asyncio.to_thread" in said
    assert xy(kv) == (1, 50)  # nothing of B's block ran, nor was committed with A's


def test_a_task_refused_while_another_tasks_ended_transaction_block_is_open(
    kv: atlas.Storage,
) -> None:
    outcome: list[str] = []

    async def task_a() -> None:
        with kv.transaction() as tx:
            tx.execute("UPDATE kv SET v = 1 WHERE k = 'x'")
            tx.commit()  # ended, its block still open
            await asyncio.sleep(0.05)

    async def task_b() -> None:
        await asyncio.sleep(0.01)
        try:
            with kv.transaction() as tx:
                tx.execute("UPDATE kv SET v = 2 WHERE k = 'y'")
            outcome.append("ran")
        except ValidationError:
            outcome.append("refused")
        # Once A's block has ended, B's block is its own transaction.
        await asyncio.sleep(0.1)
        with kv.transaction() as tx:
            tx.execute("UPDATE kv SET v = 3 WHERE k = 'y'")
        outcome.append(tx.state)

    async def main() -> None:
        await asyncio.gather(task_a(), task_b())

    asyncio.run(main())
    assert outcome == ["refused", "committed"]
    assert xy(kv) == (1, 3)


def test_a_task_nests_its_own_blocks_across_awaits(kv: atlas.Storage) -> None:
    async def work() -> str:
        with kv.transaction() as tx:
            tx.execute("UPDATE kv SET v = 1 WHERE k = 'x'")
            await asyncio.sleep(0)
            try:
                with kv.transaction() as inner:
                    assert inner is tx  # a savepoint of its own transaction
                    inner.execute("UPDATE kv SET v = 2 WHERE k = 'y'")
                    await asyncio.sleep(0)
                    raise RuntimeError("undo the inner block")
            except RuntimeError:
                pass
        return tx.state

    assert asyncio.run(work()) == "committed"
    assert xy(kv) == (1, 50)


def test_a_task_started_inside_a_block_is_refused_a_nested_one(kv: atlas.Storage) -> None:
    async def child() -> None:
        with kv.transaction() as tx:
            tx.execute("UPDATE kv SET v = 2 WHERE k = 'y'")

    async def parent() -> BaseException | None:
        with kv.transaction() as tx:
            tx.execute("UPDATE kv SET v = 1 WHERE k = 'x'")
            results = await asyncio.gather(asyncio.create_task(child()), return_exceptions=True)
        return results[0]

    raised = asyncio.run(parent())
    assert isinstance(raised, ValidationError)
    assert xy(kv) == (1, 50)


def test_a_loop_run_inside_a_block_is_refused_a_nested_one(kv: atlas.Storage) -> None:
    async def inner() -> None:
        with kv.transaction() as tx:
            tx.execute("UPDATE kv SET v = 2 WHERE k = 'y'")

    with kv.transaction() as tx:
        tx.execute("UPDATE kv SET v = 1 WHERE k = 'x'")
        with pytest.raises(ValidationError, match="asyncio"):
            asyncio.run(inner())
        assert tx.state == "active"
    assert xy(kv) == (1, 50)


def test_tasks_run_their_transactions_in_worker_threads(kv: atlas.Storage) -> None:
    """What the refusal advises: each task's transaction in a thread of its own."""

    def bump(tx: atlas.Transaction) -> None:
        v = tx.query("SELECT v FROM kv WHERE k = 'x'")[0].v
        tx.execute("UPDATE kv SET v = ? WHERE k = 'x'", [v + 1])

    async def main() -> None:
        await asyncio.gather(*(asyncio.to_thread(kv.transactions.run, bump) for _ in range(8)))

    asyncio.run(main())
    assert xy(kv) == (58, 50)

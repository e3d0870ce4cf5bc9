"""Statements with blob literals (``x'CAFE'``) are ordinary input.

The cache learns what a statement touches by preparing it in EXPLAIN mode; EXPLAIN's
rows carry a blob literal's raw bytes as text, which are no UTF-8. Reading them crashed
the writer (and the reader path), so the call waited out its deadline.
"""

from __future__ import annotations

from pathlib import Path

import atlas_actors as atlas


def test_writes_and_reads_with_blob_literals_work_with_the_cache_on(tmp_path: Path) -> None:
    with atlas.open(tmp_path / "blob.db", default_timeout=5) as db:
        db.execute("CREATE TABLE u(id INTEGER PRIMARY KEY, pic BLOB)")
        assert db.execute("INSERT INTO u(pic) VALUES (x'CAFE')").rowcount == 1
        db.write_all([("UPDATE u SET pic = x'BEEF' WHERE pic = x'CAFE'", None)])
        for _ in range(3):  # (cached from the second read)
            assert db.query("SELECT pic FROM u WHERE pic = x'BEEF'")[0].pic == b"\xbe\xef"
        with db.transaction() as tx:
            tx.execute("INSERT INTO u(pic) VALUES (x'00FF')")
        assert [r.pic for r in db.query("SELECT pic FROM u ORDER BY id")] == [
            b"\xbe\xef",
            b"\x00\xff",
        ]
        assert db.supervisor.status().restarts == 0

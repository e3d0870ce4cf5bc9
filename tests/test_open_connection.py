"""``open_connection``: a connection that fails while being configured is closed at once."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from atlas_actors.connection import open_connection
from atlas_actors.errors import AtlasError
from atlas_actors.faults import FaultyVFS


@pytest.fixture
def vfs() -> Iterator[FaultyVFS]:
    faulty = FaultyVFS()
    yield faulty
    faulty.unregister()


def _open_to(path: Path) -> int:
    """Connections apsw has open to ``path`` (collected garbage excluded)."""
    gc.collect()
    return sum(1 for c in apsw.connections() if c.filename == str(path))


@pytest.mark.parametrize("writer", [True, False], ids=["writer", "reader"])
def test_a_connection_that_fails_its_setup_is_closed_not_left_to_the_collector(
    tmp_path: Path, vfs: FaultyVFS, writer: bool
) -> None:
    path = tmp_path / "half-open.db"
    # A WAL database with its writer open, as readers always find it.
    held = open_connection(str(path), writer=True)
    held.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")  # (in the WAL)
    # The file opens; reading the WAL fails: a pragma of the setup fails after that.
    vfs.only = "half-open.db-wal"
    vfs.fail_reads = apsw.IOError
    kept: list[BaseException] = []
    for _ in range(3):  # a failed open is often retried (a reader reconnecting)
        with pytest.raises(AtlasError) as caught:
            open_connection(str(path), writer=writer, vfs=vfs.name)
        kept.append(caught.value)  # (its traceback holds the frames, as a caller's may)
    gc.disable()
    try:
        assert _open_to(path) == 1  # the writer held above only
    finally:
        gc.enable()
    vfs.fail_reads = None
    open_connection(str(path), writer=writer, vfs=vfs.name).close()
    held.close()

"""``open_connection``: a connection that fails while being configured is closed at once."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from atlas_actors.connection import open_connection, uri_within_flags
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


READ_ONLY = apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI
READ_WRITE = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_URI


@pytest.mark.parametrize(
    ("path", "flags", "expected"),
    [
        ("file:a.db?mode=rwc", READ_ONLY, "file:a.db?mode=ro"),
        ("file:a.db?mode=rw&cache=private#x", READ_ONLY, "file:a.db?mode=ro&cache=private#x"),
        ("file:a.db?mod%65=rwc", READ_WRITE, "file:a.db?mod%65=rw"),  # decoded, as SQLite does
        ("file:a.db?mode=rw", READ_WRITE, "file:a.db?mode=rw"),  # narrow enough: as given
        ("file:a.db?mode=ro", READ_WRITE | apsw.SQLITE_OPEN_CREATE, "file:a.db?mode=ro"),
        ("file:a.db?MODE=rwc", READ_ONLY, "file:a.db?MODE=rwc"),  # no mode: names match exactly
        ("a.db?mode=rwc", READ_ONLY, "a.db?mode=rwc"),  # a file name, not a URI
    ],
)
def test_a_uris_mode_is_narrowed_to_the_opens_flags(path: str, flags: int, expected: str) -> None:
    assert uri_within_flags(path, flags) == expected

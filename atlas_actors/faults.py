"""Fault injection through a real apsw VFS: reads, writes or syncs fail on demand.

Open a storage with ``atlas_actors.open(path, vfs=vfs.name)`` and every connection's
file operations go through :class:`FaultyVFS`, which passes them to the default VFS
unless told to fail. Used by the tests and the simulations; handy for chaos tests of
applications too.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import apsw

__all__ = ["FaultyVFS"]

_names = itertools.count()


class FaultyVFS(apsw.VFS):
    """A VFS over the default one whose file operations can be made to fail.

    Set ``fail_reads``/``fail_writes``/``fail_syncs`` to an apsw exception class (for
    example ``apsw.IOError`` or ``apsw.FullError``) to make every later such call on any
    file of this VFS raise it; set back to None to heal. Only files whose name ends with
    ``only`` (default: every file) are affected.
    """

    def __init__(self) -> None:
        self.name = f"faulty{next(_names)}"
        self.fail_reads: type[apsw.Error] | None = None
        self.fail_writes: type[apsw.Error] | None = None
        self.fail_syncs: type[apsw.Error] | None = None
        self.only = ""
        self.calls = {"read": 0, "write": 0, "sync": 0}
        self.lock = threading.Lock()
        super().__init__(self.name, "")

    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:
        """Open a file of the default VFS, wrapped so it can fail on demand."""
        return _FaultyFile(self, "", name, flags)


class _FaultyFile(apsw.VFSFile):
    def __init__(self, vfs: FaultyVFS, base: str, name: Any, flags: list[int]) -> None:
        self._vfs = vfs
        self._name = str(name.filename() if hasattr(name, "filename") else name)
        super().__init__(base, name, flags)

    def _check(self, kind: str, failure: type[apsw.Error] | None) -> None:
        with self._vfs.lock:
            self._vfs.calls[kind] += 1
        if failure is not None and self._name.endswith(self._vfs.only):
            raise failure(f"injected {kind} failure on {self._name}")

    def xRead(self, amount: int, offset: int) -> bytes:
        self._check("read", self._vfs.fail_reads)
        return super().xRead(amount, offset)

    def xWrite(self, data: bytes, offset: int) -> None:
        self._check("write", self._vfs.fail_writes)
        super().xWrite(data, offset)

    def xSync(self, flags: int) -> None:
        self._check("sync", self._vfs.fail_syncs)
        super().xSync(flags)

"""``db.wal``: the plan's WalManager over the writer's checkpoints.

The writer owns the WAL hook (so SQLite's automatic checkpoint is off): after each
commit it learns how many frames the WAL holds and, past ``checkpoint_frames``, runs a
PASSIVE checkpoint once the batch is acknowledged, and a TRUNCATE one when readers keep
the WAL past ``wal_size_limit`` (see ``WriterActor._truncate_wal``).
``journal_size_limit`` shrinks the file back whenever the WAL restarts. This class reports
on that and runs checkpoints on demand (through the writer, between batches).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from atlas_actors.actors.writer_ops import CheckpointOp
from atlas_actors.errors import ValidationError

if TYPE_CHECKING:
    from atlas_actors.storage import Storage

__all__ = ["CheckpointMode", "WalManager", "WalStats"]

CheckpointMode = Literal["passive", "full", "restart", "truncate"]
"""SQLite's checkpoint modes (https://sqlite.org/c3ref/wal_checkpoint_v2.html)."""


@dataclass(frozen=True, slots=True)
class WalStats:
    """The WAL at one moment (the plan's ``WalStats``)."""

    size: int
    """Bytes of the ``-wal`` file."""
    frames: int
    """Frames (pages) in the WAL waiting for a checkpoint, whoever wrote them (0 once a
    checkpoint copied them all), read from the wal-index."""
    checkpoints: int
    """Checkpoints run since the storage opened."""
    last_checkpoint: datetime | None
    """When the last one ran (UTC), or None."""


class WalManager:
    """Checkpoint, monitor, clean up and verify the write-ahead log."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def checkpoint(self, mode: CheckpointMode = "passive") -> tuple[int, int]:
        """Run a checkpoint now; returns (frames in the WAL, frames copied to the file)."""
        if mode not in ("passive", "full", "restart", "truncate"):
            raise ValidationError(f"mode={mode!r}; use passive, full, restart or truncate")
        storage = self._storage
        with storage.tracing.client_span("atlas.wal.checkpoint", **{"atlas.wal.mode": mode}):
            future = storage.writer.submit(
                CheckpointOp, f"checkpoint {mode}", None, (mode.upper(),), None, traced=False
            )
            result: tuple[int, int] = future.get()
        return result

    def monitor(self) -> WalStats:
        """Size, frames and checkpoint history of the WAL."""
        counters = self._storage.writer_counters
        shm = self._storage.shm_counter
        # (The file SQLite opened: a file: URI or a symbolic link names another.)
        database = shm.file if shm is not None else self._storage.path
        try:
            size = os.path.getsize(f"{database}-wal")
        except OSError:
            size = 0
        last = counters.last_checkpoint
        frames = shm.frames() if shm is not None else None
        return WalStats(
            size=size,
            # Without a wal-index mapped (exclusive locking mode keeps it in memory, and
            # no other process can write then; a closed storage), what this process's
            # own WAL hook saw.
            frames=counters.wal_frames if frames is None else frames,
            checkpoints=counters.checkpoints,
            last_checkpoint=datetime.fromtimestamp(last, UTC) if last else None,
        )

    def cleanup(self) -> tuple[int, int]:
        """Checkpoint everything and truncate the WAL file (waits for readers to finish)."""
        return self.checkpoint("truncate")

    def verify(self, *, full: bool = False) -> bool:
        """True if ``quick_check`` (``integrity_check`` with ``full``) finds no problem.

        False means the check ran and found the file damaged. When it could not run (an
        I/O error, a lock held too long) there is no verdict: raises the typed error
        (``DiskIOError``, ``BusyError``, ...) instead. ``db.errors.verify()`` returns both
        outcomes as a :class:`~atlas_actors.recovery.VerifyResult`.
        """
        with self._storage.tracing.client_span(
            "atlas.wal.verify", None, **{"atlas.wal.full": full}
        ):
            result = self._storage.errors.verify(full=full)
        if result.unchecked:
            assert result.error is not None, "an unchecked result carries its error"
            raise result.error
        return result.ok

"""WAL management: checkpoints, monitoring, cleanup, verification (``db.wal``)."""

from atlas_actors.wal.manager import WalManager, WalStats

__all__ = ["WalManager", "WalStats"]

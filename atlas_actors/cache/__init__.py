"""The two-level result cache: L1 in memory, L2 on disk, never stale after a write."""

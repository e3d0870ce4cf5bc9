"""The alert rules ``db.alerts`` starts with: the plan's critical and warning alerts.

Each reads metrics the storage reports (``tests/test_alerts.py`` checks them against
the metrics catalogue); ``python -m atlas_actors.telemetry.prometheus`` writes the same
rules for Prometheus (``otel/prometheus/alerts.yml``).
"""

from __future__ import annotations

from atlas_actors.config import StorageConfig
from atlas_actors.telemetry.alerts import AlertRule
from atlas_actors.telemetry.metrics import ERROR_CATEGORIES

__all__ = ["default_rules"]


_CALLER_ERRORS = frozenset({"validation", "constraint"})
"""Error categories that are the caller's input, not the storage's health."""


def default_rules(config: StorageConfig) -> list[AlertRule]:
    """The rules ``db.alerts`` starts with (the plan's critical and warning alerts).

    The plan's "memory pressure" has no rule: the caches are bounded in bytes by
    configuration and no metric reports the process's memory.
    """
    storage_errors = tuple(
        f"errors.{category}" for category in ERROR_CATEGORIES if category not in _CALLER_ERRORS
    )
    limit_mib = config.wal_size_limit / (1024 * 1024)
    return [
        AlertRule(
            name="storage_failed",
            severity="critical",
            metrics=("storage.failed",),
            comparison=">=",
            threshold=1,
            description=(
                "The storage failed: its actors failed more than restart_max times within "
                "restart_window, or its readers could not reconnect within "
                "reader_fault_timeout, and every call raises StorageUnavailable. Read the "
                "logs for the first failure, fix its cause, then reopen the storage."
            ),
        ),
        AlertRule(
            name="actor_restarts",
            severity="critical",
            metrics=("restarts",),
            condition="increase",
            window=300.0,
            comparison=">=",
            threshold=1,
            description=(
                "An actor failed (a connection failed, an actor crashed) and was restarted "
                "in the last 5 minutes. The supervisor recovers one by itself; read the "
                "logs for its error, because repeated failures fail the storage."
            ),
        ),
        AlertRule(
            name="disk_full",
            severity="critical",
            metrics=("storage.disk_full",),
            comparison=">=",
            threshold=1,
            description=(
                "The disk (or max_page_count) is full: writes fail with DiskFullError, reads "
                "go on. Free space or raise max_page_count; writes resume by themselves."
            ),
        ),
        AlertRule(
            name="readers_down",
            severity="critical",
            metrics=("pool.readers_down",),
            comparison=">=",
            threshold=1,
            # Before the fault fails the storage, or the rule could never fire.
            for_=min(30.0, config.reader_fault_timeout / 2),
            description=(
                "Readers lost their connections (a failed health check, a fault reading "
                "the file) and have not reopened them for half of reader_fault_timeout "
                "(at most 30 s): the pool reopens them with backoff, reads wait or fail "
                "meanwhile, and at reader_fault_timeout the storage fails. Read the logged "
                "error and check the disk and the file."
            ),
        ),
        AlertRule(
            name="high_error_rate",
            severity="critical",
            metrics=storage_errors,
            condition="rate",
            window=60.0,
            threshold=1.0,
            for_=60.0,
            description=(
                "More than 1 call per second failed over the last minute, for a minute, "
                "for reasons other than the caller's input (timeouts, busy, I/O, crashed "
                "actors). Look at errors.<category> and the logs for the cause."
            ),
        ),
        AlertRule(
            name="deadlock",
            severity="critical",
            metrics=("errors.deadlock",),
            condition="increase",
            window=300.0,
            comparison=">=",
            threshold=1,
            description=(
                "A call was refused with DeadlockError in the last 5 minutes: a thread "
                "holding a transaction waited on the writer (or a reader) it was keeping "
                "busy. The logged error names the cycle; fix that code path."
            ),
        ),
        AlertRule(
            name="performance_degradation",
            severity="critical",
            metrics=("writer.queue_waited_seconds", "writer.started"),
            condition="ratio",
            window=60.0,
            threshold=1.0,
            min_count=1,
            for_=60.0,
            description=(
                "Writes waited more than 1 s on average in the writer's mailbox over the "
                "last minute, for a minute: the writer cannot keep up. Look for a "
                "transaction holding the lease (db.transactions.status()), a slow disk "
                "(fsync), or a write burst; shorten transactions."
            ),
        ),
        AlertRule(
            name="cache_hit_rate_low",
            severity="warning",
            metrics=("cache.hits", "cache.hits", "cache.misses"),
            condition="ratio",
            window=300.0,
            comparison="<",
            threshold=0.5,
            min_count=100,
            for_=300.0,
            description=(
                "Fewer than half the cacheable reads of the last 5 minutes were cache hits "
                "(for 5 minutes): the working set outgrew cache_memory_bytes, or writes keep "
                "invalidating it. Raise cache_memory_bytes or look at db.cache.stats()."
            ),
        ),
        AlertRule(
            name="pool_saturated",
            severity="warning",
            metrics=("pool.waiting_requests",),
            threshold=0,
            for_=30.0,
            description=(
                "Callers have been waiting for a reader at every check for 30 s: the pool "
                "is at max_readers. Raise max_readers, or make reads shorter "
                "(db.optimizer.advise() suggests indexes)."
            ),
        ),
        AlertRule(
            name="slow_queries",
            severity="warning",
            metrics=("latency.read_seconds", "latency.reads"),
            condition="ratio",
            window=300.0,
            threshold=0.1,
            min_count=10,
            for_=300.0,
            description=(
                "Reads took more than 100 ms per statement on average over the last 5 "
                "minutes, for 5 minutes. db.optimizer.advise() names the slow statements "
                "and the indexes they miss."
            ),
        ),
        AlertRule(
            name="wal_growth",
            severity="warning",
            metrics=("wal.pending_bytes",),
            threshold=float(config.wal_size_limit),
            for_=60.0,
            description=(
                f"The WAL stayed past wal_size_limit ({limit_mib:g} MiB) for a minute: "
                "long reads, repeatable_read snapshots or other processes keep checkpoints "
                "from finishing. End them; db.wal.checkpoint('truncate') then shrinks it."
            ),
        ),
    ]

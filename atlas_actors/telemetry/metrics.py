"""Metrics: counters bumped by the runtime, gauges read on demand.

``db.metrics.snapshot()`` returns every counter (busy retries, errors by category,
transaction retries, restarts in all and by role, ...) and every gauge (pool, writer,
transactions, WAL, latency, cache) as one flat dict. Counters are bumped off the hot
paths only: per-statement counts live on the connections (``ConnectionMetrics``) and the
writer, and are read as gauges.

:data:`CATALOGUE` names every metric a storage reports, each with its kind (a counter
only grows; a gauge goes up and down) and what it measures: the OpenTelemetry export,
the alert rules, the dashboard and ``docs/architecture.md`` are checked against it.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from atlas_actors.errors import AtlasError

__all__ = ["CATALOGUE", "ERROR_CATEGORIES", "MetricInfo", "MetricKind", "Metrics"]

log = logging.getLogger(__name__)

MetricKind = Literal["counter", "gauge"]
"""``counter``: only grows (restarts, errors, writes); ``gauge``: a level (pool size)."""


@dataclass(frozen=True, slots=True)
class MetricInfo:
    """One metric of :data:`CATALOGUE`."""

    kind: MetricKind
    """``counter`` (cumulative since the storage opened) or ``gauge`` (read when asked)."""
    description: str
    """What it measures, with its unit."""
    bumped: bool = False
    """A counter of :meth:`Metrics.add`: absent from snapshots until first bumped (read
    it as 0). The others are read from gauges, and absent only when their gauge is
    (``cache.*`` with the cache off, a gauge that failed)."""


def _error_categories() -> tuple[str, ...]:
    """Every ``category`` of the error taxonomy, plus ``unknown`` (a foreign exception)."""
    found = {"unknown"}
    pending: list[type[AtlasError]] = [AtlasError]
    while pending:
        cls = pending.pop()
        found.add(cls.category)
        pending.extend(cls.__subclasses__())
    return tuple(sorted(found))


ERROR_CATEGORIES = _error_categories()
"""The categories ``errors.<category>`` counts errors by (``db.errors.analyze``)."""


def _catalogue() -> dict[str, MetricInfo]:
    counter: MetricKind = "counter"
    gauge: MetricKind = "gauge"
    entries: dict[str, tuple[MetricKind, str]] = {
        "busy_retries": (counter, "busy-handler retries on a lock held by another process"),
        "busy_wait_seconds": (counter, "seconds slept by the busy handler"),
        "errors": (counter, "errors reported to callers (each counted once)"),
        "transaction_retries": (counter, "transactions run again by transactions.run()"),
        "restarts": (counter, "actor restarts (a crashed actor or a failed connection)"),
        "restarts.writer": (counter, "writer restarts"),
        "restarts.reader": (counter, "reader restarts"),
        "restarts.cache": (counter, "cache actor restarts"),
        "storage.failed": (gauge, "1 once the storage failed (restart intensity exceeded)"),
        "storage.disk_full": (gauge, "1 while writes are refused because the disk is full"),
        "storage.writes_stopped": (gauge, "1 while writes are stopped for a corruption check"),
        "storage.read_only": (gauge, "1 when the file may only be read: writes are refused"),
        "pool.total": (gauge, "reader connections open"),
        "pool.active": (gauge, "reader connections lent out"),
        "pool.idle": (gauge, "reader connections ready"),
        "pool.waiting_requests": (gauge, "callers waiting for a reader"),
        "pool.readers_down": (gauge, "readers that lost their connection and reconnect"),
        "writer.writes": (counter, "write operations acknowledged"),
        "writer.failed": (counter, "write operations that failed"),
        "writer.batches": (counter, "group commits"),
        "writer.mean_batch": (gauge, "mean operations per group commit since the open"),
        "writer.queue_wait_seconds": (gauge, "mean seconds an operation waited in the mailbox"),
        "writer.started": (counter, "operations the writer took out of its mailbox"),
        "writer.queue_waited_seconds": (
            counter,
            "seconds operations waited in the writer's mailbox, summed",
        ),
        "transactions.committed": (counter, "transactions committed"),
        "transactions.rolled_back": (counter, "transactions rolled back"),
        "transactions.active": (gauge, "transactions begun and not ended"),
        "transactions.lease_queued": (gauge, "writes and lease requests behind the lease"),
        "latency.writer_seconds": (gauge, "mean seconds per timed statement of the writer"),
        "latency.readers_seconds": (gauge, "mean seconds per timed statement of the readers"),
        "latency.read_seconds": (counter, "seconds of the readers' statements, summed"),
        "latency.reads": (counter, "the readers' statements those seconds cover"),
        "wal.bytes": (gauge, "bytes of the -wal file"),
        "wal.frames": (gauge, "frames in the WAL after the last commit"),
        "wal.pending_bytes": (gauge, "bytes of the -wal file while frames wait for a checkpoint"),
        "wal.checkpoints": (counter, "checkpoints run"),
        "cache.hits": (counter, "reads served from the result cache"),
        "cache.misses": (counter, "cacheable reads the cache could not serve"),
        "cache.size": (gauge, "entries in the in-memory cache"),
        "cache.memory_usage": (gauge, "bytes of the in-memory cache"),
    }
    for category in ERROR_CATEGORIES:
        entries[f"errors.{category}"] = (counter, f"errors of category {category}")
    bumped = ("busy_", "errors", "restarts", "transaction_retries")
    return {
        name: MetricInfo(kind, text, bumped=name.startswith(bumped))
        for name, (kind, text) in sorted(entries.items())
    }


CATALOGUE: Mapping[str, MetricInfo] = _catalogue()
"""Every metric name a storage reports (``cache.*`` with the cache on; a counter appears
in snapshots once first bumped)."""


class Metrics:
    """Thread-safe counters plus named gauges."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: defaultdict[str, float] = defaultdict(float)
        self._gauges: dict[str, Callable[[], dict[str, float]]] = {}
        self._failing: set[str] = set()  # gauges whose failure was logged, until they recover

    def add(self, name: str, value: float = 1) -> None:
        """Add ``value`` to counter ``name``."""
        with self._lock:
            self._counters[name] += value

    def get(self, name: str) -> float:
        """The current value of counter ``name`` (0 if never bumped; not created by reading)."""
        with self._lock:
            return self._counters.get(name, 0)

    def gauge(self, prefix: str, read: Callable[[], dict[str, float]]) -> None:
        """Register ``read()``, whose values appear in snapshots as ``prefix.key``."""
        self._gauges[prefix] = read

    def snapshot(self) -> dict[str, float]:
        """Every counter and gauge, by name.

        A gauge that raises appears as ``prefix.unavailable = 1``; its failure is logged
        (with the traceback) once, and again only after it has read successfully since.
        """
        with self._lock:
            values: dict[str, float] = dict(self._counters)
        for prefix, read in list(self._gauges.items()):
            try:
                gauge = {f"{prefix}.{key}": value for key, value in read().items()}
            except Exception:
                values[f"{prefix}.unavailable"] = 1
                with self._lock:
                    first = prefix not in self._failing
                    self._failing.add(prefix)
                if first:
                    log.warning(
                        "metrics gauge %r failed; reported as unavailable", prefix, exc_info=True
                    )
            else:
                values.update(gauge)
                if prefix in self._failing:
                    with self._lock:
                        self._failing.discard(prefix)
        return values

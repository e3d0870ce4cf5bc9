"""Metrics: counters bumped by the runtime, gauges read on demand.

``db.metrics.snapshot()`` returns every counter (busy retries, errors by category,
transaction retries, restarts in all and by role, ...) and every gauge (pool, writer,
transactions, WAL, latency, cache) as one flat dict. Counters are bumped off the hot
paths only: per-statement counts live on the connections (``ConnectionMetrics``) and the
writer, and are read as gauges.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable

__all__ = ["Metrics"]

log = logging.getLogger(__name__)


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

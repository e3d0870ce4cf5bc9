"""OpenTelemetry metrics: ``atlas.open(path, meter_provider=provider)``.

The counterpart of ``tracer_provider``: every metric of
:data:`~atlas_actors.telemetry.metrics.CATALOGUE` becomes an observable instrument named
``atlas.<name>`` on the given provider (counters as ``ObservableCounter``, gauges as
``ObservableGauge``), with the attribute ``db.namespace`` = the database file. Nothing
is measured between collections: at each collection the first instrument's callback
takes one ``db.metrics.snapshot()`` per storage, and the others read that snapshot
(the SDK calls an instrument's callbacks in the order the instruments were created:
``MeasurementConsumer.collect``). The global provider is never set; without a provider
nothing is registered.

Instruments are created once per provider (creating a second instrument of a name on the
same meter returns the first and drops its callback), and observe every storage opened
with that provider; a closed storage is no longer observed.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Mapping

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from atlas_actors.telemetry.metrics import CATALOGUE

__all__ = ["PREFIX", "Observed", "instrument_name", "observe", "unique_label"]

PREFIX = "atlas."
"""Prefix of every instrument name."""

_INSTRUMENTATION = "atlas_actors"


def instrument_name(name: str) -> str:
    """The OpenTelemetry instrument of snapshot metric ``name`` (``atlas.pool.idle``)."""
    return PREFIX + name


def unique_label(path: str, taken: Iterable[str]) -> str:
    """``path`` as the label of a storage's series, unlike every label in ``taken``.

    A second storage open on the same file is ``<file> (2)``, a third ``<file> (3)``:
    series with the same labels are merged (OpenTelemetry) or an error (Prometheus).
    """
    used = set(taken)
    label, number = path, 1
    while label in used:
        number += 1
        label = f"{path} ({number})"
    return label


class Observed:
    """One storage as its provider's instruments see it; observed while referenced."""

    __slots__ = ("__weakref__", "path", "read")

    def __init__(self, path: str, read: Callable[[], Mapping[str, float] | None]) -> None:
        self.path = path
        """The database file (the ``db.namespace`` attribute)."""
        self.read = read
        """One snapshot of the storage's metrics, or None once it closed."""


class _Observer:
    """The instruments of one meter provider and the storages they observe."""

    def __init__(self, provider: metrics.MeterProvider) -> None:
        self._lock = threading.Lock()
        self._sources: weakref.WeakSet[Observed] = weakref.WeakSet()
        self._taken: list[tuple[str, Mapping[str, float]]] = []
        meter = provider.get_meter(_INSTRUMENTATION)
        for index, (name, info) in enumerate(CATALOGUE.items()):
            callback = self._callback(name, info.bumped, refresh=index == 0)
            if info.kind == "counter":
                meter.create_observable_counter(
                    instrument_name(name), [callback], description=info.description
                )
            else:
                meter.create_observable_gauge(
                    instrument_name(name), [callback], description=info.description
                )

    def add(self, source: Observed) -> None:
        with self._lock:
            if source not in self._sources:
                # Two storages on one file would be one series, their points merged.
                source.path = unique_label(source.path, (s.path for s in self._sources))
                self._sources.add(source)

    def _refresh(self) -> list[tuple[str, Mapping[str, float]]]:
        with self._lock:
            sources = list(self._sources)
        taken = []
        for source in sources:
            snapshot = source.read()
            if snapshot is not None:
                taken.append((source.path, snapshot))
        with self._lock:
            self._taken = taken
        return taken

    def _callback(
        self, name: str, bumped: bool, *, refresh: bool
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            taken = self._refresh() if refresh else self._taken
            observations = []
            for path, snapshot in taken:
                value = snapshot.get(name, 0 if bumped else None)
                if value is not None:
                    observations.append(Observation(value, {"db.namespace": path}))
            return observations

        return observe


_observers: weakref.WeakKeyDictionary[metrics.MeterProvider, _Observer] = (
    weakref.WeakKeyDictionary()
)
_observers_lock = threading.Lock()


def observe(
    provider: metrics.MeterProvider,
    path: str,
    read: Callable[[], Mapping[str, float] | None],
) -> Observed:
    """Observe ``read()`` with ``provider``'s instruments (created once per provider).

    The storage is observed for as long as the returned object is referenced.
    """
    source = Observed(path, read)
    with _observers_lock:
        observer = _observers.get(provider)
        if observer is None:
            observer = _observers[provider] = _Observer(provider)
    observer.add(source)
    return source

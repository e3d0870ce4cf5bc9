"""OpenTelemetry metrics export: atlas.open(path, meter_provider=...) on real databases."""

from __future__ import annotations

import gc
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    InMemoryMetricReader,
    MetricsData,
    Sum,
)

import atlas_actors as atlas
from atlas_actors import errors
from atlas_actors.telemetry.metrics import CATALOGUE

Open = Callable[..., atlas.Storage]


def points(data: MetricsData | None) -> dict[str, dict[str, Any]]:
    """instrument name -> db.namespace -> (data type, value); {} for no data at all."""
    found: dict[str, dict[str, Any]] = {}
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "atlas_actors"
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    namespace = point.attributes["db.namespace"]  # type: ignore[index]
                    found.setdefault(metric.name, {})[namespace] = (
                        type(metric.data).__name__,
                        point.value,  # type: ignore[union-attr]
                    )
    return found


def test_every_metric_is_exported_with_its_kind_and_the_file_as_db_namespace(
    open_storage: Open, db_path: Path
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    db = open_storage(meter_provider=provider)
    db.execute("CREATE TABLE t(x)")
    for i in range(3):
        db.write("INSERT INTO t VALUES (?)", [i])
    with pytest.raises(errors.SQLError):
        db.write("INSERT INTO nowhere VALUES (1)")
    exported = points(reader.get_metrics_data())
    path = str(db_path)
    assert set(exported) == {f"atlas.{name}" for name in CATALOGUE}
    assert exported["atlas.writer.writes"][path] == ("Sum", 4)  # the CREATE and 3 inserts
    assert exported["atlas.errors.validation"][path] == ("Sum", 1)
    assert exported["atlas.errors.io"][path] == ("Sum", 0)  # a counter never bumped: 0
    assert exported["atlas.pool.total"][path] == ("Gauge", db.pool.status().total)
    assert exported["atlas.storage.disk_full"][path] == ("Gauge", 0)
    data = reader.get_metrics_data()
    assert data is not None
    kinds = {
        m.name: m.data for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics
    }
    for name, info in CATALOGUE.items():
        data_type = Sum if info.kind == "counter" else Gauge
        assert isinstance(kinds[f"atlas.{name}"], data_type), name
        if info.kind == "counter":
            assert kinds[f"atlas.{name}"].is_monotonic  # type: ignore[union-attr]


def test_one_collection_takes_one_snapshot_per_storage(open_storage: Open) -> None:
    reader = InMemoryMetricReader()
    db = open_storage(meter_provider=MeterProvider(metric_readers=[reader]))
    reads = itertools.count()
    db.metrics.gauge("probe", lambda: {"reads": next(reads)})
    reader.get_metrics_data()
    reader.get_metrics_data()
    assert next(reads) == 2


def test_storages_sharing_a_provider_are_each_observed_until_closed(
    open_storage: Open, tmp_path: Path
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    first = open_storage(tmp_path / "first.db", meter_provider=provider)
    second = open_storage(tmp_path / "second.db", meter_provider=provider)
    first.execute("CREATE TABLE t(x)")
    writes = points(reader.get_metrics_data())["atlas.writer.writes"]
    assert writes == {first.path: ("Sum", 1), second.path: ("Sum", 0)}
    first.close()
    writes = points(reader.get_metrics_data())["atlas.writer.writes"]
    assert set(writes) == {second.path}
    second.close()
    gc.collect()
    assert points(reader.get_metrics_data()) == {}


def test_two_storages_on_one_file_are_observed_apart(open_storage: Open, tmp_path: Path) -> None:
    """Same db.namespace: their points were merged into one (8 + 3 writes as 11)."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    path = tmp_path / "a.db"
    first = open_storage(path, meter_provider=provider)
    open_storage(path, meter_provider=provider)  # the second, on the same file
    first.execute("CREATE TABLE t(x)")
    writes = points(reader.get_metrics_data())["atlas.writer.writes"]
    assert writes == {str(path): ("Sum", 1), f"{path} (2)": ("Sum", 0)}


def test_without_a_provider_nothing_is_registered_and_the_global_one_is_untouched(
    open_storage: Open,
) -> None:
    before = metrics.get_meter_provider()
    db = open_storage()
    assert db._observed is None
    with_provider = open_storage(
        Path(db.path).with_name("other.db"), meter_provider=MeterProvider()
    )
    assert with_provider._observed is not None
    assert metrics.get_meter_provider() is before

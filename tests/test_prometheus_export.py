"""Prometheus scraping the application: ``atlas_actors.telemetry.prometheus.register``.

The series are the ones the collector's Prometheus exporter makes of the OpenTelemetry
instruments, so the rules of ``otel/prometheus/alerts.yml`` read them either way.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import atlas_actors as atlas
from atlas_actors.config import StorageConfig
from atlas_actors.telemetry.default_alerts import default_rules
from atlas_actors.telemetry.metrics import CATALOGUE
from atlas_actors.telemetry.prometheus import (
    INSTALL_HINT,
    prometheus_name,
    promql,
    register,
)

ROOT = Path(__file__).resolve().parent.parent


def _scrape(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """(series, db_namespace) -> value, parsed from the text exposition."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, sample.labels["db_namespace"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_every_metric_is_exposed_under_the_name_the_alert_rules_read(
    open_storage: Callable[..., atlas.Storage], db_path: Path
) -> None:
    db = open_storage()
    db.execute("CREATE TABLE t(x)")
    db.write("INSERT INTO t VALUES (1)")
    registry = CollectorRegistry()
    register(db, registry)
    series = _scrape(registry)
    path = str(db_path)
    assert series[("atlas_writer_writes_total", path)] == 2
    assert series[("atlas_storage_failed", path)] == 0
    assert series[("atlas_errors_read_only_total", path)] == 0  # not bumped yet: 0
    names = {name for name, _ in series}
    assert names == {prometheus_name(name) for name in CATALOGUE}
    for rule in default_rules(StorageConfig()):
        for name in re.findall(r"\batlas_\w+", promql(rule)):
            assert name in names, (rule.name, name)


def test_one_registry_scrapes_every_storage_registered_until_it_closes(
    open_storage: Callable[..., atlas.Storage], tmp_path: Path
) -> None:
    first = open_storage(tmp_path / "a.db")
    second = open_storage(tmp_path / "b.db", cache=False)
    registry = CollectorRegistry()
    assert register(first, registry) is register(second, registry)
    second.execute("CREATE TABLE t(x)")
    series = _scrape(registry)
    assert series[("atlas_writer_writes_total", str(tmp_path / "a.db"))] == 0
    assert series[("atlas_writer_writes_total", str(tmp_path / "b.db"))] == 1
    assert ("atlas_cache_hits_total", str(tmp_path / "b.db")) not in series  # cache off
    second.close()
    assert {path for _, path in _scrape(registry)} == {str(tmp_path / "a.db")}


def test_two_storages_on_one_file_are_two_series(
    open_storage: Callable[..., atlas.Storage], tmp_path: Path
) -> None:
    """Both were labelled with the file alone: every series twice, which Prometheus
    refuses as duplicates."""
    path = tmp_path / "a.db"
    first, second = open_storage(path), open_storage(path)
    registry = CollectorRegistry()
    register(first, registry)
    register(second, registry)
    register(second, registry)  # (once is enough: again changes nothing)
    first.execute("CREATE TABLE t(x)")
    series = _scrape(registry)
    assert series[("atlas_writer_writes_total", str(path))] == 1
    assert series[("atlas_writer_writes_total", f"{path} (2)")] == 0
    assert {label for _, label in series} == {str(path), f"{path} (2)"}


def test_a_file_closed_and_reopened_keeps_its_label(
    open_storage: Callable[..., atlas.Storage], tmp_path: Path
) -> None:
    """Labels were taken against every storage ever added, closed ones too (still
    referenced): each reopening of one file was labelled anew, ``a.db (2)``, ``(3)``..."""
    path = tmp_path / "a.db"
    registry = CollectorRegistry()
    for _ in range(3):
        db = open_storage(path, cache=False)  # (the fixture keeps every one referenced)
        register(db, registry)
        assert {label for _, label in _scrape(registry)} == {str(path)}
        db.close()
        assert _scrape(registry) == {}


def test_a_closed_storage_frees_its_label_and_open_ones_keep_theirs(
    open_storage: Callable[..., atlas.Storage], tmp_path: Path
) -> None:
    path = tmp_path / "a.db"
    first, second = open_storage(path, cache=False), open_storage(path, cache=False)
    registry = CollectorRegistry()
    register(first, registry)
    register(second, registry)
    first.close()
    assert {label for _, label in _scrape(registry)} == {f"{path} (2)"}
    third = open_storage(path, cache=False)
    register(third, registry)
    register(first, registry)  # (closed: not scraped again, and takes no label)
    fourth = open_storage(path, cache=False)
    register(fourth, registry)
    second.execute("CREATE TABLE t(x)")
    series = _scrape(registry)
    assert {label for _, label in series} == {str(path), f"{path} (2)", f"{path} (3)"}
    assert series[("atlas_writer_writes_total", f"{path} (2)")] == 1  # second's, still
    assert series[("atlas_writer_writes_total", str(path))] == 0  # third's
    assert series[("atlas_writer_writes_total", f"{path} (3)")] == 0  # fourth's


def test_without_prometheus_client_register_says_how_to_install_it() -> None:
    # The rule file is written without the package; register() says what to install.
    script = """
import sys
sys.modules["prometheus_client"] = None  # as if not installed
from atlas_actors.config import StorageConfig
from atlas_actors.telemetry import prometheus
from atlas_actors.telemetry.default_alerts import default_rules
assert "groups:" in prometheus.prometheus_rules(default_rules(StorageConfig()))
try:
    prometheus.register(None)
except ImportError as error:
    print(error)
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "pip install 'atlas-actors[prometheus]'" in result.stdout
    assert "prometheus-client" in result.stdout


def test_the_install_hint_names_an_extra_that_brings_prometheus_client() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = re.fullmatch(r"pip install 'atlas-actors\[(\w+)\]'", INSTALL_HINT)
    assert extra is not None
    requirements = project["optional-dependencies"][extra.group(1)]
    assert any(re.match(r"prometheus-client\b", r) for r in requirements)
    # CI installs [dev] pinned by constraints.txt: the tests above need the package.
    assert any(re.match(r"prometheus-client\b", r) for r in project["optional-dependencies"]["dev"])
    pins = (ROOT / "constraints.txt").read_text().lower().replace("_", "-")
    assert re.search(r"^prometheus-client==", pins, re.MULTILINE)

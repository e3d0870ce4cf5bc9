"""Shared fixtures: real database files in tmp_path, storages that always get closed."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import atlas_actors as atlas


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """The spans finished during the test (OpenTelemetry's in-memory exporter)."""
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(exporter: InMemorySpanExporter) -> TracerProvider:
    """A tracer provider that exports every span to ``exporter`` as it ends."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Path of a fresh database file."""
    return tmp_path / "atlas.db"


@pytest.fixture
def open_storage(db_path: Path) -> Iterator[Callable[..., atlas.Storage]]:
    """Open storages (default path: db_path); every one is closed after the test."""
    opened: list[atlas.Storage] = []

    def _open(path: Path | str | None = None, **options: Any) -> atlas.Storage:
        options.setdefault("default_timeout", 10.0)
        storage = atlas.open(path or db_path, **options)
        opened.append(storage)
        return storage

    yield _open
    for storage in opened:
        storage.close()


@pytest.fixture
def db(open_storage: Callable[..., atlas.Storage]) -> atlas.Storage:
    """An open storage with a small task table."""
    storage = open_storage()
    storage.execute(
        "CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT NOT NULL UNIQUE, "
        "status TEXT NOT NULL DEFAULT 'open', n INTEGER NOT NULL DEFAULT 0)"
    )
    return storage


@pytest.fixture
def kv(db: atlas.Storage) -> atlas.Storage:
    """``db`` with a table ``kv`` of two keys, x and y, each 50 (see ``helpers.xy``)."""
    db.execute("CREATE TABLE kv(k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
    db.write_many("INSERT INTO kv VALUES (?, ?)", [("x", 50), ("y", 50)])
    return db


@pytest.fixture(autouse=True)
def no_actor_outlives_its_test() -> Iterator[None]:
    """Fail a test that leaves actors running; stop them so the next test starts clean."""
    yield
    leftover = pykka.ActorRegistry.get_all()
    pykka.ActorRegistry.stop_all(block=True, timeout=5)
    assert not leftover, f"actors left running: {leftover}"


@pytest.fixture(autouse=True)
def quiet_injected_crashes() -> Iterator[None]:
    """Injected crashes make pykka log tracebacks on purpose; keep them out of the output."""
    logger = logging.getLogger("pykka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)

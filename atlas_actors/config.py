"""Storage configuration: one frozen dataclass, documented defaults, ``ATLAS_*`` overrides.

Precedence, lowest first: the defaults below, then environment variables named
``ATLAS_<FIELD>`` (for example ``ATLAS_READERS=8`` or ``ATLAS_SYNCHRONOUS=NORMAL``), then
the values passed to :func:`atlas_actors.open`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import logging
import math
import os
import shlex
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from types import SimpleNamespace
from typing import Any, Literal, get_args

import apsw

from atlas_actors.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["ENV_PREFIX", "StorageConfig", "Synchronous"]

ENV_PREFIX = "ATLAS_"
"""Prefix of the environment variables that override configuration fields."""

Synchronous = Literal["FULL", "NORMAL", "OFF", "EXTRA"]
"""Values of SQLite's ``PRAGMA synchronous`` (https://sqlite.org/pragma.html#pragma_synchronous)."""


def _default_readers() -> int:
    return max(2, os.cpu_count() or 2)


@dataclass(frozen=True, kw_only=True)
class StorageConfig:
    """Everything a storage can be tuned with. All fields are keyword-only."""

    synchronous: Synchronous = "FULL"
    """``PRAGMA synchronous`` for the writer. ``FULL`` (default) makes every acknowledged
    write durable across power loss; ``NORMAL`` in WAL mode may lose the last commits on
    power loss (never on a process crash) and needs no fsync per commit."""

    readers: int = field(default_factory=_default_readers)
    """Reader actors kept ready (the pool's floor): one per core, at least 2."""

    max_readers: int = 32
    """The pool grows up to this many readers when every reader is busy, and shrinks back
    to ``readers`` after ``reader_idle_timeout``. Each reader holds one connection."""

    reader_idle_timeout: float = 30.0
    """Seconds a reader above the floor may stay idle before it is retired."""

    recycle_after_queries: int = 1_000_000
    """A reader's connection is reopened after this many queries (0: never)."""

    recycle_after_seconds: float = 3600.0
    """A reader's connection is reopened after this age in seconds (0: never)."""

    health_check_interval: float = 10.0
    """Seconds between health checks of idle reader connections (0: off). A connection
    that fails its check is closed and reopened by the pool (no restart: a failed check
    is no crash), see ``reader_reconnect_backoff_initial``."""

    reader_reconnect_backoff_initial: float = 0.05
    """While reader connections cannot be reopened (a read fault, the file gone), the
    pool tries one reader at a time, first this many seconds after the fault was seen,
    then twice as long after each failed try (plus ``restart_backoff_jitter``); the
    first success reopens every other reader at once."""

    reader_reconnect_backoff_max: float = 2.0
    """Cap of the delay between two tries to reopen a reader connection, in seconds."""

    reader_fault_timeout: float = 10.0
    """Seconds readers may go on failing to reopen their connections before the storage
    fails (StorageUnavailable, as when the restart intensity is exceeded): a fault that
    lasts is reported, never waited out for ever."""

    max_batch_size: int = 512
    """Most writes the writer groups into one transaction (one COMMIT, one fsync)."""

    max_batch_delay: float = 0.010
    """Most seconds a batch stays open while writes keep arriving before it commits."""

    mailbox_size: int = 10_000
    """Bound of each actor's mailbox: a full writer mailbox makes senders wait until their
    deadline (backpressure); the read queue of ``db.submit_query`` refuses at once."""

    default_timeout: float = 30.0
    """Deadline in seconds of a call that names none; no call waits longer."""

    busy_timeout: float = 5.0
    """Seconds one wait on a lock held by another process lasts before SQLITE_BUSY (the
    writer then tries its BEGIN again, until the deadline of the call it serves)."""

    busy_backoff_base: float = 0.0005
    """First wait (seconds) of the busy handler; doubles per retry, with jitter."""

    busy_backoff_cap: float = 0.05
    """Longest single wait of the busy handler."""

    cache_size_kib: int = 16_384
    """SQLite page cache per connection, in KiB (``PRAGMA cache_size=-N``)."""

    reader_mmap_bytes: int = 256 * 1024 * 1024
    """Bytes of the database file each reader connection reads through memory-mapped
    I/O (``PRAGMA mmap_size``, https://sqlite.org/mmap.html); 0 turns it off. Readers
    then share the operating system's cache of the file instead of copying pages into
    their own, which made point reads at 16 threads 12% faster here. Their mappings
    are read-only (the writer does not map). The cost: an I/O error while reading a
    mapped page (a failing disk) stops the process with SIGBUS instead of raising."""

    max_value_bytes: int = 16 * 1024 * 1024
    """Largest string or blob accepted in a statement or a parameter (``SQLITE_LIMIT_LENGTH``)."""

    restart_max: int = 5
    """Restart intensity: at most this many restarts (of all the storage's actors
    together, as in OTP) within ``restart_window`` seconds; one more and the storage
    fails (StorageUnavailable)."""

    restart_window: float = 10.0
    """The window of the restart intensity, in seconds."""

    restart_backoff_initial: float = 0.005
    """Delay before the first restart of a failed actor; doubles per further restart."""

    restart_backoff_max: float = 1.0
    """Cap of the restart delay in seconds."""

    restart_backoff_jitter: float = 0.2
    """Random fraction (0 to 1) added to each restart delay so restarts do not move in
    lockstep."""

    liveness_interval: float = 0.05
    """Seconds between the supervisor's liveness checks of its children."""

    verify_on_restart: bool = True
    """Run ``PRAGMA quick_check`` after a writer restart, before serving writes again.

    It reads the whole file: measured here, a 45 MB database takes ~100 ms to check, so
    a writer restart took ~150 ms instead of 8-25 ms. Turn it off for large databases
    that must resume writing fast (SQLite's own checks still report corruption)."""

    transaction_timeout: float = 10.0
    """Seconds an interactive transaction may hold the writer lease (every write waits
    behind it), or a ``repeatable_read`` snapshot or a read transaction (``BEGIN``) on a
    ``pool.acquire()`` lease (the WAL cannot be checkpointed past it), before it is
    rolled back; its owner's next call raises TransactionTimeout."""

    max_page_count: int = 0
    """Largest database size in pages (``PRAGMA max_page_count``); 0 leaves SQLite's
    default. Writes past it fail with DiskFullError, as on a full disk."""

    disk_full_probe_interval: float = 1.0
    """While the disk is full, one write per this many seconds is tried to detect that
    space came back; the others fail at once."""

    cache: bool = True
    """Cache the results of deterministic reads (``db.query``); never stale after a write."""

    cache_memory_bytes: int = 64 * 1024 * 1024
    """Bound of the in-memory level (L1), in measured bytes."""

    cache_disk: bool = True
    """Keep results on disk too (L2, a diskcache directory), surviving restarts."""

    cache_disk_bytes: int = 256 * 1024 * 1024
    """Bound of the on-disk level (L2), in bytes."""

    cache_dir: str = ""
    """L2's directory (a str or a path); empty: ``<database>.cache`` next to the database."""

    cache_ttl: float = 300.0
    """Seconds a cached result may be served (it is dropped earlier if its tables change)."""

    cache_disk_min_seconds: float = 0.0005
    """Only results that took at least this long to compute are written to L2 (and L2 is
    only consulted for such statements): a disk lookup costs more than a cheap query."""

    cache_max_entry_bytes: int = 4 * 1024 * 1024
    """Results larger than this are not cached."""

    checkpoint_frames: int = 1000
    """WAL frames after which the writer runs a PASSIVE checkpoint (and again after as
    many more, when readers kept the last one from finishing); fewer when that many
    would pass ``wal_size_limit``."""

    wal_size_limit: int = 64 * 1024 * 1024
    """WAL bytes past which the writer truncates the WAL (TRUNCATE checkpoint, a short wait
    for readers); also SQLite's ``journal_size_limit``."""

    alert_interval: float | None = 10.0
    """Seconds between evaluations of the alert rules (``db.alerts``) by the supervisor's
    tick: one metrics snapshot each time, nothing on the write or read paths. 0 or None
    (``ATLAS_ALERT_INTERVAL=off``): rules are evaluated only by ``db.alerts.check()``."""

    def __post_init__(self) -> None:
        if isinstance(self.cache_dir, os.PathLike):  # (a pathlib.Path is welcome)
            object.__setattr__(self, "cache_dir", os.fspath(self.cache_dir))
        if isinstance(self.synchronous, str):  # ('full' as ATLAS_SYNCHRONOUS=full is)
            object.__setattr__(self, "synchronous", self.synchronous.strip().upper())
        _validate(self)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> StorageConfig:
        """Build a config from defaults, ``ATLAS_*`` variables, then ``overrides``.

        The three are merged first and the result is validated once, so an override
        may fix what a variable alone would make invalid (``ATLAS_MAX_READERS=1`` with
        ``readers=1``); a variable that an override replaces is not read at all. When
        a refused value came from a variable, the error names the variable.
        """
        env = os.environ if environ is None else environ
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            known = ", ".join(f.name for f in fields(cls))
            raise ConfigError(f"unknown configuration option(s) {unknown}; known: {known}")
        values: dict[str, Any] = {}
        from_env: dict[str, str] = {}
        for f in fields(cls):
            if f.name in overrides:
                continue
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f.name, f.type, raw)
                from_env[f.name] = raw
        values.update(overrides)
        _warn_of_misspelled_variables(env, cls)
        if from_env:
            merged = {f.name: _default(f) for f in fields(cls) if f.name not in values}
            problem = _find_problem(SimpleNamespace(**merged, **values))
            if problem is not None:
                names = [name for name in problem[0] if name in from_env]
                if names:
                    variables = ", ".join(
                        f"{ENV_PREFIX}{name.upper()}={shlex.quote(from_env[name])}"
                        for name in names
                    )
                    raise ConfigError(
                        f"{variables}: {problem[1]} (fix or unset the environment variable, "
                        "or pass the option to atlas_actors.open)"
                    )
        return cls(**values)

    def replace(self, **changes: Any) -> StorageConfig:
        """Return a copy with ``changes`` applied (validated like the original)."""
        return dataclasses.replace(self, **changes)


def _warn_of_misspelled_variables(env: Mapping[str, str], cls: type[StorageConfig]) -> None:
    """Log a warning for an ``ATLAS_*`` variable that looks like a misspelled field's.

    Ignored otherwise (the application may have ``ATLAS_*`` variables of its own), so a
    typo (``ATLAS_READRES=8``) would otherwise leave the default in effect unnoticed.
    """
    known = [ENV_PREFIX + f.name.upper() for f in fields(cls)]
    for name in env:
        if name.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
            if close:
                log.warning(
                    "%s is not an atlas-actors setting and is ignored; did you mean %s?",
                    name,
                    close[0],
                )


def _parse(name: str, annotation: object, raw: str) -> Any:
    """Parse the environment string ``raw`` for field ``name`` by its annotation."""
    kind = str(annotation)
    try:
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "float | None":
            lowered = raw.strip().lower()
            return None if lowered in {"", "none", "off"} else float(raw)
        return raw.strip().upper() if name == "synchronous" else raw
    except ValueError:
        raise ConfigError(
            f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind}; fix or unset it"
        ) from None


_BOOL_FIELDS = tuple(f.name for f in fields(StorageConfig) if str(f.type) == "bool")


@functools.cache
def _sqlite_max_length() -> int:
    """The largest string or blob this SQLite library accepts (its ``SQLITE_MAX_LENGTH``).

    ``sqlite3_limit`` silently lowers a larger ``SQLITE_LIMIT_LENGTH`` to it, and past a
    C int it overflows, so ``max_value_bytes`` is checked against it.
    """
    connection = apsw.Connection(":memory:")
    try:
        return int(connection.limit(apsw.SQLITE_LIMIT_LENGTH, -1))
    finally:
        connection.close()


def _default(f: dataclasses.Field[Any]) -> Any:
    """The default value of field ``f``."""
    if f.default is not MISSING:
        return f.default
    assert f.default_factory is not MISSING  # (every field has a default)
    return f.default_factory()


def _validate(config: StorageConfig) -> None:
    """Reject values that cannot work, naming the field and the value."""
    problem = _find_problem(config)
    if problem is not None:
        raise ConfigError(problem[1])


MAX_READERS = 256
"""The most reader connections a storage keeps (``readers``, ``max_readers`` and
``pool.resize()``): each is a thread and a connection."""
MAX_SECONDS = 1e9
"""The longest duration a setting (or a call's ``timeout``) may give, in seconds: every
wait stays within what a lock's timeout takes (``threading.TIMEOUT_MAX``)."""
_SECONDS_FIELDS = (
    "default_timeout",
    "transaction_timeout",
    "busy_timeout",
    "busy_backoff_base",
    "busy_backoff_cap",
    "max_batch_delay",
    "reader_idle_timeout",
    "recycle_after_seconds",
    "health_check_interval",
    "reader_reconnect_backoff_initial",
    "reader_reconnect_backoff_max",
    "reader_fault_timeout",
    "restart_window",
    "restart_backoff_initial",
    "restart_backoff_max",
    "liveness_interval",
    "disk_full_probe_interval",
    "cache_ttl",
    "cache_disk_min_seconds",
    "alert_interval",
)


_INT_FIELDS = {
    "recycle_after_queries": 2**63 - 1,
    "max_batch_size": 2**63 - 1,
    "mailbox_size": 2**63 - 1,
    "cache_size_kib": 2**31 - 1,  # (PRAGMA cache_size is a C int, in KiB when negative)
    "reader_mmap_bytes": 2**63 - 1,
    "restart_max": 2**63 - 1,
    "max_page_count": 2**32 - 2,  # (SQLite's largest page count)
    "cache_memory_bytes": 2**63 - 1,
    "cache_disk_bytes": 2**63 - 1,
    "cache_max_entry_bytes": 2**63 - 1,
    "checkpoint_frames": 2**63 - 1,
    "wal_size_limit": 2**63 - 1,
}
"""Integer fields (checked for sign with the others) and the largest value of each:
SQLite takes its settings as 64-bit integers, some as 32-bit ones (``readers`` and
``max_value_bytes`` have bounds of their own)."""


def _find_problem(config: Any) -> tuple[tuple[str, ...], str] | None:
    """The first value of ``config`` that cannot work: (the fields at fault, why); or None.

    ``config`` is anything with the fields as attributes (a StorageConfig, or the merged
    values :meth:`StorageConfig.from_env` checks before it builds one).
    """
    if config.synchronous not in get_args(Synchronous):
        return ("synchronous",), (
            f"synchronous={config.synchronous!r}; use one of {list(get_args(Synchronous))}"
        )
    for name in _BOOL_FIELDS:
        value = getattr(config, name)
        if not isinstance(value, bool):
            # ('off' or 'false' is a true value: it would silently mean the opposite.)
            return (name,), (
                f"{name}={value!r}; it must be a bool: pass {name}=True or {name}=False"
            )
    if not isinstance(config.cache_dir, str | os.PathLike):
        return ("cache_dir",), (
            f"cache_dir={config.cache_dir!r}; it must be a directory path (a str or a "
            "pathlib.Path), or '' for <database>.cache next to the database"
        )
    value = config.max_value_bytes
    if isinstance(value, int) and not isinstance(value, bool):
        limit = _sqlite_max_length()
        if value > limit:
            return ("max_value_bytes",), (
                f"max_value_bytes={value!r} is above SQLite's largest string or blob "
                f"({limit} bytes, SQLITE_MAX_LENGTH); pass at most {limit}"
            )
    else:
        return ("max_value_bytes",), (
            f"max_value_bytes={value!r}; it must be an integer number of bytes, "
            f"1 to {_sqlite_max_length()}"
        )
    positive = (
        "readers",
        "max_readers",
        "max_batch_size",
        "mailbox_size",
        "restart_max",
    )
    for name in positive:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return (name,), f"{name}={value!r}; it must be an integer >= 1"
    non_negative = (
        "reader_idle_timeout",
        "recycle_after_queries",
        "recycle_after_seconds",
        "health_check_interval",
        "reader_reconnect_backoff_initial",
        "max_batch_delay",
        "cache_size_kib",
        "reader_mmap_bytes",
        "restart_backoff_initial",
        "restart_backoff_jitter",
        "checkpoint_frames",
        "max_page_count",
        "cache_ttl",
        "cache_disk_min_seconds",
    )
    for name in non_negative:
        value = getattr(config, name)
        if not _finite_number(value) or value < 0:
            return (name,), f"{name}={value!r}; it must be a finite number >= 0"
    if config.restart_backoff_jitter > 1:  # (a delay past any timer's range: no restart)
        return ("restart_backoff_jitter",), (
            f"restart_backoff_jitter={config.restart_backoff_jitter!r}; it is a fraction of "
            "the restart delay: pass 0 to 1"
        )
    strictly_positive = (
        "default_timeout",
        "restart_window",
        "restart_backoff_max",
        "reader_reconnect_backoff_max",
        "reader_fault_timeout",
        "liveness_interval",
        "max_value_bytes",
        "wal_size_limit",
        "transaction_timeout",
        "disk_full_probe_interval",
        "cache_memory_bytes",
        "cache_disk_bytes",
        "cache_max_entry_bytes",
        # (0 would spin: the writer retries its BEGIN until the call's deadline, and the
        # busy handler would return at once, or sleep for nothing, each time)
        "busy_timeout",
        "busy_backoff_base",
        "busy_backoff_cap",
    )
    for name in strictly_positive:
        value = getattr(config, name)
        if not _finite_number(value) or value <= 0:
            return (name,), f"{name}={value!r}; it must be a finite number > 0"
    for name, bound in _INT_FIELDS.items():
        value = getattr(config, name)
        if not isinstance(value, int):  # (1.5 would be cut, 8.0 not taken by SQLite at all)
            return (name,), f"{name}={value!r}; it must be an integer (int), not a float"
        if value > bound:  # (SQLite would wrap it round, or take it as 0)
            return (name,), f"{name}={value!r} is too large; pass at most {bound}"
    # (before the bound below, which compares: a str there raises TypeError)
    if config.alert_interval is not None and (
        not _finite_number(config.alert_interval) or config.alert_interval < 0
    ):
        return ("alert_interval",), (
            f"alert_interval={config.alert_interval!r}; it must be a finite number >= 0, "
            "or None (0 and None turn the periodic evaluation off)"
        )
    for name in _SECONDS_FIELDS:
        value = getattr(config, name)
        if value is not None and value > MAX_SECONDS:
            # Past it, waits fail inside Python (a lock's timeout past time_t) instead.
            return (name,), (
                f"{name}={value!r} seconds is too long; pass at most {MAX_SECONDS:.0e} "
                "(about 30 years)"
            )
    for name in ("readers", "max_readers"):
        if getattr(config, name) > MAX_READERS:
            return (name,), (
                f"{name}={getattr(config, name)!r}; at most {MAX_READERS} (each reader is a "
                "thread and a connection; reads need about one per core)"
            )
    if config.max_readers < config.readers:
        return ("max_readers", "readers"), (
            f"max_readers={config.max_readers} < readers={config.readers}; "
            "raise max_readers or lower readers"
        )
    return None


def _finite_number(value: object) -> bool:
    """True for an int or float that is finite (NaN and infinities are not; nor bools)."""
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)

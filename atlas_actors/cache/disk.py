"""L2: results on disk with diskcache, stored so that reading them cannot run code.

The directory (``<database>.cache`` by default) is created owner-only; if it is owned
by someone else, or others may write to it and that cannot be fixed, L2 is turned off
rather than trusted. Values are bytes from :mod:`atlas_actors.cache.codec`; the Disk
below refuses to store anything else and refuses to unpickle anything it finds, and an
entry that fails to decode is deleted and reported as a miss.

A small metadata record says whether the last session closed cleanly and what the
database files looked like then; entries carry the versions of the tables they read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import time
from typing import Any, cast

import diskcache
from diskcache.core import MODE_PICKLE

from atlas_actors.cache.codec import CodecError, decode, encode

__all__ = ["DiskStore", "SafeDisk", "fingerprint", "outlast_timestamps"]

log = logging.getLogger(__name__)

_META_KEY = "atlas:meta"


class SafeDisk(diskcache.Disk):  # type: ignore[misc]
    """A diskcache Disk that stores only bytes under str keys and never unpickles."""

    def put(self, key: Any) -> Any:
        """Store str keys as they are; refuse anything that would be pickled."""
        if type(key) is not str:
            raise TypeError("cache keys are str")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        """Return a stored key; a pickled key in the file is refused."""
        if not raw:
            raise ValueError("refusing to unpickle a cache key")
        return super().get(key, raw)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        """Store bytes only (never pickle)."""
        if type(value) is not bytes:
            raise TypeError("cache values are bytes")
        return super().store(value, read, key=key)

    def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
        """Read a stored value; a pickled value (someone else wrote it) is refused."""
        if mode == MODE_PICKLE:
            raise ValueError("refusing to unpickle a cache value")
        return super().fetch(mode, filename, value, read)


def fingerprint(database: str) -> dict[str, Any]:
    """The database file's identity, size and times, and the WAL's size (0: none).

    Any commit leaves its pages in the WAL until a checkpoint writes them to the file,
    and a WAL only shrinks (or goes) after one: a commit since a fingerprint with an
    empty WAL changes one or the other (the times too, once :func:`outlast_timestamps`
    returned True).
    """
    try:
        info = os.stat(database)
    except FileNotFoundError:
        files = None
    else:
        files = [info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]
    try:
        wal = os.stat(database + "-wal").st_size
    except FileNotFoundError:
        wal = 0
    return {"db": files, "wal": wal}


def _timestamp_tick() -> float:
    """Seconds between two file timestamps that may compare equal, at most (Linux)."""
    try:
        coarse = time.clock_getres(5)  # CLOCK_REALTIME_COARSE: what file times read
    except (AttributeError, OSError):
        return _TICK_FALLBACK
    return min(max(2 * coarse, 0.002), _TICK_FALLBACK)


_TICK_FALLBACK = 0.02
_WHOLE_SECONDS = 1_000_000_000


def outlast_timestamps(database: str, limit: float = 0.05) -> bool:
    """Wait until a write to ``database`` could no longer get the times it has now.

    File times come from a clock that ticks every few milliseconds: a write in the tick
    of the last one leaves them unchanged. Waiting until that tick has passed (at most
    a few milliseconds, and only when the file was written just now) makes every later
    write show. False if that would take longer than ``limit`` seconds (a file system
    with whole-second times, or times in the future): the times cannot be trusted.
    """
    try:
        info = os.stat(database)
    except FileNotFoundError:
        return True
    stamp = max(info.st_mtime_ns, info.st_ctime_ns)
    tick = 2.0 if stamp % _WHOLE_SECONDS == 0 else _timestamp_tick()
    left = (stamp - time.time_ns()) / 1e9 + tick
    if left > limit:
        return False
    if left > 0:
        time.sleep(left)
    return True


def _secure_directory(directory: str) -> bool:
    """Create ``directory`` owner-only, or tighten it; False if it cannot be trusted."""
    try:
        os.mkdir(directory, mode=0o700)  # not makedirs: never create the parents
    except FileExistsError:
        pass
    except OSError as error:
        log.warning("cannot create the cache directory %s (%s): L2 disabled", directory, error)
        return False
    info = os.stat(directory)
    if info.st_uid != os.getuid():
        log.warning("cache directory %s belongs to uid %d: L2 disabled", directory, info.st_uid)
        return False
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH | stat.S_IRWXG | stat.S_IRWXO):
        os.chmod(directory, 0o700)
    return True


def stored_params(params: tuple[Any, ...]) -> list[Any]:
    """``params`` as an entry's JSON document holds them (a named read's pairs as lists)."""
    return [list(pair) if type(pair) is tuple else pair for pair in params]


def _values(params: tuple[Any, ...]) -> list[Any]:
    """The values of ``params``: a named read's are the second of each pair."""
    return [pair[1] if type(pair) is tuple else pair for pair in params]


def entry_key(sql: str, params: tuple[Any, ...]) -> str:
    """A fixed-length L2 key for a statement and its parameters."""
    digest = hashlib.sha256()
    digest.update(sql.encode("utf-8"))
    digest.update(b"\x00")
    digest.update(repr(params).encode("utf-8"))
    return digest.hexdigest()


class DiskStore:
    """L2 over one diskcache directory."""

    def __init__(self, directory: str, size_limit: int) -> None:
        self.directory = directory
        self.enabled = _secure_directory(directory)
        """False when the directory cannot be created or trusted: L2 is off."""
        self._cache: diskcache.Cache | None = None
        if self.enabled:
            self._cache = diskcache.Cache(
                directory,
                disk=SafeDisk,
                size_limit=size_limit,
                eviction_policy="least-recently-stored",
                statistics=False,
            )
        self.errors = 0
        """Entries that could not be read (deleted, counted as misses)."""

    def close(self) -> None:
        """Close the diskcache database."""
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    # -- entries ---------------------------------------------------------------------

    def put(
        self,
        sql: str,
        params: tuple[Any, ...],
        document: dict[str, Any],
        rows: list[tuple[Any, ...]],
        ttl: float,
    ) -> bool:
        """Store one result; False if it cannot be stored (value types, disk errors)."""
        cache = self._cache  # (once: a crash of the cache actor may close it meanwhile)
        if cache is None or any(isinstance(value, bytes) for value in _values(params)):
            return False  # parameters go in the JSON document: bytes ones are not kept
        try:
            blob = encode({**document, "sql": sql, "params": stored_params(params)}, rows)
            cache.set(entry_key(sql, params), blob, expire=ttl)
        except (CodecError, OSError, diskcache.Timeout) as error:
            log.debug("L2 could not store a result: %s", error)
            return False
        return True

    def get(
        self, sql: str, params: tuple[Any, ...]
    ) -> tuple[dict[str, Any], list[tuple[Any, ...]]] | None:
        """The stored result of ``sql`` with ``params``, or None (unreadable = missing)."""
        cache = self._cache
        if cache is None:
            return None
        key = entry_key(sql, params)
        try:
            blob = cache.get(key)
        except Exception:
            self._unreadable(key)
            return None
        if blob is None:
            return None
        try:
            document, rows = decode(blob)
        except CodecError:
            self._unreadable(key)
            return None
        if document.get("sql") != sql or document.get("params") != stored_params(params):
            return None  # a hash collision, or a tampered entry
        return document, rows

    def items(self) -> list[tuple[dict[str, Any], list[tuple[Any, ...]]]]:
        """Every readable entry (for warming)."""
        cache = self._cache
        if cache is None:
            return []
        found = []
        for key in list(cache.iterkeys()):
            if key == _META_KEY:
                continue
            try:
                blob = cache.get(key)
                if blob is not None:
                    found.append(decode(blob))
            except Exception:
                self._unreadable(key)
        return found

    def delete(self, sql: str, params: tuple[Any, ...]) -> None:
        """Remove one entry."""
        cache = self._cache
        if cache is not None:
            cache.delete(entry_key(sql, params))

    def clear(self) -> None:
        """Remove every entry, and the metadata with them (no record: nothing trusted).

        The record is not kept: read before and written back after (the clear is not
        one transaction), it could be a clean one that another opener took up and
        marked not clean meanwhile, made clean again for a third to take up too.
        """
        cache = self._cache
        if cache is not None:
            cache.clear()

    def stats(self) -> tuple[int, int]:
        """(entries, bytes on disk)."""
        cache = self._cache
        if cache is None:
            return (0, 0)
        return (max(0, len(cache) - 1), int(cache.volume()))

    def _unreadable(self, key: str) -> None:
        self.errors += 1
        cache = self._cache
        if cache is not None:
            try:
                cache.delete(key)
            except Exception:
                log.debug("could not delete an unreadable L2 entry")

    # -- metadata --------------------------------------------------------------------

    def exclusive(self) -> contextlib.AbstractContextManager[Any]:
        """Hold the write lock of the L2 database, shared by every process, while in it.

        Reads and writes of the metadata inside are one transaction (SQLite's ``BEGIN
        IMMEDIATE``; others' writes wait, reads do not). :class:`diskcache.Timeout` if
        the lock cannot be had within the cache's timeout. Nothing to lock when L2 is off.
        """
        cache = self._cache
        if cache is None:
            return contextlib.nullcontext()
        return cast(contextlib.AbstractContextManager[Any], cache.transact())

    def load_meta(self) -> dict[str, Any] | None:
        """The metadata of the last session, or None."""
        if self._cache is None:
            return None
        try:
            blob = self._cache.get(_META_KEY)
            if blob is None:
                return None
            meta = json.loads(bytes(blob).decode("utf-8"))
        except Exception:
            return None
        return meta if isinstance(meta, dict) else None

    def save_meta(self, meta: dict[str, Any]) -> None:
        """Record this session's metadata."""
        if self._cache is not None:
            self._cache.set(_META_KEY, json.dumps(meta).encode("utf-8"))

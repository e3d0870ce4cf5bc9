"""``db.cache``: the read path through the two cache levels, invalidation and stats.

The read path runs in the caller's thread (a cache hit must cost less than the query
it saves); the cache *actor* owns the levels' lifecycle, the disk writes and warming.

Never stale (DESIGN guarantee 3):

* the writer calls :meth:`CacheManager.tables_written` after each COMMIT and before any
  write of it is acknowledged, with the tables it changed and the rows it changed
  (old and new images, from SQLite's pre-update hook); entries those rows may affect
  are dropped from L1 (``dependencies.py`` says which: by default every entry of a
  changed table), and the tables' versions are bumped, which makes every L2 copy of
  them invalid too;
* a result is stored only if no invalidation that may affect it happened while it was
  being read (the read may have started before the commit it raced): invalidations
  are logged with their changes, and a store checks the ones since its read began;
* every read outside ``read_uncommitted`` first checks whether another process
  committed (``changes.py``) and drops everything if so; a writer restart or a schema
  change drops everything as well.
"""

from __future__ import annotations

import fnmatch
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from atlas_actors.cache.changes import ExternalChanges
from atlas_actors.cache.dependencies import RowImage, fold
from atlas_actors.cache.disk import DiskStore
from atlas_actors.cache.lru import ByteLRU, Changes, Entry, measure
from atlas_actors.cache.statements import StatementInfo
from atlas_actors.connection import Params
from atlas_actors.errors import (
    StatementTypeError,
    ValidationError,
    wrap_sqlite_error,
)
from atlas_actors.future import frozen_params, sql_type_error
from atlas_actors.memo import MAX_MEMO_CHARS, TextMemo
from atlas_actors.rows import Row, row_class

if TYPE_CHECKING:
    from atlas_actors.actors.pool import ReaderPool
    from atlas_actors.config import StorageConfig

__all__ = ["CacheManager", "CacheStats"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CacheStats:
    """``db.cache.stats()`` (the plan's ``CacheStats`` plus per-level figures)."""

    hits: int
    """Reads served from L1 or L2."""
    misses: int
    """Cacheable reads that ran the query."""
    size: int
    """Entries in L1."""
    memory_usage: int
    """Bytes held by L1 (measured)."""
    l1_hits: int
    """Reads served from memory."""
    l2_hits: int
    """Reads served from disk (then promoted to memory)."""
    l2_entries: int
    """Entries on disk."""
    l2_bytes: int
    """Bytes on disk."""
    bypassed: int
    """Reads that could not be cached (non-deterministic, writes, pragmas)."""
    evictions: int
    """L1 entries dropped for room or age."""
    invalidations: int
    """Entries dropped because their tables changed (or everything was dropped)."""
    hit_rate: float
    """hits / (hits + misses)."""
    page_cache_hit_rate: float
    """SQLite's own page-cache hit rate over the idle reader connections."""
    skipped: int = 0
    """Reads sent straight to a reader, without a lookup, because their statement's
    results were not being asked for again (see :class:`CacheManager`); counted in
    ``misses`` too."""


_DOORKEEPER_SIZE = 100_000
"""Keys asked for once that admission remembers (then it starts over)."""

_COST_SAMPLES = 3
"""Timed runs of a statement before its cost decides whether L2 is worth it."""

_LOG_SIZE = 256
"""Invalidations remembered for stores that raced them (an older read is refused)."""

_REUSE_WINDOW = 4096
"""Misses of a statement after which its reuse is judged."""

_REUSE_FLOOR = 0.01
"""A statement with fewer repeats than this share of its misses skips the cache..."""

_SKIP_READS = 16 * _REUSE_WINDOW
"""... for this many of its reads, then goes through it again (its reuse may change)."""

_TRACKED_STATEMENTS = 20_000
"""Statement texts whose reuse is tracked (generated SQL must not grow memory)."""


def _read(counter: itertools.count[int]) -> int:
    """The next value a ``count`` would return, without consuming it."""
    return int(counter.__reduce__()[1][0])


_EXACT = frozenset((type(None), int, bool, str, bytes))
"""Value types whose equal values SQLite binds alike (``True == 1`` binds 1): the key
holds such values as they are."""

_EXACT_TYPES = {kind: kind for kind in _EXACT}

_NAMES = frozenset((str,))


def read_key(sql: str, params: Params) -> tuple[Any, ...] | None:
    """The memory level's key of ``sql`` run with ``params``; None: the read is not cached.

    ``(sql, bound)``: ``bound`` is a list's or tuple's values, or a dict's (name, value)
    pairs sorted by name (each name a str). Every value is None, an int, bool, str,
    bytes or float: a sequence's key never holds a pair, so it is never a mapping's key.

    ``1 == 1.0`` and both hash alike, but SQLite binds an INTEGER and a REAL
    (``typeof(?)``; text affinity stores '1' and '1.0'): with a float among the values,
    the key holds each value's type too, and a float's exact spelling (``-0.0 == 0.0``,
    but SQLite keeps the sign). (The disk level keys by ``repr``: apart already.)

    Anything else has no key: a value of another type (a subclass's equality need not
    be SQLite's: a case-insensitive str, a float subclass equal to an int; a tuple, which
    SQLite refuses), a name that is no str (apsw looks up names), a mapping other than
    a dict (apsw reads it through its own ``__getitem__``), a generator (read it into
    a tuple first: :func:`_values_once`). Such a read goes to a reader uncached, which
    binds it or refuses it as with the cache off.
    """
    if params is None:
        return (sql, ())
    kind = type(params)
    if kind is list or kind is tuple:
        bound = tuple(params)
        if _EXACT.issuperset(map(type, bound)):
            return (sql, bound)
        return _typed_key(sql, bound, bound)
    if type(params) is dict:  # (not kind: mypy narrows this one)
        if not _NAMES.issuperset(map(type, params)):
            return None  # (not sorted either: names of mixed types cannot be)
        bound = tuple(sorted(params.items()))  # (names differ: values never compared)
        if _EXACT.issuperset(map(type, params.values())):
            return (sql, bound)
        return _typed_key(sql, bound, [value for _, value in bound])  # (in bound's order)
    return None


def _typed_key(sql: str, bound: tuple[Any, ...], values: Sequence[Any]) -> tuple[Any, ...] | None:
    """The key of ``bound``, whose ``values`` include a float or a value of no key.

    Each value's type, a float's exact spelling instead (-0.0 apart from 0.0).
    """
    try:  # (one pass: a type with no key is missing from _EXACT_TYPES)
        typed = [v.hex() if type(v) is float else _EXACT_TYPES[type(v)] for v in values]
    except KeyError:
        return None
    return (sql, bound, tuple(typed))


def _stored_key(sql: str, params: list[Any]) -> tuple[Any, ...] | None:
    """The key of an entry's ``params`` as the disk level kept them (pairs as lists).

    No value of a sequence's key is a list: a list of [name, value] is a named read's.
    """
    if params and all(type(p) is list and len(p) == 2 and type(p[0]) is str for p in params):
        return read_key(sql, dict(params))
    return read_key(sql, tuple(params))


_AS_GIVEN = frozenset((list, tuple, dict, type(None)))
"""Parameter containers passed on to the reader as the caller gave them."""


def _values_once(sql: str, params: Params) -> Params:
    """A generator's values (any iterable's but a list's, tuple's or mapping's) as a tuple.

    Else ``params`` as they are. Keying a read iterates its parameters, which empties
    a generator: the reader must be given what the key was made of, or it binds nothing.
    A str, bytes or bytearray, a mapping and what is no iterable at all are left for the
    reader to bind or refuse.
    """
    if isinstance(params, Mapping):
        return params
    try:
        values: Params = frozen_params(params)  # (a text, or no iterable, as it is)
    except (TypeError, OverflowError, KeyError) as error:
        # Raised by the iterable itself: typed as the reader types it when binding.
        wrapped = wrap_sqlite_error(error, sql)
        if wrapped is error:
            raise
        raise wrapped from error
    return values


class CacheManager:
    """The cache's shared state and its read path.

    Statements whose results are never asked for again (a parameter that is new each
    time, such as the current time) skip the cache: the lookup, the admission and the
    bookkeeping of each miss would make them slower than without it. A statement is
    judged after each 4,096 of its misses: if fewer than 1% of them were *repeats*
    (hits, or misses of a result asked for before), its next 65,536 reads go straight
    to a reader, and then it goes through the cache again. Skipping is never stale:
    a skipped read runs the query.
    """

    def __init__(
        self,
        config: StorageConfig,
        pool: ReaderPool,
        *,
        changes: ExternalChanges | None,
        directory: str,
    ) -> None:
        self.config = config
        self._pool = pool
        self.external = changes
        """Detects other processes' commits (None: no wal-index to read)."""
        self.resumed_files: dict[str, Any] | None = None
        """The files' fingerprint when the last session's entries were trusted again at
        open (None: they were not): compared once more when the wal-index is watched."""
        self.on_other_process: Callable[[], object] | None = None
        """Called after another process's commit dropped everything (the storage checks
        whether that commit changed the schema)."""
        self.directory = directory
        self.l1: ByteLRU | None = None
        """The memory level, while a cache actor incarnation runs."""
        self.l2: DiskStore | None = None
        """The disk level, while a cache actor incarnation runs."""
        self._versions: dict[str, int] = {}
        self.epoch = 0
        """Bumped when everything is dropped; entries of another epoch are invalid."""
        self._lock = threading.Lock()
        self.generation = 0
        """Bumped (under the lock) by every invalidation, before entries are dropped."""
        self._log: deque[tuple[int, Changes | None]] = deque(maxlen=_LOG_SIZE)
        # (generation, what it invalidated: None for everything), appended before the
        # generation is bumped, so a store that sees the new generation sees the entry.
        self._l1_hits = itertools.count()
        self._l2_hits = itertools.count()
        self._misses = itertools.count()
        self._bypassed = itertools.count()
        self._skipped = itertools.count()
        self._reuse: TextMemo[list[int]] = TextMemo(_TRACKED_STATEMENTS)
        # statement text -> [repeats, misses, reads left to skip]; updated without a
        # lock by every reading thread: the counts are estimates, a lost update is fine.
        self._dropped = itertools.count()
        self._reads_at_ask = -1
        self._costs: TextMemo[list[float]] = TextMemo(_TRACKED_STATEMENTS)
        self._doorkeeper: dict[Hashable, None] = {}
        self._doorkeeper_chars = 0  # (of the texts its keys hold: bounded too)
        self.fill: Callable[[Entry], None] | None = None
        """Sends an entry to the cache actor for L2 (set by the actor)."""
        self.ready = threading.Event()
        """Set once the first cache actor attached the levels."""
        self._levels_lock = threading.Lock()

    def attach(self, l1: ByteLRU, l2: DiskStore | None, fill: Callable[[Entry], None]) -> None:
        """Put an incarnation's levels in service (reads use them from now on)."""
        with self._levels_lock:
            self.l1, self.l2, self.fill = l1, l2, fill
        self.ready.set()

    def detach(self, l1: ByteLRU | None) -> None:
        """Take the levels out of service, if ``l1`` (the caller's) is still the one in use.

        A dying incarnation may get here after the supervisor has already started the
        next one (its liveness check can see the thread stopped first): the newer
        incarnation's levels must stay.
        """
        with self._levels_lock:
            if self.l1 is l1:
                self.fill = None
                self.l1 = None
                self.l2 = None

    def other_process_committed(self) -> None:
        """Another process committed: drop everything, then tell the storage."""
        self.invalidate_all("another process committed")
        if self.on_other_process is not None:
            self.on_other_process()

    # -- the read path -----------------------------------------------------------------

    def read(
        self, sql: str, params: Params, timeout: float | None, *, fresh: bool = True
    ) -> list[Row]:
        """Rows of ``sql``: from L1, L2, or the query (then stored)."""
        external = self.external
        if fresh and external is not None and external.moved():
            # Someone committed (maybe us). If another process did, everything is
            # dropped before the counter's new value is published: a reader that
            # sees it published must find no old entry (changes.py). Also before a read
            # that skips the cache: another process's schema change renames its columns.
            external.settle(self.other_process_committed)
        reuse = self._reuse.get(sql)
        if reuse is not None and reuse[2] > 0:
            reuse[2] -= 1
            next(self._skipped)
            next(self._misses)
            return self._pool.query(sql, params, timeout=timeout)
        l1 = self.l1
        if l1 is None:
            return self._pool.query(sql, params, timeout=timeout)  # the cache actor is restarting
        # The exact text: SQLite names a result's columns after it (count( * ) and
        # count(*) are other names), and a literal's spaces are its content.
        key = read_key(sql, params)
        if key is None:
            if type(params) not in _AS_GIVEN:
                params = _values_once(sql, params)  # (a generator: read once, here)
                key = read_key(sql, params)
            if key is None:  # no safe key (see read_key): read as with the cache off
                return self._pool.query(sql, params, timeout=timeout)
        bound: tuple[Any, ...] = key[1]
        entry = l1.get(key)
        if entry is not None:
            next(self._l1_hits)
            if reuse is not None:
                reuse[0] += 1
            return list(entry.rows)
        return self._miss(key, sql, params, bound, timeout, l1, reuse)

    def _miss(
        self,
        key: Hashable,
        sql: str,
        params: Params,
        bound: tuple[Any, ...],
        timeout: float | None,
        l1: ByteLRU,
        reuse: list[int] | None,
    ) -> list[Row]:
        expensive = self._expensive(sql)
        if expensive:
            promoted = self._from_l2(key, sql, bound, l1)
            if promoted is not None:
                if reuse is not None:
                    reuse[0] += 1
                return promoted
        generation = self.generation
        rows, info, latency = self._pool.query_analyzed(sql, params, timeout)
        if not info.cacheable:
            next(self._bypassed)
            return rows
        next(self._misses)
        if latency:  # a timed run (one in several)
            self._note_cost(sql, latency)
        # Admission: a result is stored the second time it is asked for (or at once
        # when it is expensive). Storing costs as much as the read, and results asked
        # for once (a scan over many keys) would only push useful ones out.
        repeat = self._seen_before(key, sql)
        if expensive or repeat:
            self._store(key, sql, params, bound, rows, info, expensive, l1, generation)
        self._judge_reuse(sql, reuse, repeat)
        return rows

    def _judge_reuse(self, sql: str, reuse: list[int] | None, repeat: bool) -> None:
        """Count a miss of ``sql``; after a window of them, skip it if repeats were rare."""
        if reuse is None:
            reuse = [0, 0, 0]
            if not self._reuse.remember(sql, reuse):
                return
        if repeat:
            reuse[0] += 1
        reuse[1] += 1
        if reuse[1] < _REUSE_WINDOW:
            return
        repeats, misses = reuse[0], reuse[1]
        reuse[0] = reuse[1] = 0
        if repeats < _REUSE_FLOOR * misses:
            reuse[2] = _SKIP_READS
            log.debug(
                "cache: %d repeats in %d misses of %r; its next %d reads skip the cache",
                repeats,
                misses,
                sql[:80],
                _SKIP_READS,
            )

    def _seen_before(self, key: Hashable, sql: str) -> bool:
        seen = self._doorkeeper
        if key in seen:
            return True
        if len(seen) >= _DOORKEEPER_SIZE or self._doorkeeper_chars + len(sql) > MAX_MEMO_CHARS:
            seen.clear()  # forget old one-timers rather than grow
            self._doorkeeper_chars = 0
        seen[key] = None
        self._doorkeeper_chars += len(sql)
        return False

    def _note_cost(self, sql: str, latency: float) -> None:
        # The cheapest run seen is the statement's cost: waits for the GIL or the disk
        # only ever add to a latency, and must not make a cheap read look dear.
        seen = self._costs.get(sql)
        if seen is None:
            self._costs.remember(sql, [latency, 1])  # (as _reuse: a bound on texts)
        else:
            seen[0] = min(seen[0], latency)
            seen[1] += 1

    def _expensive(self, sql: str) -> bool:
        """True once several timed runs all took longer than a disk lookup would."""
        if not self.config.cache_disk_min_seconds:
            return True  # configured to keep everything on disk
        seen = self._costs.get(sql)
        return (
            seen is not None
            and seen[1] >= _COST_SAMPLES
            and seen[0] >= self.config.cache_disk_min_seconds
        )

    def _store(
        self,
        key: Hashable,
        sql: str,
        params: Params,
        bound: tuple[Any, ...],
        rows: list[Row],
        info: StatementInfo,
        expensive: bool,
        l1: ByteLRU,
        generation: int,
    ) -> None:
        size = measure(rows, sql, bound)
        if size > self.config.cache_max_entry_bytes:
            return
        fill = self.fill
        to_disk = fill is not None and expensive
        entry = Entry(
            key=key,
            sql=sql,
            params=bound,
            rows=list(rows),
            tables=info.reads,
            # Only a copy bound for L2 needs the versions; unchanged since the read
            # started, or the generation check below refuses the entry.
            versions={t: self._versions.get(t, 0) for t in info.reads} if to_disk else {},
            epoch=self.epoch,
            expires=time.monotonic() + self.config.cache_ttl,
            size=size,
            dependency=info.template.bind(params) if info.template is not None else None,
        )
        # Stored only if nothing that may affect it was invalidated since the read
        # started, checked under L1's lock: an invalidation logs and bumps the
        # generation first and drops entries under that lock after, so a result read
        # before a commit is refused or dropped.
        stored = l1.put(entry, generation=generation, current=self, wait=False)
        if stored and to_disk and fill is not None:
            fill(entry)

    def _from_l2(
        self, key: Hashable, sql: str, bound: tuple[Any, ...], l1: ByteLRU
    ) -> list[Row] | None:
        l2 = self.l2
        if l2 is None:
            return None
        found = l2.get(sql, bound)
        if found is None:
            return None
        with self._lock:  # validate and promote atomically (see _store)
            entry = self._revive(key, sql, bound, *found)
            if entry is not None:
                l1.put(entry)
        if entry is None:
            l2.delete(sql, bound)
            return None
        next(self._l2_hits)
        return list(entry.rows)

    def _revive(
        self,
        key: Hashable,
        sql: str,
        bound: tuple[Any, ...],
        document: dict[str, Any],
        values: list[tuple[Any, ...]],
    ) -> Entry | None:
        """An L1 entry from an L2 document, or None if it is no longer valid."""
        tables = document.get("tables")
        versions = document.get("versions")
        names = document.get("names")
        if (
            document.get("epoch") != self.epoch
            or not isinstance(tables, list)
            or not isinstance(versions, dict)
            or not isinstance(names, list)
            or any(self._versions.get(t, 0) != versions.get(t) for t in tables)
        ):
            return None
        cls = row_class([str(n) for n in names])
        return Entry(
            key=key,
            sql=sql,
            params=bound,
            rows=[cls(row) for row in values],
            tables=frozenset(str(t) for t in tables),
            versions={str(t): int(versions[t]) for t in tables},
            epoch=self.epoch,
            expires=time.monotonic() + self.config.cache_ttl,
        )

    def document(self, entry: Entry) -> dict[str, Any]:
        """The JSON-safe description stored beside an entry's rows in L2."""
        names = list(entry.rows[0].keys()) if entry.rows else []
        return {
            "names": names,
            "tables": sorted(entry.tables),
            "versions": entry.versions,
            "epoch": entry.epoch,
        }

    def warm_from_l2(self) -> int:
        """Fill L1 with the L2 entries still valid; returns how many."""
        l1, l2 = self.l1, self.l2
        if l1 is None or l2 is None:
            return 0
        warmed = 0
        for document, values in l2.items():
            sql, params = document.get("sql"), document.get("params")
            if not isinstance(sql, str) or not isinstance(params, list):
                continue
            key = _stored_key(sql, params)
            if key is None:
                continue  # (parameters no read would be keyed by)
            bound = key[1]
            with self._lock:  # validate and store atomically (see _store)
                entry = self._revive(key, sql, bound, document, values)
                stored = entry is not None and l1.put(entry)
            if entry is None:
                l2.delete(sql, bound)
            elif stored:
                warmed += 1
        return warmed

    # -- invalidation ------------------------------------------------------------------

    def tables_written(
        self,
        tables: Iterable[str] | None,
        rows: Mapping[str, Sequence[RowImage] | None] | None = None,
    ) -> None:
        """A commit changed ``tables`` (None: unknown, so everything is dropped).

        ``rows`` maps a table to the images of its changed rows (None: unknown); a
        table of ``tables`` missing from it had no row changed, and a table of it
        missing from ``tables`` changed too. Without ``rows`` (None), every entry of
        ``tables`` is dropped.
        """
        if tables is None:
            self.invalidate_all("a write whose tables are unknown")
            return
        tables = list(tables)
        if rows:
            # A table the hook saw change counts even if the statements' analysis
            # missed it (a trigger it did not know of).
            named = {fold(table) for table in tables}
            tables += [table for table in rows if fold(table) not in named]
        if not tables:
            return
        known = {fold(table): images for table, images in rows.items()} if rows else {}
        changes: dict[str, Sequence[RowImage] | None] = {}
        for table in tables:
            folded = fold(table)
            changes[folded] = known.get(folded, ()) if rows is not None else None
        with self._lock:
            for table in tables:
                self._versions[table] = self._versions.get(table, 0) + 1
            self._log.append((self.generation + 1, changes))
            self.generation += 1
        l1 = self.l1
        if l1 is not None:
            for _ in range(l1.drop_changes(changes)):
                next(self._dropped)

    def unaffected_since(self, generation: int, entry: Entry) -> bool:
        """True if no invalidation after ``generation`` may affect ``entry``.

        Called under L1's lock by a store whose read began at ``generation``.
        """
        current = self.generation
        if current == generation:
            return True
        log = self._log
        if not log or log[0][0] > generation + 1:
            return False  # too long ago to tell
        dependency = entry.dependency
        tables = {fold(table) for table in entry.tables}
        try:
            logged_changes = list(log)
        except RuntimeError:  # appended to meanwhile (not expected under the GIL)
            return False
        for logged, changes in logged_changes:
            if logged <= generation:
                continue
            if logged > current:
                break
            if changes is None:
                return False
            for table in tables.intersection(changes):
                images = changes[table]
                if dependency is None or images is None or dependency.table != table:
                    return False
                if dependency.matches_any(images):
                    return False
        return True

    def invalidate_all(self, reason: str) -> None:
        """Drop everything (another process wrote, the schema changed, a restart)."""
        with self._lock:
            self.epoch += 1
            self._log.append((self.generation + 1, None))
            self.generation += 1
        l1 = self.l1
        if l1 is not None:
            for _ in range(l1.clear()):
                next(self._dropped)
        log.debug("cache cleared: %s", reason)

    def invalidate(self, pattern: str) -> int:
        """Drop entries whose tables, or whose statement, match the glob ``pattern``.

        ``"tasks"`` or ``"task*"`` match table names, in any case as SQLite's names
        do; ``"tasks:*"`` matches every entry reading ``tasks`` too (the part before
        ``:`` is the table); any other pattern is matched against the statement text
        (case-sensitively: a literal's case is its content). Returns the entries dropped.
        """
        if type(pattern) is not str:
            raise ValidationError(
                f"pattern must be a str glob such as 'tasks', 'task*' or 'tasks:*', not "
                f"{type(pattern).__name__} ({pattern!r:.60})"
            )
        table_pattern = pattern.split(":", 1)[0] if ":" in pattern else pattern
        l1 = self.l1
        entries = l1.entries() if l1 is not None else []
        known = set(self._versions) | {t for e in entries for t in e.tables}
        # As SQLite compares names: "tasks" is the table declared "Tasks".
        folded_pattern = fold(table_pattern)
        tables = [t for t in known if fnmatch.fnmatchcase(fold(t), folded_pattern)]
        keys = [e.key for e in entries if fnmatch.fnmatchcase(e.sql, pattern)]
        before = len(l1) if l1 is not None else 0
        if tables:
            self.tables_written(tables)
        if keys and l1 is not None:
            with self._lock:
                # First: a racing store is refused, not kept.
                self._log.append((self.generation + 1, None))
                self.generation += 1
            for _ in range(l1.drop_keys(keys)):
                next(self._dropped)
            if self.l2 is not None:
                chosen = set(keys)
                for entry in entries:
                    if entry.key in chosen:
                        self.l2.delete(entry.sql, entry.params)
        after = len(l1) if l1 is not None else 0
        return before - after

    # -- state across restarts ---------------------------------------------------------

    def versions(self) -> dict[str, int]:
        """A copy of the table versions."""
        with self._lock:
            return dict(self._versions)

    def restore(self, epoch: int, versions: dict[str, int]) -> None:
        """Continue from a previous session's epoch and table versions."""
        with self._lock:
            self.epoch = epoch
            self._versions = dict(versions)

    def wants_row_images(self) -> bool:
        """Whether the writer should collect the images of the rows its next batch changes.

        They spare entries that depend on other rows (and stores racing the commit)
        from table-wide invalidation. Not needed while L1 holds no such entry and no
        read came through the cache since the last ask: the writer then skips a
        Python call per changed row (write-only workloads run ~20% faster).
        """
        l1 = self.l1
        if l1 is None:
            return True
        reads = _read(self._l1_hits) + _read(self._misses) + _read(self._bypassed)
        read_since, self._reads_at_ask = reads != self._reads_at_ask, reads
        return read_since or l1.depends_on_rows()

    # -- stats -------------------------------------------------------------------------

    def stats(self) -> CacheStats:
        """Hits, misses, sizes per level, evictions, invalidations, page-cache rate."""
        l1, l2 = self.l1, self.l2
        l1_hits, l2_hits, misses = (
            _read(self._l1_hits),
            _read(self._l2_hits),
            _read(self._misses),
        )
        l2_entries, l2_bytes = l2.stats() if l2 is not None else (0, 0)
        hits = l1_hits + l2_hits
        page_hits, page_misses = self._pool.page_cache_counters()
        return CacheStats(
            hits=hits,
            misses=misses,
            size=len(l1) if l1 is not None else 0,
            memory_usage=l1.bytes if l1 is not None else 0,
            l1_hits=l1_hits,
            l2_hits=l2_hits,
            l2_entries=l2_entries,
            l2_bytes=l2_bytes,
            bypassed=_read(self._bypassed),
            evictions=l1.evictions if l1 is not None else 0,
            invalidations=_read(self._dropped),
            hit_rate=hits / (hits + misses) if hits + misses else 0.0,
            page_cache_hit_rate=(
                page_hits / (page_hits + page_misses) if page_hits + page_misses else 0.0
            ),
            skipped=_read(self._skipped),
        )

    def warm(self, queries: Sequence[tuple[str, Params] | str]) -> int:
        """Run ``queries`` (SQL, or (SQL, params)) so their results are cached."""
        warmed = 0
        for query in queries:
            try:
                sql, params = (query, None) if isinstance(query, str) else query
            except (TypeError, ValueError):  # (None, a 3-tuple: not SQL nor a pair)
                raise StatementTypeError(
                    f"warm takes SQL texts or (sql, params) pairs, not {query!r:.60}"
                ) from None
            if type(sql) is not str:
                raise sql_type_error(sql, built=False)
            if type(params) not in _AS_GIVEN:
                params = _values_once(sql, params)  # (for the key and the read both)
            # Asked for on purpose: admitted at once, not on a second request, and
            # through the cache even if the statement was skipping it.
            key = read_key(sql, params)
            if key is not None:  # (else the read goes uncached)
                self._doorkeeper[key] = None
            reuse = self._reuse.get(sql)
            if reuse is not None:
                reuse[2] = 0
            self.read(sql, params, None)
            warmed += 1
        return warmed

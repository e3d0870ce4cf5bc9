"""L1: recently used query results, bounded in bytes, with a per-entry TTL.

Sizes are measured with ``sys.getsizeof`` over the result list, its rows and their
values, not guessed. Every entry records the tables it read; a table index lets an
invalidation drop exactly the entries of the changed tables. An entry that knows which
rows it depends on (``dependencies.py``) is indexed by the values of one of its
constraints instead, so a commit finds the entries its changed rows may affect with a
dictionary lookup per row, not a scan.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from atlas_actors.cache.dependencies import Dependency, RowImage, fold
from atlas_actors.rows import Row

__all__ = ["ByteLRU", "Entry", "measure"]


def measure(rows: list[Row], sql: str = "", params: tuple[Any, ...] = ()) -> int:
    """Bytes an entry holds: the list, each row tuple and each value, and its key.

    The key's text and parameters count too: a short result of a long statement (or
    of a large parameter) held all of them, and distinct long texts filled memory far
    past the bound in entries the result sizes alone said were small.
    """
    size = sys.getsizeof(rows) + (sys.getsizeof(sql) if sql else 0)
    for value in params:
        size += sys.getsizeof(value)
    for row in rows:
        size += sys.getsizeof(row)
        for value in row:
            size += sys.getsizeof(value)
    return size


@dataclass(slots=True)
class Entry:
    """One cached result."""

    key: Hashable
    """Normalised SQL and parameters."""
    sql: str
    """The statement (for key-pattern invalidation and warming)."""
    params: tuple[Any, ...]
    """Its parameters."""
    rows: list[Row]
    """The result; rows are immutable, callers get a copy of the list."""
    tables: frozenset[str]
    """Tables the statement read."""
    versions: dict[str, int]
    """Each table's version when the result was read (checked on L2 hits)."""
    epoch: int
    """The cache epoch when the result was read (bumped by invalidate-all)."""
    expires: float
    """``time.monotonic()`` after which the entry is dropped."""
    size: int = field(default=0)
    """Measured bytes."""
    referenced: bool = field(default=False)
    """Read since the eviction clock last passed it."""
    dependency: Dependency | None = field(default=None)
    """The rows the result depends on (None: any change to its tables affects it)."""


Changes = Mapping[str, Sequence[RowImage] | None]
"""Folded table name → the changed rows' images (None: unknown, drop by table)."""


class ByteLRU:
    """Recently used entries within ``capacity`` bytes; lookups take no lock.

    A cache hit must cost less than the read it saves, also with many threads reading
    at once, so :meth:`get` is a plain dict lookup (atomic in CPython) that only marks
    the entry as referenced; there is no shared lock to contend for. Inserting,
    evicting and dropping take the lock. Eviction is CLOCK, the usual approximation of
    LRU: entries are visited oldest first, and one referenced since the last visit gets
    a second chance instead of being evicted.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: dict[Hashable, Entry] = {}
        self._clock: deque[tuple[Hashable, Entry]] = deque()
        self._by_table: defaultdict[str, set[Hashable]] = defaultdict(set)
        # Entries with a dependency: by folded table, and by (table, column, value) of
        # their first constraint; _columns counts which columns of a table are indexed.
        self._dependent: defaultdict[str, set[Hashable]] = defaultdict(set)
        self._by_value: defaultdict[tuple[str, int, Any], set[Hashable]] = defaultdict(set)
        self._columns: defaultdict[str, dict[int, int]] = defaultdict(dict)
        self._lock = threading.Lock()
        self.bytes = 0
        """Bytes held now."""
        self.evictions = 0
        """Entries dropped to stay within capacity or past their TTL."""

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Entry | None:
        """The live entry for ``key`` (marked referenced), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires < time.monotonic():
            with self._lock:
                if self._entries.get(key) is entry:
                    self._remove(key)
                    self.evictions += 1
            return None
        entry.referenced = True
        return entry

    def put(
        self,
        entry: Entry,
        *,
        generation: int | None = None,
        current: Any = None,
        wait: bool = True,
    ) -> bool:
        """Store ``entry`` (measured if not yet); False if it was not stored.

        Not stored: it alone exceeds the capacity; with ``generation``,
        ``current.generation`` no longer equals it (checked under the lock: see the
        cache manager's invalidation); with ``wait=False``, another thread holds the
        lock (a reader that just missed does not queue behind others to store its
        result: waiting on a lock under the GIL costs more than the next miss).
        """
        if not entry.size:
            entry.size = measure(entry.rows, entry.sql, entry.params)
        if entry.size > self.capacity:
            return False
        if not self._lock.acquire(wait):
            return False
        try:
            if generation is not None and not current.unaffected_since(generation, entry):
                return False
            key = entry.key
            if key in self._entries:
                self._remove(key)
            self._entries[key] = entry
            self._clock.append((key, entry))
            self.bytes += entry.size
            dependency = entry.dependency
            if dependency is None:
                for table in entry.tables:
                    self._by_table[fold(table)].add(key)
            else:
                table = dependency.table
                self._dependent[table].add(key)
                column, values = dependency.constraints[0]
                for value in values:
                    self._by_value[(table, column, value)].add(key)
                counts = self._columns[table]
                counts[column] = counts.get(column, 0) + 1
            self._evict()
        finally:
            self._lock.release()
        return True

    def _evict(self) -> None:
        """Make room (the caller holds the lock)."""
        clock, entries = self._clock, self._entries
        while self.bytes > self.capacity and clock:
            key, entry = clock.popleft()
            if entries.get(key) is not entry:
                continue  # removed or replaced meanwhile
            if entry.referenced:
                entry.referenced = False
                clock.append((key, entry))  # a second chance
                continue
            self._remove(key)
            self.evictions += 1
        if len(clock) > 2 * len(entries) + 64:
            # Drop the leftovers of removed entries so the ring stays proportionate.
            self._clock = deque((k, e) for k, e in clock if entries.get(k) is e)

    def depends_on_rows(self) -> bool:
        """True if some entry depends on particular rows (row-level invalidation)."""
        return bool(self._dependent)

    def drop_tables(self, tables: Iterable[str]) -> int:
        """Drop every entry that read one of ``tables``; returns how many."""
        return self.drop_changes({fold(table): None for table in tables})

    def drop_changes(self, changes: Changes) -> int:
        """Drop the entries a commit's changes may affect; returns how many.

        For each table: entries without a dependency always go; entries with one go
        when the table's rows are unknown (None) or one of its changed rows may match.
        """
        dropped = 0
        entries = self._entries
        with self._lock:
            for table, images in changes.items():
                doomed = set(self._by_table.pop(table, ()))
                if images is None:
                    doomed |= self._dependent.get(table, set())
                elif images:
                    doomed |= self._affected(table, images)
                for key in doomed:
                    if key in entries:
                        self._remove(key)
                        dropped += 1
        return dropped

    def _affected(self, table: str, images: Sequence[RowImage]) -> set[Hashable]:
        """Keys of the dependent entries of ``table`` that one of ``images`` may match."""
        found: set[Hashable] = set()
        columns = self._columns.get(table)
        if not columns:
            return found
        by_value, entries = self._by_value, self._entries
        for rowid, values in images:
            for column in columns:
                if column < 0:
                    value: Any = rowid
                elif column < len(values):
                    value = values[column]
                else:  # the table changed shape: every dependent entry may be affected
                    return set(self._dependent.get(table, ()))
                for key in by_value.get((table, column, value), ()):
                    entry = entries.get(key)
                    dependency = entry.dependency if entry is not None else None
                    if dependency is not None and dependency.matches((rowid, values)):
                        found.add(key)
        return found

    def drop_keys(self, keys: Iterable[Hashable]) -> int:
        """Drop the entries with these keys; returns how many."""
        dropped = 0
        with self._lock:
            for key in keys:
                if key in self._entries:
                    self._remove(key)
                    dropped += 1
        return dropped

    def entries(self) -> list[Entry]:
        """A snapshot of the entries, oldest first."""
        with self._lock:
            return list(self._entries.values())

    def clear(self) -> int:
        """Drop everything; returns how many entries there were."""
        with self._lock:
            count = len(self._entries)
            self._entries.clear()
            self._clock.clear()
            self._by_table.clear()
            self._dependent.clear()
            self._by_value.clear()
            self._columns.clear()
            self.bytes = 0
            return count

    def _remove(self, key: Hashable) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.size
        dependency = entry.dependency
        if dependency is None:
            for table in entry.tables:
                _discard(self._by_table, fold(table), key)
            return
        table = dependency.table
        _discard(self._dependent, table, key)
        column, values = dependency.constraints[0]
        for value in values:
            _discard(self._by_value, (table, column, value), key)
        counts = self._columns[table]
        counts[column] -= 1
        if not counts[column]:
            del counts[column]
            if not counts:
                del self._columns[table]


def _discard(index: defaultdict[Any, set[Hashable]], name: Any, key: Hashable) -> None:
    keys = index.get(name)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[name]

"""The workload recorder: per-statement counts and latencies, a slow-query log.

The runtime calls :meth:`WorkloadRecorder.record` for every query, from many threads, so
recording is one dictionary update in the calling thread's own buffer, keyed by the SQL
string as given (Python caches a string's hash, so a repeated statement object costs no
hashing), and takes no lock: under 16 reading threads a shared lock cost a quarter of
the read throughput, because a thread switched out while holding it stalls every other.
A report reads all the buffers. The work of normalizing statements into fingerprints
(literals, but not ``ORDER BY`` / ``GROUP BY`` column positions, become ``?``, ``IN``
lists collapse, keywords are upper-cased) is done later: when a report is asked for, or
when a thread's buffer reaches ``max_statements`` distinct strings and they are folded
into per-fingerprint totals (as are the buffers of threads that ended). Fingerprints
are bounded too: past ``max_fingerprints`` the ones with the least total time are
dropped and counted in :attr:`WorkloadRecorder.dropped`.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import apsw

from atlas_actors.errors import QueryValidationError
from atlas_actors.future import sql_type_error
from atlas_actors.query._names import fold
from atlas_actors.query._tokens import Token, is_word, significant, tokenize
from atlas_actors.query.conditions import check_count

__all__ = ["QueryStats", "WorkloadRecorder", "fingerprint"]

_KEYWORDS = frozenset(k.upper() for k in apsw.keywords)
_LITERALS = frozenset({"string", "number", "blob", "param"})
MAX_SQL_LENGTH = 4096
"""Longer statements are recorded under their first MAX_SQL_LENGTH characters."""


def fingerprint(sql: str) -> str:
    """Return ``sql`` normalized so that statements differing only in values are equal.

    Literals and parameters become ``?`` (a leading minus included), a parenthesized
    list of values such as ``IN (?, ?, ?)`` becomes ``(?)``, keywords are upper case,
    bare identifiers lower case (SQLite compares them case-insensitively), comments and
    spacing are dropped. An integer that is a whole ORDER BY or GROUP BY term (``ORDER BY
    2 DESC, 1``) stays: it names a result column, so it is part of the shape.
    """
    tokens = significant(tokenize(sql))
    positions = _column_positions(tokens)
    out: list[str] = []
    for i, t in enumerate(tokens):
        if i in positions:
            out.append(t.text)
        elif t.kind in _LITERALS:
            if out and out[-1] == "-" and (len(out) < 2 or out[-2] in _BEFORE_UNARY):
                out.pop()  # a negative number is one value
            out.append("?")
        elif t.kind == "word":
            out.append(t.upper if t.upper in _KEYWORDS else fold(t.text))
        elif t.text == ")" and "(" in out:
            opening = len(out) - 1 - out[::-1].index("(")
            inside = out[opening + 1 :]
            if inside and all(x in ("?", ",") for x in inside):
                del out[opening + 1 :]  # a list of values: its length does not matter
                out.append("?")
            out.append(")")
        else:
            out.append(t.text)
    while out and out[-1] == ";":
        out.pop()
    text = " ".join(out)
    for a, b in ((" ,", ","), ("( ", "("), (" )", ")"), (" . ", "."), (" .", "."), (". ", ".")):
        text = text.replace(a, b)
    return text


_BEFORE_UNARY = frozenset({"(", ",", "=", "<", ">", "<=", ">=", "<>", "!=", "==", *_KEYWORDS})
# What may follow a whole ORDER BY / GROUP BY term: its modifiers, the next term, or
# the end of the list.
_AFTER_TERM = frozenset(
    {"ASC", "DESC", "NULLS", "COLLATE", "LIMIT", "HAVING", "WINDOW", "ORDER", "UNION",
     "EXCEPT", "INTERSECT", ",", ")", ";"}
)  # fmt: skip
_LIST_END = frozenset({"LIMIT", "HAVING", "WINDOW", "UNION", "EXCEPT", "INTERSECT", ";"})


def _column_positions(tokens: Sequence[Token]) -> set[int]:
    """Indexes of the integers that are whole terms of an ORDER BY or GROUP BY list.

    One pass: each parenthesis level remembers whether it is inside such a list (from
    ``ORDER BY`` / ``GROUP BY`` to a keyword that ends the list). A term starts after
    ``BY`` or a comma of the list, and ends at a comma, a modifier or the list's end.
    """
    in_list = [False]  # per open parenthesis
    out: set[int] = set()
    for i, t in enumerate(tokens):
        word = t.upper if t.kind in ("word", "op") else ""
        if t.text == "(":
            in_list.append(False)
        elif t.text == ")":
            if len(in_list) > 1:
                in_list.pop()
        elif word == "BY" and i > 0 and is_word(tokens[i - 1], "ORDER", "GROUP"):
            in_list[-1] = True
        elif word in _LIST_END:
            in_list[-1] = False
        elif (
            t.kind == "number"
            and t.text.isdigit()
            and in_list[-1]
            and (tokens[i - 1].text == "," or is_word(tokens[i - 1], "BY"))
            and (i + 1 == len(tokens) or tokens[i + 1].upper in _AFTER_TERM)
        ):
            out.add(i)
    return out


@dataclass(frozen=True)
class QueryStats:
    """What the recorder knows about one statement shape."""

    fingerprint: str
    """The normalized statement (see :func:`fingerprint`)."""
    example: str
    """One statement as it was run (valid SQL to analyze)."""
    calls: int
    """How many times it ran."""
    total_seconds: float
    """Time spent in it, in total."""
    max_seconds: float
    """The slowest single run."""
    rows: int
    """Rows returned or changed, in total."""

    @property
    def mean_seconds(self) -> float:
        """Return the average time of one run."""
        return self.total_seconds / self.calls if self.calls else 0.0


class WorkloadRecorder:
    """Thread-safe, bounded recorder of query latencies (see the module docstring)."""

    def __init__(self, *, max_statements: int = 2000, max_fingerprints: int = 500) -> None:
        """Keep at most ``max_statements`` raw strings and ``max_fingerprints`` shapes."""
        if max_statements < 1 or max_fingerprints < 1:
            raise ValueError("max_statements and max_fingerprints must be at least 1")
        self._lock = threading.Lock()
        self._local = threading.local()
        # Each thread's buffer, sql -> [calls, total, max, rows], written by that thread
        # only; registered (with the thread) under the lock.
        self._buffers: list[tuple[weakref.ref[threading.Thread], dict[str, list[float]]]] = []
        self._folded: dict[str, tuple[str, list[float]]] = {}  # fingerprint -> (example, ...)
        self._max_statements = max_statements
        self._max_fingerprints = max_fingerprints
        self.dropped = 0
        """Calls whose fingerprint was evicted to keep memory bounded."""

    def record(self, sql: str, seconds: float, rows: int = 0, *, calls: int = 1) -> None:
        """Count a run of ``sql`` that took ``seconds`` and produced ``rows`` rows.

        ``calls`` > 1 records a sampled run as that many alike (the runtime times one
        read in several and scales). Bad input (``sql`` not text, ``seconds`` not a
        finite non-negative number, ``rows`` < 0, ``calls`` < 1) is refused with
        :class:`~atlas_actors.errors.ValidationError` before anything is counted.
        """
        if type(sql) is not str:
            raise sql_type_error(sql, built=False)
        if not (
            type(seconds) is float
            and 0.0 <= seconds < _INF
            and type(rows) is int
            and rows >= 0
            and type(calls) is int
            and calls >= 1
        ):  # the common case costs four type checks; anything else is checked in full
            seconds, rows, calls = _checked(seconds, rows, calls)
        if len(sql) > MAX_SQL_LENGTH:
            sql = sql[:MAX_SQL_LENGTH]
        try:
            raw: dict[str, list[float]] = self._local.raw
        except AttributeError:
            raw = self._register()
        entry = raw.get(sql)
        if entry is not None:
            entry[0] += calls
            entry[1] += seconds * calls
            if seconds > entry[2]:  # noqa: PLR1730 (hot path: no max() call)
                entry[2] = seconds
            entry[3] += rows * calls
            return
        if len(raw) >= self._max_statements:
            with self._lock:
                self._fold(raw)
        raw[sql] = [calls, seconds * calls, seconds, rows * calls]

    def _register(self) -> dict[str, list[float]]:
        """Give the calling thread its buffer; fold those of threads that ended."""
        raw: dict[str, list[float]] = {}
        self._local.raw = raw
        with self._lock:
            live = []
            for thread_ref, buffer in self._buffers:
                thread = thread_ref()
                if thread is None or not thread.is_alive():
                    self._fold(buffer)
                else:
                    live.append((thread_ref, buffer))
            live.append((weakref.ref(threading.current_thread()), raw))
            self._buffers = live
        return raw

    def _fold(self, raw: dict[str, list[float]]) -> None:
        """Merge one buffer into the per-fingerprint totals (caller holds the lock)."""
        for sql, entry in list(raw.items()):
            _merge(self._folded, fingerprint(sql), sql, entry)
        raw.clear()
        if len(self._folded) > self._max_fingerprints:
            keep = sorted(self._folded.items(), key=lambda kv: -kv[1][1][1])
            for _fp, (_example, entry) in keep[self._max_fingerprints :]:
                self.dropped += int(entry[0])
            self._folded = dict(keep[: self._max_fingerprints])

    def snapshot(self) -> list[QueryStats]:
        """Return every recorded shape, most total time first."""
        with self._lock:
            # A copy of each buffer: other threads keep recording into theirs meanwhile.
            raw = [(sql, list(e)) for _, buffer in self._buffers for sql, e in list(buffer.items())]
            folded = {fp: (ex, list(e)) for fp, (ex, e) in self._folded.items()}
        for sql, entry in raw:  # normalizing happens outside the lock
            _merge(folded, fingerprint(sql), sql, entry)
        stats = [
            QueryStats(fp, ex, int(e[0]), e[1], e[2], int(e[3])) for fp, (ex, e) in folded.items()
        ]
        return sorted(stats, key=lambda s: -s.total_seconds)

    def top(self, n: int = 10) -> list[QueryStats]:
        """Return the ``n`` shapes with the most total time (calls x latency)."""
        return self.snapshot()[: check_count(n, "n")]

    def slow_queries(self, threshold_ms: float = 100.0) -> list[QueryStats]:
        """Return shapes whose mean latency is at least ``threshold_ms``, most time first."""
        threshold = _number(threshold_ms, "threshold_ms")
        return [s for s in self.snapshot() if s.mean_seconds * 1000 >= threshold]

    def reset(self) -> None:
        """Forget everything recorded."""
        with self._lock:
            for _, buffer in self._buffers:
                buffer.clear()
            self._folded.clear()
            self.dropped = 0


_INF = math.inf


def _number(value: object, what: str) -> float:
    """``value`` as a float if it is a finite, non-negative real number, else raise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise QueryValidationError(f"{what} must be a number, got {value!r:.60}")
    try:
        number = float(value)
    except OverflowError:  # an int past float's range
        number = _INF
    if not 0 <= number < _INF:  # (False for NaN)
        raise QueryValidationError(f"{what} must be finite and non-negative, got {value!r:.60}")
    return number


def _checked(seconds: object, rows: object, calls: object) -> tuple[float, int, int]:
    """Validate :meth:`WorkloadRecorder.record`'s numbers (the slow path)."""
    checked_rows = check_count(rows, "rows")
    checked_calls = check_count(calls, "calls")
    if checked_calls < 1:
        raise QueryValidationError(f"calls must be at least 1, got {calls!r}")
    return _number(seconds, "seconds"), checked_rows, checked_calls


def _merge(into: dict[str, tuple[str, list[float]]], fp: str, sql: str, entry: list[float]) -> None:
    found = into.get(fp)
    if found is None:
        into[fp] = (sql, list(entry))
        return
    total = found[1]
    total[0] += entry[0]
    total[1] += entry[1]
    total[2] = max(total[2], entry[2])
    total[3] += entry[3]

"""``EXPLAIN QUERY PLAN`` output, parsed into typed nodes, and the plan result types.

The detail strings are for people, and SQLite changes them between releases
(https://www.sqlite.org/eqp.html: "the output format may change"): 3.24 rewrote them,
3.36 dropped ``TABLE`` from ``SCAN TABLE t``, and recent versions name loops by alias and
add ``LEFT-JOIN``, ``BLOOM FILTER`` and ``RIGHT-JOIN`` lines. So each line is matched by its
leading words only, older spellings are accepted too, and a line nobody recognises becomes
a zero-cost ``filter`` step marked ``recognized: False`` instead of an error. The third
column of the output is documented as unused and is ignored.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Access",
    "PlanNames",
    "PlanNode",
    "QueryPlan",
    "QueryStep",
    "StepType",
    "classify",
    "parse_rows",
]

StepType = Literal["scan", "index", "join", "filter", "sort", "subquery"]
"""What a step of a query plan does (from SQLite's EXPLAIN QUERY PLAN lines)."""


@dataclass(frozen=True)
class QueryStep:
    """One step of a query plan (one line of ``EXPLAIN QUERY PLAN``)."""

    type: StepType
    """``scan`` (a full pass over a table or index), ``index`` (an index search), ``join``
    (an inner loop of a join), ``filter`` (bloom filters, IN probes), ``sort`` (a temporary
    b-tree for ORDER BY / GROUP BY / DISTINCT) or ``subquery``."""
    table: str | None
    """The table the step reads (aliases resolved), a subquery's name, or None."""
    cost: float
    """Estimated work of this step alone, in virtual-machine steps (see ``docs/query.md``)."""
    details: Mapping[str, Any] = field(default_factory=dict)
    """The detail text and what was read from it: ``detail``, ``index``, ``rows``
    (estimated rows out), ``loops`` (times the step runs), ``recognized``, ..."""


@dataclass(frozen=True)
class QueryPlan:
    """How SQLite will run a statement, with estimates."""

    steps: tuple[QueryStep, ...]
    """The steps, in ``EXPLAIN QUERY PLAN`` order."""
    estimated_rows: float
    """Estimated rows the statement returns."""
    used_indexes: tuple[str, ...]
    """Indexes the plan uses (automatic indexes excluded), in order of first use."""
    sql: str = ""
    """The statement the plan is for."""
    analyzed: bool = False
    """True when row estimates came from ``sqlite_stat1`` (ANALYZE), not table sizes."""

    @property
    def cost(self) -> float:
        """Return the total estimated work (the sum of the step costs)."""
        return sum(s.cost for s in self.steps)

    def describe(self) -> str:
        """Return the plan as indented text, one step per line, with estimates."""
        lines = []
        for s in self.steps:
            indent = "  " * int(s.details.get("depth", 0))
            lines.append(
                f"{indent}{s.details.get('detail', s.type)}"
                f"  [rows≈{s.details.get('rows', 0):.0f} cost≈{s.cost:.0f}]"
            )
        return "\n".join(lines)


@dataclass
class PlanNode:
    """One line of EXPLAIN QUERY PLAN with its children."""

    id: int
    """The line's id (the address of its opcode)."""
    parent: int
    """The id of the enclosing line, 0 at top level."""
    detail: str
    """The text SQLite prints."""
    children: list[PlanNode] = field(default_factory=list)
    """The lines nested under this one."""


def parse_rows(rows: Iterable[tuple[Any, ...]]) -> list[PlanNode]:
    """Build the plan tree from ``(id, parent, notused, detail)`` rows."""
    by_id: dict[int, PlanNode] = {}
    roots: list[PlanNode] = []
    for row in rows:
        node = PlanNode(int(row[0]), int(row[1]), str(row[3]))
        by_id[node.id] = node
        parent = by_id.get(node.parent)
        (parent.children if parent is not None else roots).append(node)
    return roots


@dataclass(frozen=True)
class Access:
    """What one detail line says."""

    kind: str
    """``scan``, ``search``, ``constant``, ``values``, ``sort``, ``subquery``,
    ``compound``, ``recursive``, ``or``, ``bloom``, ``right_join``, ``in_probe`` or
    ``other``."""
    name: str | None = None
    """The loop or subquery name as printed (an alias when the query gave one)."""
    index: str | None = None
    """The index named, if any."""
    covering: bool = False
    """A covering index: the table itself is not read."""
    automatic: bool = False
    """An automatic (transient) index built for this statement."""
    primary_key: bool = False
    """A rowid or PRIMARY KEY search."""
    eq: tuple[str, ...] = ()
    """Columns the search constrains with ``=``/``IS`` (``ANY(x)`` skip-scans included)."""
    skip: int = 0
    """How many leading ``ANY(x)`` columns a skip-scan steps through."""
    ranges: tuple[tuple[str, int], ...] = ()
    """Columns constrained by ranges, with the number of bounds (1 or 2)."""
    left_join: bool = False
    """The inner loop of a LEFT JOIN (unmatched outer rows still come out)."""
    exists: bool = False
    """An EXISTS turned into a join: stops at the first match."""
    correlated: bool = False
    """A subquery that runs again for each outer row."""
    what: str = ""
    """For sorts, what the b-tree is for (``ORDER BY``, ``GROUP BY``, ``DISTINCT``); for
    ``values`` the number of rows; for ``recursive`` ``SETUP`` or ``RECURSIVE STEP``."""


# A name SQLite prints as it is, spaces included ("SEARCH my table USING INDEX i (a b=?)"),
# so names that contain a space or an operator are matched against the statement's own
# names, longest first; any other name is one run of non-blanks.
_ANY = r"\S+"


@dataclass(frozen=True)
class PlanNames:
    """The names a plan's lines may print that one run of non-blanks would cut short.

    Build it with :meth:`of` from every table, alias, index and column name the
    statement may use; only names with a blank or an operator character are kept.
    """

    loops: tuple[str, ...] = ()
    """Tables, aliases, subquery and CTE names."""
    indexes: tuple[str, ...] = ()
    """Index names."""
    columns: tuple[str, ...] = ()
    """Column names."""

    @classmethod
    def of(cls, loops: Iterable[str], indexes: Iterable[str], columns: Iterable[str]) -> PlanNames:
        """Keep the names a blank-delimited match would misread, longest first."""

        def odd(names: Iterable[str]) -> tuple[str, ...]:
            found = {n for n in names if n and _ODD.search(n)}
            return tuple(sorted(found, key=lambda n: (-len(n), n)))

        return cls(odd(loops), odd(indexes), odd(columns))


_ODD = re.compile(r"[\s()=<>!]")
_NO_NAMES = PlanNames()


def _names(known: tuple[str, ...], fallback: str, *, whole: bool) -> str:
    """A pattern for one name: a known one (case-insensitive), else ``fallback``."""
    if not known:
        return fallback
    alternatives = "|".join(re.escape(n) for n in known)
    end = r"(?=\s|$)" if whole else ""
    return f"(?:(?i:{alternatives}){end}|{fallback})"


@functools.lru_cache(maxsize=64)
def _patterns(names: PlanNames) -> tuple[re.Pattern[str], ...]:
    loop = _names(names.loops, _ANY, whole=True)
    index = _names(names.indexes, r"[^\s(]+", whole=True)
    column = _names(names.columns, r"[^\s=<>!]+", whole=False)
    any_column = _names(names.columns, r"[^)]+", whole=False)
    scan = re.compile(
        rf"SCAN (?:TABLE )?(?P<name>{loop})(?: AS (?P<alias>{loop}))?"
        rf"(?: USING (?P<cov>COVERING )?INDEX (?P<index>{index}))?"
    )
    search = re.compile(
        rf"SEARCH (?:TABLE )?(?P<name>{loop})(?: AS (?P<alias>{loop}))?"
        r"(?: (?P<exists>EXISTS))?"
        r"(?: USING (?:(?P<auto>AUTOMATIC (?:PARTIAL )?)?(?P<cov>COVERING )?"
        rf"INDEX(?: (?P<index>{index}))?"
        r"|(?P<ipk>INTEGER PRIMARY KEY)|(?P<pk>PRIMARY KEY)))?"
        r"(?: \((?P<cons>.*)\))?"
    )
    term = re.compile(
        rf"(?:ANY\((?P<any>{any_column})\)|(?P<col>{column})(?P<op>=|>=|<=|>|<| IS ))"
    )
    subquery = re.compile(
        r"(?:(?P<corr>CORRELATED )?(?:SCALAR|LIST) SUBQUERY|(?:CO-ROUTINE|MATERIALIZE|REUSE)"
        rf"|SUBQUERY)(?: (?P<name>{loop}))?"
    )
    bloom = re.compile(rf"BLOOM FILTER ON (?P<name>{loop})")
    right = re.compile(rf"RIGHT-JOIN (?P<name>{loop})")
    return scan, search, term, subquery, bloom, right


_COMPOUND = (
    "COMPOUND QUERY", "LEFT-MOST SUBQUERY", "UNION ALL", "UNION USING", "INTERSECT USING",
    "EXCEPT USING", "MERGE (", "LEFT", "RIGHT",
)  # fmt: skip


_VALUES = re.compile(r"SCAN (\d+)-ROW VALUES CLAUSE$")


def classify(detail: str, names: PlanNames = _NO_NAMES) -> Access:
    """Read one EXPLAIN QUERY PLAN detail line (see the module doc on stability).

    ``names`` are the statement's names that contain blanks (see :class:`PlanNames`).
    """
    scan, search, term, subquery, bloom, right = _patterns(names)
    if detail.startswith("SCAN CONSTANT ROW"):
        return Access("constant")
    m = _VALUES.match(detail)
    if m is not None:  # a VALUES clause of several rows (not a table named "3-row")
        return Access("values", what=m[1])
    if detail in ("SETUP", "RECURSIVE STEP"):  # the two parts of a recursive CTE
        return Access("recursive", what=detail)
    if detail.startswith("SCAN "):
        m = scan.match(detail)
        assert m is not None  # the pattern only requires "SCAN x"
        return Access(
            "scan",
            name=m["alias"] or m["name"],
            index=m["index"],
            covering=bool(m["cov"]),
            left_join=detail.endswith(" LEFT-JOIN"),
        )
    if detail.startswith("SEARCH "):
        m = search.match(detail)
        assert m is not None
        eq, ranges = _constraints(m["cons"] or "", term)
        skip = (m["cons"] or "").count("ANY(")
        return Access(
            "search",
            name=m["alias"] or m["name"],
            index=m["index"],
            covering=bool(m["cov"]) or bool(m["auto"]),
            automatic=bool(m["auto"]),
            primary_key=bool(m["ipk"] or m["pk"]),
            eq=eq,
            skip=skip,
            ranges=ranges,
            left_join=detail.endswith(" LEFT-JOIN"),
            exists=bool(m["exists"]),
        )
    if detail.startswith("USE TEMP B-TREE FOR "):
        return Access("sort", what=detail[len("USE TEMP B-TREE FOR ") :])
    if detail.startswith("MULTI-INDEX OR"):
        return Access("or")
    if detail.startswith("BLOOM FILTER ON "):
        m = bloom.match(detail)
        return Access("bloom", name=m["name"] if m else None)
    if detail.startswith("CREATE BLOOM FILTER"):  # over the rows of an IN subquery
        return Access("bloom")
    if detail.startswith("RIGHT-JOIN "):
        m = right.match(detail)
        return Access("right_join", name=m["name"] if m else None)
    if detail.endswith("FOR IN-OPERATOR"):
        return Access("in_probe")
    if detail.startswith(_COMPOUND):
        return Access("compound", what=detail)
    m = subquery.match(detail)
    if m is not None:
        return Access("subquery", name=m["name"], correlated=bool(m["corr"]), what=detail)
    return Access("other", what=detail)


def _constraints(
    text: str, term: re.Pattern[str]
) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]]:
    eq: list[str] = []
    ranges: dict[str, int] = {}
    for m in term.finditer(text):
        if m["any"]:
            eq.append(m["any"])
        elif m["op"] in ("=", " IS "):
            eq.append(m["col"])
        else:
            ranges[m["col"]] = ranges.get(m["col"], 0) + 1
    return tuple(eq), tuple(ranges.items())

"""Which rows a cached result depends on, so a commit drops only the results it changed.

Invalidating by table drops every cached read of ``tasks`` whenever any task changes;
with a few writes a second, nothing stays cached. A result of

    SELECT ... FROM tasks [AS t] WHERE <term> AND <term> ... [GROUP BY/ORDER BY/LIMIT ...]

depends only on the rows that satisfy every term of its WHERE clause. When some terms
are ``column = value`` or ``column IN (values)``, a changed row whose old and new
images both fail one of them cannot change the result. The writer sees every changed
row through SQLite's pre-update hook (https://sqlite.org/c3ref/preupdate_blobwrite.html),
old and new image, so a commit needs to drop only the results that such a row may match.

Everything here errs towards dropping:

* only single-table SELECTs of an ordinary table (no view, virtual table, generated
  column or WITHOUT ROWID) with no subquery, join, compound, CTE, top-level ``OR``,
  ``BETWEEN`` or ``CASE`` in the WHERE clause are recognised; anything else has no
  :class:`Template` and is invalidated by table;
* a term is used only if it is exactly ``column = value``, ``value = column`` or
  ``column IN (value, ...)``, with values that are parameters or plain literals;
  other terms only narrow the result further, so ignoring them is safe;
* a value is used only when Python's ``==`` decides the comparison as SQLite does:
  a number against a column of numeric affinity, text against a text column with
  the BINARY collation, any value against a column without affinity
  (https://sqlite.org/datatype3.html#type_conversions_prior_to_comparison); otherwise
  the term is ignored.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apsw

from atlas_actors.query._tokens import (
    Token,
    dequote,
    is_word,
    outside_parens,
    parameter_numbers,
    significant,
    tokenize,
)

__all__ = [
    "ROWID",
    "Dependency",
    "RowImage",
    "TableShape",
    "Template",
    "fold",
    "table_shape",
    "template",
]

ROWID = -1
"""The column index that stands for the rowid (``rowid``, ``oid``, ``_rowid_``)."""

RowImage = tuple[int, tuple[Any, ...]]
"""One version of a changed row: (rowid, its values in table column order)."""

_ROWID_NAMES = frozenset({"rowid", "oid", "_rowid_"})
_NUMERIC, _TEXT, _BLOB = "numeric", "text", "blob"
_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_FORBIDDEN = frozenset(
    {"UNION", "INTERSECT", "EXCEPT", "WITH", "JOIN", "VALUES", "NATURAL", "RECURSIVE"}
)
_WHERE_FORBIDDEN = frozenset({"OR", "BETWEEN", "CASE"})
_WHERE_ENDS = frozenset({"GROUP", "ORDER", "LIMIT", "WINDOW", "HAVING"})
_NOT_ALIASES = frozenset(
    {"WHERE", "INDEXED", "NOT", "FROM", "GROUP", "ORDER", "LIMIT", "WINDOW", "HAVING", "ON"}
)


def fold(name: str) -> str:
    """``name`` as SQLite compares identifiers: ASCII letters in lower case, nothing else."""
    # For ASCII text lower() is the same fold and far cheaper: translate() looks each
    # character up in a dict (~3k instructions for a table name, at every commit).
    return name.lower() if name.isascii() else name.translate(_FOLD)


@dataclass(frozen=True, slots=True)
class TableShape:
    """What dependency tracking needs to know about one ordinary table."""

    name: str
    """The table's name as the schema spells it."""
    columns: tuple[str, ...]
    """Column names, folded, in table order (the order of pre-update row images)."""
    affinities: tuple[str, ...]
    """Each column's comparison class: ``numeric``, ``text`` or ``blob`` (none)."""
    binary: tuple[bool, ...]
    """Whether each column compares text with the BINARY collation."""

    def column(self, name: str) -> int | None:
        """Index of column ``name`` (ROWID for a rowid alias), or None if unknown."""
        folded = fold(name)
        if folded in self.columns:
            return self.columns.index(folded)
        return ROWID if folded in _ROWID_NAMES else None


def _affinity(declared: str | None) -> str:
    # https://sqlite.org/datatype3.html#determination_of_column_affinity; INTEGER,
    # REAL and NUMERIC compare alike here (numbers against numbers).
    upper = (declared or "").upper()
    if "INT" in upper:
        return _NUMERIC
    if "CHAR" in upper or "CLOB" in upper or "TEXT" in upper:
        return _TEXT
    if "BLOB" in upper or not upper:
        return _BLOB
    return _NUMERIC


def table_shape(connection: apsw.Connection, table: str) -> TableShape | None:
    """The shape of ``table`` in the main database, or None if it is not tracked.

    Views, virtual tables, WITHOUT ROWID tables, STRICT tables and tables with
    hidden or generated columns get None: their changes are invalidated by table.
    """
    found = connection.execute(
        "SELECT name, sql FROM main.sqlite_master WHERE type = 'table' AND name = ?",
        (table,),
    ).fetchall()
    if len(found) != 1:
        return None
    name, sql = str(found[0][0]), found[0][1]
    text = fold(str(sql or ""))
    if not text.startswith("create table") or "without" in text or "strict" in text:
        return None  # no WITHOUT ROWID or STRICT table (a column name may be excluded too)
    columns, affinities, binary = [], [], []
    for _cid, column, declared, _notnull, _default, _pk, hidden in connection.execute(
        f"PRAGMA main.table_xinfo({_quote(name)})"
    ):
        if hidden:
            return None
        _type, collation, *_ = connection.column_metadata("main", name, column)
        columns.append(fold(column))
        affinities.append(_affinity(declared))
        binary.append(str(collation).upper() == "BINARY")
    if not columns:
        return None
    return TableShape(name, tuple(columns), tuple(affinities), tuple(binary))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class Dependency:
    """A result's rows all satisfy ``constraints``: only such rows can change it."""

    table: str
    """The table (folded name)."""
    constraints: tuple[tuple[int, frozenset[Any]], ...]
    """(column index or ROWID, the values it may take); every one must hold."""

    def matches(self, image: RowImage) -> bool:
        """True if the row version ``image`` may belong to the result."""
        rowid, values = image
        for index, allowed in self.constraints:
            if index == ROWID:
                value: Any = rowid
            elif index < len(values):
                value = values[index]
            else:
                return True  # the table changed shape: assume the worst
            if value not in allowed:
                return False
        return True

    def matches_any(self, images: Sequence[RowImage]) -> bool:
        """True if any of ``images`` may belong to the result."""
        return any(self.matches(image) for image in images)


_Source = tuple[str, Any]
"""("param", (number, name or None)) or ("literal", value)."""


@dataclass(frozen=True, slots=True)
class Template:
    """A statement's equality terms, waiting for its parameters (one per statement text)."""

    shape: TableShape
    """The table the statement reads."""
    terms: tuple[tuple[int, tuple[_Source, ...]], ...]
    """(column index or ROWID, where its allowed values come from)."""

    def bind(self, params: Sequence[Any] | Mapping[str, Any] | None) -> Dependency | None:
        """The dependency for one set of parameters, or None if no term is usable."""
        constraints = []
        for index, sources in self.terms:
            values = []
            for kind, source in sources:
                value = _resolve(source, params) if kind == "param" else source
                if value is _MISSING or not self._comparable(index, value):
                    break
                values.append(value)
            else:
                constraints.append((index, frozenset(values)))
        if not constraints:
            return None
        return Dependency(fold(self.shape.name), tuple(constraints))

    def _comparable(self, index: int, value: Any) -> bool:
        """Whether ``==`` in Python decides ``column = value`` exactly as SQLite does."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False  # "= NULL" matches nothing; leave such a term out
        if index == ROWID:
            return isinstance(value, int | float)
        affinity = self.shape.affinities[index]
        if affinity == _NUMERIC:
            return isinstance(value, int | float)
        if affinity == _TEXT:
            return isinstance(value, str) and self.shape.binary[index]
        if isinstance(value, str):
            return self.shape.binary[index]
        return isinstance(value, int | float | bytes)


_MISSING = object()


def _resolve(source: tuple[int, str | None], params: Any) -> Any:
    number, name = source
    try:
        if isinstance(params, Mapping):
            return params[name] if name is not None else _MISSING
        if params is None:
            return _MISSING
        return params[number - 1]
    except (KeyError, IndexError, TypeError):
        return _MISSING


def template(sql: str, shape_of: Callable[[str], TableShape | None]) -> Template | None:
    """Read the equality terms of ``sql``, or None if it is not a recognised shape.

    ``shape_of(name)`` gives the shape of the table a statement names (None: not an
    ordinary, tracked table).
    """
    raw = tokenize(sql)
    if _odd_parameters(raw):
        return None
    tokens = significant(raw)
    if tokens and tokens[-1].text == ";":
        tokens = tokens[:-1]
    if not tokens or not is_word(tokens[0], "SELECT"):
        return None
    for token in tokens:
        if token.kind == "word" and (token.upper in _FORBIDDEN or token.upper == "SELECT"):
            if token is not tokens[0]:
                return None
        elif token.kind == "op" and token.text == ";":
            return None
    numbers = parameter_numbers(tokens)
    depth0 = outside_parens(tokens)
    froms = [i for i in depth0 if is_word(tokens[i], "FROM")]
    if not froms:
        return None
    at = froms[0] + 1
    table, at = _table_name(tokens, at)
    if table is None:
        return None
    shape = shape_of(table)
    if shape is None:
        return None
    names = {fold(table)}
    alias, at = _alias(tokens, at)
    if alias is not None:
        names.add(fold(alias))
    at = _skip_indexed(tokens, at)
    if at >= len(tokens) or not is_word(tokens[at], "WHERE"):
        return None
    where = _where_region(tokens, at + 1)
    if where is None:
        return None
    terms = []
    for term in where:
        found = _term(term, shape, names, numbers)
        if found is not None:
            terms.append(found)
    return Template(shape, tuple(terms)) if terms else None


def _odd_parameters(tokens: Sequence[Token]) -> bool:
    """True for parameter forms the tokenizer may split wrongly (Tcl ``$x::y(z)``).

    SQLite reads ``$name::x(y)`` and ``:a$b`` as one parameter; splitting one would
    shift the numbers of the parameters after it.
    """
    for token, following in itertools.pairwise(tokens):
        if token.kind != "param":
            continue
        if "$" in token.text or "::" in token.text or "(" in token.text:  # (Tcl forms)
            return True
        if following.start == token.end and following.kind not in ("space", "comment", "op"):
            return True
        if following.start == token.end and following.text in (":", "(", "$"):
            return True
    return any(t.kind == "param" and t.text[0] == "$" for t in tokens[-1:])


def _name(token: Token) -> str | None:
    if token.kind == "word" or (token.kind == "quoted" and len(token.text) >= 2):
        return dequote(token)
    return None


def _table_name(tokens: Sequence[Token], at: int) -> tuple[str | None, int]:
    if at >= len(tokens):
        return None, at
    name = _name(tokens[at])
    if name is None:
        return None, at
    if at + 2 < len(tokens) and tokens[at + 1].text == ".":
        if fold(name) != "main":
            return None, at  # another schema: temp or attached
        name = _name(tokens[at + 2])
        return name, at + 3
    return name, at + 1


def _alias(tokens: Sequence[Token], at: int) -> tuple[str | None, int]:
    if at < len(tokens) and is_word(tokens[at], "AS"):
        if at + 1 < len(tokens):
            return _name(tokens[at + 1]), at + 2
        return None, at + 1
    if at < len(tokens):
        token = tokens[at]
        if token.kind == "quoted" or (token.kind == "word" and token.upper not in _NOT_ALIASES):
            return _name(token), at + 1
    return None, at


def _skip_indexed(tokens: Sequence[Token], at: int) -> int:
    if at + 2 < len(tokens) and is_word(tokens[at], "INDEXED") and is_word(tokens[at + 1], "BY"):
        return at + 3
    if at + 1 < len(tokens) and is_word(tokens[at], "NOT") and is_word(tokens[at + 1], "INDEXED"):
        return at + 2
    return at


def _where_region(tokens: Sequence[Token], start: int) -> list[list[Token]] | None:
    """The WHERE clause split into its top-level AND terms (None: not a conjunction).

    The clause ends at GROUP, ORDER, LIMIT, WINDOW or HAVING; as ``window`` may also be
    a column's name, OR, BETWEEN and CASE are looked for up to the statement's end.
    """
    depth = 0
    for token in tokens[start:]:
        if token.kind == "op" and token.text in ("(", ")"):
            depth += 1 if token.text == "(" else -1
        elif depth == 0 and token.kind == "word" and token.upper in _WHERE_FORBIDDEN:
            return None
    terms: list[list[Token]] = [[]]
    depth = 0
    for token in tokens[start:]:
        if token.kind == "op" and token.text == "(":
            depth += 1
        elif token.kind == "op" and token.text == ")":
            depth -= 1
            if depth < 0:
                return None
        elif depth == 0 and token.kind == "word":
            if token.upper in _WHERE_ENDS:
                break
            if token.upper in _WHERE_FORBIDDEN:
                return None
            if token.upper == "AND":
                terms.append([])
                continue
        terms[-1].append(token)
    return terms


def _term(
    term: Sequence[Token],
    shape: TableShape,
    names: set[str],
    numbers: Mapping[int, tuple[int, str | None]],
) -> tuple[int, tuple[_Source, ...]] | None:
    """(column, value sources) if ``term`` is ``col = v``, ``v = col`` or ``col IN (...)``."""
    for equals in ("=", "=="):
        for left, right in ((0, 1), (1, 0)):
            parts = _split(term, equals)
            if parts is None:
                continue
            column = _column(parts[left], shape, names)
            source = _source(parts[right], numbers)
            if column is not None and source is not None:
                return column, (source,)
    in_at = next((i for i, t in enumerate(term) if is_word(t, "IN")), None)
    if in_at is None:
        return None
    column = _column(term[:in_at], shape, names)
    rest = term[in_at + 1 :]
    if column is None or len(rest) < 3 or rest[0].text != "(" or rest[-1].text != ")":
        return None
    sources = []
    items = rest[1:-1]
    for k, token in enumerate(items):
        if k % 2:
            if token.text != ",":
                return None
            continue
        source = _source([token], numbers)
        if source is None:
            return None
        sources.append(source)
    if not sources or len(items) % 2 == 0:
        return None
    return column, tuple(sources)


def _split(term: Sequence[Token], equals: str) -> tuple[list[Token], list[Token]] | None:
    at = [i for i, t in enumerate(term) if t.kind == "op" and t.text == equals]
    if len(at) != 1:
        return None
    return list(term[: at[0]]), list(term[at[0] + 1 :])


def _column(part: Sequence[Token], shape: TableShape, names: set[str]) -> int | None:
    if len(part) == 1:
        name = _name(part[0])
    elif len(part) == 3 and part[1].text == ".":
        qualifier = _name(part[0])
        if qualifier is None or fold(qualifier) not in names:
            return None
        name = _name(part[2])
    else:
        return None
    if name is None or (len(part) == 1 and part[0].kind == "word" and _is_keyword(part[0])):
        return None
    return shape.column(name)


def _is_keyword(token: Token) -> bool:
    return token.upper in {
        "NULL",
        "TRUE",
        "FALSE",
        "CURRENT_TIME",
        "CURRENT_DATE",
        "CURRENT_TIMESTAMP",
    }


def _source(part: Sequence[Token], numbers: Mapping[int, tuple[int, str | None]]) -> _Source | None:
    if len(part) != 1:
        return None
    token = part[0]
    if token.kind == "param":
        number = numbers.get(token.start)
        return ("param", number) if number is not None else None
    if token.kind == "string":
        text = token.text
        if len(text) < 2 or text[-1] != "'":
            return None
        return ("literal", text[1:-1].replace("''", "'"))
    if token.kind == "number" and _plain_number(token.text):
        return ("literal", float(token.text) if "." in token.text else int(token.text))
    return None


def _plain_number(text: str) -> bool:
    """Digits, maybe a fraction, few enough that SQLite and Python read the same value.

    An integer past 64 bits is a REAL to SQLite, and its text-to-double conversion of
    long decimals is not always correctly rounded as Python's is.
    """
    whole, _, fraction = text.partition(".")
    if not (whole.isascii() and whole.isdigit() and (not fraction or fraction.isdigit())):
        return False
    return len(whole) <= 18 if not fraction else len(whole) + len(fraction) <= 15

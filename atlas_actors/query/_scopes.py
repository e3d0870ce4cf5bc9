"""Which table a column name belongs to, resolved per SQL scope, from tokens.

SQLite resolves a column name in the innermost SELECT (or UPDATE / DELETE / INSERT
clause) that can supply it, then outward through correlated subqueries; a qualifier
names an alias when the table has one, else the table (``FROM a AS x`` makes ``a.c`` an
error). Each token of a statement is given the :class:`Scope` it is resolved in:

- a SELECT core (one ``SELECT ... FROM ...`` of a compound, or a ``VALUES``): the
  sources of its FROM clause, including joins;
- the statement itself for UPDATE (target and ``UPDATE ... FROM`` sources), DELETE
  (target) and INSERT (target, for upserts and RETURNING; ``excluded`` only qualified);
- a parenthesized ``SELECT`` / ``VALUES`` / ``WITH`` opens a scope whose parent is the
  scope around it (CTE bodies have none).

Anything not understood is marked so (a source with unknown columns, an unnamed
subquery or parenthesized join, a name given twice), and :func:`owner` then answers
None: callers that change statements must leave them alone when in doubt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from atlas_actors.query._names import fold
from atlas_actors.query._tokens import Token, dequote, is_word
from atlas_actors.query.schema import Schema, TableInfo

__all__ = ["Scope", "owner", "scopes", "source_map"]

_VERBS = frozenset({"SELECT", "VALUES", "INSERT", "REPLACE", "UPDATE", "DELETE"})
_COMPOUND = frozenset({"UNION", "EXCEPT", "INTERSECT"})
_FROM_END = frozenset(
    {"WHERE", "GROUP", "HAVING", "WINDOW", "ORDER", "LIMIT", "RETURNING", *_COMPOUND}
)
# Words that end a table item instead of naming its alias.
AFTER_TABLE = frozenset(
    {
        "WHERE", "JOIN", "INNER", "LEFT", "RIGHT", "FULL", "CROSS", "NATURAL", "OUTER", "ON",
        "USING", "GROUP", "ORDER", "LIMIT", "HAVING", "WINDOW", "UNION", "EXCEPT",
        "INTERSECT", "INDEXED", "NOT", "RETURNING", "SET", "VALUES", "OFFSET", "AS", "SELECT",
        "DEFAULT", "FROM", "DO",
    }
)  # fmt: skip


@dataclass(eq=False)
class Scope:
    """The sources a column name can be resolved against at one point of a statement."""

    parent: Scope | None
    """The enclosing scope (a correlated subquery sees its outer query), or None."""
    sources: dict[str, str | None] = field(default_factory=dict)
    """Lower-case name a column is qualified with → lower-case table (None: its columns
    are unknown: a subquery, a CTE, a table-valued function, another schema's table)."""
    ambiguous: set[str] = field(default_factory=set)
    """Names given to two sources of this scope."""
    complete: bool = True
    """False when a source has no name (an unnamed subquery, a parenthesized join) or
    part of the clause was not understood."""
    qualified_only: set[str] = field(default_factory=set)
    """Names that qualify a column but never own an unqualified one (``excluded``)."""
    declared: dict[str, str | None] = field(default_factory=dict)
    """The names sources were declared with, before any alias (for plan loop names)."""

    def add(self, name: str, table: str | None, declared: str | None = None) -> None:
        """Record a source called ``name`` (declared as ``declared``, if it has an alias)."""
        if name in self.sources or name in self.qualified_only:
            self.ambiguous.add(name)
        self.sources[name] = table
        if declared is not None:
            self.declared.setdefault(declared, table)


def owner(
    scope: Scope | None, schema: Schema, qualifier: str | None, column: str
) -> TableInfo | None:
    """Return the table that certainly owns ``[qualifier.]column`` in ``scope``, else None.

    Unqualified: every source of the innermost scope must be a known table and exactly
    one may have the column (SQLite would look outward, or at result aliases, when none
    has it: not followed). Qualified: the innermost scope naming the qualifier decides;
    scopes with unnamed sources stop the search.
    """
    if scope is None:
        return None
    if qualifier is None:
        if not scope.complete or scope.ambiguous or not scope.sources:
            return None
        found = []
        for table in scope.sources.values():
            info = _known(schema, table)
            if info is None:
                return None  # a source whose columns are unknown could own it
            if info.has_column(column):
                found.append(info)
        if len(found) != 1 or found[0].column(column) is None:
            return None
        return found[0]
    name = fold(qualifier)
    current: Scope | None = scope
    while current is not None:
        if name in current.ambiguous or name in current.qualified_only:
            return None
        if name in current.sources:
            table = current.sources[name]
            info = _known(schema, table)
            return info if info is not None and info.column(column) is not None else None
        if not current.complete:
            return None
        current = current.parent
    return None


def _known(schema: Schema, table: str | None) -> TableInfo | None:
    """The table ``table`` names, or None: unknown, or a TEMP table (shadowing it)."""
    if table is None or table in schema.temp:
        return None
    return schema.tables.get(table)


def scopes(tokens: Sequence[Token]) -> list[Scope | None]:
    """Return the scope of each of ``tokens`` (significant tokens; None: not understood)."""
    return _Walker(tokens, _cte_names(tokens)).run()


def _cte_names(tokens: Sequence[Token]) -> set[str]:
    """Names defined by ``name [(columns)] AS [[NOT] MATERIALIZED] (`` anywhere."""
    names = set()
    for i, t in enumerate(tokens):
        k = i + 1
        if k < len(tokens) and is_word(tokens[k], "NOT"):
            k += 1
        if k < len(tokens) and is_word(tokens[k], "MATERIALIZED"):
            k += 1
        if is_word(t, "AS") and k < len(tokens) and tokens[k].text == "(":
            j = i - 1
            if j >= 0 and tokens[j].text == ")":  # name(col, ...) AS (
                depth = 0
                while j >= 0:
                    depth += tokens[j].text == ")"
                    depth -= tokens[j].text == "("
                    if depth == 0:
                        break
                    j -= 1
                j -= 1
            if j >= 0 and tokens[j].kind in ("word", "quoted"):
                names.add(fold(dequote(tokens[j])))
    return names


class _Walker:
    def __init__(self, tokens: Sequence[Token], ctes: set[str]) -> None:
        self.t = tokens
        self.ctes = ctes
        self.out: list[Scope | None] = [None] * len(tokens)
        self.close: dict[int, int] = {}
        stack: list[int] = []
        for i, tok in enumerate(tokens):
            if tok.kind == "op" and tok.text == "(":
                stack.append(i)
            elif tok.kind == "op" and tok.text == ")" and stack:
                self.close[stack.pop()] = i
        for i in stack:  # unbalanced: the group runs to the end
            self.close[i] = len(tokens)

    def run(self) -> list[Scope | None]:
        self.segment(0, len(self.t), None)
        return self.out

    # -- structure ---------------------------------------------------------------------

    def _open(self, k: int) -> bool:
        return self.t[k].kind == "op" and self.t[k].text == "("

    def _opens_scope(self, k: int) -> bool:
        return k + 1 < len(self.t) and is_word(self.t[k + 1], "SELECT", "VALUES", "WITH")

    def _level(self, start: int, end: int) -> list[int]:
        """Indexes in [start, end) outside parentheses (a group is its ``(``)."""
        out, k = [], start
        while k < end:
            out.append(k)
            k = self.close[k] + 1 if self._open(k) else k + 1
        return out

    def segment(self, start: int, end: int, parent: Scope | None) -> None:
        """Give scopes to a statement, or to the inside of a ``(SELECT ...)``."""
        level = self._level(start, end)
        verb_at = next(
            (k for k in level if self.t[k].kind == "word" and self.t[k].upper in _VERBS), None
        )
        if verb_at is None:
            for k in level:  # not understood: no scope here, but look inside groups
                if self._open(k) and self._opens_scope(k):
                    self.segment(k + 1, self.close[k], None)
            return
        verb = self.t[verb_at].upper
        statement: Scope | None = None
        if verb not in ("SELECT", "VALUES"):
            statement = self._statement(verb, verb_at, level, end, parent)
        cores = self._cores([k for k in level if k >= verb_at], end, parent)
        for k in level:
            if k < verb_at:  # a WITH clause: CTE bodies see no outer query
                scope: Scope | None = None
            else:
                scope = next((s for lo, hi, s in cores if lo <= k < hi), statement)
            self.assign(k, scope)

    def _cores(
        self, positions: list[int], end: int, parent: Scope | None
    ) -> list[tuple[int, int, Scope]]:
        """Return (start, end, scope) for each SELECT core / VALUES among ``positions``."""
        bounds: list[tuple[int, int]] = []
        start: int | None = None
        for n, k in enumerate(positions):
            tok = self.t[k]
            following = self.t[positions[n + 1]] if n + 1 < len(positions) else None
            ends = (tok.kind == "op" and tok.text == ";") or (
                tok.kind == "word"
                and (
                    tok.upper in _COMPOUND
                    or tok.upper == "RETURNING"
                    or (tok.upper == "ON" and is_word(following, "CONFLICT"))
                )
            )
            if ends and start is not None:
                bounds.append((start, k))
                start = None
            previous = self.t[positions[n - 1]] if n else None
            starts = is_word(tok, "SELECT") or (
                is_word(tok, "VALUES") and not is_word(previous, "DEFAULT")
            )
            if starts and start is None:
                start = k
        if start is not None:
            bounds.append((start, end))
        return [(lo, hi, self._core(lo, hi, parent)) for lo, hi in bounds]

    def _core(self, start: int, end: int, parent: Scope | None) -> Scope:
        scope = Scope(parent)
        level = self._level(start, end)
        for n, k in enumerate(level):
            if is_word(self.t[k], "FROM") and not self._distinct_from(level, n):
                self._from_clause(k + 1, end, scope)
                break
        return scope

    def _distinct_from(self, level: list[int], n: int) -> bool:
        """``x IS [NOT] DISTINCT FROM y`` is a comparison, not a FROM clause."""
        return (
            n >= 2
            and is_word(self.t[level[n - 1]], "DISTINCT")
            and is_word(self.t[level[n - 2]], "IS", "NOT")
        )

    def _statement(
        self, verb: str, at: int, level: list[int], end: int, parent: Scope | None
    ) -> Scope:
        """The scope of an UPDATE, DELETE or INSERT outside its SELECT cores."""
        scope = Scope(parent)
        after = [k for k in level if k > at]
        if verb == "UPDATE":
            k = at + 1
            if is_word(self.t[k] if k < len(self.t) else None, "OR"):
                k += 2
            self._item(k, end, scope)
            for n, j in enumerate(after):
                if is_word(self.t[j], "FROM") and not self._distinct_from(after, n):
                    self._from_clause(j + 1, end, scope)
                    break
        elif verb == "DELETE":
            if after and is_word(self.t[after[0]], "FROM"):
                self._item(after[0] + 1, end, scope)
            else:
                scope.complete = False
        else:  # INSERT / REPLACE [OR x] INTO name [AS alias]
            into = next((j for j in after if is_word(self.t[j], "INTO")), None)
            if into is None or not self._target(into + 1, scope):
                scope.complete = False
            scope.qualified_only.add("excluded")
        return scope

    def _target(self, k: int, scope: Scope) -> bool:
        """Read an INSERT target ``[schema.]name [AS alias]`` (no bare alias there)."""
        read = self._name(k)
        if read is None:
            return False
        key, table, k = read
        if k + 1 < len(self.t) and is_word(self.t[k], "AS") and self._is_name(k + 1):
            key = fold(dequote(self.t[k + 1]))
        scope.add(key, table)
        return True

    def _is_name(self, k: int) -> bool:
        return k < len(self.t) and self.t[k].kind in ("word", "quoted")

    def _name(self, k: int) -> tuple[str, str | None, int] | None:
        """Read ``[schema.]name`` at ``k``: (name, table or None if unknown, next index)."""
        if not self._is_name(k) or (self.t[k].kind == "word" and self.t[k].upper in AFTER_TABLE):
            return None
        name = fold(dequote(self.t[k]))
        schema: str | None = None
        k += 1
        if k + 1 < len(self.t) and self.t[k].text == "." and self._is_name(k + 1):
            schema, name = name, fold(dequote(self.t[k + 1]))
            k += 2
        unknown = name in self.ctes or (schema is not None and schema != "main")
        return name, None if unknown else name, k

    def _item(self, k: int, end: int, scope: Scope) -> int:
        """Read one FROM item at ``k`` into ``scope``; return the index after it."""
        key: str | None = None
        declared: str | None = None
        table: str | None = None
        if k < end and self._open(k):
            k = self.close[k] + 1  # a subquery or a parenthesized join: columns unknown
        else:
            read = self._name(k) if k < end else None
            if read is None:
                scope.complete = False
                return k
            key, table, k = read
            declared = key
            if k < end and self._open(k):  # a table-valued function
                k = self.close[k] + 1
                table = None
        if k < end and is_word(self.t[k], "AS"):
            k += 1
        if k < end and (
            self.t[k].kind == "quoted"
            or (self.t[k].kind == "word" and self.t[k].upper not in AFTER_TABLE)
        ):
            key = fold(dequote(self.t[k]))
            k += 1
        if key is None:
            scope.complete = False
        else:
            scope.add(key, table, declared)
        return k

    def _from_clause(self, k: int, end: int, scope: Scope) -> None:
        """Read the items of a FROM clause (commas and joins) up to its end."""
        k = self._item(k, end, scope)
        while k < end:
            tok = self.t[k]
            if (tok.kind == "op" and tok.text == ",") or is_word(tok, "JOIN"):
                k = self._item(k + 1, end, scope)
            elif (tok.kind == "word" and tok.upper in _FROM_END) or tok.text == ";":
                return
            elif self._open(k):
                k = self.close[k] + 1
            else:
                k += 1

    # -- assignment --------------------------------------------------------------------

    def assign(self, k: int, scope: Scope | None) -> None:
        """Give ``scope`` to the token (or group) at ``k``; scoped groups get their own."""
        self.out[k] = scope
        if not self._open(k):
            return
        close = self.close[k]
        if close < len(self.t):
            self.out[close] = scope
        if self._opens_scope(k):
            self.segment(k + 1, close, scope)
            return
        for j in self._level(k + 1, close):
            self.assign(j, scope)


def source_map(all_scopes: Sequence[Scope | None]) -> Mapping[str, str | None]:
    """Merge every scope's sources (the first scope naming a source wins)."""
    out: dict[str, str | None] = {}
    seen: set[int] = set()
    for scope in all_scopes:
        if scope is None or id(scope) in seen:
            continue
        seen.add(id(scope))
        for name, table in scope.sources.items():
            out.setdefault(name, table)
        for name, table in scope.declared.items():
            out.setdefault(name, table)
    return out

"""Named rewrite rules: each one turns a statement into an equivalent one, or warns.

Rules work on tokens (:mod:`~atlas_actors.query._tokens`) and only touch shapes they
fully recognise; everything else is left as written. Each rule states why it is sound.

``or_to_in``
    ``c = v1 OR c = v2 ...`` → ``c IN (v1, v2, ...)`` when the values are literals or
    parameters and the chain is a whole operand (parenthesized, or a whole WHERE/ON/HAVING).
    Sound: ``x IN (y, z)`` means ``x = +y OR x = +z``
    (https://www.sqlite.org/datatype3.html#affinity_of_comparison_operands), and a literal
    or parameter has no affinity anyway, so affinity and collation are those of ``c`` in
    both forms.
``like_prefix_range``
    ``c LIKE 'abc%'`` → ``(range AND c LIKE 'abc%')`` where the range bounds ``c`` by the
    literal prefix, so an index on ``c`` can be used. The LIKE stays, so the range only
    has to contain every match. Only a LIKE that is a whole operand (of a boolean
    AND/OR/NOT, or a whole WHERE/ON/HAVING/WHEN term) is rewritten: LIKE, BETWEEN, IS
    and = share one precedence level, so ``x BETWEEN 0 AND c LIKE 'a%'`` is
    ``(x BETWEEN 0 AND c) LIKE 'a%'``, and so is ``x IS NOT c LIKE 'a%'``. LIKE ignores
    collations and, by default, folds ASCII case
    (https://www.sqlite.org/lang_expr.html#like); the range compares with ``c``'s
    collation. So: case-sensitive LIKE (``PRAGMA case_sensitive_like = ON``) needs a
    BINARY column (one range); case-insensitive LIKE on a NOCASE column gets one range on
    the lower-cased prefix; case-insensitive LIKE on a BINARY column gets one range per
    upper/lower variant of the prefix's first letters (at most 16). ``c`` must have TEXT
    affinity (numbers are then stored as text) and blobs must not match LIKE (SQLite
    built with SQLITE_LIKE_DOESNT_MATCH_BLOBS, checked at run time) unless the table is
    STRICT. And an index must lead with ``c`` in ``c``'s collation, else nothing gains.
    The bounds are computed in code point order, which is BINARY's on UTF-8 databases
    only: on UTF-16 ones the rule does nothing. ``c``'s table must be certain
    (:mod:`~atlas_actors.query._scopes`).
``drop_subquery_order_by``
    ``IN (SELECT ... ORDER BY ...)`` and ``EXISTS (SELECT ... ORDER BY ...)`` lose the
    ORDER BY when the subquery has no LIMIT: sets have no order.

Warnings only: ``not_in_nullable`` (``x NOT IN (SELECT c ...)`` where ``c`` may be NULL:
one NULL makes the NOT IN never true; never rewritten, as NOT EXISTS means something
else for NULLs), ``leading_wildcard`` (``LIKE '%abc'`` can use no index; consider FTS5).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from atlas_actors.query._names import fold
from atlas_actors.query._scopes import AFTER_TABLE, Scope, owner, scopes
from atlas_actors.query._tokens import (
    Token,
    dequote,
    is_word,
    matching_paren,
    significant,
    tokenize,
)
from atlas_actors.query.schema import Schema, TableInfo

__all__ = ["RULES", "LikeSemantics", "RewriteResult", "apply_rules"]

# Where an OR chain may start and end: AND binds tighter than OR and NOT tighter than
# both (https://www.sqlite.org/lang_expr.html#operators), so "p AND a = 1 OR a = 2" is
# "(p AND a = 1) OR a = 2" and its last two terms are not a chain of their own.
_OR_BEFORE = frozenset({"WHERE", "OR", "ON", "HAVING", "WHEN", "("})
_OR_AFTER = frozenset(
    {"OR", ")", "GROUP", "ORDER", "LIMIT", "WINDOW", "UNION", "EXCEPT", "INTERSECT", ";",
     "THEN", "ELSE", "END", "RETURNING"}
)  # fmt: skip
# Around a LIKE replaced by a parenthesized expression: only neighbours that make
# "c LIKE 'p%'" a whole operand. LIKE shares its (left-associative) precedence level with
# BETWEEN, IS, IN, = and <>; ESCAPE, <, ||, COLLATE ... bind tighter. So the token after
# the pattern must bind looser (AND, OR) or end the expression, and the one before must
# start one: WHERE, ON, HAVING, WHEN, "(", a boolean OR, a boolean AND (not the AND of
# "x BETWEEN y AND"), or a prefix NOT that itself starts an operand (not "x IS NOT").
_LIKE_AFTER = _OR_AFTER | {"AND"}
# Where a backward scan for the BETWEEN owning an AND stops: no BETWEEN before these
# (at the AND's nesting level) can own it.
_BETWEEN_STOP = frozenset({"WHERE", "ON", "HAVING", "WHEN", "THEN", "ELSE", "SELECT", ",", ";"})
_VALUE_KINDS = frozenset({"string", "number", "blob", "param"})
MAX_CASE_VARIANTS = 16


@dataclass(frozen=True)
class RewriteResult:
    """A rewritten statement and what was done to it."""

    sql: str
    """The statement to run (the original when no rule applied or it would not be cheaper)."""
    applied_rules: tuple[str, ...]
    """Names of the rules that changed the statement, in order."""
    warnings: tuple[str, ...]
    """Problems found that no rule may fix (see the module docstring)."""
    cost_before: float = 0.0
    """Estimated cost of the original statement (VM steps)."""
    cost_after: float = 0.0
    """Estimated cost of :attr:`sql`."""


@dataclass(frozen=True)
class LikeSemantics:
    """How LIKE behaves on the connection (read at run time, not assumed)."""

    case_sensitive: bool
    """``PRAGMA case_sensitive_like`` is on (``'a' LIKE 'A'`` is false)."""
    blobs_match: bool
    """A blob can match LIKE (``x'61' LIKE 'a'`` is true)."""
    encoding: str = "UTF-8"
    """``PRAGMA encoding``. Ranges are computed in code point order, which is BINARY's
    order for UTF-8 only: UTF-16 text is compared as bytes (``'ÿ'`` is FF 00 in
    UTF-16le, above ``'Ā'``, 00 01), so no range is built on other encodings."""


@dataclass(frozen=True)
class _Ctx:
    schema: Schema
    like: LikeSemantics
    warnings: list[str]


Rule = Callable[[str, _Ctx], str | None]


def _column(tokens: Sequence[Token], i: int) -> tuple[str | None, str, int] | None:
    """Read ``name`` or ``qualifier.name`` at ``i``: (qualifier, name, next index)."""
    if i >= len(tokens) or tokens[i].kind not in ("word", "quoted"):
        return None
    if (
        i + 2 < len(tokens)
        and tokens[i + 1].text == "."
        and tokens[i + 2].kind in ("word", "quoted")
    ):
        return dequote(tokens[i]), dequote(tokens[i + 2]), i + 3
    return None, dequote(tokens[i]), i + 1


def _before_ok(tokens: Sequence[Token], i: int, allowed: frozenset[str]) -> bool:
    return i == 0 or (tokens[i - 1].kind in ("word", "op") and tokens[i - 1].upper in allowed)


def _after_ok(tokens: Sequence[Token], i: int, allowed: frozenset[str]) -> bool:
    return i >= len(tokens) or (tokens[i].kind in ("word", "op") and tokens[i].upper in allowed)


def _splice(sql: str, edits: list[tuple[int, int, str]]) -> str:
    for start, end, text in sorted(edits, reverse=True):
        sql = sql[:start] + text + sql[end:]
    return sql


def or_to_in(sql: str, ctx: _Ctx) -> str | None:
    """Rule ``or_to_in`` (see the module docstring)."""
    tokens = significant(tokenize(sql))
    edits: list[tuple[int, int, str]] = []
    i = 0
    while i < len(tokens):
        chain = _eq_chain(tokens, i) if _before_ok(tokens, i, _OR_BEFORE) else None
        if chain is None:
            i += 1
            continue
        column, values, end = chain
        if len(values) > 1 and _after_ok(tokens, end, _OR_AFTER):
            listed = ", ".join(values)
            edits.append((tokens[i].start, tokens[end - 1].end, f"{column} IN ({listed})"))
            i = end
        else:
            i += 1
    return _splice(sql, edits) if edits else None


def _eq_chain(tokens: Sequence[Token], i: int) -> tuple[str, list[str], int] | None:
    """Read ``c = v OR c = v ...`` at ``i``: (column text, value texts, next index)."""
    key: tuple[str | None, str] | None = None
    text = ""
    values: list[str] = []
    while True:
        term = _eq_term(tokens, i)
        if term is None:
            return None if not values else (text, values, i - 1)
        (qualifier, name, column_text), value, nxt = term
        this = (None if qualifier is None else fold(qualifier), fold(name))
        if key is not None and this != key:
            return None if len(values) < 2 else (text, values, i - 1)
        key, text = this, column_text
        values.append(value)
        if nxt < len(tokens) and is_word(tokens[nxt], "OR"):
            i = nxt + 1
            continue
        return text, values, nxt


def _value(tokens: Sequence[Token], i: int) -> tuple[str, int] | None:
    """Read a literal, a parameter or a signed number at ``i``: (text, next index)."""
    if i < len(tokens) and tokens[i].kind in _VALUE_KINDS:
        return tokens[i].text, i + 1
    if i + 1 < len(tokens) and tokens[i].text in ("-", "+") and tokens[i + 1].kind == "number":
        return tokens[i].text + tokens[i + 1].text, i + 2
    return None


def _eq_term(
    tokens: Sequence[Token], i: int
) -> tuple[tuple[str | None, str, str], str, int] | None:
    col = _column(tokens, i)
    if col is not None and col[2] < len(tokens) and tokens[col[2]].text in ("=", "=="):
        value = _value(tokens, col[2] + 1)
        if value is not None:
            text = " ".join(t.text for t in tokens[i : col[2]]).replace(" . ", ".")
            return (col[0], col[1], text), value[0], value[1]
    value = _value(tokens, i)
    if value is not None and value[1] < len(tokens) and tokens[value[1]].text in ("=", "=="):
        col = _column(tokens, value[1] + 1)
        if col is not None:
            text = " ".join(t.text for t in tokens[value[1] + 1 : col[2]]).replace(" . ", ".")
            return (col[0], col[1], text), value[0], col[2]
    return None


def like_prefix_range(sql: str, ctx: _Ctx) -> str | None:
    """Rule ``like_prefix_range`` (see the module docstring)."""
    tokens = significant(tokenize(sql))
    in_scope = scopes(tokens)
    edits: list[tuple[int, int, str]] = []
    for i, t in enumerate(tokens):
        if not is_word(t, "LIKE") or i + 1 >= len(tokens) or tokens[i + 1].kind != "string":
            continue
        start = i - 3 if i >= 3 and tokens[i - 2].text == "." else i - 1
        col = _column(tokens, start) if start >= 0 else None
        if col is None or col[2] != i or not _starts_operand(tokens, start):
            continue  # e.g. "x BETWEEN 0 AND c LIKE 'p%'" is "(x BETWEEN 0 AND c) LIKE 'p%'"
        if not _after_ok(tokens, i + 2, _LIKE_AFTER):
            continue  # an ESCAPE clause, COLLATE, "= 0", "IS NULL" ...: leave it
        pattern = dequote_string(tokens[i + 1].text)
        prefix = _literal_prefix(pattern)
        if not prefix:
            if pattern[:1] in ("%", "_"):
                ctx.warnings.append(
                    f"leading_wildcard: {pattern!r} starts with a wildcard, so no index on "
                    f"{col[1]!r} can help; a full-text index (FTS5) can"
                )
            continue
        # Only a column whose table is certain: a range on another table's column of
        # another affinity would change the result (12 LIKE '12%' but not 12 < '13').
        table = owner(in_scope[start], ctx.schema, col[0], col[1])
        ranges = _like_ranges(ctx, table, col[1], prefix) if table is not None else None
        if not ranges:
            continue
        lhs = sql[tokens[start].start : tokens[i - 1].end]
        rendered = " OR ".join(
            f"({lhs} >= {_quote(lo)} AND {lhs} < {_quote(hi)})" for lo, hi in ranges
        )
        rendered = f"({rendered})" if len(ranges) > 1 else rendered[1:-1]
        original = sql[tokens[start].start : tokens[i + 1].end]
        edits.append((tokens[start].start, tokens[i + 1].end, f"({rendered} AND {original})"))
    return _splice(sql, edits) if edits else None


def _starts_operand(tokens: Sequence[Token], i: int) -> bool:
    """Whether an expression at ``i`` starts a whole operand.

    That is, of a boolean AND/OR/NOT, or a whole WHERE/ON/HAVING/WHEN term, or a
    parenthesized one: nothing before ``i`` binds at LIKE's precedence level or tighter.
    Conservative: False when unsure.
    """
    # Prefix NOTs start an operand when the first of them does (never "x IS NOT": IS
    # binds at LIKE's level). A loop, not recursion: a chain can be very long.
    while i > 0 and is_word(tokens[i - 1], "NOT"):
        i -= 1
    if i == 0:
        return True
    prev = tokens[i - 1]
    if prev.kind not in ("word", "op"):
        return False
    if prev.upper in _OR_BEFORE:
        return True
    if is_word(prev, "AND"):
        return not _between_and(tokens, i - 1)
    return False


def _between_and(tokens: Sequence[Token], k: int) -> bool:
    """Whether the AND at ``k`` may belong to a ``BETWEEN x AND y``.

    Each BETWEEN takes the first AND after it at its own nesting level; parentheses and
    CASE ... END nest.
    """
    depth, j = 0, k - 1
    level: list[Token] = []  # tokens at the AND's level, back to where no owner can be
    while j >= 0:
        t = tokens[j]
        if t.text == ")" or is_word(t, "END"):
            depth += 1
        elif t.text == "(" or is_word(t, "CASE"):
            if depth == 0:
                break
            depth -= 1
        elif depth == 0:
            if t.kind in ("word", "op") and t.upper in _BETWEEN_STOP:
                break
            level.append(t)
        j -= 1
    pending = 0  # BETWEENs still waiting for their AND
    for t in reversed(level):
        if is_word(t, "BETWEEN"):
            pending += 1
        elif is_word(t, "AND") and pending:
            pending -= 1
    return pending > 0


def dequote_string(text: str) -> str:
    """Return the value of an SQL string literal token."""
    return text[1:-1].replace("''", "'")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _literal_prefix(pattern: str) -> str:
    for n, ch in enumerate(pattern):
        if ch in ("%", "_"):
            return pattern[:n]
    return pattern  # no wildcard at all: the whole pattern is the prefix


def _increment(prefix: str) -> str | None:
    """Return the smallest string above every string that starts with ``prefix``."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if code == 0xD800:  # surrogates are not characters: skip them
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def _like_ranges(ctx: _Ctx, table: TableInfo, name: str, prefix: str) -> list[tuple[str, str]]:
    column = table.column(name)
    if column is None or column.affinity != "TEXT":
        return []
    if ctx.like.blobs_match and not table.strict:
        return []  # a blob could match the LIKE but sort after every text
    collation = column.collation
    indexed = any(
        i.columns
        and fold(i.columns[0].name or "") == fold(name)
        and not i.partial
        and i.columns[0].collation == collation
        for i in table.indexes
    )
    if not indexed:
        others = [
            i.name
            for i in table.indexes
            if i.columns and fold(i.columns[0].name or "") == fold(name)
        ]
        if others:
            ctx.warnings.append(
                f"like_prefix_range: index {others[0]!r} on {name!r} does not use the column's "
                f"collation {collation}, so it cannot serve a range on it"
            )
        return []
    if ctx.like.encoding.upper() != "UTF-8":
        ctx.warnings.append(
            f"like_prefix_range: the database encoding is {ctx.like.encoding}, where text "
            "sorts by its UTF-16 bytes, not by code point: no range is built"
        )
        return []
    if collation == "NOCASE":  # NOCASE and LIKE both fold ASCII letters only
        folded = prefix.translate(_ASCII_LOWER)
        hi = _increment(folded)
        return [(folded, hi)] if hi is not None else []
    if collation != "BINARY":
        return []
    if ctx.like.case_sensitive:
        hi = _increment(prefix)
        return [(prefix, hi)] if hi is not None else []
    return _case_variants(prefix)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _case_variants(prefix: str) -> list[tuple[str, str]]:
    """Return one BINARY range per ASCII case variant of the prefix's first letters."""
    letters, cut = 0, len(prefix)
    for n, ch in enumerate(prefix):
        if ch.isascii() and ch.isalpha():
            if 2 ** (letters + 1) > MAX_CASE_VARIANTS:
                cut = n
                break
            letters += 1
    head = prefix[:cut]
    if not head:
        return []
    options = [(c.lower(), c.upper()) if c.isascii() and c.isalpha() else (c,) for c in head]
    out = []
    for chars in itertools.product(*options):
        lo = "".join(chars)
        hi = _increment(lo)
        if hi is None:
            return []
        out.append((lo, hi))
    return out


def drop_subquery_order_by(sql: str, ctx: _Ctx) -> str | None:
    """Rule ``drop_subquery_order_by`` (see the module docstring)."""
    tokens = significant(tokenize(sql))
    edits: list[tuple[int, int, str]] = []
    for i, t in enumerate(tokens[:-1]):
        if not (is_word(t, "IN", "EXISTS") and tokens[i + 1].text == "("):
            continue
        if i + 2 >= len(tokens) or not is_word(tokens[i + 2], "SELECT"):
            continue
        close = matching_paren(tokens, i + 1)
        depth, order_at, has_limit = 0, None, False
        for k in range(i + 2, close):
            text = tokens[k].text
            depth += text == "("
            depth -= text == ")"
            if depth == 0 and is_word(tokens[k], "ORDER"):
                order_at = k
            if depth == 0 and is_word(tokens[k], "LIMIT", "UNION", "EXCEPT", "INTERSECT"):
                has_limit = True
        params = any(tokens[k].kind == "param" for k in range(order_at or close, close))
        if order_at is not None and not has_limit and not params and close < len(tokens):
            edits.append((tokens[order_at - 1].end, tokens[close - 1].end, ""))
    return _splice(sql, edits) if edits else None


def not_in_nullable(sql: str, ctx: _Ctx) -> None:
    """Warning ``not_in_nullable``: never rewrites (see the module docstring)."""
    tokens = significant(tokenize(sql))
    in_scope = scopes(tokens)
    for i in range(len(tokens) - 3):
        if not (is_word(tokens[i], "NOT") and is_word(tokens[i + 1], "IN")):
            continue
        if tokens[i + 2].text != "(" or not is_word(tokens[i + 3], "SELECT"):
            continue
        close = matching_paren(tokens, i + 2)
        if _never_null(tokens, in_scope, ctx.schema, i + 4, close):
            continue
        col = _column(tokens, i + 4)
        bare = col is not None and (col[2] == close or is_word(tokens[col[2]], "FROM", "AS"))
        what = repr(col[1]) if col and bare else "the subquery's value"
        ctx.warnings.append(
            f"not_in_nullable: {what} may be NULL; if the subquery returns one NULL, "
            "NOT IN is never true and the query returns no rows. Filter NULLs in the "
            "subquery (WHERE ... IS NOT NULL) or use NOT EXISTS if that is what you mean"
        )


def _never_null(
    tokens: Sequence[Token], in_scope: Sequence[Scope | None], schema: Schema, k: int, close: int
) -> bool:
    """True when the subquery ``SELECT`` item at ``k`` (up to ``close``) is never NULL.

    Only one shape is trusted: ``[ALL|DISTINCT] column [AS alias]`` followed by FROM (or
    the end), the column declared NOT NULL (or the rowid) in a table of the subquery's
    own FROM clause that is not the nullable side of an outer join, and no compound.
    """
    if k < close and is_word(tokens[k], "ALL", "DISTINCT"):
        k += 1
    col = _column(tokens, k)
    if col is None or col[2] > close:
        return False
    after = col[2]
    if after + 1 < close and is_word(tokens[after], "AS") and tokens[after + 1].kind == "word":
        after += 2
    if after != close and not is_word(tokens[after], "FROM"):
        return False  # a longer expression (c + 1, c || x, a function...) may be NULL
    scope = in_scope[k]
    table = owner(scope, schema, col[0], col[1])
    info = table.column(col[1]) if table is not None else None
    if scope is None or table is None or info is None:
        return False
    if not (info.not_null or _is_rowid(table, info.name)):
        return False
    level = []
    j = k
    while j < close:
        level.append(j)
        j = matching_paren(tokens, j) + 1 if tokens[j].text == "(" else j + 1
    if any(is_word(tokens[j], "UNION", "EXCEPT", "INTERSECT") for j in level):
        return False  # another arm's column may be NULL
    nullable = _outer_joined(tokens, level)
    if nullable is None:
        return False
    if col[0] is not None:
        key = fold(col[0])
        return key in scope.sources and key not in nullable
    return not any(scope.sources.get(key) == fold(table.name) for key in nullable)


def _outer_joined(tokens: Sequence[Token], level: list[int]) -> set[str] | None:
    """Names of the FROM items on the nullable side of a LEFT JOIN; None if unsure.

    RIGHT and FULL joins make the earlier items nullable too: unsure. So is a LEFT JOIN
    of a parenthesized item.
    """
    out: set[str] = set()
    start = next((n for n, j in enumerate(level) if is_word(tokens[j], "FROM")), len(level))
    for n in range(start, len(level)):
        tok = tokens[level[n]]
        if is_word(tok, "WHERE", "GROUP", "HAVING", "WINDOW", "ORDER", "LIMIT"):
            break
        if is_word(tok, "RIGHT", "FULL"):
            return None
        if not is_word(tok, "LEFT"):
            continue
        m = n + 1
        while m < len(level) and not is_word(tokens[level[m]], "JOIN"):
            m += 1
        if m + 1 >= len(level) or tokens[level[m + 1]].text == "(":
            return None
        item = _column(tokens, level[m + 1])
        if item is None:
            return None
        name, after = item[1], item[2]
        if after < len(tokens) and is_word(tokens[after], "AS"):
            after += 1
        nxt = tokens[after] if after < len(tokens) else None
        if nxt is not None and (
            nxt.kind == "quoted" or (nxt.kind == "word" and nxt.upper not in AFTER_TABLE)
        ):
            name = dequote(nxt)
        out.add(fold(name))
    return out


def _is_rowid(table: TableInfo | None, name: str) -> bool:
    if table is None or not table.has_rowid:
        return False
    pks = [c for c in table.columns if c.primary_key]
    return (
        len(pks) == 1
        and fold(pks[0].name) == fold(name)
        and pks[0].declared_type.upper() == "INTEGER"
    )


RULES: dict[str, Rule] = {
    "or_to_in": or_to_in,
    "like_prefix_range": like_prefix_range,
    "drop_subquery_order_by": drop_subquery_order_by,
}
"""The rewrite rules, by name, in the order they run."""


def apply_rules(
    sql: str, schema: Schema, like: LikeSemantics, rules: Sequence[str] | None = None
) -> tuple[str, list[str], list[str]]:
    """Run the rules on ``sql``: (rewritten sql, rules applied, warnings)."""
    warnings: list[str] = []
    applied: list[str] = []
    for name, rule in RULES.items():
        if rules is not None and name not in rules:
            continue
        out = rule(sql, _Ctx(schema, like, warnings))
        if out is not None and out != sql:
            sql = out
            applied.append(name)
    not_in_nullable(sql, _Ctx(schema, like, warnings))
    return sql, applied, list(dict.fromkeys(warnings))

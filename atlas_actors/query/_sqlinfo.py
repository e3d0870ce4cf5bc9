"""What the optimizer needs to know about a statement's shape, read from its tokens.

Table aliases (``EXPLAIN QUERY PLAN`` names loops by alias), the top-level LIMIT, whether
the statement is an aggregate without GROUP BY (one row out), and the number of
parameters (``EXPLAIN`` needs every parameter bound; unbound ones are NULL).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from atlas_actors.query._names import fold
from atlas_actors.query._scopes import scopes, source_map
from atlas_actors.query._tokens import (
    Token,
    dequote,
    is_word,
    matching_paren,
    outside_parens,
    parameter_numbers,
    significant,
    tokenize,
)
from atlas_actors.query.rewrite import _after_ok, _before_ok, _eq_chain

__all__ = ["SqlInfo", "null_bindings", "sql_info"]

AGGREGATE_FUNCTIONS = frozenset(
    {"COUNT", "SUM", "AVG", "MIN", "MAX", "TOTAL", "GROUP_CONCAT", "STRING_AGG"}
)
UNKNOWN = -(2**63)
"""A LIMIT bound to a parameter whose value is not known."""


@dataclass(frozen=True)
class SqlInfo:
    """The shape of one statement."""

    aliases: Mapping[str, str | None] = field(default_factory=dict)
    """Lower-case name a loop can carry in EXPLAIN → lower-case table (None: derived)."""
    limit: int | None = None
    """Top-level LIMIT plus OFFSET (rows the statement must produce), UNKNOWN, or None."""
    single_row: bool = False
    """An aggregate without GROUP BY at top level: exactly one row comes out."""
    parameters: int = 0
    """How many parameters SQLite will number (the largest index)."""
    count_only: bool = False
    """``SELECT count(*) FROM t`` alone, which SQLite answers from the b-tree page counts
    (the OP_Count opcode) instead of visiting rows."""
    in_lists: Mapping[str, int | None] = field(default_factory=dict)
    """Lower-case column → values of its ``c IN (...)`` list (None: a subquery or a
    table), or of a whole-term ``c = v OR c = v ...`` chain, which SQLite runs as an IN
    list; the largest when the name has several lists."""
    group_by: tuple[str, ...] | None = None
    """The top-level GROUP BY terms: lower-case column names without qualifier, ``""``
    for anything else; None without a GROUP BY (or in a compound)."""


def sql_info(sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> SqlInfo:
    """Read the shape of ``sql`` (best effort: unknown shapes give neutral answers)."""
    tokens = significant(tokenize(sql))
    return SqlInfo(
        aliases=_aliases(tokens),
        limit=_limit(tokens, params),
        single_row=_single_row(tokens),
        parameters=_parameter_count(tokens),
        count_only=_count_only(tokens),
        in_lists=_in_lists(tokens),
        group_by=_group_by(tokens),
    )


def null_bindings(sql: str) -> list[None]:
    """Return a NULL for every parameter of ``sql`` (enough to EXPLAIN it)."""
    return [None] * _parameter_count(significant(tokenize(sql)))


def _parameter_count(tokens: Sequence[Token]) -> int:
    return max((number for number, _ in parameter_numbers(tokens).values()), default=0)


def _aliases(tokens: Sequence[Token]) -> dict[str, str | None]:
    """Every name a loop can carry → its table (None: derived); the first scope wins."""
    return dict(source_map(scopes(tokens)))


def _value(
    tokens: Sequence[Token], i: int, params: Sequence[Any] | Mapping[str, Any] | None
) -> tuple[int | None, int]:
    """Read ``[-]number`` or a parameter at ``i``: (value or None if unknown, next index)."""
    sign = 1
    if i < len(tokens) and tokens[i].text == "-":
        sign, i = -1, i + 1
    if i >= len(tokens):
        return None, i
    token = tokens[i]
    if token.kind == "number":
        try:
            return sign * int(token.text.replace("_", ""), 0), i + 1
        except ValueError:
            return None, i + 1
    if token.kind != "param" or params is None:
        return None, i + 1
    try:
        if isinstance(params, Mapping):
            value = params[token.text[1:]]
        elif len(token.text) > 1 and token.text[0] == "?":
            value = params[int(token.text[1:]) - 1]
        else:  # a "?" takes the next number: count the anonymous parameters before it
            value = params[sum(1 for t in tokens[:i] if t.kind == "param" and t.text == "?")]
    except (KeyError, IndexError, ValueError):
        return None, i + 1
    known = isinstance(value, int) and not isinstance(value, bool)
    return (sign * value if known else None), i + 1


def _limit(tokens: Sequence[Token], params: Sequence[Any] | Mapping[str, Any] | None) -> int | None:
    limits = [i for i in outside_parens(tokens) if is_word(tokens[i], "LIMIT")]
    if not limits:
        return None
    first, i = _value(tokens, limits[-1] + 1, params)
    second: int | None = 0
    if i < len(tokens) and (tokens[i].text == "," or is_word(tokens[i], "OFFSET")):
        second, _ = _value(tokens, i + 1, params)
        if tokens[i].text == ",":  # LIMIT offset, count
            first, second = second, first
    if first is not None and first < 0:
        return None  # a negative limit means no limit
    if first is None or second is None:
        return UNKNOWN
    return first + max(second, 0)


def _single_row(tokens: Sequence[Token]) -> bool:
    top = outside_parens(tokens)
    words = {tokens[i].upper for i in top if tokens[i].kind == "word"}
    if words & {"GROUP", "UNION", "EXCEPT", "INTERSECT", "WINDOW", "OVER"}:
        return False
    selects = [i for i in top if is_word(tokens[i], "SELECT")]
    froms = [i for i in top if is_word(tokens[i], "FROM")]
    if not selects:
        return False
    end = froms[0] if froms else len(tokens)
    outside = set(top)  # an aggregate inside a scalar subquery does not count
    return any(
        tokens[k].kind == "word"
        and tokens[k].upper in AGGREGATE_FUNCTIONS
        and k + 1 < len(tokens)
        and tokens[k + 1].text == "("
        for k in range(selects[0] + 1, end)
        if k in outside
    )


def _count_only(tokens: Sequence[Token]) -> bool:
    words = [t.upper if t.kind == "word" else t.text for t in tokens]
    while words and words[-1] == ";":
        words.pop()
    head = ["SELECT", "COUNT", "(", "*", ")"]
    if words[:5] != head or len(words) < 7:
        return False
    rest = words[5:]
    if rest[0] == "AS":
        rest = rest[2:]
    elif rest[0] != "FROM":
        rest = rest[1:]
    return len(rest) == 2 and rest[0] == "FROM" and tokens[-1].kind in ("word", "quoted")


def _in_lists(tokens: Sequence[Token]) -> dict[str, int | None]:
    """Read every ``c IN (v, ...)`` and every ``c = v OR c = v ...`` (see :class:`SqlInfo`)."""
    out: dict[str, int | None] = {}
    for name, size in [*_in_terms(tokens), *_or_chains(tokens)]:
        old = out.get(name, 0)
        out[name] = None if size is None or old is None else max(old, size)
    return out


def _in_terms(tokens: Sequence[Token]) -> Iterator[tuple[str, int | None]]:
    """Yield (column, values) of ``c IN (...)`` (``NOT IN`` cannot drive a search)."""
    for i in range(1, len(tokens) - 1):
        column = tokens[i - 1]
        if not is_word(tokens[i], "IN") or column.kind not in ("word", "quoted"):
            continue
        if (i >= 2 and is_word(tokens[i - 2], "NOT")) or is_word(column, "NOT"):
            continue
        size: int | None = None  # IN table, IN (SELECT ...): not known here
        if tokens[i + 1].text == "(" and not (
            i + 2 < len(tokens) and is_word(tokens[i + 2], "SELECT", "WITH", "VALUES")
        ):
            close = matching_paren(tokens, i + 1)
            depth, commas = 0, 0
            for t in tokens[i + 2 : close]:
                depth += t.text == "("
                depth -= t.text == ")"
                commas += depth == 0 and t.text == ","
            size = 0 if close == i + 2 else commas + 1
        yield fold(dequote(column)), size


# An OR chain SQLite turns into an IN list is a whole WHERE (ON, HAVING) term: nothing
# glued to it by AND or OR, which would make it part of a larger expression.
_CHAIN_BEFORE = frozenset({"WHERE", "ON", "HAVING", "("})
_CHAIN_AFTER = frozenset(
    {")", "GROUP", "ORDER", "LIMIT", "WINDOW", "UNION", "EXCEPT", "INTERSECT", ";", "RETURNING"}
)


def _or_chains(tokens: Sequence[Token]) -> Iterator[tuple[str, int]]:
    """Yield (column, values) of each whole-term ``c = v OR c = v ...`` over one column.

    SQLite runs such a chain as ``c IN (v, ...)`` (``exprAnalyzeOrTerm`` in
    ``whereexpr.c``); the chains are those the ``or_to_in`` rewrite rule recognises.
    """
    i = 0
    while i < len(tokens):
        chain = _eq_chain(tokens, i) if _before_ok(tokens, i, _CHAIN_BEFORE) else None
        if chain is None or len(chain[1]) < 2 or not _after_ok(tokens, chain[2], _CHAIN_AFTER):
            i += 1
            continue
        column = significant(tokenize(chain[0]))[-1]  # "t.c" → c
        yield fold(dequote(column)), len(chain[1])
        i = chain[2]


def _group_by(tokens: Sequence[Token]) -> tuple[str, ...] | None:
    top = outside_parens(tokens)
    if any(is_word(tokens[i], "UNION", "EXCEPT", "INTERSECT") for i in top):
        return None
    at = next(
        (i for i in top if is_word(tokens[i], "GROUP") and is_word(_at(tokens, i + 1), "BY")),
        None,
    )
    if at is None:
        return None
    terms: list[list[Token]] = [[]]
    depth = 0
    for t in tokens[at + 2 :]:
        if depth == 0 and (is_word(t, "HAVING", "WINDOW", "ORDER", "LIMIT") or t.text == ";"):
            break
        depth += t.text == "("
        depth -= t.text == ")"
        if depth == 0 and t.text == ",":
            terms.append([])
        else:
            terms[-1].append(t)
    return tuple(_term_column(term) for term in terms)


def _at(tokens: Sequence[Token], i: int) -> Token | None:
    return tokens[i] if i < len(tokens) else None


def _term_column(term: list[Token]) -> str:
    """``c`` or ``q.c`` → ``c`` (lower case); any other expression → ``""``."""
    if len(term) == 3 and term[1].text == ".":
        term = term[2:]
    if len(term) == 1 and term[0].kind in ("word", "quoted"):
        return fold(dequote(term[0]))
    return ""

"""A small SQLite tokenizer: enough to find clauses, literals and parameters.

It follows the token rules of SQLite's own tokenizer (``tokenize.c``; the user-facing
summary is https://www.sqlite.org/lang_expr.html and
https://www.sqlite.org/lang_keywords.html): string literals in single quotes with ``''``
escapes, identifiers quoted with ``"..."``, ```...``` or ``[...]``, blob literals
``X'..'``, numbers (decimal, hex, exponent, ``_`` separators since 3.46), the parameter
forms ``?``, ``?NNN``, ``:name``, ``@name``, ``$name`` and ``#name`` (a name may hold
``::``, and end in a TCL-style ``(...)`` suffix running to the next ``)`` or space, as
in ``$a('x)``: one token for SQLite, so one here, or a ``;`` inside it would count as a
second statement), and ``--``/``/* */`` comments.

It is not a parser: the rewrite rules, the workload fingerprints and the plan analysis
use it to look at token shapes, always conservatively (a shape they do not recognise is
left alone).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Token",
    "TokenKind",
    "dequote",
    "is_word",
    "matching_paren",
    "nesting_depth",
    "outside_parens",
    "parameter_numbers",
    "significant",
    "tokenize",
]

TokenKind = Literal["space", "comment", "string", "blob", "number", "param", "word", "quoted", "op"]

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>--[^\n]*\n?|/\*.*?(?:\*/|\Z))
  | (?P<blob>[xX]'[0-9A-Fa-f]*')
  | (?P<string>'(?:[^']|'')*'?)
  | (?P<quoted>"(?:[^"]|"")*"?|`(?:[^`]|``)*`?|\[[^\]]*\]?)
  | (?P<number>0[xX][0-9A-Fa-f_]+
      |(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][+-]?[0-9_]+)?)
  | (?P<param>\?[0-9]*|[:@$\#](?:[A-Za-z0-9_$\x80-\U0010ffff]|::)+(?:\([^\s)]*\)?)?)
  | (?P<word>[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*)
  | (?P<op>->>|->|\|\||<=|>=|==|!=|<>|<<|>>|.)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class Token:
    """One token of an SQL text."""

    kind: TokenKind
    """What the token is (``word`` covers keywords and bare identifiers alike)."""
    text: str
    """The token exactly as written."""
    start: int
    """Offset of the first character in the SQL text."""

    @property
    def end(self) -> int:
        """Offset just past the last character."""
        return self.start + len(self.text)

    @property
    def upper(self) -> str:
        """The text in upper case (keyword comparisons are case-insensitive in SQLite)."""
        return self.text.upper()


def tokenize(sql: str) -> list[Token]:
    """Split ``sql`` into tokens, whitespace and comments included."""
    return list(_iter_tokens(sql))


def _iter_tokens(sql: str) -> Iterator[Token]:
    pos = 0
    while pos < len(sql):
        m = _TOKEN.match(sql, pos)
        if m is None:  # pragma: no cover - the last alternative matches any character
            break
        kind = m.lastgroup
        assert kind is not None
        yield Token(kind, m.group(), pos)  # type: ignore[arg-type]
        pos = m.end()


def significant(tokens: Sequence[Token]) -> list[Token]:
    """Return ``tokens`` without whitespace and comments."""
    return [t for t in tokens if t.kind not in ("space", "comment")]


def is_word(token: Token | None, *words: str) -> bool:
    """Return True if ``token`` is a bare word equal (any case) to one of ``words``."""
    return token is not None and token.kind == "word" and token.upper in words


def dequote(token: Token) -> str:
    """Return the name an identifier token stands for (quotes and escapes removed)."""
    text = token.text
    if token.kind != "quoted" or len(text) < 2:
        return text
    if text[0] == "[":
        return text[1:-1]
    quote = text[0]
    return text[1:-1].replace(quote * 2, quote)


def matching_paren(tokens: Sequence[Token], index: int) -> int:
    """Return the index of the ``)`` that closes the ``(`` at ``index`` (or len on error)."""
    depth = 0
    for i in range(index, len(tokens)):
        text = tokens[i].text
        if tokens[i].kind != "op":
            continue
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
            if depth == 0:
                return i
    return len(tokens)


def nesting_depth(tokens: Sequence[Token]) -> int:
    """Return how deep the parentheses of ``tokens`` nest (0: none).

    The analyses built on these tokens (scopes, rewrites) recurse once per level: a
    caller checks this first, so that a deeply nested text is refused with a clear
    error instead of exhausting Python's recursion limit.
    """
    depth = deepest = 0
    for token in tokens:
        if token.kind == "op":
            if token.text == "(":
                depth += 1
                deepest = max(deepest, depth)
            elif token.text == ")":
                depth -= 1
    return deepest


def outside_parens(tokens: Sequence[Token]) -> list[int]:
    """Return the indexes of the tokens outside any parentheses."""
    depth, out = 0, []
    for i, token in enumerate(tokens):
        if token.kind == "op" and token.text == "(":
            depth += 1
        elif token.kind == "op" and token.text == ")":
            depth -= 1
        elif depth == 0:
            out.append(i)
    return out


def parameter_numbers(tokens: Sequence[Token]) -> dict[int, tuple[int, str | None]]:
    """Map each parameter token's offset in the text to (its number, its name or None).

    SQLite's numbering (https://www.sqlite.org/lang_expr.html#parameters): ``?`` takes
    the next number, ``?NNN`` its own, a name keeps the number of its first occurrence.
    """
    highest = 0
    named: dict[str, int] = {}
    out: dict[int, tuple[int, str | None]] = {}
    for token in tokens:
        if token.kind != "param":
            continue
        text = token.text
        if text == "?":
            highest += 1
            out[token.start] = (highest, None)
        elif text[0] == "?":
            number = int(text[1:])
            highest = max(highest, number)
            out[token.start] = (number, None)
        else:
            if text not in named:
                highest += 1
                named[text] = highest
            out[token.start] = (named[text], text[1:])
    return out

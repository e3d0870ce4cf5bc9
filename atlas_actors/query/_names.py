"""The identifier grammar of the query builder, and quoting.

A name the builder accepts is ``[A-Za-z_][A-Za-z0-9_]*``, optionally qualified once as
``table.column``. Anything else is rejected with :class:`QueryValidationError`; it is never
escaped into some other identifier. Because accepted names cannot contain a double quote,
quoting is only wrapping in ``"..."``, which also lets keywords (``order``, ``group``) be
used as names (https://www.sqlite.org/lang_keywords.html).

Names are compared the way SQLite compares identifiers: :func:`fold` lowers ASCII
letters only, so ``"Ét"`` and ``"ét"`` stay two tables, as they are to SQLite.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from atlas_actors.cache.dependencies import fold
from atlas_actors.errors import QueryValidationError

__all__ = [
    "IDENTIFIER",
    "check_name",
    "check_reference",
    "closest",
    "fold",
    "quote",
    "quote_catalog_name",
    "quote_reference",
]

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""One identifier of the builder's grammar (use ``fullmatch``)."""

_MAX_LENGTH = 128


def check_name(name: object, what: str) -> str:
    """Return ``name`` if it is a plain identifier, else raise ``QueryValidationError``."""
    if not isinstance(name, str) or not IDENTIFIER.fullmatch(name) or len(name) > _MAX_LENGTH:
        raise QueryValidationError(
            f"invalid {what} name {name!r}: names must match [A-Za-z_][A-Za-z0-9_]* "
            f"(at most {_MAX_LENGTH} characters); values belong in parameters, not names"
        )
    return name


def check_reference(ref: object, what: str = "column") -> tuple[str | None, str]:
    """Split ``column`` or ``table.column`` into ``(table, column)``, checking both parts."""
    if not isinstance(ref, str):
        raise QueryValidationError(f"invalid {what} reference {ref!r}: expected a string")
    table, dot, column = ref.rpartition(".")
    if not dot:
        return None, check_name(ref, what)
    return check_name(table, "table"), check_name(column, what)


def quote(name: str) -> str:
    """Quote an identifier that passed :func:`check_name`."""
    return f'"{name}"'


def quote_reference(table: str | None, column: str) -> str:
    """Quote ``column`` or ``table.column``; ``*`` stays a star."""
    col = "*" if column == "*" else quote(column)
    return col if table is None else f"{quote(table)}.{col}"


def closest(name: str, known: Iterable[str]) -> str | None:
    """Return the known name closest to ``name`` (case-insensitive), for "did you mean"."""
    by_lower = {k.lower(): k for k in known}
    match = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[match[0]] if match else None


def quote_catalog_name(name: str) -> str:
    """Quote a name read from the database's own catalog (``sqlite_schema``, pragmas).

    Such names were accepted by SQLite already and may hold any character, so they are
    escaped (``"`` doubled, https://www.sqlite.org/lang_keywords.html) rather than checked
    against the builder's grammar. Never use this for names that come from callers.
    """
    return '"' + name.replace('"', '""') + '"'

"""Result rows: plain tuples that also answer to their column names.

``row[0]``, ``row["title"]`` and ``row.title`` all work; ``row.keys()`` lists the
columns and ``row.as_dict()`` copies the row into a dict. A row class is made once per
distinct list of column names and reused, so building a row costs one tuple.

Attribute access finds the tuple's and the row's own methods first: a column named
``count``, ``index``, ``keys`` or ``as_dict`` (``SELECT count(*) AS count``) is read with
``row["count"]``, which always means the column (``row.count`` is ``tuple.count``).
Rows pickle and copy: a row is rebuilt from its column names and values.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, SupportsIndex, overload

__all__ = ["Row", "make_rows", "row_class", "row_class_for"]


class Row(tuple[Any, ...]):
    """A result row: a tuple with access by column name.

    ``row["name"]`` always reads the column; ``row.name`` does too unless ``name`` is
    a method of the row (``count``, ``index``, ``keys``, ``as_dict``): use
    ``row["count"]`` for those.
    """

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()
    _index: ClassVar[dict[str, int]] = {}

    @overload
    def __getitem__(self, key: SupportsIndex | str) -> Any: ...
    @overload
    def __getitem__(self, key: slice) -> tuple[Any, ...]: ...
    def __getitem__(self, key: SupportsIndex | str | slice) -> Any:
        """Return the value at a position, a slice, or the value of the named column."""
        if type(key) is str:
            try:
                key = self._index[key]
            except KeyError:
                raise KeyError(
                    f"no column {key!r} in this row; columns: {list(self._fields)}"
                ) from None
        return tuple.__getitem__(self, key)  # type: ignore[index]

    def __getattr__(self, name: str) -> Any:
        """Return the value of the named column (``row.title``)."""
        try:
            return tuple.__getitem__(self, self._index[name])
        except KeyError:
            raise AttributeError(
                f"no column {name!r} in this row; columns: {list(self._fields)}"
            ) from None

    def keys(self) -> tuple[str, ...]:
        """The column names, in order."""
        return self._fields

    def as_dict(self) -> dict[str, Any]:
        """A new dict mapping column names to values (later duplicates win)."""
        return dict(zip(self._fields, self, strict=True))

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle (and copy) as the column names and values: the class is made per names."""
        return (_rebuild, (self._fields, tuple(self)))

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{name}={value!r}" for name, value in zip(self._fields, self, strict=False)
        )
        return f"Row({inner})"


_classes: dict[tuple[str, ...], type[Row]] = {}
_classes_lock = threading.Lock()


def row_class(names: Sequence[str]) -> type[Row]:
    """The :class:`Row` subclass for these column names (made once, then cached)."""
    key = tuple(names)
    cls = _classes.get(key)
    if cls is None:
        with _classes_lock:
            cls = _classes.get(key)
            if cls is None:
                index: dict[str, int] = {}
                for position, name in enumerate(key):
                    index.setdefault(name, position)  # first of duplicate names wins
                cls = type("Row", (Row,), {"__slots__": (), "_fields": key, "_index": index})
                if len(_classes) < 4096:  # bound memory when names are generated
                    _classes[key] = cls
    return cls


def _rebuild(names: tuple[str, ...], values: tuple[Any, ...]) -> Row:
    """Unpickle a row: its class for ``names`` (the cached one), holding ``values``."""
    return row_class(names)(values)


_by_description: dict[Any, type[Row]] = {}


def row_class_for(description: Any) -> type[Row]:
    """The :class:`Row` subclass for an apsw cursor description (cached by it).

    The description (a tuple of ``(name, declared type)`` pairs) is a cheaper key than
    the list of names it would take to build; after a schema change a statement's
    description changes, and so does the class.
    """
    cls = _by_description.get(description)
    if cls is None:
        cls = row_class([column[0] for column in description])
        if len(_by_description) < 4096:
            _by_description[description] = cls
    return cls


def make_rows(names: Sequence[str], values: Iterable[tuple[Any, ...]]) -> list[Row]:
    """Wrap raw tuples from a cursor into rows named by ``names``."""
    return list(map(row_class(names), values))

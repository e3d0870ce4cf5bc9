"""The pieces a :class:`~atlas_actors.query.Query` is built from.

Conditions, select items and joins are small frozen dataclasses, checked when they are
made: an unknown operator, a malformed name or a value that cannot mean what the caller
wants (``eq None``, ``in`` with a string) raises :class:`QueryValidationError` at once.
Plain tuples are accepted wherever a :class:`Condition` is: ``("status", "eq", "open")``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, get_args

from atlas_actors.errors import QueryValidationError
from atlas_actors.query._names import check_name, check_reference, closest

__all__ = [
    "AGGREGATES",
    "OPERATORS",
    "Aggregate",
    "AllOf",
    "AnyOf",
    "Column",
    "Condition",
    "ConditionLike",
    "Direction",
    "JoinCondition",
    "JoinType",
    "Operator",
    "SelectItem",
    "Subquery",
    "any_of",
    "to_condition",
]

Operator = Literal[
    "eq", "neq", "gt", "gte", "lt", "lte", "in", "not_in", "like", "not_like",
    "is_null", "is_not_null",
]  # fmt: skip
"""A condition's comparison: ``eq`` is ``=``, ``neq`` ``!=``, ``gte`` ``>=``, ``in`` takes a
list, ``is_null``/``is_not_null`` take no value, ``like`` a pattern."""
OPERATORS: tuple[str, ...] = get_args(Operator)
"""Every operator a condition may use."""

AggregateName = Literal["count", "sum", "avg", "min", "max", "total", "group_concat"]
"""An aggregate function's name."""
AGGREGATES: tuple[str, ...] = get_args(AggregateName)
"""The aggregate functions the builder knows (https://www.sqlite.org/lang_aggfunc.html)."""

JoinType = Literal["inner", "left", "right"]
"""A join's kind (``INNER JOIN``, ``LEFT JOIN``, ``RIGHT JOIN``)."""
Direction = Literal["asc", "desc"]
"""An ORDER BY direction."""

_SCALAR_OPS = frozenset({"eq", "neq", "gt", "gte", "lt", "lte", "like", "not_like"})
_NULL_OPS = frozenset({"is_null", "is_not_null"})
_LIST_OPS = frozenset({"in", "not_in"})


class Subquery:
    """The base of :class:`~atlas_actors.query.Query`: what a condition needs of a subquery."""

    __slots__ = ()

    def is_single_column(self) -> bool:
        """Return True when the query selects exactly one column (as IN needs)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Column:
    """A selected column, optionally renamed: ``Column("title", alias="t")``."""

    name: str
    """``column`` or ``table.column`` (or ``*`` / ``table.*``)."""
    alias: str | None = None
    """The result column's name (``AS alias``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise QueryValidationError(f"invalid column {self.name!r}: expected a string")
        star = self.name == "*" or self.name.endswith(".*")
        if not star:
            check_reference(self.name)
        elif self.name != "*":
            check_name(self.name[:-2], "table")
        if self.alias is not None:
            if star:
                raise QueryValidationError(
                    f"{self.name!r} selects several columns and cannot be renamed: drop "
                    "alias=, or select the columns one by one with Column(name, alias=...)"
                )
            check_name(self.alias, "alias")


@dataclass(frozen=True)
class Aggregate:
    """An aggregate over a column: ``Aggregate("count")``, ``Aggregate("sum", "hours")``."""

    func: AggregateName
    """One of :data:`AGGREGATES`."""
    column: str = "*"
    """The aggregated column; ``*`` only for ``count``."""
    alias: str | None = None
    """The result column's name (``AS alias``)."""
    distinct: bool = False
    """Aggregate distinct values only (``count(DISTINCT x)``)."""

    def __post_init__(self) -> None:
        if self.func not in AGGREGATES:
            raise QueryValidationError(
                f"unknown aggregate {self.func!r}; known: {', '.join(AGGREGATES)}",
                suggestion=closest(str(self.func), AGGREGATES),
            )
        if self.column == "*":
            if self.func != "count" or self.distinct:
                raise QueryValidationError(
                    f"{self.func}(*) is not valid; name a column, e.g. "
                    f"Aggregate({self.func!r}, 'hours')"
                )
        else:
            check_reference(self.column)
        if self.alias is not None:
            check_name(self.alias, "alias")


SelectItem: TypeAlias = "str | Column | Aggregate"
"""What ``select()`` takes: a column name (``"tasks.title"``), a Column or an Aggregate."""


@dataclass(frozen=True)
class Condition:
    """``column op value``; values are always bound as parameters.

    ``in``/``not_in`` take a list (an empty list is a valid always-false / always-true
    condition) or a one-column :class:`Query`. ``like``/``not_like`` take an optional
    one-character ``escape``. ``is_null``/``is_not_null`` take no value. ``None`` is refused
    as the value of a comparison (``x = NULL`` is never true in SQL): use ``is_null``.
    """

    column: str | Aggregate
    """``column``, ``table.column``, a select alias (in HAVING), or an aggregate."""
    op: Operator
    """One of :data:`OPERATORS`."""
    value: Any = None
    """The value, list of values or subquery to compare with."""
    escape: str | None = field(default=None, kw_only=True)
    """The LIKE escape character (``LIKE ? ESCAPE ?``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.column, Aggregate):
            check_reference(self.column)
        if self.op not in OPERATORS:
            raise QueryValidationError(
                f"unknown operator {self.op!r}; known: {', '.join(OPERATORS)}",
                suggestion=closest(str(self.op), OPERATORS),
            )
        if self.op in _NULL_OPS:
            if self.value is not None:
                raise QueryValidationError(f"{self.op} takes no value, got {self.value!r}")
        elif self.op in _LIST_OPS:
            object.__setattr__(self, "value", _check_list(self.op, self.value))
        else:
            _check_scalar(self.op, self.value)
        if self.escape is not None:
            if self.op not in ("like", "not_like"):
                raise QueryValidationError(f"escape= only applies to like, not {self.op}")
            if not isinstance(self.escape, str) or len(self.escape) != 1:
                raise QueryValidationError(
                    f"the LIKE escape must be one character, got {self.escape!r}"
                )


def _is_nan(value: object) -> bool:
    """A float NaN: SQLite binds it as NULL (https://www.sqlite.org/c3ref/bind_blob.html)."""
    return isinstance(value, float) and math.isnan(value)


def _check_scalar(op: str, value: object) -> None:
    if value is None:
        raise QueryValidationError(
            f"{op} with None never matches in SQL (NULL compares as unknown); "
            "use is_null / is_not_null"
        )
    if _is_nan(value):
        raise QueryValidationError(
            f"{op} with NaN never matches in SQL: SQLite binds a float NaN as NULL, which "
            "compares as unknown; use is_null / is_not_null for NULLs"
        )
    if isinstance(value, Subquery | list | tuple | set | frozenset | dict):
        raise QueryValidationError(
            f"{op} takes one value, got {type(value).__name__}; use in / not_in for lists"
        )
    if op in ("like", "not_like") and not isinstance(value, str):
        raise QueryValidationError(f"{op} takes a string pattern, got {value!r}")


def _check_list(op: str, value: object) -> tuple[Any, ...] | Subquery:
    if isinstance(value, Subquery):
        if not value.is_single_column():
            raise QueryValidationError(
                f"the subquery of {op} must select exactly one column (not *)"
            )
        return value
    if isinstance(value, str | bytes | bytearray | dict) or not isinstance(value, Iterable):
        raise QueryValidationError(
            f"{op} takes a list of values or a Query, got {type(value).__name__}"
        )
    items = tuple(value)
    # x IN (1, NULL) filters as x IN (1) does (NULL is not true), but x NOT IN (1, NULL)
    # is never true (https://www.sqlite.org/lang_expr.html#the_in_and_not_in_operators).
    if op == "not_in" and any(v is None for v in items):
        raise QueryValidationError(
            "not_in with None in the list is never true (x NOT IN (1, NULL) is NULL for "
            "every x but 1); drop the None, and add any_of(..., (column, 'is_null')) if "
            "NULLs should match"
        )
    if op == "not_in" and any(_is_nan(v) for v in items):
        raise QueryValidationError(
            "not_in with NaN in the list is never true: SQLite binds a float NaN as NULL, "
            "and x NOT IN (1, NULL) is NULL for every x but 1; drop the NaN"
        )
    return items


@dataclass(frozen=True)
class AnyOf:
    """Conditions joined by OR (build with :func:`any_of`)."""

    conditions: tuple[ConditionLike, ...]
    """The alternatives; an empty tuple is always false."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions", tuple(to_condition(c) for c in self.conditions))


@dataclass(frozen=True)
class AllOf:
    """Conditions joined by AND, for nesting inside :class:`AnyOf`."""

    conditions: tuple[ConditionLike, ...]
    """The conditions that must all hold; an empty tuple is always true."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions", tuple(to_condition(c) for c in self.conditions))


ConditionLike: TypeAlias = "Condition | AnyOf | AllOf | tuple[Any, ...]"
"""What ``where()`` takes: a Condition, a group of them, or a ``(column, operator, value)``
tuple (``(column, "is_null")`` without a value)."""


def any_of(*conditions: ConditionLike) -> AnyOf:
    """OR the given conditions: ``any_of(("a", "eq", 1), ("b", "is_null"))``."""
    return AnyOf(tuple(conditions))


def to_condition(item: object) -> Condition | AnyOf | AllOf:
    """Turn a ``(column, op[, value])`` tuple into a :class:`Condition`; check the rest."""
    if isinstance(item, Condition | AnyOf | AllOf):
        return item
    if isinstance(item, tuple) and len(item) in (2, 3):
        return Condition(*item)
    raise QueryValidationError(
        f"a condition is a (column, op, value) tuple, a Condition, AnyOf or AllOf; got {item!r}"
    )


@dataclass(frozen=True)
class JoinCondition:
    """How a joined table attaches: the plan's ``JoinCondition`` in Python."""

    type: JoinType
    """``inner``, ``left`` or ``right`` (RIGHT JOIN needs SQLite 3.39 or later)."""
    left_column: str
    """A column of a table already in the query (unqualified: the FROM table)."""
    right_column: str
    """A column of the joined table (unqualified: the joined table)."""

    def __post_init__(self) -> None:
        if self.type not in get_args(JoinType):
            raise QueryValidationError(
                f"unknown join type {self.type!r}; known: inner, left, right",
                suggestion=closest(str(self.type), get_args(JoinType)),
            )
        check_reference(self.left_column)
        check_reference(self.right_column)


def check_direction(direction: object) -> Direction:
    """Return ``asc``/``desc`` (any case) or raise."""
    if isinstance(direction, str) and direction.lower() in ("asc", "desc"):
        return "asc" if direction.lower() == "asc" else "desc"
    raise QueryValidationError(f"order direction must be 'asc' or 'desc', got {direction!r}")


MAX_COUNT = 2**63 - 1
"""The largest value SQLite can bind (a signed 64-bit integer)."""


def check_count(value: object, what: str) -> int:
    """Return ``value`` if it is an int from 0 to 2**63-1 (bool excluded), else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise QueryValidationError(f"{what} must be a non-negative int, got {value!r}")
    if value > MAX_COUNT:
        raise QueryValidationError(
            f"{what} must be at most 2**63-1 (SQLite's largest integer), got {value}; "
            f"for no {what}, leave it out"
        )
    return value


def names_of(items: Sequence[SelectItem]) -> list[str]:
    """Return the aliases of the select items, for ORDER BY / HAVING references."""
    return [i.alias for i in items if isinstance(i, Column | Aggregate) and i.alias]

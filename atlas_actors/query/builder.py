"""The fluent query builder: ``Query().select([...]).from_("tasks").where([...])``.

A :class:`Query` is immutable: every verb returns a new query, so a base query can be
shared and extended. ``build()`` returns ``(sql, params)``: identifiers are quoted, values
(limit and offset included) are ``?`` parameters in text order, never inlined.
``build(schema=...)`` also checks every table, column and alias against a
:class:`~atlas_actors.query.Schema` snapshot; the result is cached per schema snapshot, so
building the same query again is a dictionary lookup.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from atlas_actors.errors import QueryValidationError
from atlas_actors.query._names import check_name, check_reference, quote, quote_reference
from atlas_actors.query.conditions import (
    Aggregate,
    AllOf,
    AnyOf,
    Column,
    Condition,
    ConditionLike,
    Direction,
    JoinCondition,
    JoinType,
    SelectItem,
    Subquery,
    check_count,
    check_direction,
    to_condition,
)
from atlas_actors.query.validate import validate

if TYPE_CHECKING:
    from atlas_actors.query.schema import Schema

__all__ = ["Join", "Query"]

_COMPARISON = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_JOIN_SQL = {"inner": "JOIN", "left": "LEFT JOIN", "right": "RIGHT JOIN"}
MAX_DEPTH = 200
"""How deep any_of / AllOf groups and IN subqueries may nest in one query, an IN subquery
counting as two levels (it takes twice the stack to check and render). Checking,
rendering and the optimizer recurse once per level (the optimizer analyzes at most 200
nested parentheses); SQLite itself refuses IN subqueries nested about 100 deep
(``Expression tree is too large``)."""

OrderKey = str | Aggregate


@dataclass(frozen=True)
class Join:
    """A joined table inside a built query."""

    table: str
    """The joined table."""
    alias: str | None
    """Its alias in this query, if any."""
    condition: JoinCondition
    """Join type and the two columns of the ON clause (both qualified)."""


class Query(Subquery):
    """An immutable SELECT statement under construction; see the module docstring."""

    __slots__ = (
        "_built",
        "_distinct",
        "_group_by",
        "_having",
        "_joins",
        "_limit",
        "_offset",
        "_order_by",
        "_select",
        "_table",
        "_table_alias",
        "_where",
    )

    def __init__(self) -> None:
        self._select: tuple[SelectItem, ...] = ()
        self._table: str | None = None
        self._table_alias: str | None = None
        self._joins: tuple[Join, ...] = ()
        self._where: tuple[Condition | AnyOf | AllOf, ...] = ()
        self._group_by: tuple[str, ...] = ()
        self._having: tuple[Condition | AnyOf | AllOf, ...] = ()
        self._order_by: tuple[tuple[OrderKey, Direction], ...] = ()
        self._limit: int | None = None
        self._offset: int | None = None
        self._distinct = False
        # (schema snapshot or None, built result): the last build, reused while the caller
        # passes the same snapshot object (the runtime keeps one per schema version).
        self._built: tuple[object, tuple[str, tuple[Any, ...]]] | None = None

    def _with(self, **changes: Any) -> Query:
        new = Query.__new__(Query)
        for name in Query.__slots__:
            setattr(new, name, changes.get(name, getattr(self, name)))
        new._built = None
        return new

    # -- verbs -------------------------------------------------------------------------

    def select(self, columns: Sequence[SelectItem]) -> Query:
        """Select these columns (names, :class:`Column` or :class:`Aggregate`); ``[]`` is ``*``."""
        if isinstance(columns, str):
            raise QueryValidationError("select() takes a list of columns, not a string")
        items: list[SelectItem] = []
        for item in _listed(columns, "select", "['id', 'title']"):
            if isinstance(item, str):
                Column(item)  # checks the name
            elif not isinstance(item, Column | Aggregate):
                raise QueryValidationError(f"cannot select {item!r}")
            items.append(item)
        return self._with(_select=tuple(items))

    def from_(self, table: str, alias: str | None = None) -> Query:
        """Read from ``table`` (optionally under ``alias``)."""
        check_name(table, "table")
        if alias is not None:
            check_name(alias, "alias")
        return self._with(_table=table, _table_alias=alias)

    def where(self, conditions: Sequence[ConditionLike]) -> Query:
        """AND these conditions to the WHERE clause."""
        return self._with(_where=self._where + _conditions(conditions))

    def join(
        self,
        table: str,
        condition: JoinCondition | None = None,
        *,
        on: tuple[str, str] | None = None,
        type: JoinType = "inner",
        alias: str | None = None,
    ) -> Query:
        """Join ``table`` on ``left_column = right_column`` (``on=(left, right)``)."""
        check_name(table, "table")
        if alias is not None:
            check_name(alias, "alias")
        if (condition is None) == (on is None):
            raise QueryValidationError("join() takes either a JoinCondition or on=(left, right)")
        if condition is None:
            assert on is not None
            if not isinstance(on, tuple) or len(on) != 2:
                raise QueryValidationError(f"on= must be a (left, right) pair, got {on!r}")
            condition = JoinCondition(type, on[0], on[1])
        if self._table is None:
            raise QueryValidationError("call from_() before join()")
        left_table, left_col = check_reference(condition.left_column)
        right_table, right_col = check_reference(condition.right_column)
        qualified = JoinCondition(
            condition.type,
            f"{left_table or self._table_alias or self._table}.{left_col}",
            f"{right_table or alias or table}.{right_col}",
        )
        return self._with(_joins=(*self._joins, Join(table, alias, qualified)))

    def group_by(self, columns: Sequence[str]) -> Query:
        """Group by these columns (or select aliases)."""
        if isinstance(columns, str):
            raise QueryValidationError("group_by() takes a list of columns, not a string")
        names = _listed(columns, "group_by", "['status']")
        for c in names:
            check_reference(c)
        return self._with(_group_by=self._group_by + tuple(names))

    def having(self, conditions: Sequence[ConditionLike]) -> Query:
        """AND these conditions (on aggregates or aliases) to the HAVING clause."""
        return self._with(_having=self._having + _conditions(conditions))

    def order_by(self, columns: Sequence[tuple[OrderKey, str] | OrderKey]) -> Query:
        """Order by ``[(column, "asc"|"desc"), ...]``; a bare column means ascending."""
        if isinstance(columns, str):
            raise QueryValidationError("order_by() takes a list, e.g. [('due', 'asc')]")
        keys: list[tuple[OrderKey, Direction]] = []
        for item in _listed(columns, "order_by", "[('due', 'asc')]"):
            if isinstance(item, tuple) and len(item) != 2:
                raise QueryValidationError(
                    f"an order_by item is a column or a (column, 'asc'|'desc') pair, got {item!r}"
                )
            key, direction = item if isinstance(item, tuple) else (item, "asc")
            if isinstance(key, str):
                check_reference(key)
            elif not isinstance(key, Aggregate):
                raise QueryValidationError(f"cannot order by {key!r}")
            keys.append((key, check_direction(direction)))
        return self._with(_order_by=self._order_by + tuple(keys))

    def limit(self, limit: int) -> Query:
        """Return at most ``limit`` rows (a non-negative int)."""
        return self._with(_limit=check_count(limit, "limit"))

    def offset(self, offset: int) -> Query:
        """Skip the first ``offset`` rows (a non-negative int)."""
        return self._with(_offset=check_count(offset, "offset"))

    def distinct(self, distinct: bool = True) -> Query:
        """Return distinct rows only (``SELECT DISTINCT``)."""
        if not isinstance(distinct, bool):
            raise QueryValidationError(f"distinct() takes a bool, got {distinct!r}")
        return self._with(_distinct=distinct)

    # -- introspection (used by validation and subqueries) ---------------------------------

    def is_single_column(self) -> bool:
        """Return True when the query selects exactly one column (as an IN subquery must)."""
        if len(self._select) != 1:
            return False
        item = self._select[0]
        name = item if isinstance(item, str) else getattr(item, "name", "")
        return not (name == "*" or name.endswith(".*"))

    @property
    def table(self) -> str | None:
        """The FROM table, if set."""
        return self._table

    # -- building ----------------------------------------------------------------------

    def build(self, schema: Schema | None = None) -> tuple[str, tuple[Any, ...]]:
        """Return ``(sql, params)``; with ``schema``, check names first (see module doc)."""
        built = self._built
        if built is not None and built[0] is schema:
            return built[1]
        _check_depth(self)
        if schema is not None:
            validate(self, schema)
        params: list[Any] = []
        sql = self._render(params)
        result = (sql, tuple(params))
        self._built = (schema, result)
        return result

    def _render(self, params: list[Any]) -> str:
        if self._table is None:
            raise QueryValidationError("the query has no table: call from_(table)")
        parts = ["SELECT DISTINCT" if self._distinct else "SELECT"]
        parts.append(", ".join(_select_sql(i) for i in self._select) or "*")
        parts.append(f"FROM {_table_sql(self._table, self._table_alias)}")
        for join in self._joins:
            cond = join.condition
            parts.append(
                f"{_JOIN_SQL[cond.type]} {_table_sql(join.table, join.alias)} "
                f"ON {_ref(cond.left_column)} = {_ref(cond.right_column)}"
            )
        if self._where:
            parts.append("WHERE " + _and(self._where, params))
        if self._group_by:
            parts.append("GROUP BY " + ", ".join(_ref(c) for c in self._group_by))
        if self._having:
            parts.append("HAVING " + _and(self._having, params))
        if self._order_by:
            keys = (f"{_key_sql(k)} {d.upper()}" for k, d in self._order_by)
            parts.append("ORDER BY " + ", ".join(keys))
        if self._limit is not None or self._offset is not None:
            # SQLite needs a LIMIT before OFFSET; a negative limit means "no limit"
            # (https://www.sqlite.org/lang_select.html#the_limit_clause).
            parts.append("LIMIT ?")
            params.append(-1 if self._limit is None else self._limit)
            if self._offset is not None:
                parts.append("OFFSET ?")
                params.append(self._offset)
        return " ".join(parts)

    def __repr__(self) -> str:
        try:
            sql, params = self.build()
        except QueryValidationError as exc:
            return f"<Query incomplete: {exc}>"
        return f"<Query {sql!r} {params!r}>"


def _check_depth(query: Query) -> None:
    """Raise :class:`QueryValidationError` if groups and subqueries nest too deep.

    Walked with a stack, not recursion, so that the check itself cannot overflow.
    """
    todo: list[tuple[object, int]] = [(query, 0)]
    while todo:
        node, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise QueryValidationError(
                "the query nests any_of / AllOf groups and IN subqueries too deep (more "
                f"than {MAX_DEPTH} levels, a subquery counting as two); flatten it: one "
                "any_of(...) with many alternatives, in with a list, or a join"
            )
        if isinstance(node, Query):
            todo.extend((c, depth) for c in (*node._where, *node._having))
        elif isinstance(node, AnyOf | AllOf):
            todo.extend((c, depth + 1) for c in node.conditions)
        elif isinstance(node, Condition) and isinstance(node.value, Query):
            todo.append((node.value, depth + 2))


def _conditions(conditions: Sequence[ConditionLike]) -> tuple[Condition | AnyOf | AllOf, ...]:
    if isinstance(conditions, tuple | Condition | AnyOf | AllOf):
        raise QueryValidationError("pass a list of conditions, e.g. [('status', 'eq', 'open')]")
    listed = _listed(conditions, "where() or having", "[('status', 'eq', 'open')]")
    return tuple(to_condition(c) for c in listed)


def _listed(items: Iterable[Any], verb: str, example: str) -> list[Any]:
    """``items`` as a list, or :class:`QueryValidationError` if it is none (None, an int)."""
    try:
        return list(items)
    except TypeError:
        raise QueryValidationError(
            f"{verb}() takes a list, e.g. {example}, not {type(items).__name__} ({items!r:.60})"
        ) from None


def _ref(ref: str) -> str:
    table, column = check_reference(ref)
    return quote_reference(table, column)


def _table_sql(table: str, alias: str | None) -> str:
    return quote(table) if alias is None else f"{quote(table)} AS {quote(alias)}"


def _select_sql(item: SelectItem) -> str:
    if isinstance(item, str):
        item = Column(item)
    if isinstance(item, Aggregate):
        sql = _aggregate_sql(item)
    elif item.name == "*":
        sql = "*"
    elif item.name.endswith(".*"):
        sql = f"{quote(item.name[:-2])}.*"
    else:
        sql = _ref(item.name)
    return sql if item.alias is None else f"{sql} AS {quote(item.alias)}"


def _aggregate_sql(agg: Aggregate) -> str:
    arg = "*" if agg.column == "*" else _ref(agg.column)
    return f"{agg.func}({'DISTINCT ' if agg.distinct else ''}{arg})"


def _key_sql(key: OrderKey) -> str:
    return _aggregate_sql(key) if isinstance(key, Aggregate) else _ref(key)


def _and(conditions: Sequence[Condition | AnyOf | AllOf], params: list[Any]) -> str:
    return " AND ".join(_condition_sql(c, params) for c in conditions)


def _condition_sql(cond: Condition | AnyOf | AllOf | tuple[Any, ...], params: list[Any]) -> str:
    if isinstance(cond, AnyOf):
        if not cond.conditions:
            return "(1 = 0)"
        return "(" + " OR ".join(_condition_sql(c, params) for c in cond.conditions) + ")"
    if isinstance(cond, AllOf):
        if not cond.conditions:
            return "(1 = 1)"
        return "(" + " AND ".join(_condition_sql(c, params) for c in cond.conditions) + ")"
    if isinstance(cond, tuple):
        cond = Condition(*cond)
    lhs = _key_sql(cond.column)
    op = cond.op
    if op in _COMPARISON:
        params.append(cond.value)
        return f"{lhs} {_COMPARISON[op]} ?"
    if op in ("like", "not_like"):
        params.append(cond.value)
        sql = f"{lhs} {'NOT LIKE' if op == 'not_like' else 'LIKE'} ?"
        if cond.escape is not None:
            params.append(cond.escape)
            sql += " ESCAPE ?"
        return sql
    if op == "is_null":
        return f"{lhs} IS NULL"
    if op == "is_not_null":
        return f"{lhs} IS NOT NULL"
    keyword = "NOT IN" if op == "not_in" else "IN"
    if isinstance(cond.value, Query):
        return f"{lhs} {keyword} ({cond.value._render(params)})"
    values = cond.value
    if not values:
        # x IN () is false and x NOT IN () is true for every x, NULL included
        # (https://www.sqlite.org/lang_expr.html#the_in_and_not_in_operators).
        return "(1 = 1)" if op == "not_in" else "(1 = 0)"
    params.extend(values)
    return f"{lhs} {keyword} ({', '.join('?' * len(values))})"

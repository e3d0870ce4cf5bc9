"""Checking a :class:`~atlas_actors.query.Query` against a :class:`Schema` snapshot.

This matters more in SQLite than elsewhere: an unknown column written in double quotes is
not an error but a string literal (https://www.sqlite.org/quirks.html#dblquote), so
``SELECT "titel" FROM tasks`` quietly returns the text ``titel`` for every row. The
builder quotes every identifier, so every name must be checked here before SQLite sees it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from atlas_actors.errors import QueryValidationError
from atlas_actors.query._names import check_reference, closest, fold
from atlas_actors.query.conditions import (
    Aggregate,
    AllOf,
    AnyOf,
    Condition,
    Subquery,
    names_of,
)

if TYPE_CHECKING:
    from atlas_actors.query.builder import Query
    from atlas_actors.query.schema import Schema, TableInfo

__all__ = ["validate"]


class _Scope:
    """The tables a query reads, by the name columns are qualified with."""

    def __init__(self, query: Query, schema: Schema) -> None:
        self.tables: dict[str, TableInfo] = {}
        assert query._table is not None
        self._add(query._table_alias or query._table, schema.table(query._table))
        for join in query._joins:
            self._add(join.alias or join.table, schema.table(join.table))
        self.aliases = {fold(a) for a in names_of(query._select)}
        self.aggregate_aliases = {
            fold(i.alias) for i in query._select if isinstance(i, Aggregate) and i.alias
        }

    def _add(self, name: str, table: TableInfo) -> None:
        if fold(name) in self.tables:
            raise QueryValidationError(
                f"table name {name!r} is used twice in one query; give one of them an alias"
            )
        self.tables[fold(name)] = table

    def column(self, ref: str, *, allow_alias: bool = False) -> None:
        """Check one ``column`` / ``table.column`` reference."""
        qualifier, column = check_reference(ref)
        if qualifier is not None:
            table = self.tables.get(fold(qualifier))
            if table is None:
                raise QueryValidationError(
                    f"{qualifier!r} in {ref!r} is not a table of this query",
                    suggestion=closest(qualifier, self.tables),
                )
            table.require_column(column)
            return
        owners = [t.name for t in self.tables.values() if t.has_column(column)]
        if len(owners) == 1:
            return
        if len(owners) > 1:
            raise QueryValidationError(
                f"column {column!r} is ambiguous: it is in {', '.join(owners)}; "
                "qualify it as table.column"
            )
        if allow_alias and fold(column) in self.aliases:
            return
        known = [c.name for t in self.tables.values() for c in t.columns]
        if allow_alias:
            known.extend(self.aliases)
        raise QueryValidationError(
            f"no column {column!r} in {', '.join(repr(t.name) for t in self.tables.values())}",
            suggestion=closest(column, known),
        )

    def names_aggregate(self, ref: str) -> bool:
        """True when ``ref`` resolves to the alias of an aggregate (no column has it)."""
        qualifier, column = check_reference(ref)
        return (
            qualifier is None
            and fold(column) in self.aggregate_aliases
            and not any(t.has_column(column) for t in self.tables.values())
        )

    def star(self, name: str) -> None:
        """Check ``*`` or ``table.*``."""
        if name != "*" and fold(name[:-2]) not in self.tables:
            raise QueryValidationError(
                f"{name!r}: {name[:-2]!r} is not a table of this query",
                suggestion=closest(name[:-2], self.tables),
            )


def validate(query: Query, schema: Schema) -> None:
    """Raise :class:`QueryValidationError` unless every name in ``query`` exists."""
    if query._table is None:
        raise QueryValidationError("the query has no table: call from_(table)")
    scope = _Scope(query, schema)
    for item in query._select:
        if isinstance(item, Aggregate):
            _aggregate(scope, item)
        else:
            name = item if isinstance(item, str) else item.name
            if name == "*" or name.endswith(".*"):
                scope.star(name)
            else:
                scope.column(name)
    for join in query._joins:
        scope.column(join.condition.left_column)
        scope.column(join.condition.right_column)
    _conditions(scope, schema, query._where, allow_alias=False, clause="WHERE")
    for ref in query._group_by:
        scope.column(ref, allow_alias=True)
        if scope.names_aggregate(ref):
            raise QueryValidationError(
                f"group_by({ref!r}) names an aggregate, which SQLite does not allow in GROUP "
                "BY; group by the columns the aggregate is computed over, or filter on it "
                "with having()"
            )
    grouped = bool(query._group_by) or any(isinstance(i, Aggregate) for i in query._select)
    if query._having and not grouped:
        raise QueryValidationError(
            "having() needs group_by() or an aggregate in select() (SQLite rejects HAVING "
            "on a non-aggregate query); use where() to filter rows"
        )
    _conditions(scope, schema, query._having, allow_alias=True, clause="HAVING")
    for key, _direction in query._order_by:
        if isinstance(key, Aggregate):
            if not grouped:
                raise QueryValidationError(
                    f"order_by an aggregate ({key.func}) needs group_by() or an aggregate "
                    "in select(): SQLite rejects it on a non-aggregate query"
                )
            _aggregate(scope, key)
        else:
            scope.column(key, allow_alias=True)


def _aggregate(scope: _Scope, agg: Aggregate) -> None:
    if agg.column != "*":
        scope.column(agg.column)


def _conditions(
    scope: _Scope,
    schema: Schema,
    conditions: Iterable[Condition | AnyOf | AllOf],
    *,
    allow_alias: bool,
    clause: str,
) -> None:
    for cond in conditions:
        if isinstance(cond, AnyOf | AllOf):
            nested = [c for c in cond.conditions if not isinstance(c, tuple)]
            _conditions(scope, schema, nested, allow_alias=allow_alias, clause=clause)
            continue
        if isinstance(cond.column, Aggregate):
            if clause == "WHERE":
                raise QueryValidationError(
                    f"an aggregate ({cond.column.func}) cannot be used in where(): SQLite "
                    "filters rows before it aggregates them; use having() (with group_by() "
                    "or an aggregate in select())"
                )
            _aggregate(scope, cond.column)
        else:
            scope.column(cond.column, allow_alias=allow_alias)
        if isinstance(cond.value, Subquery):
            validate(cond.value, schema)  # type: ignore[arg-type]

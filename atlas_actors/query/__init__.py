"""The query layer: a validating query builder and an optimizer for SQLite.

Pure modules: nothing here starts a thread or owns a connection. See ``docs/query.md``.
"""

from atlas_actors.query.builder import Join, Query
from atlas_actors.query.conditions import (
    Aggregate,
    AllOf,
    AnyOf,
    Column,
    Condition,
    JoinCondition,
    any_of,
)
from atlas_actors.query.indexes import IndexSuggestion
from atlas_actors.query.optimizer import Optimizer
from atlas_actors.query.plan import QueryPlan, QueryStep
from atlas_actors.query.rewrite import RewriteResult
from atlas_actors.query.schema import ColumnInfo, IndexColumn, IndexInfo, Schema, TableInfo
from atlas_actors.query.workload import QueryStats, WorkloadRecorder

__all__ = [
    "Aggregate",
    "AllOf",
    "AnyOf",
    "Column",
    "ColumnInfo",
    "Condition",
    "IndexColumn",
    "IndexInfo",
    "IndexSuggestion",
    "Join",
    "JoinCondition",
    "Optimizer",
    "Query",
    "QueryPlan",
    "QueryStats",
    "QueryStep",
    "RewriteResult",
    "Schema",
    "TableInfo",
    "WorkloadRecorder",
    "any_of",
]

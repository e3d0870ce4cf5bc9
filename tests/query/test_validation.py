"""build(schema=...) checks names against a snapshot of the live schema."""

from __future__ import annotations

import apsw
import pytest

from atlas_actors.errors import QueryValidationError, ValidationError
from atlas_actors.query import Aggregate, Column, Query, Schema, any_of
from atlas_actors.query.schema import affinity_of


@pytest.fixture
def schema(db: apsw.Connection) -> Schema:
    return Schema.from_connection(db)


def test_sqlite_turns_an_unknown_quoted_column_into_a_string(db: apsw.Connection) -> None:
    # The reason the validator exists: without it the typo goes unnoticed.
    sql, params = Query().select(["titel"]).from_("tasks").limit(1).build()
    assert db.execute(sql, params).fetchall() == [("titel",)]


def test_the_validator_catches_the_unknown_quoted_column(schema: Schema) -> None:
    with pytest.raises(QueryValidationError, match="did you mean 'title'") as info:
        Query().select(["titel"]).from_("tasks").build(schema)
    assert info.value.suggestion == "title"
    assert isinstance(info.value, ValidationError)


def test_an_unknown_table_suggests_the_closest_table(schema: Schema) -> None:
    with pytest.raises(QueryValidationError, match="did you mean 'tasks'"):
        Query().from_("taks").build(schema)


def test_a_name_with_nothing_close_gets_no_suggestion(schema: Schema) -> None:
    with pytest.raises(QueryValidationError) as info:
        Query().from_("zzzzzz").build(schema)
    assert info.value.suggestion is None


@pytest.mark.parametrize(
    "query",
    [
        Query().from_("tasks").where([("stauts", "eq", "open")]),
        Query().from_("tasks").order_by([("prority", "asc")]),
        Query().from_("tasks").group_by(["asignee"]),
        Query().select([Aggregate("sum", "prioriti")]).from_("tasks"),
        Query().from_("tasks").where([any_of(("status", "eq", 1), ("dew", "lt", 3))]),
        Query().from_("tasks").join("projects", on=("project_id", "idd")),
        Query()
        .from_("tasks")
        .where([("project_id", "in", Query().select(["nam"]).from_("projects"))]),
    ],
)
def test_every_clause_is_checked(schema: Schema, query: Query) -> None:
    with pytest.raises(QueryValidationError, match="did you mean"):
        query.build(schema)


def test_names_are_case_insensitive_like_sqlite(schema: Schema) -> None:
    Query().select(["TITLE"]).from_("Tasks").where([("Status", "eq", "x")]).build(schema)


def test_an_unqualified_column_in_two_joined_tables_is_ambiguous(schema: Schema) -> None:
    q = Query().select(["id"]).from_("tasks").join("projects", on=("project_id", "id"))
    with pytest.raises(QueryValidationError, match="ambiguous"):
        q.build(schema)
    q.select(["tasks.id", "name"]).build(schema)


def test_a_qualifier_must_be_a_table_of_the_query(schema: Schema) -> None:
    with pytest.raises(QueryValidationError, match="not a table of this query"):
        Query().select(["projects.name"]).from_("tasks").build(schema)
    with pytest.raises(QueryValidationError, match="not a table of this query"):
        Query().select(["projects.*"]).from_("tasks").build(schema)


def test_aliases_are_scopes_for_qualified_columns(schema: Schema) -> None:
    q = (
        Query()
        .select(["a.title", "b.title"])
        .from_("tasks", alias="a")
        .join("tasks", on=("a.id", "id"), alias="b")
    )
    q.build(schema)
    with pytest.raises(QueryValidationError, match="used twice"):
        Query().from_("tasks").join("tasks", on=("id", "id")).build(schema)


def test_select_aliases_are_allowed_in_order_by_and_having_only(schema: Schema) -> None:
    q = (
        Query()
        .select(["status", Aggregate("count", alias="n")])
        .from_("tasks")
        .group_by(["status"])
        .having([("n", "gt", 1)])
        .order_by([("n", "desc")])
    )
    q.build(schema)
    with pytest.raises(QueryValidationError, match="no column 'n'"):
        q.where([("n", "gt", 1)]).build(schema)


def test_statements_sqlite_rejects_for_misplaced_aggregates_are_refused(
    db: apsw.Connection, schema: Schema
) -> None:
    count = Aggregate("count", alias="n")
    refused = {
        "names an aggregate": Query().select(["status", count]).from_("tasks").group_by(["n"]),
        "cannot be used in where": Query()
        .from_("tasks")
        .where([any_of(("id", "eq", 1), (Aggregate("count"), "gt", 0))]),
        "having\\(\\) needs group_by": Query()
        .select(["status"])
        .from_("tasks")
        .having([("status", "eq", "open")]),
        "order_by an aggregate": Query()
        .select(["status"])
        .from_("tasks")
        .order_by([(Aggregate("count"), "desc")]),
    }
    for message, q in refused.items():
        sql, params = q.build()  # without a snapshot nothing is checked: SQLite refuses it
        with pytest.raises(apsw.SQLError):
            db.execute(sql, params).fetchall()
        with pytest.raises(QueryValidationError, match=message):
            q.build(schema)
    accepted = [
        # a column of that name wins over the alias in GROUP BY
        Query().select([Aggregate("count", alias="status")]).from_("tasks").group_by(["status"]),
        # an aggregate in select() makes the query an aggregate one: HAVING is allowed
        Query().select([count]).from_("tasks").having([("n", "gt", 1)]),
        Query().select([count]).from_("tasks").order_by([(Aggregate("max", "id"), "asc")]),
        Query().select(["status"]).from_("tasks").group_by(["status"]).order_by([(count, "asc")]),
    ]
    for q in accepted:
        db.execute(*q.build(schema)).fetchall()


def test_rowid_is_a_column_of_rowid_tables(db: apsw.Connection, schema: Schema) -> None:
    Query().select(["rowid"]).from_("tasks").build(schema)
    db.execute("CREATE TABLE kv(k TEXT PRIMARY KEY, v) WITHOUT ROWID")
    with pytest.raises(QueryValidationError, match="no column 'rowid'"):
        Query().select(["rowid"]).from_("kv").build(Schema.from_connection(db))


class _NoRows:
    """A virtual table module (apsw's protocol) whose tables declare ``ddl``, hold nothing."""

    def __init__(self, ddl: str) -> None:
        self.ddl = ddl

    def Create(self, *_args: object) -> tuple[str, _NoRowsTable]:
        return self.ddl, _NoRowsTable()

    Connect = Create


class _NoRowsTable:
    def BestIndex(self, *_args: object) -> None:
        return None

    def Open(self) -> _NoRowsCursor:
        return _NoRowsCursor()

    def Disconnect(self) -> None:
        pass

    Destroy = Disconnect


class _NoRowsCursor:
    def Filter(self, *_args: object) -> None:
        pass

    def Eof(self) -> bool:
        return True

    def Close(self) -> None:
        pass


def test_rowid_is_a_column_of_virtual_tables_that_have_one(db: apsw.Connection) -> None:
    db.execute(
        "CREATE VIRTUAL TABLE docs USING fts5(body);"
        "CREATE VIRTUAL TABLE boxes USING rtree(id, x0, x1);"
        "INSERT INTO docs(rowid, body) VALUES (7, 'hello');"
        "INSERT INTO boxes VALUES (3, 0, 1);"
    )
    db.create_module("norowid", _NoRows("CREATE TABLE x(k PRIMARY KEY, v) WITHOUT ROWID"))
    db.execute("CREATE VIRTUAL TABLE kv USING norowid()")
    schema = Schema.from_connection(db)
    for table, row in [("docs", (7, "hello")), ("boxes", (3, 3))]:
        for rowid in ("rowid", "oid", "_rowid_"):
            columns = [rowid, "body" if table == "docs" else "id"]
            sql, params = Query().select(columns).from_(table).build(schema)
            assert db.execute(sql, params).fetchall() == [row]
    # a virtual table declared WITHOUT ROWID has none: SQLite says "no such column"
    with pytest.raises(apsw.SQLError, match="no such column: rowid"):
        db.execute("SELECT rowid FROM kv")
    with pytest.raises(QueryValidationError, match="no column 'rowid'"):
        Query().select(["rowid"]).from_("kv").build(schema)


def test_views_are_tables_for_validation(db: apsw.Connection) -> None:
    db.execute("CREATE VIEW open_tasks AS SELECT id, title FROM tasks WHERE status = 'open'")
    schema = Schema.from_connection(db)
    assert schema.table("open_tasks").kind == "view"
    sql, params = Query().select([Column("title")]).from_("open_tasks").build(schema)
    assert len(db.execute(sql, params).fetchall()) == 3


def test_the_snapshot_records_types_collations_and_indexes(db: apsw.Connection) -> None:
    db.execute("CREATE INDEX tasks_title ON tasks(title COLLATE BINARY DESC, status)")
    db.execute("CREATE TABLE s(x TEXT NOT NULL, y ANY) STRICT")
    schema = Schema.from_connection(db)
    tasks = schema.table("tasks")
    title = tasks.column("title")
    assert title is not None and title.collation == "NOCASE" and title.affinity == "TEXT"
    idx = next(i for i in tasks.indexes if i.name == "tasks_title")
    assert [(c.name, c.collation, c.desc) for c in idx.columns] == [
        ("title", "BINARY", True),
        ("status", "BINARY", False),
    ]
    s = schema.table("s")
    assert s.strict
    x, y = s.columns
    assert x.not_null and y.affinity == "BLOB"


def test_build_is_cached_per_schema_snapshot(schema: Schema) -> None:
    q = Query().select(["title"]).from_("tasks").where([("status", "eq", "open")])
    first = q.build(schema)
    assert q.build(schema) is first
    # another snapshot (e.g. after a migration) is validated again
    other = Schema.of([])
    with pytest.raises(QueryValidationError, match="no such table"):
        q.build(other)


@pytest.mark.parametrize(
    ("declared", "strict", "affinity"),
    [
        ("INTEGER", False, "INTEGER"),
        ("BIGINT", False, "INTEGER"),
        ("VARCHAR(40)", False, "TEXT"),
        ("CLOB", False, "TEXT"),
        ("", False, "BLOB"),
        ("BLOB", False, "BLOB"),
        ("DOUBLE PRECISION", False, "REAL"),
        ("DECIMAL(10,2)", False, "NUMERIC"),
        ("FLOATING POINT", False, "INTEGER"),  # "INT" wins, as datatype3.html documents
        ("ANY", True, "BLOB"),
        ("ANY", False, "NUMERIC"),
    ],
)
def test_affinity_follows_sqlites_five_rules(declared: str, strict: bool, affinity: str) -> None:
    assert affinity_of(declared, strict=strict) == affinity

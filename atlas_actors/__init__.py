"""atlas-actors: an actor-based concurrent storage runtime on SQLite.

>>> import atlas_actors as atlas
>>> with atlas.open("atlas.db") as db:  # doctest: +SKIP
...     db.execute("CREATE TABLE IF NOT EXISTS tasks(id INTEGER PRIMARY KEY, title TEXT)")
...     db.write("INSERT INTO tasks(title) VALUES (?)", ["write the docs"])
...     db.query("SELECT id, title FROM tasks")
"""

import logging as _logging

from atlas_actors import errors
from atlas_actors.actors.pool import PooledConnection, PoolStatus
from atlas_actors.actors.supervisor import ChildStatus, SupervisorStatus
from atlas_actors.actors.writer_ops import WriterStats
from atlas_actors.config import StorageConfig
from atlas_actors.connection import (
    ConnectionInfo,
    ConnectionMetrics,
    ConnectionState,
    WriteResult,
)
from atlas_actors.events import LifecycleEvent
from atlas_actors.future import Future
from atlas_actors.query import Query
from atlas_actors.rows import Row
from atlas_actors.storage import HealthReport, Storage, open
from atlas_actors.telemetry.alerts import Alert, AlertRule
from atlas_actors.transaction.transaction import (
    Transaction,
    TransactionInfo,
    TransactionsStatus,
)

__all__ = [
    "Alert",
    "AlertRule",
    "ChildStatus",
    "ConnectionInfo",
    "ConnectionMetrics",
    "ConnectionState",
    "Future",
    "HealthReport",
    "LifecycleEvent",
    "PoolStatus",
    "PooledConnection",
    "Query",
    "Row",
    "Storage",
    "StorageConfig",
    "SupervisorStatus",
    "Transaction",
    "TransactionInfo",
    "TransactionsStatus",
    "WriteResult",
    "WriterStats",
    "errors",
    "open",
]
__version__ = "0.1.0"

# A library logs, the application decides where logs go (no output unless configured).
_logging.getLogger(__name__).addHandler(_logging.NullHandler())

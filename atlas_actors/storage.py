"""The storage facade: starts the supervision tree and offers the sync and future API.

``atlas_actors.open(path)`` returns a :class:`Storage`. Writes go to the writer actor
(``db.write`` waits for the acknowledgement; ``db.writer.execute`` returns a future);
reads go through the reader pool (``db.query``); ``db.supervisor``, ``db.pool`` and
``db.events`` expose the runtime.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

import apsw
import pykka
from opentelemetry import trace

from atlas_actors.actors.base import Mailbox, RoleActor
from atlas_actors.actors.pool import PoolStatus, ReaderPool
from atlas_actors.actors.reader import ReaderActor, ReadOp
from atlas_actors.actors.supervisor import ChildFailed, ChildStatus, SupervisorActor
from atlas_actors.actors.writer import (
    WriteAllOp,
    WriteManyOp,
    WriteOp,
    WriterActor,
    WriterOp,
    _Counters,
    in_writer_thread,
)
from atlas_actors.config import StorageConfig
from atlas_actors.connection import ConnectionMetrics, Params, TrackedConnection, WriteResult
from atlas_actors.errors import (
    DeadlockError,
    OperationTimeout,
    StorageClosedError,
    StorageUnavailable,
)
from atlas_actors.events import EventBus
from atlas_actors.future import Future
from atlas_actors.handles import SupervisorHandle, WriterHandle
from atlas_actors.rows import Row
from atlas_actors.telemetry.tracing import Tracing

__all__ = ["HealthReport", "Storage", "open"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_open_storages: weakref.WeakSet[Storage] = weakref.WeakSet()


class Buildable(Protocol):
    """Anything with ``build() -> (sql, params)``, such as :class:`atlas_actors.Query`."""

    def build(self) -> tuple[str, Sequence[Any]]:
        """Return the SQL text and its parameters."""
        ...


@dataclass(frozen=True, slots=True)
class HealthReport:
    """``db.health()``: is the storage serving, and how are its parts."""

    status: str
    """``ok``, ``degraded`` (restarting an actor) or ``failed``/``closed``."""
    writer: ChildStatus | None
    """The writer's supervision status."""
    pool: PoolStatus
    """The reader pool."""
    restarts: int
    """Actor restarts since the storage opened."""
    failure: str | None
    """Why the storage failed, once it has."""


class Storage:
    """A SQLite database served by a writer actor and a pool of reader actors."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        config: StorageConfig,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        vfs: str | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.config = config
        self.events = EventBus()
        """Lifecycle events: ``db.events.on("restart", fn)``."""
        self.tracing = Tracing(tracer_provider, self.path)
        self.writer_counters = _Counters()
        self.commit_hooks: list[Callable[[TrackedConnection], None]] = []
        """Called in the writer after each COMMIT, before any write is acknowledged."""
        self._vfs = vfs
        self._name = os.path.basename(self.path) or self.path
        self._state = "starting"
        self._failure: StorageUnavailable | None = None
        self._lock = threading.Lock()
        self._writer_connection: TrackedConnection | None = None
        self._writer_ready = threading.Event()
        self.writer_threads: set[int] = set()
        """Thread ids of writer incarnations (for the deadlock guard)."""
        self._start_error: BaseException | None = None
        self._reader_ids = itertools.count()
        self.pool = ReaderPool(
            config=config,
            events=self.events,
            grow=self._grow_reader,
            retire=self._retire_reader,
        )
        """The reader pool: ``acquire()``, ``status()``, ``resize(n)``, ``submit(...)``."""
        self._supervisor_ref = SupervisorActor.start(
            config=config,
            events=self.events,
            on_escalate=self._on_escalate,
            on_tick=self.pool.maintain,
            db_name=self._name,
        )
        self._supervisor = self._supervisor_ref.proxy()
        self.supervisor = SupervisorHandle(self._supervisor_ref, config.default_timeout)
        """Supervision status and fault injection."""
        self._writer_mailbox = Mailbox("writer", config.mailbox_size)
        self.writer = WriterHandle(self, self._writer_mailbox)
        """The writer: ``db.writer.execute(sql, params)`` → future."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        self._state = "running"
        _open_storages.add(self)

    # -- start and stop ----------------------------------------------------------------

    def _start(self) -> None:
        timeout = self.config.default_timeout
        self._supervisor.add_child("writer", self._make_writer, self._writer_mailbox).get(
            timeout=timeout
        )
        # Readers open after the writer has put the file in WAL mode.
        if not self._writer_ready.wait(timeout):
            raise OperationTimeout("starting the writer", timeout, applied=None)
        if self._start_error is not None:
            raise self._start_error
        for _ in range(self.config.readers):
            self._add_reader().get(timeout=timeout)
        deadline = time.monotonic() + timeout
        while self.pool.status().total < self.config.readers:
            if self._start_error is not None:
                raise self._start_error
            if time.monotonic() > deadline:
                raise OperationTimeout("starting the readers", timeout, applied=None)
            time.sleep(0.001)

    def _make_writer(self, role: str, incarnation: int, mailbox: Mailbox) -> RoleActor:
        return WriterActor(
            path=self.path,
            config=self.config,
            events=self.events,
            tracing=self.tracing,
            counters=self.writer_counters,
            commit_hooks=self.commit_hooks,
            on_connected=self._writer_connected,
            vfs=self._vfs,
            role=role,
            incarnation=incarnation,
            mailbox=mailbox,
            db_name=self._name,
            on_failure_report=self._report_failure,
        )

    def _writer_connected(self, connection: TrackedConnection) -> None:
        self.writer_threads.add(threading.get_ident())
        self._writer_connection = connection
        self._writer_ready.set()

    def _make_reader(self, role: str, incarnation: int, mailbox: Mailbox) -> RoleActor:
        reader = ReaderActor(
            path=self.path,
            config=self.config,
            events=self.events,
            tracing=self.tracing,
            pool=self.pool,
            vfs=self._vfs,
            role=role,
            incarnation=incarnation,
            mailbox=mailbox,
            db_name=self._name,
            on_failure_report=self._report_failure,
        )
        return reader

    def _add_reader(self) -> Any:
        role = f"reader-{next(self._reader_ids)}"
        mailbox = Mailbox(role, self.config.mailbox_size)
        return self._supervisor.add_child(role, self._make_reader, mailbox)

    def _grow_reader(self) -> None:
        if self._state == "running":
            self._add_reader()
        else:
            self.pool.expected_growth_failed()

    def _retire_reader(self, role: str) -> None:
        self.pool.reader_gone(role)
        self._supervisor.remove_child(role)

    def _report_failure(self, role: str, incarnation: int, error: BaseException | None) -> None:
        if self._state == "starting" and incarnation == 1:
            # A first start that fails (unopenable file, bad VFS) fails open() at once.
            self._start_error = error or StorageUnavailable(f"{role} failed to start")
            self._writer_ready.set()
            return
        try:
            self._supervisor_ref.tell(ChildFailed(role, incarnation, error))
        except Exception:
            log.debug("supervisor gone; failure of %s not reported", role)

    def _on_escalate(self, error: StorageUnavailable) -> None:
        with self._lock:
            self._failure = error
            if self._state == "running":
                self._state = "failed"
        self.pool.close(error)

    def close(self, timeout: float | None = None) -> None:
        """Finish queued writes, stop every actor, close every connection. Idempotent."""
        with self._lock:
            if self._state in ("closing", "closed"):
                return
            self._state = "closing"
        timeout = self.config.default_timeout if timeout is None else timeout
        closed = StorageClosedError(self.path)
        # New writes are refused; queued ones are handled before the writer's stop.
        self._writer_mailbox.closed = self._failure or closed
        try:
            self.pool.close(self._failure or closed)
            self._supervisor.stop_children(timeout).get(timeout=timeout + 1)
        except Exception:
            log.exception("stopping %s did not finish cleanly", self.path)
        finally:
            with contextlib.suppress(pykka.Timeout, pykka.ActorDeadError):
                self._supervisor_ref.stop(block=True, timeout=timeout)
            self._state = "closed"
            _open_storages.discard(self)

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_usable(self) -> None:
        """Raise :class:`StorageUnavailable` unless the storage is serving."""
        if self._state != "running":
            raise self._unavailable()

    def _unavailable(self) -> StorageUnavailable:
        if self._failure is not None:
            return self._failure
        if self._state in ("closing", "closed"):
            return StorageClosedError(self.path)
        return StorageUnavailable(f"storage {self.path!r} is {self._state}")

    # -- the synchronous API -----------------------------------------------------------

    def _refuse_inside_writer(self, what: str) -> None:
        if in_writer_thread():
            raise DeadlockError(
                ["writer thread", what, "writer thread"],
                "code running inside the writer (run_in_writer) cannot wait for another "
                "write: use the connection it was given instead",
            )

    def write(
        self, sql: str, params: Params = None, *, timeout: float | None = None
    ) -> WriteResult:
        """Run a writing statement through the writer; returns once it is acknowledged."""
        result: WriteResult = self._write(WriteOp, "write", sql, (sql, params), timeout)
        return result

    execute = write
    """``db.execute(sql, params)``: the same as :meth:`write` (DDL reads better this way)."""

    def write_many(
        self, sql: str, seq_of_params: Sequence[Params], *, timeout: float | None = None
    ) -> WriteResult:
        """Run one statement per parameter set, all or nothing; acknowledged as one."""
        args = (sql, list(seq_of_params))
        result: WriteResult = self._write(WriteManyOp, "write_many", sql, args, timeout)
        return result

    def write_all(
        self, statements: Sequence[tuple[str, Params]], *, timeout: float | None = None
    ) -> list[WriteResult]:
        """Run several statements as one unit (all or nothing); one result per statement."""
        statements = [(sql, params) for sql, params in statements]
        text = "; ".join(sql for sql, _ in statements)
        results: list[WriteResult] = self._write(
            WriteAllOp, "write_all", text, (statements, text), timeout
        )
        return results

    def run_in_writer(
        self, fn: Callable[[apsw.Connection], T], *, timeout: float | None = None
    ) -> T:
        """Run ``fn(connection)`` inside the writer (a unit of work, in its own savepoint).

        See :meth:`WriterHandle.run` for what ``fn`` may do.
        """
        name = getattr(fn, "__qualname__", repr(fn))
        self._refuse_inside_writer(f"run_in_writer {name}")
        with self.tracing.client_span("atlas.run_in_writer"):
            return self.writer.run(fn, timeout=timeout).get()

    def _write(
        self,
        op_class: type[WriterOp],
        verb: str,
        sql: str,
        args: tuple[Any, ...],
        timeout: float | None,
    ) -> Any:
        """Send a write op and wait for its acknowledgement (the sync API's one path)."""
        if threading.get_ident() in self.writer_threads:
            self._refuse_inside_writer(f"{verb} {sql!r}")
        if self.tracing.enabled:
            with self.tracing.client_span(f"atlas.{verb}", sql):
                future = self.writer.submit(op_class, verb, sql, args, timeout, traced=False)
                return Future.get(future)
        future = self.writer.submit(op_class, verb, sql, args, timeout, traced=False)
        # Future.get, not WriterFuture.get: the writer-thread check was made above.
        return Future.get(future)

    def query(
        self,
        sql: str | Buildable,
        params: Params = None,
        *,
        timeout: float | None = None,
    ) -> list[Row]:
        """Run a read and return its rows (tuples that also answer to column names).

        ``sql`` is SQL text or a built query (anything with ``build()``). Runs on a
        reader connection: it never waits on the writer, and it sees every write
        acknowledged before the call.
        """
        if self._state != "running":
            raise self._unavailable()
        if type(sql) is not str:
            sql, params = self._build(sql)  # type: ignore[arg-type]
        if self.tracing.enabled:
            with self.tracing.client_span("atlas.query", sql):
                return self.pool.query(sql, params, timeout)
        return self.pool.query(sql, params, timeout)

    def query_one(
        self, sql: str | Buildable, params: Params = None, *, timeout: float | None = None
    ) -> Row | None:
        """The first row of :meth:`query`, or None when there is none."""
        rows = self.query(sql, params, timeout=timeout)
        return rows[0] if rows else None

    def _build(self, query: Buildable) -> tuple[str, Params]:
        sql, params = query.build()
        return sql, list(params)

    def submit_query(
        self, sql: str, params: Params = None, *, timeout: float | None = None
    ) -> Future[list[Row]]:
        """Queue a read for a reader actor; returns a future of its rows."""
        self.check_usable()
        deadline = time.monotonic() + (self.config.default_timeout if timeout is None else timeout)
        future: Future[list[Row]] = Future(deadline, "query", sql)
        op = ReadOp(future, threading.get_ident(), self.tracing.current_context(), sql, params)
        self.pool.submit(op)
        return future

    # -- introspection -----------------------------------------------------------------

    def health(self) -> HealthReport:
        """Whether the storage serves, with the writer's and the pool's state."""
        pool = self.pool.status()
        if self._state != "running":
            return HealthReport(
                status=self._state,
                writer=None,
                pool=pool,
                restarts=0,
                failure=str(self._failure) if self._failure else None,
            )
        status = self.supervisor.status()
        writer = next((c for c in status.children if c.role == "writer"), None)
        restarting = any(c.state == "restarting" for c in status.children)
        return HealthReport(
            status="degraded" if restarting else "ok",
            writer=writer,
            pool=pool,
            restarts=status.restarts,
            failure=status.failure,
        )

    def connection_metrics(self) -> dict[str, ConnectionMetrics]:
        """Counters of every open connection (writer and readers), by connection id."""
        metrics = self.pool.connection_metrics()
        writer = self._writer_connection
        if writer is not None:
            metrics[writer.id] = writer.metrics()
        return metrics

    def __repr__(self) -> str:
        return f"<Storage {self.path!r} {self._state}>"


def open(
    path: str | os.PathLike[str],
    config: StorageConfig | None = None,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    vfs: str | None = None,
    **options: Any,
) -> Storage:
    """Open (creating if needed) the SQLite database at ``path`` and start its actors.

    Options are :class:`StorageConfig` fields (``readers=4``, ``synchronous="NORMAL"``,
    ...), applied over ``config`` or over the defaults and ``ATLAS_*`` variables.
    ``tracer_provider`` turns tracing on (the global provider is never touched); ``vfs``
    names an apsw VFS to open connections with (fault injection). Use it as a context
    manager, or call ``close()``.
    """
    base = config if config is not None else StorageConfig.from_env()
    if options:
        base = StorageConfig.from_env({}, **{**_fields(base), **options})
    return Storage(path, base, tracer_provider=tracer_provider, vfs=vfs)


def _fields(config: StorageConfig) -> dict[str, Any]:
    return asdict(config)


@atexit.register
def _close_open_storages() -> None:
    # Actors run on daemon threads; close what the program left open so queued writes
    # are committed before the interpreter exits.
    for storage in list(_open_storages):
        try:
            storage.close(timeout=5.0)
        except Exception:
            log.exception("closing %s at exit failed", storage.path)

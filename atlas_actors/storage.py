"""The storage facade: the public API over the supervision tree.

``atlas_actors.open(path)`` returns a :class:`Storage`. Writes go to the writer actor
(``db.write`` waits for the acknowledgement; ``db.writer.execute`` returns a future);
reads go through the reader pool (``db.query``); transactions borrow the writer
(``db.transaction()``); ``db.supervisor``, ``db.pool``, ``db.events``, ``db.errors`` and
``db.metrics`` expose the runtime. Starting and wiring the actors is ``runtime.py``.
"""

from __future__ import annotations

import atexit
import builtins
import functools
import logging
import os
import threading
import time
import types
import urllib.parse
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol, TypeVar

import apsw
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace

from atlas_actors.actors.pool import PoolStatus
from atlas_actors.actors.reader import ReadOp
from atlas_actors.actors.supervisor import ChildStatus
from atlas_actors.actors.writer import WriterActor
from atlas_actors.actors.writer_ops import (
    WriteAllOp,
    WriteManyOp,
    WriteOp,
    WriterOp,
    in_writer_thread,
)
from atlas_actors.config import StorageConfig
from atlas_actors.connection import (
    ConnectionInfo,
    ConnectionMetrics,
    ConnectionState,
    Params,
    WriteResult,
    no_connection,
    raw_connection,
    refuse_connection_settings,
    refuse_transaction_control,
)
from atlas_actors.errors import (
    AtlasError,
    CorruptionError,
    DeadlockError,
    ReadOnlyError,
    StatementTypeError,
    StorageUnavailable,
    ValidationError,
    built_params_error,
    built_type_error,
    not_pairs_error,
    wrap_sqlite_error,
)
from atlas_actors.future import (
    Future,
    checked_timeout,
    freeze_pairs,
    parameter_sets,
    sql_text,
    sql_type_error,
    statement_pairs,
)
from atlas_actors.handles import batch_call_attributes, end_span
from atlas_actors.query import Query
from atlas_actors.rows import Row
from atlas_actors.runtime import Runtime
from atlas_actors.transaction.transaction import Transaction, _Savepoint
from atlas_actors.wal import WalManager

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
    """``ok``; ``degraded`` (an actor restarting, readers reconnecting after a connection
    fault, the disk full, a corruption check);
    ``read_only`` (the file may not be written: reads are served, writes refused);
    ``failed`` or ``closed``."""
    writer: ChildStatus | None
    """The writer's supervision status."""
    pool: PoolStatus
    """The reader pool."""
    restarts: int
    """Actor restarts since the storage opened."""
    failure: str | None
    """Why the storage failed, degraded or is read-only, and what to do."""


class Storage(Runtime):
    """A SQLite database served by a writer actor and a pool of reader actors."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        config: StorageConfig,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: otel_metrics.MeterProvider | None = None,
        vfs: str | None = None,
    ) -> None:
        path = _absolute(os.fspath(path), vfs)
        _check_database_path(path, vfs=vfs)
        read_only: ReadOnlyError | None = None
        found = _read_only_files(path, vfs=vfs)
        if found is not None:
            stuck, journal_mode = found
            read_only = _read_only_error(path, stuck)
            log.info("%s", read_only)
            if journal_mode != "wal" and config.cache:
                # The cache learns of other processes' commits from the wal-index, which
                # a database in rollback-journal mode has not: its entries could go stale.
                config = replace(config, cache=False)
                log.info(
                    "%r is read-only and in %s journal mode, not WAL: the result cache is "
                    "off (no wal-index tells of other processes' writes)",
                    path,
                    journal_mode,
                )
        super().__init__(
            path,
            config,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            vfs=vfs,
            read_only=read_only,
        )
        # db.supervisor after close() raises what every other handle raises.
        self.supervisor.unavailable = self._unavailable
        self._cached = self.config.cache  # (the runtime may have turned it off: no wal-index)
        self.wal = WalManager(self)
        """The write-ahead log: ``checkpoint()``, ``monitor()``, ``cleanup()``, ``verify()``."""
        self.metrics.gauge("wal", self._wal_gauge)
        _open_storages.add(self)
        if not self.tracing.enabled and not self._cached and type(self).query is Storage.query:
            # No span to open, no cache to ask: db.query is the pool's read function, so
            # a point read runs in one Python frame (746 fewer instructions per read
            # than through this class's query: callgrind, one thread, 5,000 point
            # reads). What it does not serve (built queries, a closed storage) comes
            # to Storage.query.
            query = types.MethodType(Storage.query, self)
            fast = self.pool.read_function(query, self._report_query)
            functools.update_wrapper(fast, query)  # help(db.query): the public docs
            self.query = fast  # type: ignore[method-assign]

    def close(self, timeout: float | None = None) -> None:
        """Finish queued writes, stop every actor, close every connection. Idempotent.

        A transaction still open is rolled back; its owner's next call says so
        (:class:`~atlas_actors.errors.TransactionAborted` once it holds the writer
        lease: from its first write, or its first statement at ``serializable``; else
        :class:`~atlas_actors.errors.StorageClosedError`).
        """
        super().close(timeout)
        _open_storages.discard(self)

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ------------------------------------------------------------------------

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
        try:
            args = (sql, parameter_sets(seq_of_params, sql))
        except AtlasError as error:
            raise self._bad_params(error, "write_many") from None
        result: WriteResult = self._write(WriteManyOp, "write_many", sql, args, timeout)
        return result

    def write_all(
        self, statements: Sequence[tuple[str, Params]], *, timeout: float | None = None
    ) -> list[WriteResult]:
        """Run several statements as one unit (all or nothing); one result per statement."""
        if self.tracing.enabled or threading.get_ident() in self.guarded_threads:
            try:
                statements = statement_pairs(statements)
            except TypeError as error:
                if isinstance(error, StatementTypeError):
                    raise
                raise self._bad_params(not_pairs_error(statements), "write_all") from None
            freeze_pairs(statements)  # (outside the try: what params raise is their own)
            results: list[WriteResult] = self._write(
                WriteAllOp, "write_all", statements, (statements,), timeout
            )
            return results
        # _write() without a span or a guard to check: the writer handle's write_all
        # copies and checks the pairs and queues the op without the generic submit().
        try:
            return Future.get(self.writer.write_all(statements, timeout=timeout))
        except AtlasError as error:
            if not error.reported:
                self.errors.handle(error, {"operation": "write_all"})
            raise

    def _bad_params(self, error: AtlasError, operation: str) -> AtlasError:
        """Report ``error``, refused at the call, and return it to raise."""
        self.errors.handle(error, {"operation": operation})
        return error

    def run_in_writer(
        self, fn: Callable[[apsw.Connection], T], *, timeout: float | None = None
    ) -> T:
        """Run ``fn(connection)`` inside the writer (a unit of work, in its own savepoint).

        See :meth:`WriterHandle.run` for what ``fn`` may do.
        """
        name = getattr(fn, "__qualname__", repr(fn))
        if self._state != "running":
            self.check_writable()  # (closed or failed: said so, not as a deadlock below)
        self._guard(f"run_in_writer {name}")
        with self.tracing.client_span("atlas.run_in_writer"):
            try:
                return self.writer.run(fn, timeout=timeout).get()
            except AtlasError as error:
                self.errors.handle(error, {"operation": "run_in_writer"})
                raise

    def _write(
        self,
        op_class: type[WriterOp],
        verb: str,
        sql: str | Sequence[tuple[str, Params]],
        args: tuple[Any, ...],
        timeout: float | None,
    ) -> Any:
        """Send a write op and wait for its acknowledgement (the sync API's one path)."""
        waited = None
        if threading.get_ident() in self.guarded_threads:
            if self._state != "running":
                self.check_writable()  # (closed or failed: said so, not as a deadlock below)
            waited = self._guard(f"{verb} {sql_text(sql)!r}", record=True)
        try:
            if self.tracing.enabled:
                with self.tracing.client_span(
                    f"atlas.{verb}", sql_text(sql), **batch_call_attributes(op_class, sql, args)
                ):
                    future = self.writer.submit(op_class, verb, sql, args, timeout, traced=False)
                    return Future.get(future)
            future = self.writer.submit(op_class, verb, sql, args, timeout, traced=False)
            # Future.get, not WriterFuture.get: the writer-thread check was made above.
            return Future.get(future)
        except AtlasError as error:
            if not error.reported:
                self.errors.handle(error, {"operation": verb})
            raise
        finally:
            if waited is not None:
                waited()  # (its wait for the lease, recorded in the wait-for graph)

    def _guard(self, what: str, *, record: bool = False) -> Callable[[], None] | None:
        """Refuse a wait on the writer that could never end (DESIGN guarantee 6).

        In a thread holding something in the wait-for graph (a pinned reader), the wait
        behind the writer lease is checked there too; ``record``: and recorded, so that
        the lease holder's wait for that reader sees the cycle. Returns what ends the
        recorded wait, or None.
        """
        me = threading.get_ident()
        try:
            self._check_self_wait(what)
            if me in self.lease_owners:
                return None  # (a dropped transaction's: the write waits for its expiry)
            return self._check_lease_wait(me, record=record)
        except DeadlockError as error:
            self.errors.handle(error, {"operation": what})
            raise

    def _check_self_wait(self, what: str) -> None:
        me = threading.get_ident()
        if in_writer_thread():
            raise DeadlockError(
                ["writer thread", what, "writer thread"],
                "code running inside the writer (run_in_writer) cannot wait for another "
                "write: use the connection it was given instead",
            )
        holder = self.lease_owners.get(me)
        if holder is not None:
            if self.transactions.dropped(holder):
                # Its owner dropped it unended: nothing can use it any more, so its
                # lease is taken back now, and the write waits for that instead.
                self._expire_lease(holder)
                return
            raise DeadlockError(
                [
                    f"thread {me}",
                    f"holds the writer lease (transaction {holder})",
                    what,
                    "waits behind that lease",
                    f"thread {me}",
                ],
                f"a plain write would wait behind transaction {holder}, which this thread "
                "holds: run it through the transaction (tx.execute) or commit first",
            )

    # -- reads -------------------------------------------------------------------------

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
        try:
            if type(sql) is not str:
                if params is not None:  # (they would be dropped for the query's own)
                    raise built_params_error()
                sql, params = self._build(sql)  # type: ignore[arg-type]
            if timeout is not None:
                timeout = checked_timeout(timeout)  # (a cache hit would not look at it)
            if self.tracing.enabled:
                with self.tracing.client_span("atlas.query", sql):
                    return self._read(sql, params, timeout)
            if self._cached:
                return self.cache.read(sql, params, timeout)
            return self.pool.query(sql, params, timeout=timeout)
        except AtlasError as error:
            self.errors.handle(error, {"operation": "query"})
            raise

    def _report_query(self, error: AtlasError) -> None:
        self.errors.handle(error, {"operation": "query"})

    def _read(self, sql: str, params: Params, timeout: float | None) -> list[Row]:
        if self._cached:
            return self.cache.read(sql, params, timeout)
        return self.pool.query(sql, params, timeout=timeout)

    def query_one(
        self, sql: str | Buildable, params: Params = None, *, timeout: float | None = None
    ) -> Row | None:
        """The first row of :meth:`query`, or None when there is none."""
        rows = self.query(sql, params, timeout=timeout)
        return rows[0] if rows else None

    def _build(self, query: Buildable) -> tuple[str, Params]:
        if isinstance(query, Query):
            # Checked against the live schema: unknown names fail with a suggestion.
            sql, bound = query.build(schema=self.schema())
            return sql, list(bound)
        try:
            build = query.build
        except AttributeError:  # (None, a number, bytes: not a statement)
            raise sql_type_error(query) from None
        built = build()
        try:
            sql, params = built
            if type(sql) is not str:
                raise TypeError
            return sql, list(params)
        except (TypeError, ValueError):  # (not a pair of SQL text and values)
            raise built_type_error(query, built) from None

    def submit_query(
        self, sql: str, params: Params = None, *, timeout: float | None = None
    ) -> Future[list[Row]]:
        """Queue a read for a reader actor; returns a future of its rows."""
        self.check_usable()
        try:
            refuse_transaction_control(sql)  # BEGIN would pin a shared reader's snapshot
            refuse_connection_settings(sql)  # (a reader's settings hold for later reads)
        except TypeError:
            raise sql_type_error(sql, built=False) from None
        deadline = time.monotonic() + (
            self.config.default_timeout if timeout is None else checked_timeout(timeout)
        )
        future: Future[list[Row]] = Future(deadline, "query", sql)
        context = None
        tracing = self.tracing
        if tracing.enabled:
            span = tracing.start_client_span("atlas.submit_query", sql)
            context = trace.set_span_in_context(span) if span is not None else None
            if span is not None:
                future.add_done_callback(functools.partial(end_span, span))
        op = ReadOp(future, threading.get_ident(), context, sql, params)
        self.pool.submit(op)
        return future

    # -- transactions ------------------------------------------------------------------

    def transaction(
        self, isolation: str = "serializable", *, timeout: float | None = None
    ) -> Transaction | _Savepoint:
        """``with db.transaction(isolation=...) as tx:``; nested in one thread: a savepoint.

        Commits on leaving the block, rolls back on an exception. ``timeout`` bounds how
        long it may hold the writer (``transaction_timeout`` by default).
        """
        return self.transactions.transaction(isolation, timeout=timeout)

    # -- introspection -----------------------------------------------------------------

    def health(self) -> HealthReport:
        """Whether the storage serves, with the writer's and the pool's state."""
        pool = self.pool.status()
        if self._state != "running":
            return HealthReport(
                status=self._state,
                writer=None,
                pool=pool,
                restarts=int(self.metrics.get("restarts")),
                failure=str(self._failure) if self._failure else None,
            )
        status = self.supervisor.status()
        writer = next((c for c in status.children if c.role == "writer"), None)
        restarting = any(c.state == "restarting" for c in status.children)
        blocked = self.write_block
        fault = self.pool.fault()
        degraded = (
            restarting
            or self.disk_full
            or fault is not None
            or (blocked is not None and not self.read_only)
        )
        reason = status.failure or (str(blocked) if blocked else None)
        if self.disk_full and reason is None:
            reason = "the disk is full: writes are refused until space returns"
        if fault is not None and reason is None:
            reason = fault.describe(time.monotonic())
        return HealthReport(
            status="degraded" if degraded else "read_only" if self.read_only else "ok",
            writer=writer,
            pool=pool,
            restarts=status.restarts,
            failure=reason,
        )

    def _wal_gauge(self) -> dict[str, float]:
        stats = self.wal.monitor()
        return {
            "bytes": stats.size,
            "frames": stats.frames,
            "checkpoints": stats.checkpoints,
            # Once a checkpoint copied every frame, the next write starts the file over
            # (and truncates it to journal_size_limit): its size is no backlog then.
            "pending_bytes": stats.size if stats.frames else 0,
        }

    def connections(self) -> tuple[ConnectionInfo, ...]:
        """Every connection (writer first, then each reader role's) with its state.

        Each :class:`~atlas_actors.ConnectionInfo` has its id, role, state, metrics and
        last use; reader roles come by number. A role whose connection is being opened
        or reopened is CONNECTING (``id=None`` until one is open), one being replaced
        by a recycle is RECYCLING; see
        :class:`~atlas_actors.ConnectionState` for what each state means. Works on a
        closed storage too (everything CLOSED, but a connection still lent: ACTIVE until
        given back). Costs the read path nothing.
        """
        return (self._writer_info(), *self.pool.connection_infos())

    def _writer_info(self) -> ConnectionInfo:
        writer = self.writer_connection
        if writer is None or writer.state in (ConnectionState.CLOSED, ConnectionState.FAILED):
            if self._state == "running":
                # A crashed writer waiting out its backoff, or its next incarnation
                # opening (and checking) its connection: no connection serves yet.
                return no_connection("writer", ConnectionState.CONNECTING)
            if writer is None:
                return no_connection("writer", ConnectionState.CLOSED)
            return writer.info()
        state = writer.state
        owner = writer.owner
        # (Its actor's flag, read without touching the connection: apsw refuses a
        # connection used from two threads at once.)
        if (
            state is ConnectionState.IDLE
            and isinstance(owner, WriterActor)
            and owner.in_write_transaction
        ):
            state = ConnectionState.ACTIVE  # a batch or a transaction's lease is open
        return writer.info(state)

    def connection_metrics(self) -> dict[str, ConnectionMetrics]:
        """Counters of every open connection (writer and readers), by connection id."""
        metrics = self.pool.connection_metrics()
        writer = self.writer_connection
        if writer is not None:
            metrics[writer.id] = writer.metrics()
        return metrics

    def stop_and_verify(self, error: CorruptionError) -> None:
        """Corruption was reported: refuse writes, check the file, resume if it is sound."""
        with self._lock:
            if self.write_block is not None or self._state != "running":
                return
            self.write_block = CorruptionError(
                f"writes are stopped while the database is verified after: {error}",
                sql=error.sql,
                result_code=error.result_code,
                extended_result_code=error.extended_result_code,
            )
        self.events.emit("degraded", "storage", reason="corruption", error=str(error))
        threading.Thread(target=self._verify, name=f"verify:{self.name}", daemon=True).start()

    def _verify(self) -> None:
        verdict = self.errors.verify(full=True)
        for delay in (0.5, 1.0, 2.0, 4.0):  # a check that could not run is tried again
            if not verdict.unchecked or self._state != "running":
                break
            time.sleep(delay)
            verdict = self.errors.verify(full=True)
        if verdict.ok:
            self.resume_writes()
            return
        if verdict.unchecked:
            # The check itself could not run (I/O, a lock): that says nothing of the
            # file. Writes stay stopped; db.errors.recover() checks again.
            log.error("could not verify the database: %s", verdict.problems[:3])
            return
        self.write_block = CorruptionError(
            f"the database is damaged (integrity_check: {list(verdict.problems[:3])}); "
            "writes stay stopped: restore from a backup, or copy the data out"
        )
        log.error("integrity_check failed: %s", verdict.problems[:10])

    def resume_writes(self) -> bool:
        """After a check of the file passed: lift the stop on writes; False if none.

        Only a stop for corruption: a read-only file stays read-only.
        """
        with self._lock:
            if not isinstance(self.write_block, CorruptionError):
                return False
            self.write_block = None
        log.warning("integrity_check passed after a corruption report: writes resumed")
        self.events.emit("recovered", "storage", reason="corruption")
        return True

    def __repr__(self) -> str:
        return f"<Storage {self.path!r} {self._state}>"


def _check_database_path(path: str, *, vfs: str | None = None) -> None:
    """Refuse, before SQLite is asked, a path a storage cannot be opened at.

    SQLite says only "unable to open database file" (or, for ``:memory:``, that WAL
    could not be set): this names what is wrong with the path and what to do. A
    storage needs a file, in a directory where it may create the ``-wal`` and ``-shm``
    files WAL keeps next to the database. With a ``vfs`` (which may not use the file
    system) and for ``file:`` URIs only the in-memory check is made.
    """
    lowered = path.lower()
    if (
        not path.strip()
        or lowered == ":memory:"
        or (path.startswith("file:") and (":memory:" in lowered or "mode=memory" in lowered))
    ):
        raise ValidationError(
            f"atlas_actors.open({path!r}): a storage needs a database file (its writer and "
            "its readers are separate connections, and WAL keeps -wal and -shm files "
            "next to it), not a temporary or in-memory database; pass a file path, e.g. "
            "a file in a temporary directory for tests"
        )
    if vfs is not None or path.startswith("file:"):
        return
    if os.path.isdir(path):
        raise ValidationError(
            f"atlas_actors.open({path!r}): that is a directory; pass the path of a database "
            f"file, e.g. {os.path.join(path, 'atlas.db')!r}"
        )
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValidationError(
            f"atlas_actors.open({path!r}): the directory {directory!r} does not exist (the "
            "database is created there, with the -wal and -shm files WAL keeps next to "
            "it); create it first (os.makedirs) or pass a path in an existing directory"
        )
    if os.access(directory, os.W_OK | os.X_OK):
        return
    exists = os.path.exists(path)
    wal_files = [f"{path}-wal", f"{path}-shm"]
    if exists and all(os.access(name, os.R_OK | os.W_OK) for name in wal_files):
        return  # (another process has it open: WAL works, read-write or read-only)
    if exists and not os.access(path, os.W_OK) and not _in_wal_mode(path):
        return  # a read-only file in rollback-journal mode: it is read as it is
    missing = [
        os.path.basename(name)
        for name in (path, *wal_files)
        if not os.access(name, os.R_OK | os.W_OK)
    ]
    needed = (
        "the -wal and -shm files WAL keeps next to the database"
        if exists
        else "the database file, and the -wal and -shm files WAL keeps next to it"
    )
    ship = ""
    if exists and not os.access(path, os.W_OK):
        ship = (
            "; or, to serve it read-only from here, take it out of WAL mode where it can "
            f"be written first (sqlite3 {os.path.basename(path)} "
            "'PRAGMA journal_mode=DELETE')"
        )
    raise StorageUnavailable(
        f"cannot open {path!r}: its directory {directory!r} is not writable, and "
        f"SQLite must create {needed} there (missing or not writable: "
        f"{', '.join(missing)}); make the directory writable for this user, or move "
        f"the database to a writable directory{ship}"
    )


def _absolute(path: str, vfs: str | None) -> str:
    """``path`` made absolute: the storage keeps its file wherever the process goes.

    Every restarted actor opens its connection again, after any ``os.chdir``. A
    relative ``file:`` URI is made absolute too; a path given with a ``vfs`` (which may
    not name a file at all), ``:memory:`` and "" are left as they are.
    """
    if vfs is not None or not path.strip() or path.lower() == ":memory:":
        return path
    if not path.startswith("file:"):  # (SQLite: lower case only)
        return os.path.abspath(path)
    rest = path[5:]
    if rest.startswith("/") or rest.lower().startswith(":memory:"):
        return path  # absolute (file:/a, file:///a, file://host/a), or in memory
    return f"{path[:5]}{urllib.parse.quote(os.getcwd())}/{rest}"


def _in_wal_mode(path: str) -> bool:
    """Whether the database file's header says WAL (https://sqlite.org/fileformat2.html)."""
    try:
        with builtins.open(path, "rb") as file:
            header = file.read(20)
    except OSError:
        return False
    return len(header) == 20 and header[18:20] == b"\x02\x02"


def _read_only_files(path: str, *, vfs: str | None = None) -> tuple[list[str], str] | None:
    """What keeps an existing database read-only, with its journal mode; None if nothing.

    SQLite opens a file this process may not write (or a ``mode=ro`` URI) read-only
    without a word (https://sqlite.org/c3ref/db_readonly.html): ask it, opening the file
    as the writer does but without creating it. A writable file whose existing ``-wal``
    or ``-shm`` file is not writable is read-only as well (SQLite opens those read-only
    too), and those files are named. None for a writable or missing file, and for one
    that cannot be opened at all (the writer's open says why).

    A file that is no database at all is refused here (typed, as the writer's open
    would), before the storage makes anything next to it (its cache directory).
    """
    flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_URI
    try:
        connection = raw_connection(path, flags, vfs)
    except apsw.Error:
        return None
    try:
        try:
            connection.pragma("schema_version")  # reads the header: is it a database?
        except apsw.NotADBError as error:
            raise wrap_sqlite_error(error, f"open {path}") from error
        except apsw.Error:
            pass  # (busy, say: the writer's open deals with it)
        if connection.readonly("main"):
            return [], str(connection.pragma("journal_mode")).lower()
    except apsw.Error as error:
        raise wrap_sqlite_error(error, f"open {path}") from error
    finally:
        connection.close()
    if vfs is not None or path.startswith("file:"):
        return None
    stuck = [
        name
        for name in (f"{path}-wal", f"{path}-shm")
        if os.path.exists(name) and not os.access(name, os.W_OK)
    ]
    return (stuck, "wal") if stuck else None


def _read_only_error(path: str, stuck: Sequence[str] = ()) -> ReadOnlyError:
    """What every write to the read-only database at ``path`` raises.

    ``stuck``: the ``-wal``/``-shm`` files that keep a writable file read-only.
    """
    file = _file_name(path)
    asked = _read_only_uri_parameters(path)
    if asked:
        return ReadOnlyError(
            f"{path!r} is read-only: its URI asks for it ({' and '.join(asked)}). This "
            "storage serves reads (db.query, repeatable_read transactions) and refuses "
            f"every write. To write, open the storage with {file!r} or a URI without "
            f"{' and '.join(asked)}",
            result_code=apsw.SQLITE_READONLY,
        )
    directory = os.path.dirname(os.path.abspath(file))
    what = " and ".join(stuck) if stuck else "it"
    return ReadOnlyError(
        f"{path!r} is read-only (SQLite could not open {what} for writing): this "
        "storage serves reads (db.query, repeatable_read transactions) and refuses every "
        "write. To write, make the file and its directory writable for this user (e.g. "
        f"chmod u+w {' '.join([file, *stuck, directory])}), then open the storage again",
        result_code=apsw.SQLITE_READONLY,
    )


def _read_only_uri_parameters(path: str) -> list[str]:
    """The parameters of a ``file:`` URI that make SQLite open it read-only, as given."""
    if not path.startswith("file:"):
        return []
    query = urllib.parse.parse_qsl(urllib.parse.urlsplit(path).query)
    return [
        f"{name}={value}"
        for name, value in query
        if (name == "mode" and value == "ro") or (name == "immutable" and _uri_true(value))
    ]


def _uri_true(value: str) -> bool:
    """A URI parameter's boolean as SQLite reads it (sqlite3_uri_boolean)."""
    lowered = value.lower()
    if lowered in ("yes", "true", "on"):
        return True
    return lowered.lstrip("-").isdigit() and int(lowered) != 0


def _file_name(path: str) -> str:
    """The file a path or a ``file:`` URI names (for messages)."""
    if not path.startswith("file:"):
        return path
    name = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
    return name or path


def open(
    path: str | os.PathLike[str],
    config: StorageConfig | None = None,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: otel_metrics.MeterProvider | None = None,
    vfs: str | None = None,
    **options: Any,
) -> Storage:
    """Open (creating if needed) the SQLite database at ``path`` and start its actors.

    Options are :class:`StorageConfig` fields (``readers=4``, ``synchronous="NORMAL"``,
    ...), applied over ``config`` or over the defaults and ``ATLAS_*`` variables.
    ``tracer_provider`` turns tracing on and ``meter_provider`` exports the metrics as
    observable instruments (``atlas.<metric>``; the global providers are never
    touched); ``vfs`` names an apsw VFS to open connections with (fault injection).
    Use it as a context manager, or call ``close()``.
    """
    if config is None:
        # Defaults, ATLAS_* variables and options merged, then validated once.
        base = StorageConfig.from_env(**options)
    elif options:
        base = StorageConfig.from_env({}, **{**asdict(config), **options})
    else:
        base = config
    return Storage(
        path, base, tracer_provider=tracer_provider, meter_provider=meter_provider, vfs=vfs
    )


@atexit.register
def _close_open_storages() -> None:
    # Actors run on daemon threads; close what the program left open so queued writes
    # are committed before the interpreter exits.
    for storage in list(_open_storages):
        try:
            storage.close(timeout=5.0)
        except Exception:
            log.exception("closing %s at exit failed", storage.path)

"""The runtime under the storage facade: starting, wiring and stopping the actors.

:class:`Runtime` owns the supervisor, the writer's mailbox, the reader pool, the
transaction manager, metrics and error handling, and the state the deadlock guard and
the transactions read (which threads hold the writer lease, the writer version). The
public API is :class:`atlas_actors.storage.Storage`, its subclass.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import apsw
import pykka
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from pykka._envelope import Envelope

from atlas_actors.actors.base import Mailbox, Op, RoleActor
from atlas_actors.actors.cache import CacheActor
from atlas_actors.actors.pool import ReaderPool
from atlas_actors.actors.reader import ReaderActor
from atlas_actors.actors.supervisor import ChildFailed, SupervisorActor
from atlas_actors.actors.writer import WriterActor, WriterHooks
from atlas_actors.actors.writer_ops import DiskFullFound, LeaseExpired, WriterCounters
from atlas_actors.cache.changes import ExternalChanges, ShmCounter, database_file
from atlas_actors.cache.dependencies import RowImage
from atlas_actors.cache.disk import fingerprint
from atlas_actors.cache.manager import CacheManager
from atlas_actors.cache.statements import StatementAnalyses
from atlas_actors.config import StorageConfig
from atlas_actors.connection import ConnectionState, TrackedConnection, open_connection
from atlas_actors.errors import (
    AtlasError,
    CorruptionError,
    DeadlockError,
    DiskFullError,
    OperationTimeout,
    ReadOnlyError,
    StorageClosedError,
    StorageUnavailable,
)
from atlas_actors.events import EventBus
from atlas_actors.handles import SupervisorHandle, WriterHandle
from atlas_actors.query import Optimizer, Schema, WorkloadRecorder
from atlas_actors.recovery import ErrorHandler
from atlas_actors.telemetry.alerting import Alerts
from atlas_actors.telemetry.default_alerts import default_rules
from atlas_actors.telemetry.export import Observed, observe
from atlas_actors.telemetry.metrics import Metrics
from atlas_actors.telemetry.tracing import Tracing
from atlas_actors.transaction.lease import Lease
from atlas_actors.transaction.traced import TracedTransaction
from atlas_actors.transaction.transaction import LEASE, Transaction, TransactionManager

__all__ = ["Runtime"]

log = logging.getLogger("atlas_actors.storage")
T = TypeVar("T")

_COLLECT_AFTER = 1.0
"""Seconds a lease is held before the tick runs one garbage collection for it."""


class Runtime:
    """Starts the supervision tree for one database file and keeps it wired."""

    def __init__(
        self,
        path: str,
        config: StorageConfig,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: otel_metrics.MeterProvider | None = None,
        vfs: str | None = None,
        read_only: ReadOnlyError | None = None,
    ) -> None:
        self.path = path
        self.database_file: str | None = None
        """The file SQLite opens for ``path`` (absolute; a ``file:`` URI resolved) while
        the cache is on: what the cache's fingerprint looks at, its default directory
        is named after (None with the cache off)."""
        if config.cache:
            self.database_file = database_file(path, vfs)
            if self.database_file is None:
                config = replace(config, cache=False)
                log.warning(
                    "the result cache is off for %r: SQLite names no file for it, so no "
                    "wal-index would tell this storage of other processes' writes; open "
                    "a database file (a path or a file: URI naming one) to cache reads",
                    path,
                )
        self.config = config
        self.vfs = vfs
        """The apsw VFS every connection opens with (None: SQLite's default)."""
        self.name = os.path.basename(path) or path
        self.events = EventBus()
        """Lifecycle events: ``db.events.on("restart", fn)``."""
        self.tracing = Tracing(tracer_provider, path)
        self.metrics = Metrics()
        """Counters and gauges: ``db.metrics.snapshot()``."""
        self.errors = ErrorHandler(self, self.metrics)  # type: ignore[arg-type]
        """Error analysis, logging and recovery: ``db.errors.analyze(exc)``."""
        self.writer_counters = WriterCounters()
        self.writer_version: tuple[int, int, int] = (0, 0, 0)
        """(commits by this storage, SQLite data_version, writer incarnation): changes with
        every commit, and with every writer restart (see ``WriterHooks.version``)."""
        self.writer_threads: set[int] = set()
        """Thread ids of writer incarnations (code there must not wait on the writer)."""
        self.lease_owners: dict[int, int] = {}
        """Thread id → transaction id, for threads holding the writer lease."""
        self._leases: dict[int, Lease] = {}  # granted, by transaction id
        self._expiry_sent: set[int] = set()
        self._collected_for: set[int] = set()
        """Leases a garbage collection ran for (see ``_tick``; forgotten as they end)."""
        self.guarded_threads: set[int] = set()
        """writer_threads, lease owners and threads pinning a reader (holders in the
        wait-for graph): the only threads the deadlock guard checks."""
        self.read_only = read_only is not None
        """True when SQLite can open the file only for reading: writes are refused."""
        self.write_block: AtlasError | None = read_only
        """Set while writes are refused (a read-only file, a corruption check); each
        write raises a copy of it in its caller, before anything is queued."""
        self.disk_full = False
        """True while the writer refuses writes because the disk is full."""
        self.writer_connection: TrackedConnection | None = None
        self._state = "starting"
        self._closed = threading.Event()
        """Set once close() has finished (a second close() waits for the first)."""
        self._failure: StorageUnavailable | None = None
        self._lock = threading.Lock()
        self._writer_ready = threading.Event()
        self._start_error: BaseException | None = None
        self._reader_ids = itertools.count()
        self.workload = WorkloadRecorder()
        """Every read's statement and latency, for ``optimizer.advise()``."""
        self.statements = StatementAnalyses()
        """What this database's statements read and write (the cache's invalidation)."""
        self.pool = ReaderPool(
            config=config,
            events=self.events,
            grow=self._grow_reader,
            retire=self._retire_reader,
            record_query=self.workload.record,
            statements=self.statements,
            check_wait=self._check_reader_wait,
            report=self.errors.handle,
            tracing=self.tracing,
        )
        """The reader pool: ``acquire()``, ``status()``, ``resize(n)``."""
        self.optimizer = Optimizer(
            read=self._optimizer_read, write=self._run_ddl, workload=self.workload
        )
        """Plans, costs, index advice and rewrites: ``db.optimizer.analyze(sql)``."""
        self._schema: tuple[int, Schema] | None = None
        self._schema_generation = 0
        self.cache = CacheManager(
            config,
            self.pool,
            changes=None,
            # Next to the file SQLite opens, whatever names it (a file: URI, say).
            directory=config.cache_dir or f"{self.database_file or os.path.abspath(path)}.cache",
        )
        """The result cache: ``db.cache.stats()``, ``invalidate(pattern)``, ``warm()``."""
        self._cache_started = False
        self._shm: ShmCounter | None = None
        self._external_schema: int | None = None
        """The schema cookie when another process's commit was last looked at."""
        self._shm_seen = 0
        """The wal-index counter at the last tick (without the cache: see _watch_schema)."""
        self.transactions = TransactionManager(
            self,  # type: ignore[arg-type]
            # Spans cost a storage without tracing nothing: its transactions make none.
            TracedTransaction if self.tracing.enabled else Transaction,
        )
        """Transactions: ``begin()``, ``run(fn)``, ``status()``."""
        self.transactions.graph.track(LEASE, self.lease_owners, "transaction {}")
        # A thread pinning a reader (a snapshot) can close a cycle too: guarded meanwhile.
        self.transactions.graph.watch(self.guarded_threads.add, self._unguard)
        self.alerts = Alerts(
            rules=default_rules(config),
            snapshot=self.metrics.snapshot,
            events=self.events,
            interval=config.alert_interval,
            db_name=self.name,
        )
        """Alert rules over the metrics: ``rules()``, ``add_rule()``, ``check()``, ``firing()``."""
        self._supervisor_ref = SupervisorActor.start(
            config=config,
            events=self.events,
            on_escalate=self._on_escalate,
            on_tick=self._tick,
            db_name=self.name,
            on_restart=self._count_restart,
        )
        self._supervisor = self._supervisor_ref.proxy()
        self.supervisor = SupervisorHandle(self._supervisor_ref, config.default_timeout)
        self.supervisor.report = lambda error, what: self.errors.handle(error, {"operation": what})
        """Supervision status and fault injection."""
        self._writer_mailbox = Mailbox("writer", config.mailbox_size)
        self._writer_mailbox.refuse_wait = self._refuse_room_wait
        self.writer = WriterHandle(self, self._writer_mailbox)  # type: ignore[arg-type]
        """The writer: ``db.writer.execute(sql, params)`` → future."""
        self._register_gauges()
        self.events.on("degraded", self._degraded)
        self.events.on("recovered", self._recovered)
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        self._state = "running"
        self._observed: Observed | None = None
        if meter_provider is not None:
            self._observed = observe(meter_provider, path, self._exported_snapshot)

    def _exported_snapshot(self) -> dict[str, float] | None:
        """The metrics for the OpenTelemetry export; None once closing (not observed)."""
        if self._state in ("closing", "closed"):
            return None
        return self.metrics.snapshot()

    # -- start and stop ----------------------------------------------------------------

    def _start(self) -> None:
        timeout = self.config.default_timeout
        if self.config.cache:
            # First the cache: it must see the files as the last session left them.
            self._supervisor.add_child(
                "cache", self._make_cache, Mailbox("cache", self.config.mailbox_size)
            ).get(timeout=timeout)
            self.cache.ready.wait(timeout)  # L1 attached (warming goes on by itself)
        self._supervisor.add_child("writer", self._make_writer, self._writer_mailbox).get(
            timeout=timeout
        )
        # Readers open after the writer has put the file in WAL mode.
        if not self._writer_ready.wait(timeout):
            raise OperationTimeout("starting the writer", timeout, applied=None)
        if self._start_error is not None:
            raise self._start_error
        try:
            self._shm = ShmCounter(self.path, self.vfs)
        except OSError as error:
            self._shm = None
            if self.config.cache:
                self._cache_off(str(error))
        if self._shm is not None:
            self._external_schema = self._shm.schema_version()
            self._shm_seen = self._shm()
        if self.config.cache and self._shm is not None:
            self.cache.on_other_process = self._other_process_committed
            self.cache.external = ExternalChanges(self._shm)  # (its count: from now on)
            resumed, self.cache.resumed_files = self.cache.resumed_files, None
            if resumed is not None and fingerprint(self.database_file or self.path) != resumed:
                # Another process committed between the cache trusting the last session's
                # entries and the count above: nothing counted it.
                self.cache.invalidate_all("another process committed while this one opened")
        for _ in range(self.config.readers):
            self._add_reader().get(timeout=timeout)
        deadline = time.monotonic() + timeout
        while self.pool.status().total < self.config.readers:
            if self._start_error is not None:
                raise self._start_error
            if time.monotonic() > deadline:
                raise OperationTimeout("starting the readers", timeout, applied=None)
            time.sleep(0.001)

    def _cache_off(self, why: str) -> None:
        """Turn the result cache off (before any read): no wal-index to watch.

        Without the wal-index counter nothing tells this storage of other processes'
        commits, so a cached result could outlive one: the cache stays off for the
        session, and L2 is recorded as not to be trusted (``actors/cache.py``).
        """
        log.warning(
            "the result cache is off for %r: the wal-index (the -shm file whose change "
            "counter tells of other processes' writes) cannot be watched (%s). Reads go "
            "to SQLite. To cache, open a WAL database file on a local file system, by "
            "its path or a file: URI naming it, through a VFS that keeps the -shm file "
            "next to it (SQLite's default does)",
            self.path,
            why,
        )
        self.config = replace(self.config, cache=False)
        self.cache.detach(self.cache.l1)  # reads bypass the levels from now on
        self._supervisor.remove_child("cache").get(timeout=self.config.default_timeout)

    def _connect(self, *, writer: bool) -> apsw.Connection:
        config = self.config
        # The writer of a read-only file opens it as the readers do: it writes nothing
        # (writes are refused before they reach it), nor can it set WAL mode.
        writer = writer and not self.read_only
        return open_connection(
            self.path,
            writer=writer,
            synchronous=config.synchronous,
            busy_timeout=config.busy_timeout,
            busy_backoff=(config.busy_backoff_base, config.busy_backoff_cap),
            on_busy=self._count_busy,
            cache_size_kib=config.cache_size_kib,
            mmap_bytes=config.reader_mmap_bytes,
            max_value_bytes=config.max_value_bytes,
            max_page_count=config.max_page_count if writer else 0,
            journal_size_limit=config.wal_size_limit,
            vfs=self.vfs,
        )

    def _count_busy(self, delay: float) -> None:
        self.metrics.add("busy_retries")
        self.metrics.add("busy_wait_seconds", delay)

    def _make_writer(self, role: str, incarnation: int, mailbox: Mailbox) -> RoleActor:
        return WriterActor(
            config=self.config,
            events=self.events,
            tracing=self.tracing,
            counters=self.writer_counters,
            hooks=WriterHooks(
                began=self._writer_began,
                will_commit=self._writer_will_commit,
                committed=self._writer_committed,
                commit_failed=self._writer_commit_failed,
                track_tables=self.config.cache,
                wal_change=self._wal_change,
                wants_rows=self.cache.wants_row_images,
                connected=self._writer_connected,
                schema_changed=self._schema_changed,
                disconnected=self._writer_disconnected,
                version=self._set_version,
                error=self._writer_error,
                corruption=self._corruption,
                disk_full=lambda: self.disk_full,
                lease_granted=self._lease_granted,
                lease_ended=self._lease_ended,
                lease_passed=self._lease_passed,
                hold_reads=self.pool.hold_reads,
                write_block=lambda: self.write_block,
            ),
            connect=lambda: self._connect(writer=True),
            statements=self.statements,
            role=role,
            incarnation=incarnation,
            mailbox=mailbox,
            db_name=self.name,
            on_failure_report=self._report_failure,
        )

    def _make_cache(self, role: str, incarnation: int, mailbox: Mailbox) -> RoleActor:
        first = not self._cache_started
        self._cache_started = True
        return CacheActor(
            config=self.config,
            manager=self.cache,
            database=self.database_file or self.path,
            first_start=first,
            role=role,
            incarnation=incarnation,
            mailbox=mailbox,
            db_name=self.name,
            on_failure_report=self._report_failure,
        )

    def _make_reader(self, role: str, incarnation: int, mailbox: Mailbox) -> RoleActor:
        return ReaderActor(
            config=self.config,
            events=self.events,
            tracing=self.tracing,
            pool=self.pool,
            connect=lambda: self._connect(writer=False),
            role=role,
            incarnation=incarnation,
            mailbox=mailbox,
            db_name=self.name,
            on_failure_report=self._report_failure,
        )

    def _add_reader(
        self, on_error: Callable[[Exception], None] | None = None
    ) -> pykka.Future[None]:
        role = f"reader-{next(self._reader_ids)}"
        mailbox = Mailbox(role, self.config.mailbox_size)
        self.pool.reader_starting(role)  # CONNECTING in db.connections() until it is ready

        def failed(error: Exception) -> None:
            self.pool.reader_gone(role)
            if on_error is not None:
                on_error(error)

        future: pykka.Future[None] = self._supervisor.add_child(
            role, self._make_reader, mailbox, failed
        )
        return future

    def _grow_reader(self) -> bool:
        """Ask for one more reader, without waiting; False if it was not even asked for.

        The pool may call this holding its lock, so nothing here may take that lock: a
        reader that cannot start is reported from the supervisor's thread
        (:meth:`_growth_failed`), so that the pool stops counting it as starting (or it
        would never grow again) and waits before trying again.
        """
        if self._state != "running" or not self._supervisor_ref.is_alive():
            return False
        self._add_reader(on_error=self._growth_failed)
        return True

    def _growth_failed(self, error: BaseException | None) -> None:
        log.warning("the reader pool could not grow (it will try again): %s", error)
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
        if incarnation == 1 and role.startswith("reader-") and not self.pool.was_ready(role):
            # A reader added later (growth, resize) that never opened its connection (too
            # many open files, say): the pool did not grow. Restarting it until the
            # restart intensity escalates would fail a storage whose readers all work.
            self._growth_failed(error)
            self.pool.reader_gone(role)
            with contextlib.suppress(pykka.ActorDeadError):  # closing: nothing to remove
                self._supervisor.remove_child(role)
            return
        try:
            self._supervisor_ref.tell(ChildFailed(role, incarnation, error))
        except pykka.ActorDeadError:
            log.debug("supervisor gone; failure of %s not reported", role)

    def _on_escalate(self, error: StorageUnavailable) -> None:
        # The pool first: db.query's fast path (no cache, no tracing) checks only the
        # pool, so it must refuse before the storage reports itself failed.
        self.pool.close(error)
        self.transactions.close(error, 0.0)  # (pinned snapshots: their next call ends them)
        with self._lock:
            self._failure = error
            if self._state == "running":
                self._state = "failed"
        # The supervisor ticks no more once failed: evaluate now, so storage_failed fires.
        try:
            self.alerts.check()
        except Exception:
            log.exception("evaluating the alert rules after the failure failed")

    def close(self, timeout: float | None = None) -> None:
        """Finish queued writes, stop every actor, close every connection. Idempotent.

        A call while another thread closes the storage returns once that close has
        finished (or after ``timeout``): the file is then the storage's no longer.
        """
        timeout = self.config.default_timeout if timeout is None else timeout
        with self._lock:
            closing = self._state in ("closing", "closed")
            if not closing:
                self._state = "closing"
        if closing:
            self._closed.wait(timeout + 1)  # (the first close's own bound, and a margin)
            return
        closed = StorageClosedError(self.path)
        # New writes are refused; queued ones are handled before the writer's stop.
        self._writer_mailbox.closed = self._failure or closed
        try:
            self.transactions.close(self._failure or closed, min(timeout, 1.0))
            self.pool.close(self._failure or closed)
            self._supervisor.stop_children(timeout).get(timeout=timeout + 1)
        except Exception:
            log.exception("stopping %s did not finish cleanly", self.path)
        finally:
            with contextlib.suppress(pykka.Timeout, pykka.ActorDeadError):
                self._supervisor_ref.stop(block=True, timeout=timeout)
            self.optimizer.close()
            self._observed = None  # its provider's instruments observe it no more
            shm, self._shm = self._shm, None  # (gone for new readers before it is unmapped)
            if shm is not None:
                self.cache.external = None
                shm.close()
            self._state = "closed"
            self._closed.set()

    def check_usable(self) -> None:
        """Raise :class:`StorageUnavailable` unless the storage is serving."""
        if self._state != "running":
            raise self._unavailable()

    def check_writable(self) -> None:
        """Raise unless writes are accepted (serving, not read-only, not stopped for a check)."""
        if self._state != "running":
            raise self._unavailable()
        block = self.write_block
        if block is not None:
            refused = _again(block)
            refused.routine = True  # (its cause was logged when writes stopped: DEBUG each)
            self.errors.handle(refused, {"operation": "write"})  # (counted, as the writer's)
            raise refused

    def _unavailable(self) -> StorageUnavailable:
        if self._failure is not None:
            return self._failure
        if self._state in ("closing", "closed"):
            return StorageClosedError(self.path)
        return StorageUnavailable(f"storage {self.path!r} is {self._state}")

    @property
    def shm_counter(self) -> ShmCounter | None:
        """The wal-index, mapped while the storage is open (None: it could not be).

        Read through this one mapping only: closing any other descriptor of the ``-shm``
        file would drop every POSIX lock this process holds on it, SQLite's included.
        """
        return self._shm

    # -- writer hooks (run in the writer's thread) -------------------------------------

    def _wal_change(self) -> int | None:
        shm = self._shm
        return shm() if shm is not None else None

    def _writer_began(self) -> None:
        external = self.cache.external
        if external is not None:
            # The drop before the count is published, as a reader's check does: readers
            # that see the counter move wait for it instead of hitting old entries.
            external.writer_holds_lock(self._drop_for_another_process)

    def _drop_for_another_process(self) -> None:
        self.cache.other_process_committed()

    def _watch_schema(self, shm: ShmCounter) -> None:
        """Without the cache: at each tick the wal-index counter moved, check the schema.

        So a read-only storage learns of another process's schema change within a tick,
        not only at its writer's next write (or a statement's next check of its names).
        """
        count = shm()
        if count != self._shm_seen:
            self._shm_seen = count
            self._other_process_committed()

    def _other_process_committed(self) -> None:
        """After another process's commit that changed the schema: forget what was learned.

        Column names, what statements touch, the builder's schema. This storage's writer
        finds out only at its next write: a storage that only reads would go on naming
        the columns of a table another process changed as before.
        """
        shm = self._shm
        try:
            version = shm.schema_version() if shm is not None else None
        except apsw.Error:
            version = None  # (busy, say: cannot tell, so forget)
        if version is None or version != self._external_schema:
            self._external_schema = version
            self._schema_changed()

    def _writer_will_commit(self) -> None:
        external = self.cache.external
        if external is not None:
            external.before_commit()

    def _writer_committed(
        self,
        tables: frozenset[str] | None,
        wrote: bool,
        rows: dict[str, list[RowImage] | None] | None,
    ) -> None:
        try:
            external = self.cache.external
            if external is not None:
                # Another process's commit behind ours is dropped for before its count
                # is published (changes.py).
                external.after_commit(wrote, self._drop_for_another_process)
            self.cache.tables_written(tables, rows)
        except BaseException:
            # Never acknowledge a write while a stale entry may survive.
            self.cache.invalidate_all("the commit hook failed")
            raise

    def _writer_commit_failed(self) -> None:
        external = self.cache.external
        if external is not None:
            external.after_commit(False, self._drop_for_another_process)
        self.cache.invalidate_all("a commit failed")

    def _writer_connected(self, connection: TrackedConnection) -> None:
        if self.writer_connection is not None:
            # A restarted writer: what the cache holds may predate its recovery.
            self.cache.invalidate_all("the writer restarted")
        self.writer_threads.add(threading.get_ident())
        self.guarded_threads.add(threading.get_ident())
        connection.state = ConnectionState.IDLE  # opened (and checked, after a restart)
        self.writer_connection = connection
        self._writer_ready.set()

    def _count_restart(self, role: str) -> None:
        """A restart the supervisor counted (as its status does): into the metrics."""
        self.metrics.add("restarts")
        self.metrics.add(f"restarts.{role.partition('-')[0]}")

    def forget_thread(self, ident: int) -> None:
        """Thread ``ident`` ended: it holds no lease and needs no guard any more."""
        with self.transactions.graph.lock:  # the graph reads lease_owners (tracked)
            self.lease_owners.pop(ident, None)
            self._unguard(ident)  # (the graph forgets its pinned readers next: unguarded)

    def _writer_disconnected(self) -> None:
        # Thread ids are reused once a thread ends: forget this one now.
        me = threading.get_ident()
        self.writer_threads.discard(me)
        with self.transactions.graph.lock:
            self._unguard(me)

    def _unguard(self, ident: int) -> None:
        """Stop guarding thread ``ident`` unless it still holds something.

        Call under the graph's lock: what the thread holds changes under it.
        """
        if (
            ident not in self.writer_threads
            and ident not in self.lease_owners
            and not self.transactions.graph.holds(ident)
        ):
            self.guarded_threads.discard(ident)

    def _schema_changed(self) -> None:
        self._schema_generation += 1
        self.statements.forget()  # views and triggers may read or write other tables now
        self.pool.forget_names()  # SELECT * and views may name other columns now
        self.cache.invalidate_all("the schema changed")

    def schema(self) -> Schema:
        """The live schema (tables, columns, indexes), re-read after any schema change."""
        cached = self._schema
        generation = self._schema_generation
        if cached is not None and cached[0] == generation:
            return cached[1]
        schema = self.pool.run_function(Schema.from_connection)
        self._schema = (generation, schema)  # a change meanwhile bumps the generation
        return schema

    def _optimizer_read(self, fn: Callable[[apsw.Connection], T]) -> T:
        """The optimizer's look at the database, on a reader: a span of its own."""
        step = getattr(fn, "__qualname__", "read").replace(".<locals>.job", "")
        with self.tracing.client_span("atlas.optimizer", **{"atlas.optimizer.step": step}):
            return self.pool.run_function(fn)

    def _run_ddl(self, sql: str) -> None:
        self.writer.execute(sql).get()

    def _set_version(self, version: tuple[int, int, int]) -> None:
        self.writer_version = version  # one tuple: readers see old or new, never half

    def _writer_error(self, error: BaseException, sql: str | None) -> None:
        self.errors.handle(error, {"operation": "write", "sql": sql})

    def _corruption(self, error: CorruptionError) -> None:
        self.stop_and_verify(error)

    def stop_and_verify(self, error: CorruptionError) -> None:  # pragma: no cover (Storage)
        """Refuse writes and verify the file (implemented by Storage)."""
        raise NotImplementedError

    def _tick(self, now: float) -> None:
        """The supervisor's periodic tick: pool maintenance, lease and snapshot deadlines.

        Then the alert rules, at their own interval, also when the maintenance raised.
        """
        try:
            writer = self.writer_connection
            if writer is not None:
                writer.seen_at(now)  # (its last_used, as the pool's maintenance does readers')
            self.pool.maintain(now)
            if self._shm is not None and self.cache.external is None:
                self._watch_schema(self._shm)  # (with the cache, its reads do)
            abandoned = self.transactions.sweep(now)  # (dropped unended: revoked now)
            for lease in list(self._leases.values()):
                if now >= lease.deadline or lease.tx_id in abandoned:
                    self._expire_lease(lease.tx_id)
                elif (
                    now - lease.granted_at > _COLLECT_AFTER
                    and lease.tx_id not in self._collected_for
                    and gc.isenabled()
                ):
                    # A transaction dropped in a reference cycle (an error it raised and
                    # keeps holds its frame) is freed only by a full collection: one per
                    # lease held this long, so that the next sweep finds it.
                    self._collected_for.add(lease.tx_id)
                    gc.collect()
        finally:
            self.alerts.tick(now)  # (never raises)

    def _expire_lease(self, tx_id: int) -> None:
        """Have the writer take the lease of ``tx_id`` back now (once)."""
        if tx_id not in self._expiry_sent:
            self._expiry_sent.add(tx_id)
            # In front of the mailbox: a stuck transaction blocks every write behind it.
            self._writer_mailbox.replay_control(Envelope(LeaseExpired(tx_id)))

    def disk_full_found(self, error: DiskFullError) -> None:
        """A transaction found the disk full: the writer refuses plain writes from now on.

        As when a plain write found it: until a probe or a commit writes again.
        """
        self._writer_mailbox.replay_control(Envelope(DiskFullFound(error)))

    def _check_reader_wait(self) -> Callable[[], None] | None:
        """Before a caller queues for a reader: refuse a wait that closes a cycle.

        Only a thread holding something can close one: the writer lease (a transaction
        holding it, reading outside it while the only readers are pinned by snapshots
        that wait for the lease), or a pinned reader (a snapshot's, while every reader
        is pinned by it or by transactions waiting for what it holds). Returns what ends
        the recorded wait, or None.
        """
        me = threading.get_ident()
        if me not in self.guarded_threads:
            return None
        if me in self.lease_owners:
            advice = (
                "this thread holds the writer lease, and the readers are taken by "
                "transactions waiting for it: read through the transaction (tx.query), "
                "or commit first"
            )
        else:
            advice = (
                "this thread pins a reader for its snapshot, and the readers are taken "
                "by it or by transactions waiting for what it holds: read through the "
                "transaction (tx.query), or end it first"
            )
        transactions = self.transactions
        if not transactions.check_reader_wait(me, advice):
            return None
        return lambda: transactions.graph.done_waiting(me)

    def _check_lease_wait(self, me: int, *, record: bool) -> Callable[[], None] | None:
        """Before thread ``me`` (holding no lease) waits on the writer: refuse a cycle.

        A plain write waits behind the writer lease. A thread pinning a reader makes a
        cycle if the lease's holder waits (in the end) for that reader. ``record``: also
        record the wait for the lease, so that the holder's own wait for a reader,
        checked later, sees the cycle; returns what ends the recorded wait, or None.
        """
        graph = self.transactions.graph
        if not graph.check(
            me,
            LEASE,
            advice="a plain write waits behind the writer lease, whose holder waits for "
            "a reader this thread's snapshot pins: write through the transaction "
            "(tx.execute), or end it first",
            record=record,
        ):
            return None
        if not record:
            return None
        return lambda: graph.done_waiting(me)

    def _refuse_room_wait(self, op: Op) -> None:
        """The writer mailbox is full: refuse a wait for room that could never end.

        Code running in this storage's writer waits for the writer itself. While a
        transaction holds the lease, the writer holds back what is queued behind it, so
        the room its owner would wait for comes once that transaction ends (or times
        out, rolled back); writes held there that give up leave room, but others may
        wait for it first, and a wait past the lease's timeout loses the transaction:
        refused at once unless there is room now. A dropped transaction's thread
        waits: its lease is taken back soon.
        """
        me = threading.get_ident()
        if me in self.writer_threads:  # (this storage's writer: another's makes room)
            error = DeadlockError(
                ["writer thread", f"{op.describe()} (the writer mailbox is full)", "writer"],
                "code running inside the writer (run_in_writer) cannot wait for room in "
                "the writer's own queue: only the writer makes it. Use the connection it "
                "was given instead",
            )
            self.errors.handle(error, {"operation": "write"})
            raise error
        holder = self.lease_owners.get(me)
        if holder is None or self.transactions.dropped(holder):
            return
        if self._writer_mailbox.has_room():
            return  # (the writes held behind the lease were given up: they take no room)
        error = DeadlockError(
            [
                f"thread {me}",
                f"holds the writer lease (transaction {holder})",
                f"{op.describe()} (the writer mailbox is full)",
                "waits for room behind that lease",
                f"thread {me}",
            ],
            f"the writer's queue is full behind transaction {holder}, which this thread "
            "holds, and only its end makes room: end that transaction first (what this "
            "thread sends through db.writer while it is open runs only after it anyway)",
        )
        self.errors.handle(error, {"operation": "write"})
        raise error

    def _lease_granted(self, lease: Lease) -> None:
        self._leases[lease.tx_id] = lease
        with self.transactions.graph.lock:  # the graph reads lease_owners (tracked)
            self.lease_owners[lease.owner] = lease.tx_id
        self.guarded_threads.add(lease.owner)

    def _lease_ended(self, lease: Lease) -> None:
        self._leases.pop(lease.tx_id, None)
        self._expiry_sent.discard(lease.tx_id)
        self._collected_for.discard(lease.tx_id)
        with self.transactions.graph.lock:
            self.lease_owners.pop(lease.owner, None)
            self._unguard(lease.owner)

    def _lease_passed(self, returned: Lease, granted: Lease) -> None:
        # _lease_ended(returned) then _lease_granted(granted), under one lock: this runs
        # once per transaction at a hand-over.
        leases = self._leases
        leases.pop(returned.tx_id, None)
        leases[granted.tx_id] = granted
        self._expiry_sent.discard(returned.tx_id)
        self._collected_for.discard(returned.tx_id)
        owners = self.lease_owners
        with self.transactions.graph.lock:
            owners.pop(returned.owner, None)
            owners[granted.owner] = granted.tx_id
            self._unguard(returned.owner)
        self.guarded_threads.add(granted.owner)

    def writer_lease_status(self) -> tuple[int | None, int, float]:
        """(transaction holding the lease, writes waiting behind it, oldest wait)."""
        writer = self._writer_actor()
        if writer is None:
            return (None, 0, 0.0)
        return writer.lease_status()

    def _writer_actor(self) -> WriterActor | None:
        for ref in pykka.ActorRegistry.get_by_class(WriterActor):
            actor = ref._actor_weakref()
            if isinstance(actor, WriterActor) and actor.mailbox is self._writer_mailbox:
                return actor
        return None

    def _degraded(self, event: object) -> None:
        if getattr(event, "role", None) == "writer":
            self.disk_full = True

    def _recovered(self, event: object) -> None:
        if getattr(event, "role", None) == "writer":
            self.disk_full = False

    # -- metrics -----------------------------------------------------------------------

    def _register_gauges(self) -> None:
        def storage() -> dict[str, float]:
            return {
                "failed": float(self._state == "failed"),
                "disk_full": float(self.disk_full),
                "writes_stopped": float(self.write_block is not None and not self.read_only),
                "read_only": float(self.read_only),
            }

        def pool() -> dict[str, float]:
            figures = _fields(self.pool.status(), "total", "active", "idle", "waiting_requests")
            fault = self.pool.fault()
            figures["readers_down"] = float(fault.readers_down if fault is not None else 0)
            return figures

        def writer() -> dict[str, float]:
            counters = self.writer_counters
            stats = counters.snapshot()
            return {
                "writes": stats.writes,
                "failed": stats.failed,
                "batches": stats.batches,
                "mean_batch": stats.mean_batch,
                "queue_wait_seconds": stats.queue_wait,
                # The sums behind the mean: their growth over a window is a windowed mean
                # (the performance_degradation alert), which the mean since open is not.
                "started": counters.started,
                "queue_waited_seconds": counters.queue_wait,
            }

        def transactions() -> dict[str, float]:
            status = self.transactions.status()
            return {
                "committed": status.committed,
                "rolled_back": status.rolled_back,
                "active": len(status.active),
                "lease_queued": status.queued,
            }

        def latency() -> dict[str, float]:
            # Mean seconds per timed statement (connections time one run in a few).
            seconds, reads = self.pool.read_timing()
            writer = self.writer_connection
            return {
                "writer_seconds": writer.metrics().latency if writer is not None else 0.0,
                "readers_seconds": seconds / reads if reads else 0.0,
                # The sums behind it, which only grow: over a window, a windowed mean.
                "read_seconds": seconds,
                "reads": reads,
            }

        self.metrics.gauge("storage", storage)
        self.metrics.gauge("pool", pool)
        self.metrics.gauge("writer", writer)
        self.metrics.gauge("transactions", transactions)
        self.metrics.gauge("latency", latency)
        if self.config.cache:

            def cache() -> dict[str, float]:
                return _fields(self.cache.stats(), "hits", "misses", "size", "memory_usage")

            self.metrics.gauge("cache", cache)


def _again(error: AtlasError) -> AtlasError:
    """A new copy of a standing error, for one caller to raise.

    Raising one instance again and again would grow its traceback with every raise,
    share it between threads, and report (log, count) it only the first time.
    """
    try:
        again = copy.copy(error)
    except Exception:  # (an error that cannot be rebuilt from its args)
        return error
    again.__traceback__ = again.__cause__ = again.__context__ = None
    again.reported = False
    return again


def _fields(record: object, *names: str) -> dict[str, float]:
    """A gauge's values: the fields ``names`` of a status record."""
    return {name: getattr(record, name) for name in names}

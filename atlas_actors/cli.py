"""The ``atlas-actors`` command.

``atlas-actors demo`` runs the task-manager workload on an embedded SQLite file
(``./atlas.db`` by default) with a progress bar and prints a summary; ``check``
verifies a database file; ``config`` prints the configuration in effect.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import re
import signal
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any, TypeVar, get_args

import apsw
from tqdm import tqdm

from atlas_actors.config import ENV_PREFIX, StorageConfig, Synchronous
from atlas_actors.errors import AtlasError, wrap_sqlite_error
from atlas_actors.storage import open as open_storage
from atlas_actors.workload import WorkloadReport, run_workload, schema_conflicts

T = TypeVar("T")

__all__ = ["main", "positive"]

_DESCRIPTION = """\
atlas-actors: threaded Python apps on SQLite through a single writer actor (group
commit), a pool of reader actors and a supervisor that restarts what fails.

Any configuration field can be set with an ATLAS_<FIELD> environment variable
(for example ATLAS_READERS=8); `atlas-actors config` lists them all.
"""


_CHECK_BUSY_TIMEOUT = 5.0
"""Default seconds ``check`` waits for another process's lock on the file."""
_MAX_CHECK_TIMEOUT = (2**31 - 1) // 1000
"""The longest ``check --timeout``: SQLite's busy timeout is a C int of milliseconds."""
_MAX_DEMO_THREADS = 1024
"""The most worker threads ``demo`` starts (each is an OS thread with its own stack)."""

_CHECK_EXIT_STATUSES = """\
exit status:
  0  the check passed
  1  the file could not be checked: missing, a directory, not readable, locked
     by another process for longer than --timeout, or left with a hot rollback
     journal (nothing is known about its state)
  2  the check found problems: the file is damaged (or is not a SQLite database);
     also a bad argument (with a usage line)
"""

_DEMO_EXIT_STATUSES = """\
exit status:
  0  the run ended and every acknowledged write was found in the file
  1  the run could not start: the file cannot be opened (its directory is missing,
     say), is not a database, or holds another application's tasks, projects or
     comments table, which the demo's writes would fail on (the message says
     which; the file is left as it was); a missing file is created. Also: every
     call of the run failed (the errors line says how)
  2  writes were lost: some acknowledged writes were not found after the run;
     also a bad argument (with a usage line)
  130  interrupted with Ctrl-C (what was measured so far is printed)
"""

_DAMAGE = (apsw.CorruptError, apsw.NotADBError)
"""apsw errors that are findings about the file; any other means it could not be checked."""


def positive(
    kind: Callable[[str], T], *, zero: bool = False, at_most: int | None = None
) -> Callable[[str], T]:
    """An argparse type: ``kind`` of the text, finite, above zero (``zero``: or 0).

    With ``at_most``, also refused above that. (The benchmarks' and simulations'
    options take it too.)

    ``nan`` and ``inf`` parse as floats but are no duration: ``nan`` compares false with
    everything, so it would pass the range test and make the run end at once or never.
    """

    def parse(text: str) -> T:
        try:
            value: Any = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {'a whole number' if kind is int else 'a number'}, not {text!r}"
            ) from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(
                f"must be a finite number {'0 or more' if zero else 'above 0'}, not {text}"
            )
        if at_most is not None and value > at_most:
            raise argparse.ArgumentTypeError(f"must be at most {at_most}, not {text}")
        return value  # type: ignore[no-any-return]

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atlas-actors",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log restarts and warnings")
    # Also after the command (`atlas-actors demo -v`); absent there, the top level's stays.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log restarts and warnings",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="run a task-manager workload and print throughput, latency and restarts",
        description="Many threads create, update, comment on and read tasks in an "
        "embedded SQLite file through the actor runtime, for a fixed time. Ctrl-C ends "
        "the run early and prints what it measured so far (exit status 130).",
        epilog=_DEMO_EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[verbose],
    )
    demo.add_argument("--db", default="atlas.db", help="database file (default: %(default)s)")
    demo.add_argument(
        "--threads",
        type=positive(int, at_most=_MAX_DEMO_THREADS),
        default=16,
        help=f"worker threads, at most {_MAX_DEMO_THREADS} (default: 16)",
    )
    demo.add_argument(
        "--seconds", type=positive(float), default=10.0, help="duration (default: 10)"
    )
    demo.add_argument(
        "--chaos",
        type=positive(float, zero=True),
        default=0.0,
        metavar="SECONDS",
        help="crash the writer or a reader every SECONDS to watch restarts (default: off)",
    )
    demo.add_argument(
        "--synchronous",
        type=str.upper,  # (as ATLAS_SYNCHRONOUS: any case)
        choices=get_args(Synchronous),
        help="durability of commits (default: ATLAS_SYNCHRONOUS if set, else FULL: "
        "every acknowledged write synced)",
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")

    check = commands.add_parser(
        "check",
        help="verify a database file (quick_check, or integrity_check with --full)",
        description="Verify a database file without changing it: SQLite's quick_check, or the\n"
        "slower and more thorough integrity_check with --full.",
        epilog=_CHECK_EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[verbose],
    )
    check.add_argument("db", help="database file")
    check.add_argument("--full", action="store_true", help="run the slower integrity_check")
    check.add_argument(
        "--timeout",
        type=positive(float, zero=True, at_most=_MAX_CHECK_TIMEOUT),
        default=_CHECK_BUSY_TIMEOUT,
        metavar="SECONDS",
        help="how long to wait for a lock another process holds (default: %(default)g)",
    )

    commands.add_parser(
        "config",
        help="print the configuration in effect and its variables",
        description="Print every configuration field as the ATLAS_<FIELD> variable that "
        "sets it, with the value in effect here (defaults, then ATLAS_* variables). "
        "atlas_actors.open(path, **options) takes the same fields in lower case.",
        parents=[verbose],
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # (here, not at exit: a closed pipe raises where it is caught)
    except BrokenPipeError:
        # The reader of our output went away (``atlas-actors config | head -1``): quiet,
        # as other command-line tools are. Python would report the pipe again when it
        # flushes stdout at exit, so stdout goes to /dev/null from here.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return _BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.verbose else logging.CRITICAL,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "check":
            return _check(args.db, full=args.full, timeout=args.timeout)
        return _config(quiet=not args.verbose)
    except AtlasError as error:
        print(f"atlas-actors: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\natlas-actors: interrupted", file=sys.stderr)
        return _INTERRUPTED


def _demo(args: argparse.Namespace) -> int:
    """Run the workload; returns the exit status (``_DEMO_EXIT_STATUSES`` says which)."""
    options = {"synchronous": args.synchronous} if args.synchronous else {}
    if args.chaos:
        options["restart_max"] = 1000  # crashes are the point here: never escalate
    conflicts = _foreign_schema(args.db)
    if conflicts:
        print(
            f"atlas-actors: {args.db} already has tables of another application "
            f"({'; '.join(conflicts)}); the demo makes its own tasks, projects and comments "
            "tables and would fail on these. Leave this file alone and pass another one, "
            "for example: atlas-actors demo --db atlas-demo.db",
            file=sys.stderr,
        )
        return 1
    print(f"atlas-actors demo: {args.threads} threads for {args.seconds:g}s on {args.db}")
    interrupted = threading.Event()
    with _first_ctrl_c_sets(interrupted), open_storage(args.db, **options) as db:
        bar = tqdm(
            total=None,
            unit="op",
            disable=args.no_progress,
            desc="tasks",
            dynamic_ncols=True,
        )
        with bar:
            report = run_workload(
                db,
                threads=args.threads,
                seconds=args.seconds,
                kill_every=args.chaos,
                progress=bar.update,
                stop=interrupted,
            )
        pool = db.pool.status()
    if interrupted.is_set():
        done = report.writes.count + report.reads.count
        print(f"\ninterrupted after {report.seconds:.1f}s of {args.seconds:g}s", end="")
        print("; the run so far:" if done else " before any operation ran")
        if done:
            _print_report(report, pool.total)
        return _INTERRUPTED
    _print_report(report, pool.total)
    if report.lost_writes:
        return 2
    if report.writes.count + report.reads.count == 0:
        print(
            f"atlas-actors: every call failed ({_errors_of(report)}), so nothing was "
            f"measured. If {args.db} holds another application's data, run the demo on "
            "a file of its own, for example: atlas-actors demo --db atlas-demo.db",
            file=sys.stderr,
        )
        return 1
    return 0


def _foreign_schema(path: str) -> list[str]:
    """The demo's tables that ``path`` holds and the demo cannot use (read-only; [] if none).

    Checked before the storage opens, which would switch the file to WAL mode and add
    the demo's tables to someone else's database. A file that cannot be read here is
    left to the storage to report.
    """
    if not os.path.isfile(path):
        return []
    try:
        connection = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            connection.set_busy_timeout(5000)
            return schema_conflicts(connection)
        finally:
            connection.close()
    except apsw.Error:
        return []


_INTERRUPTED = 128 + signal.SIGINT
"""The exit status of a command ended with Ctrl-C (130), as shells report it."""
_BROKEN_PIPE = 128 + signal.SIGPIPE
"""The status a shell reports for a command whose output pipe closed (``| head``)."""


@contextlib.contextmanager
def _first_ctrl_c_sets(event: threading.Event) -> Iterator[None]:
    """While inside, the first Ctrl-C (SIGINT) sets ``event``; a second one interrupts.

    The demo then stops its workers and prints what it measured. A second Ctrl-C
    raises ``KeyboardInterrupt`` as usual, for a shutdown that takes too long. Outside
    the main thread (no signal handlers there) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        event.set()  # nothing waits on it, so its lock is free here

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _print_report(report: WorkloadReport, readers: int) -> None:
    print()
    print(f"  operations   {report.operations_per_second:10.0f} /s over {report.seconds:.1f}s")
    print("  latency ms        count      p50      p95      p99      max")
    for name, summary in (("writes", report.writes), ("reads", report.reads)):
        print(
            f"  {name:<12} {summary.count:10d} {summary.p50:8.2f} {summary.p95:8.2f} "
            f"{summary.p99:8.2f} {summary.max:8.2f}"
        )
    print(f"  group commit {report.mean_batch:10.1f} writes per commit (mean)")
    print(f"  readers      {readers:10d} connections")
    print(f"  crashes      {report.kills:10d} injected, {report.restarts} restarts")
    print(f"  errors       {_errors_of(report)}")
    verdict = "none" if report.lost_writes == 0 else f"{report.lost_writes} LOST"
    print(f"  lost writes  {verdict} (every acknowledged insert checked)")


def _errors_of(report: WorkloadReport) -> str:
    """The failed calls by error type: ``ConstraintError=12, ...`` or ``none``."""
    return ", ".join(f"{k}={v}" for k, v in sorted(report.errors.items())) or "none"


def _check(path: str, *, full: bool, timeout: float = _CHECK_BUSY_TIMEOUT) -> int:
    """Check ``path``: 0 if sound, 1 if it could not be checked, 2 if it is damaged."""
    if not os.path.exists(path):
        return _could_not_check(path, "no such file")
    if os.path.isdir(path):
        return _could_not_check(path, "it is a directory; pass the database file in it")
    pragma = "integrity_check" if full else "quick_check"
    name, flags = _check_open_arguments(path)
    try:
        connection = apsw.Connection(name, flags)
        try:
            connection.execute("PRAGMA query_only = 1")  # reads only, however it opened
            connection.set_busy_timeout(int(timeout * 1000))
            # (SQLite may give several problems in one row, a line each, and heads
            # them with "*** in database main ***", which is none)
            rows = connection.execute(f"PRAGMA {pragma}")
            lines = [line for (text,) in rows for line in str(text).splitlines() if line]
            problems = [line for line in lines if not _HEADER.fullmatch(line)]
            mode = connection.pragma("journal_mode")
            if flags & apsw.SQLITE_OPEN_URI:  # (only for immutable: SQLite says "delete")
                mode = _journal_mode_in_header(path)
            pages = connection.pragma("page_count")
            page_size = connection.pragma("page_size")
        finally:
            connection.close()
    except _DAMAGE as error:
        print(f"{path}: {pragma}: 1 problem(s)\n  {wrap_sqlite_error(error, pragma)}")
        return 2
    except (apsw.BusyError, apsw.LockedError) as error:
        return _could_not_check(
            path,
            f"{error}: another process held a lock on it for over {timeout:g}s; "
            "retry when it is done, or pass a longer --timeout",
        )
    except apsw.Error as error:
        if getattr(error, "extendedresult", None) == apsw.SQLITE_READONLY_ROLLBACK:
            return _could_not_check(
                path,
                f"{path}-journal holds a transaction that was cut off (its writer died), "
                "and SQLite must roll it back before the file can be read; check opens "
                "the file read-only while that journal exists. Open the database "
                f"read-write once (e.g. sqlite3 {path} 'PRAGMA quick_check'), then check "
                "again",
            )
        return _could_not_check(path, str(wrap_sqlite_error(error, pragma)))
    wal = os.path.realpath(path) + "-wal"  # (through a link, SQLite's is the target's)
    wal_bytes = os.path.getsize(wal) if os.path.exists(wal) else 0
    print(f"{path}: journal_mode={mode} size={pages * page_size} bytes wal={wal_bytes} bytes")
    if problems == ["ok"]:
        print(f"{pragma}: ok")
        return 0
    print(f"{pragma}: {len(problems)} problem(s)")
    for problem in problems[:_LISTED]:
        print(f"  {problem}")
    if len(problems) > _LISTED:
        print(f"  ... and {len(problems) - _LISTED} more")
    return 2


_HEADER = re.compile(r"\*\*\* in database \S+ \*\*\*")
"""The line with which SQLite heads the problems it found in one database."""
_LISTED = 20
"""How many problems ``check`` lists (it counts them all)."""


_SIDE_FILES = ("-wal", "-shm", "-journal")


def _check_open_arguments(path: str) -> tuple[str, int]:
    """The name and flags ``check`` opens ``path`` with, to leave the directory as it was.

    Reading a WAL database creates its -wal and -shm files. SQLite removes them when
    the last connection closes: that connection takes the EXCLUSIVE lock (so no other
    connection has the database open), checkpoints, then deletes both. A read-only
    connection cannot checkpoint, so it leaves them behind. Hence, when none of those
    files exists (nothing for another connection to be using, nothing to recover),
    ``check`` opens read-write (with query_only set, so it writes nothing) to leave the
    cleanup to SQLite. Otherwise, it opens read-only and leaves the files as they are.

    A file this user may not write opens read-only whatever the flags, and the -wal and
    -shm files made would stay, owned by this user: the owner's next open could then
    not write them and would be read-only. With no side file (the last writer closed
    cleanly, so the file holds every commit), such a file is read as ``immutable``: no
    locks, no side files.
    """
    names = {path, os.path.realpath(path)}  # (through a link, SQLite's are the target's)
    if any(os.path.lexists(name + suffix) for name in names for suffix in _SIDE_FILES):
        return path, apsw.SQLITE_OPEN_READONLY
    if os.access(path, os.W_OK):
        return path, apsw.SQLITE_OPEN_READWRITE  # (not CREATE: never makes a database)
    uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?immutable=1"
    return uri, apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI


def _journal_mode_in_header(path: str) -> str:
    """The journal mode ``path``'s header records: ``wal``, ``delete`` or ``unknown``.

    Bytes 18 and 19 (the file format's write and read versions) are 2 in WAL mode, 1
    with a rollback journal (whose kind, delete, truncate or persist, is each
    connection's own; ``delete`` is the default). A connection opened ``immutable``
    reports ``delete`` whatever they say.
    """
    try:
        with open(path, "rb") as file:
            versions = file.read(20)[18:20]
    except OSError:
        return "unknown"
    return {b"\x02\x02": "wal", b"\x01\x01": "delete"}.get(versions, "unknown")


def _could_not_check(path: str, reason: str) -> int:
    """Say that ``path`` could not be checked (which is no finding about it); returns 1."""
    print(f"atlas-actors: could not check {path}: {reason}", file=sys.stderr)
    return 1


def _config(*, quiet: bool) -> int:
    # This command is where a misspelled ATLAS_* variable must show, with or without -v:
    # its warning passes to the root logger's handler (set up by main) from here.
    config_log = logging.getLogger("atlas_actors.config")
    level = config_log.level
    if quiet:
        config_log.setLevel(logging.WARNING)
    try:
        config = StorageConfig.from_env()
    finally:
        config_log.setLevel(level)
    names = [f"{ENV_PREFIX}{field.name.upper()}" for field in dataclasses.fields(config)]
    width = max(map(len, names))
    for name, field in zip(names, dataclasses.fields(config), strict=True):
        print(f"{name:<{width}} {getattr(config, field.name)!r}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

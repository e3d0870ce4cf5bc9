"""Restart latency: from an injected crash to the first accepted write (or the reader back).

While background threads write (``db.write``) and read (``db.query``) steadily, the
benchmark crashes the writer with ``db.supervisor.kill("writer")`` and measures:

* **first accepted write**: from just before ``kill`` to the first ``db.write`` that
  returns successfully, issued by the measuring thread right after ``kill`` returns
  (failed attempts are retried at once and counted);
* **new incarnation running**: until ``db.supervisor.status()`` shows the writer's next
  incarnation in state ``running``.

Then the same for readers (round-robin over the reader roles): until the status shows
the new incarnation running, and until the pool holds as many connections as before.

The supervisor doubles its restart backoff for every restart of a role within
``restart_window`` (default 10 s) and escalates past ``restart_max`` (default 5). To
measure the restart itself rather than that escalation schedule, the main series opens
the storage with ``restart_window=1.0`` and spaces kills ``--spacing`` (1.2) seconds
apart, so each kill meets a fresh window, as a rare crash does. A short extra series
kills the writer once in each of a few freshly opened storages with the default config.
At the end every acknowledged write must be in the file.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    Target,
    environment,
    finish,
    fmt,
    median,
    percentile,
    positive,
    print_environment,
    print_targets,
    scratch_dir,
    table,
)

import atlas_actors as atlas
from atlas_actors.errors import AtlasError

SCHEMA = "CREATE TABLE IF NOT EXISTS tasks(id INTEGER PRIMARY KEY, title TEXT NOT NULL)"
INSERT = "INSERT INTO tasks(title) VALUES (?)"
GIVE_UP = 10.0
"""Seconds after a kill at which a measurement is recorded as a failure."""
POLL = 0.0005
"""Seconds between status polls."""


@dataclass
class Load:
    """Background writers and readers, with what they saw."""

    db: atlas.Storage
    writers: int
    readers: int
    acked: int = 0
    reads: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for i in range(self.writers):
            self.threads.append(threading.Thread(target=self._write, args=(i,), daemon=True))
        for _ in range(self.readers):
            self.threads.append(threading.Thread(target=self._read, daemon=True))
        for thread in self.threads:
            thread.start()

    def _write(self, index: int) -> None:
        counter = itertools.count()
        while not self.stop.is_set():
            try:
                self.db.write(INSERT, [f"background {index}-{next(counter)}"], timeout=GIVE_UP)
            except AtlasError as error:
                with self.lock:
                    self.errors[f"write {type(error).__name__}: {str(error)[:80]}"] += 1
                continue
            with self.lock:
                self.acked += 1
            time.sleep(0.001)  # steady, not saturating: the probe write measures the restart

    def _read(self) -> None:
        while not self.stop.is_set():
            try:
                self.db.query("SELECT count(*) FROM tasks", timeout=GIVE_UP)
            except AtlasError as error:
                with self.lock:
                    self.errors[f"read {type(error).__name__}: {str(error)[:80]}"] += 1
                continue
            with self.lock:
                self.reads += 1
            time.sleep(0.001)

    def finish(self) -> int:
        """Stop the threads; return how many are still running (hung)."""
        self.stop.set()
        for thread in self.threads:
            thread.join(GIVE_UP + 5)
        return sum(thread.is_alive() for thread in self.threads)


def _child(db: atlas.Storage, role: str) -> Any:
    return next((c for c in db.supervisor.status().children if c.role == role), None)


def _wait_running(db: atlas.Storage, role: str, after: int, deadline: float) -> float | None:
    """Poll until ``role`` runs an incarnation newer than ``after``; the time, or None."""
    while time.perf_counter() < deadline:
        child = _child(db, role)
        if child is not None and child.incarnation > after and child.state == "running":
            return time.perf_counter()
        time.sleep(POLL)
    return None


def kill_writer(db: atlas.Storage, probe: int) -> tuple[float | None, float | None, int]:
    """Crash the writer once: ms to the first accepted write, ms to running, failed tries."""
    before = _child(db, "writer").incarnation
    started = time.perf_counter()
    deadline = started + GIVE_UP
    db.supervisor.kill("writer")
    failures = 0
    accepted = None
    while time.perf_counter() < deadline:
        try:
            db.write(INSERT, [f"probe {probe}"], timeout=max(0.01, deadline - time.perf_counter()))
        except AtlasError:
            failures += 1
            continue
        accepted = time.perf_counter()
        break
    running = _wait_running(db, "writer", before, deadline)
    return (
        None if accepted is None else (accepted - started) * 1000,
        None if running is None else (running - started) * 1000,
        failures,
    )


def kill_reader(db: atlas.Storage, role: str) -> tuple[float | None, float | None]:
    """Crash one reader: ms until its new incarnation runs, ms until the pool is whole."""
    before = _child(db, role).incarnation
    total = db.pool.status().total
    started = time.perf_counter()
    deadline = started + GIVE_UP
    db.supervisor.kill(role)
    running = _wait_running(db, role, before, deadline)
    whole = None
    while running is not None and time.perf_counter() < deadline:
        if db.pool.status().total >= total:
            whole = time.perf_counter()
            break
        time.sleep(POLL)
    return (
        None if running is None else (running - started) * 1000,
        None if whole is None else (whole - started) * 1000,
    )


def summary(values: Sequence[float | None]) -> dict[str, Any]:
    """Median, p90 and max of the measured values; how many never came."""
    got = sorted(v for v in values if v is not None)
    return {
        "n": len(values),
        "failed": len(values) - len(got),
        "median_ms": median(got),
        "p90_ms": percentile(got, 0.90),
        "max_ms": got[-1] if got else float("nan"),
        "all_ms": [None if v is None else round(v, 3) for v in values],
    }


def count_rows(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        return int(connection.execute("SELECT count(*) FROM tasks").fetchone()[0])
    finally:
        connection.close()


def main_series(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    """Kills under load, spaced so each meets a fresh restart window."""
    path = directory / "restart.db"
    db = atlas.open(path, restart_window=args.window)
    db.execute(SCHEMA)
    load = Load(db, writers=args.writers, readers=args.readers)
    load.start()
    writer_first: list[float | None] = []
    writer_running: list[float | None] = []
    writer_failures = 0
    probes = 0
    reader_running: list[float | None] = []
    reader_whole: list[float | None] = []
    try:
        time.sleep(args.spacing)
        for i in range(args.kills):
            first, running, failures = kill_writer(db, i)
            writer_first.append(first)
            writer_running.append(running)
            writer_failures += failures
            probes += first is not None
            print(
                f"  writer kill {i + 1:2}/{args.kills}: first write {fmt(first or float('nan'), 2)}"
                f" ms, running {fmt(running or float('nan'), 2)} ms, failed tries {failures}",
                flush=True,
            )
            time.sleep(args.spacing)
        children = db.supervisor.status().children
        roles = sorted(c.role for c in children if c.role.startswith("reader-"))
        for i in range(args.kills):
            role = roles[i % len(roles)]
            running, whole = kill_reader(db, role)
            reader_running.append(running)
            reader_whole.append(whole)
            print(
                f"  {role} kill {i + 1:2}/{args.kills}: running {fmt(running or float('nan'), 2)}"
                f" ms, pool whole {fmt(whole or float('nan'), 2)} ms",
                flush=True,
            )
            time.sleep(args.spacing)
    finally:
        hung = load.finish()
        status = db.supervisor.status()
        db.close()
    acknowledged = load.acked + probes
    rows = count_rows(path)
    return {
        "writer_first_write": summary(writer_first),
        "writer_running": summary(writer_running),
        "writer_failed_tries": writer_failures,
        "reader_running": summary(reader_running),
        "reader_pool_whole": summary(reader_whole),
        "background": {
            "writes_acked": load.acked,
            "reads": load.reads,
            "errors": dict(load.errors),
            "hung_threads": hung,
        },
        "acknowledged": acknowledged,
        "rows": rows,
        "supervisor": {"state": status.state, "restarts": status.restarts},
    }


def default_series(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    """One writer kill per freshly opened storage, default config, under write load."""
    firsts: list[float | None] = []
    for i in range(args.fresh):
        path = directory / f"fresh-{i}.db"
        db = atlas.open(path)
        db.execute(SCHEMA)
        load = Load(db, writers=args.writers, readers=0)
        load.start()
        try:
            time.sleep(0.2)
            first, _, _ = kill_writer(db, i)
            firsts.append(first)
        finally:
            load.finish()
            db.close()
    return {"writer_first_write": summary(firsts)}


def measures(main: dict[str, Any], fresh: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Each measurement's name and :func:`summary`, both series."""
    return [
        ("writer: kill -> first accepted write", main["writer_first_write"]),
        ("writer: kill -> new incarnation running", main["writer_running"]),
        ("reader: kill -> new incarnation running", main["reader_running"]),
        ("reader: kill -> pool back to full size", main["reader_pool_whole"]),
        ("writer, default config, fresh storage", fresh["writer_first_write"]),
    ]


def print_results(main: dict[str, Any], fresh: dict[str, Any], args: argparse.Namespace) -> None:
    def row(name: str, s: dict[str, Any]) -> list[str]:
        return [
            name,
            str(s["n"]),
            fmt(s["median_ms"], 2),
            fmt(s["p90_ms"], 2),
            fmt(s["max_ms"], 2),
            str(s["failed"]),
        ]

    print(
        f"\n== restarts: {args.kills} kills per role, {args.spacing:g} s apart, "
        f"restart_window={args.window:g} s; {args.writers} writer + {args.readers} reader "
        "threads of background load =="
    )
    rows = [row(name, figures) for name, figures in measures(main, fresh)]
    print(table(["measure", "n", "median ms", "p90 ms", "max ms", "never"], rows))
    background = main["background"]
    print(
        f"failed probe-write tries after kills: {main['writer_failed_tries']}; background: "
        f"{background['writes_acked']} writes acked, {background['reads']} reads, "
        f"{sum(background['errors'].values())} errors, {background['hung_threads']} hung"
    )
    for kind, count in background["errors"].items():
        print(f"  {count}x {kind}")
    print(
        f"file holds {main['rows']} rows for {main['acknowledged']} acknowledged writes; "
        f"supervisor {main['supervisor']['state']} after {main['supervisor']['restarts']} restarts"
    )


def judge(main: dict[str, Any], fresh: dict[str, Any]) -> list[Target]:
    first = main["writer_first_write"]
    targets = [
        Target(
            "restart: writer kill -> first accepted write <= 50 ms (median)",
            f"median {fmt(first['median_ms'], 2)} ms (p90 {fmt(first['p90_ms'], 2)})",
            first["n"] > 0 and first["failed"] == 0 and first["median_ms"] <= 50,
        ),
        Target(
            "restart: ... and every one of them <= 50 ms (max)",
            f"max {fmt(first['max_ms'], 2)} ms; default config, fresh storage: max "
            f"{fmt(fresh['writer_first_write']['max_ms'], 2)} ms",
            first["n"] > 0
            and first["failed"] == 0
            and max(first["max_ms"], fresh["writer_first_write"]["max_ms"]) <= 50,
        ),
    ]
    background = main["background"]
    lost = main["acknowledged"] - main["rows"]
    clean = (
        lost == 0
        and not background["errors"]
        and not background["hung_threads"]
        and main["supervisor"]["state"] == "running"
    )
    targets.append(
        Target(
            "restart: no acknowledged write lost, no caller error or hang, no escalation",
            f"{main['rows']} rows / {main['acknowledged']} acked; "
            f"{sum(background['errors'].values())} background errors, "
            f"{background['hung_threads']} hung; supervisor {main['supervisor']['state']}",
            clean,
        )
    )
    return targets


def trouble(main: dict[str, Any], fresh: dict[str, Any]) -> list[str]:
    """What went wrong (the exit status): lost writes, failed calls, hangs, escalation,
    restarts that never came; the latency targets' misses are findings, not trouble."""
    found = []
    if main["rows"] != main["acknowledged"]:
        found.append(
            f"the file holds {main['rows']} rows for {main['acknowledged']} acknowledged writes"
        )
    background = main["background"]
    if background["errors"]:
        found.append(f"{sum(background['errors'].values())} background call(s) failed")
    if background["hung_threads"]:
        found.append(f"{background['hung_threads']} background thread(s) hung")
    if main["supervisor"]["state"] != "running":
        found.append(f"the supervisor is {main['supervisor']['state']} (it escalated)")
    for name, figures in measures(main, fresh):
        if figures["failed"]:
            found.append(
                f"{name}: {figures['failed']} of {figures['n']} never came within {GIVE_UP:g} s"
            )
    return found


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Crash the writer and the readers under load; measure the time to the first "
            "accepted write and until the new incarnation runs."
        ),
        epilog=(
            "--quick: 5 kills per role and 2 fresh storages (about 15 s). Default: 20 kills "
            "per role, 5 fresh storages (about a minute)."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="a short run (see below)")
    parser.add_argument(
        "--kills", type=positive(int), help="kills per role in the main series (20)"
    )
    parser.add_argument(
        "--fresh", type=positive(int), help="fresh default-config storages, one kill each (5)"
    )
    parser.add_argument(
        "--spacing", type=positive(float), default=1.2, help="seconds between kills (1.2)"
    )
    parser.add_argument(
        "--window",
        type=positive(float),
        default=1.0,
        help="restart_window of the main series' storage, below --spacing (1.0)",
    )
    parser.add_argument(
        "--writers", type=positive(int), default=4, help="background writer threads (4)"
    )
    parser.add_argument(
        "--readers",
        type=positive(int, zero=True),
        default=2,
        help="background reader threads (2)",
    )
    parser.add_argument("--json", metavar="PATH", help="write every figure to this JSON file")
    parser.add_argument("--dir", help="directory for the scratch databases (system temp dir)")
    parser.add_argument(
        "--verbose", action="store_true", help="show atlas's restart warnings (hidden: expected)"
    )
    args = parser.parse_args(argv)
    if args.kills is None:
        args.kills = 5 if args.quick else 20
    if args.fresh is None:
        args.fresh = 2 if args.quick else 5
    if args.window >= args.spacing:
        parser.error("--window must be below --spacing, or the backoff escalation is measured")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.verbose:
        # Each injected crash logs a warning from the supervisor; expected here.
        logging.getLogger("atlas_actors").setLevel(logging.ERROR)
    started = time.perf_counter()
    env = environment()
    print_environment(env)
    with scratch_dir(args.dir, "atlas-bench-restart-") as directory:
        main_results = main_series(args, directory)
        fresh = default_series(args, directory)
    print_results(main_results, fresh, args)
    targets = judge(main_results, fresh)
    print_targets(targets)
    payload = {
        "environment": env,
        "args": vars(args),
        "main": main_results,
        "fresh_default_config": fresh,
        "targets": targets,
    }
    return finish("restart.py", started, args.json, payload, trouble(main_results, fresh))


if __name__ == "__main__":
    sys.exit(main())

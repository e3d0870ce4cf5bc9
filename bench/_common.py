"""Shared helpers of the benchmarks: closed-loop runner, statistics, tables, targets.

Importing this module puts the repository root first on ``sys.path``, so the scripts
bench the ``atlas_actors`` of the checkout they live in, installed or not.

Every benchmark here compares atlas with peers *in one run*: cells are split into rounds
and the peers take turns within each round (in a rotating order), so machine noise hits
every peer alike. Report ratios; absolute numbers only describe this machine at that time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
"""The repository root (the checkout these scripts belong to)."""

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
elif sys.path[0] != str(ROOT):
    sys.path.remove(str(ROOT))
    sys.path.insert(0, str(ROOT))

import apsw  # noqa: E402
from tqdm import tqdm  # noqa: E402

import atlas_actors  # noqa: E402  (after the sys.path insertion above, on purpose)
from atlas_actors.cli import positive  # noqa: E402  (finite, above 0: the scripts' options)

SLOWSYNC_SOURCE = Path(__file__).resolve().parent / "slowsync" / "slowsync.c"
"""The preloadable fsync delay the slow-disk passes use (built with ``cc`` at run time)."""

Op = Callable[[], object]
"""One benchmark operation; raises on failure."""

OpFactory = Callable[[int], tuple[Op, Callable[[], None]]]
"""Called in each worker thread with its index: returns the op and a cleanup function."""


# -- statistics -------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of already sorted values, nearest-rank; NaN if empty."""
    if not sorted_values:
        return float("nan")
    # The smallest value with at least q of them at or below it (round(): 0.29 * 100
    # is 28.999999999999996 in floating point).
    rank = math.ceil(round(q * len(sorted_values), 9))
    return sorted_values[min(len(sorted_values), max(rank, 1)) - 1]


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (NaN if empty)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, infinite when only the denominator is 0, NaN for 0/0."""
    if denominator == 0:
        return float("inf") if numerator > 0 else float("nan")
    return numerator / denominator


@dataclass
class Segment:
    """One closed-loop run of one peer (one round of a cell)."""

    acked_total: int
    """Operations that returned successfully, warm-up included (what the file must hold)."""
    acked: int
    """Operations started in the window that returned successfully (some after its end)."""
    acked_in_window: int
    """Operations that returned successfully before the deadline (throughput counts these)."""
    duration: float
    """Seconds of the measuring window."""
    latencies: list[float]
    """Seconds per successful operation."""
    errors: Counter[str]
    """Failed operations by ``Type: message`` (warm-up included: every error counts)."""
    hung: int
    """Worker threads still running long after the deadline (a hang)."""
    per_thread: list[int] = field(default_factory=list)
    """Operations each worker finished inside the window (fairness between threads)."""
    kinds: Counter[str] = field(default_factory=Counter)
    """With ``by_kind``: operations finished inside the window, by the label the op
    returned (e.g. ``read``/``write`` in a mixed workload)."""
    kind_latencies: dict[str, list[float]] = field(default_factory=dict)
    """With ``by_kind``: seconds per successful operation in the window, by label."""

    @property
    def slowest_share(self) -> float:
        """The least productive worker's ops as a fraction of the mean (1.0: all equal)."""
        if not self.per_thread:
            return float("nan")
        return ratio(min(self.per_thread), sum(self.per_thread) / len(self.per_thread))


@dataclass
class KindFigures:
    """One label of a mixed workload (e.g. the reads of a read/write mix) in a cell."""

    ops_per_s: float = 0.0
    """Operations of this label finished inside the windows, per second."""
    round_ops_per_s: list[float] = field(default_factory=list)
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")


@dataclass
class CellResult:
    """One peer at one thread count, over every round."""

    peer: str
    threads: int
    ops: int = 0
    """Acknowledged operations (all rounds)."""
    ops_per_s: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    hung: int = 0
    slowest_thread: float = float("nan")
    """Least productive thread's ops / the mean per thread, worst round (1.0: fair).
    Per-op percentiles hide starvation: a starved thread finishes few ops, so few
    samples; this shows it."""
    round_ops_per_s: list[float] = field(default_factory=list)
    """Throughput of each round (the spread shows how noisy the machine was)."""
    mismatches: list[str] = field(default_factory=list)
    """Verification failures (acknowledged count vs rows found)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Peer-specific figures (e.g. atlas's mean group-commit size)."""
    kinds: dict[str, KindFigures] = field(default_factory=dict)
    """Per-label figures of a mixed workload (ops run with ``by_kind``)."""

    def add(self, segments: Sequence[Segment]) -> None:
        """Fold the rounds into this cell's figures."""
        window = sum(s.duration for s in segments)
        latencies = sorted(x for s in segments for x in s.latencies)
        self.ops = sum(s.acked for s in segments)
        self.ops_per_s = ratio(sum(s.acked_in_window for s in segments), window)
        self.round_ops_per_s = [ratio(s.acked_in_window, s.duration) for s in segments]
        self.p50_ms = percentile(latencies, 0.50) * 1000
        self.p99_ms = percentile(latencies, 0.99) * 1000
        self.max_ms = (latencies[-1] * 1000) if latencies else float("nan")
        kinds: Counter[str] = Counter()
        for s in segments:
            kinds.update(s.errors)
        self.errors = sum(kinds.values())
        self.error_kinds = dict(kinds.most_common(5))
        self.hung = sum(s.hung for s in segments)
        shares = [s.slowest_share for s in segments if s.per_thread]
        self.slowest_thread = min(shares) if shares else float("nan")
        labels = sorted({k for s in segments for k in s.kinds})
        self.kinds = {}
        for label in labels:
            kind_latencies = sorted(x for s in segments for x in s.kind_latencies.get(label, []))
            self.kinds[label] = KindFigures(
                ops_per_s=ratio(sum(s.kinds[label] for s in segments), window),
                round_ops_per_s=[ratio(s.kinds[label], s.duration) for s in segments],
                p50_ms=percentile(kind_latencies, 0.50) * 1000,
                p99_ms=percentile(kind_latencies, 0.99) * 1000,
            )

    def kind(self, label: str) -> KindFigures:
        """The figures of ``label`` (zeros when no op of that label finished)."""
        return self.kinds.get(label) or KindFigures()

    def trouble(self) -> str | None:
        """What went wrong in this cell (errors, broken invariants, hangs), or None."""
        if not (self.errors or self.mismatches or self.hung):
            return None
        mismatched = f", {len(self.mismatches)} mismatches" if self.mismatches else ""
        return f"{self.peer} x{self.threads}: {self.errors} errors{mismatched}, {self.hung} hung"

    def trouble_notes(self, width: int = 60) -> list[str]:
        """Table notes: the commonest error (cut to ``width``) and hung threads."""
        notes = []
        if self.error_kinds:
            kind, count = next(iter(self.error_kinds.items()))
            notes.append(f"{count}x {kind[:width]}")
        if self.hung:
            notes.append(f"{self.hung} threads HUNG")
        return notes


def round_ratios(mine: CellResult, base: CellResult, kind: str | None = None) -> list[float]:
    """Per-round throughput ratios ``mine / base`` (the peers ran side by side per round);
    with ``kind``, of that label's operations only."""
    if kind is None:
        pairs = zip(mine.round_ops_per_s, base.round_ops_per_s, strict=False)
    else:
        pairs = zip(mine.kind(kind).round_ops_per_s, base.kind(kind).round_ops_per_s, strict=False)
    return [ratio(a, b) for a, b in pairs]


def spread(ratios: Sequence[float]) -> str:
    """``0.71-0.95x`` over the rounds, or empty with fewer than two rounds."""
    finite = [r for r in ratios if r == r]
    if len(finite) < 2:
        return ""
    return f"{min(finite):.2f}-{max(finite):.2f}x"


def run_closed_loop(
    threads: int,
    duration: float,
    make_op: OpFactory,
    *,
    warmup: float = 0.0,
    hang_grace: float = 90.0,
    by_kind: bool = False,
    marks: Callable[[str], None] | None = None,
) -> Segment:
    """Run ``threads`` workers, each doing ops back to back for ``duration`` seconds.

    Each worker builds its op in its own thread (connections that must stay in one
    thread), then all start together. After ``warmup`` seconds of unrecorded ops the
    window opens; ops started before its end are awaited and counted as acknowledged,
    but only those finished inside it count for throughput. A worker still running
    ``hang_grace`` seconds after the end is reported as hung, not waited for.

    ``by_kind``: each op returns a label (``str``) and the window's ops and latencies
    are also counted per label (``Segment.kinds``). ``marks`` is called from the
    calling thread with ``"start"`` when the window opens and ``"end"`` when it closes
    (e.g. to snapshot counters over exactly the recorded window).
    """
    ready = threading.Barrier(threads + 1)
    lock = threading.Lock()
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    counts = {"total": 0, "acked": 0, "in_window": 0}
    kinds: Counter[str] = Counter()
    kind_latencies: dict[str, list[float]] = {}
    per_thread: list[int] = []
    window: dict[str, float] = {}

    def worker(index: int) -> None:
        try:
            op, cleanup = make_op(index)
        except Exception as error:
            with lock:
                errors[f"setup {type(error).__name__}: {str(error)[:100]}"] += 1
            with contextlib.suppress(threading.BrokenBarrierError):
                ready.wait()
            return
        mine: list[float] = []
        my_errors: Counter[str] = Counter()
        my_kinds: Counter[str] = Counter()
        my_kind_latencies: dict[str, list[float]] = {}
        total = acked = in_window = 0
        clock = time.perf_counter
        try:
            ready.wait()
            start, end = window["start"], window["end"]
            while True:
                began = clock()
                if began >= end:
                    break
                try:
                    label = op()
                except Exception as error:
                    my_errors[f"{type(error).__name__}: {str(error)[:100]}"] += 1
                    continue
                finished = clock()
                total += 1
                if began >= start:
                    mine.append(finished - began)
                    acked += 1
                    if finished <= end:
                        in_window += 1
                        if by_kind:
                            name = str(label)
                            my_kinds[name] += 1
                            my_kind_latencies.setdefault(name, []).append(finished - began)
        finally:
            with contextlib.suppress(Exception):
                cleanup()
            with lock:
                latencies.extend(mine)
                errors.update(my_errors)
                counts["total"] += total
                counts["acked"] += acked
                counts["in_window"] += in_window
                per_thread.append(in_window)
                kinds.update(my_kinds)
                for name, values in my_kind_latencies.items():
                    kind_latencies.setdefault(name, []).extend(values)

    workers = [
        threading.Thread(target=worker, args=(i,), name=f"bench-worker-{i}", daemon=True)
        for i in range(threads)
    ]
    for thread in workers:
        thread.start()
    now = time.perf_counter()
    window["start"] = now + warmup
    window["end"] = now + warmup + duration
    ready.wait()
    if marks is not None:
        for mark in ("start", "end"):
            time.sleep(max(0.0, window[mark] - time.perf_counter()))
            marks(mark)
    deadline = window["end"] + hang_grace
    hung = 0
    for thread in workers:
        thread.join(max(0.0, deadline - time.perf_counter()))
        hung += thread.is_alive()
    with lock:
        return Segment(
            acked_total=counts["total"],
            acked=counts["acked"],
            acked_in_window=counts["in_window"],
            duration=duration,
            latencies=list(latencies),
            errors=Counter(errors),
            hung=hung,
            per_thread=list(per_thread),
            kinds=Counter(kinds),
            kind_latencies={k: list(v) for k, v in kind_latencies.items()},
        )


def rotated(items: Sequence[str], round_index: int) -> list[str]:
    """``items`` rotated by ``round_index``: each peer takes each place in turn."""
    if not items:
        return []
    shift = round_index % len(items)
    return [*items[shift:], *items[:shift]]


# -- files ------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_dir(parent: str | None, prefix: str) -> Iterator[Path]:
    """A temporary directory (on ``parent``'s disk, default the system's), removed after."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_db(path: Path) -> None:
    """Delete a database file with its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()


# -- the slow disk ----------------------------------------------------------------------


def build_slowsync(out_dir: Path) -> Path:
    """Compile ``bench/slowsync/slowsync.c`` into ``out_dir/libslowsync.so`` with ``cc``."""
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise RuntimeError(
            f"no C compiler {compiler!r} on PATH: install one (e.g. apt-get install gcc) "
            "or set CC to run the slow-disk pass"
        )
    out = out_dir / "libslowsync.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(out), str(SLOWSYNC_SOURCE), "-ldl"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out


def time_fsync(directory: Path, count: int = 20) -> float:
    """Mean milliseconds of ``os.fsync`` on a small file in ``directory``."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        started = time.perf_counter()
        for _ in range(count):
            os.write(fd, b"x" * 64)
            os.fsync(fd)
        return (time.perf_counter() - started) / count * 1000
    finally:
        os.close(fd)
        path.unlink()


def slowsync_loaded() -> bool:
    """True if libslowsync.so is mapped into this process."""
    try:
        return "libslowsync" in Path("/proc/self/maps").read_text()
    except OSError:
        return "libslowsync" in os.environ.get("LD_PRELOAD", "")


def check_slowsync(delay_us: int) -> float:
    """In a slow-disk child: make sure fsync really is delayed; return the fsync ms.

    Exits (``SystemExit``) when it is not, since the pass would then measure nothing.
    """
    with scratch_dir(None, "atlas-bench-probe-") as directory:
        fsync_ms = time_fsync(directory, count=10)
    if not slowsync_loaded() or fsync_ms < delay_us / 1000 * 0.9:
        raise SystemExit(
            f"slowsync is not in effect (loaded={slowsync_loaded()}, fsync {fsync_ms:.2f} ms, "
            f"expected >= {delay_us / 1000 * 0.9:.2f} ms): the slow pass would measure nothing"
        )
    return fsync_ms


def run_slow_child(
    script: Path, argv: Sequence[str], delay_us: int, scratch_parent: str | None
) -> dict[str, Any]:
    """Build libslowsync.so and re-run ``script`` with it preloaded; return its JSON.

    The child gets ``argv`` plus ``--json PATH`` and must write its figures there (and
    should call :func:`check_slowsync` first). Raises ``RuntimeError`` if it fails.
    """
    with scratch_dir(scratch_parent, "atlas-bench-slowsync-") as build:
        library = build_slowsync(build)
        result_file = build / "slow.json"
        command = [sys.executable, str(script), *argv, "--json", str(result_file)]
        preload = " ".join(filter(None, [str(library), os.environ.get("LD_PRELOAD", "")]))
        env = {**os.environ, "LD_PRELOAD": preload, "SLOWSYNC_US": str(delay_us)}
        sys.stdout.flush()
        completed = subprocess.run(command, env=env, check=False)
        if completed.returncode != 0 or not result_file.exists():
            raise RuntimeError(f"the slow-disk child failed (exit {completed.returncode})")
        result: dict[str, Any] = json.loads(result_file.read_text())
        return result


# -- output -----------------------------------------------------------------------------


def fmt(value: float, digits: int = 1) -> str:
    """A number for a table cell (``-`` for NaN)."""
    if value != value:  # NaN
        return "-"
    if value == float("inf"):
        return "inf"
    return f"{value:,.{digits}f}"


def fmt_ratio(value: float, digits: int = 2) -> str:
    """A ratio for a table cell: ``1.52x`` (one more digit below 0.1)."""
    if value != value:
        return "-"
    if value == float("inf"):
        return "inf"
    if value >= 100:
        return f"{value:.0f}x"
    if value >= 0.1:
        return f"{value:.{digits}f}x"
    return f"{value:.{digits + 1}f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A plain-text table; ``align`` has ``l``/``r`` per column (default: first left)."""
    align = align or "l" + "r" * (len(headers) - 1)
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if a == "l" else c.rjust(w)
            for c, w, a in zip(cells, widths, align, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


@dataclass
class Target:
    """One target of issue 2, judged from measured numbers."""

    name: str
    """What is promised, in words."""
    measured: str
    """The measured figure(s) it was judged on."""
    passed: bool | None
    """True PASS, False MISS, None not measured in this run."""

    @property
    def verdict(self) -> str:
        """``PASS``, ``MISS`` or ``n/a``."""
        return {True: "PASS", False: "MISS", None: "n/a"}[self.passed]


def clean_cells_target(cells: Sequence[CellResult], wanted: str) -> Target:
    """The target that every atlas cell (peer name ``atlas...``) ran without trouble."""
    mine = [c for c in cells if c.peer.startswith("atlas")]
    bad = [trouble for c in mine if (trouble := c.trouble()) is not None]
    measured = "; ".join(bad) if bad else f"{len(mine)} cells clean"
    return Target(wanted, measured, not bad if mine else None)


def print_targets(targets: Sequence[Target], title: str = "Targets (issue 2)") -> None:
    """Print each target with its verdict and the numbers behind it."""
    print(f"\n{title}")
    rows = [[t.verdict, t.name, t.measured] for t in targets]
    print(table(["verdict", "target", "measured"], rows, align="lll"))


def environment() -> dict[str, Any]:
    """Facts about the run that the numbers depend on."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "atlas_actors": str(Path(atlas_actors.__file__).parent),
        "commit": commit,
        "sqlite_stdlib": sqlite3.sqlite_version,
        "sqlite_apsw": apsw.sqlite_lib_version(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def print_environment(env: dict[str, Any]) -> None:
    """One header paragraph with the facts of :func:`environment`."""
    load = ", ".join(f"{x:.2f}" for x in env["load_avg"])
    print(
        f"atlas_actors from {env['atlas_actors']} (commit {env['commit']}); "
        f"Python {env['python']}; SQLite {env['sqlite_apsw']} (apsw, atlas) / "
        f"{env['sqlite_stdlib']} (stdlib sqlite3, peers); {env['cpus']} CPUs, "
        f"load {load}; {env['started']}"
    )


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` (dataclasses allowed) as indented JSON."""

    def default(value: Any) -> Any:
        if hasattr(value, "__dataclass_fields__"):
            return asdict(value)
        if isinstance(value, Counter | set | tuple):
            return list(value) if not isinstance(value, Counter) else dict(value)
        if isinstance(value, Path):
            return str(value)
        raise TypeError(f"cannot serialise {type(value).__name__}")

    def clean(value: Any) -> Any:
        # JSON has no NaN or infinity: write null and a string.
        if isinstance(value, float):
            if value != value:
                return None
            if value in (float("inf"), float("-inf")):
                return str(value)
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if hasattr(value, "__dataclass_fields__"):
            return clean(asdict(value))
        return value

    Path(path).write_text(json.dumps(clean(payload), indent=2, default=default) + "\n")


def thread_counts(text: str) -> list[int]:
    """Parse ``--threads 1,4,16`` into a sorted list of positive integers."""
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected e.g. 1,4,16,64") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: thread counts must be >= 1")
    return counts


def progress(total: int, desc: str) -> Any:
    """A tqdm bar on stderr (silent when stderr is not a terminal)."""
    return tqdm(total=total, desc=desc, unit="cell", leave=False, disable=None)


# -- shared by the scripts ----------------------------------------------------------------


class WrongResultError(Exception):
    """A read returned another row than the one asked for (counted as an error)."""


def noop() -> None:
    """Nothing to do (a thread's op without cleanup)."""


def find_cell(cells: Sequence[CellResult], peer: str, threads: int) -> CellResult | None:
    """The cell of ``peer`` at ``threads`` threads, if it was run."""
    return next((c for c in cells if c.peer == peer and c.threads == threads), None)


def yardstick_note(
    cells: Sequence[CellResult], yardstick: str, mine: CellResult, base: CellResult
) -> str:
    """``; <yardstick> 1.23x, atlas 78% of it`` when the yardstick peer ran in the cell.

    A yardstick (``bare-writer``, ``bare-lease``) does what atlas's design does and
    nothing else: its ratio to the baseline is the most that design can reach on this
    machine, and atlas's share of it is atlas's own overhead. Empty if it did not run.
    """
    bare = find_cell(cells, yardstick, mine.threads)
    if bare is None or not bare.ops_per_s:
        return ""
    return (
        f"; {yardstick} {fmt_ratio(ratio(bare.ops_per_s, base.ops_per_s), 3)}, "
        f"atlas {ratio(mine.ops_per_s, bare.ops_per_s):.0%} of it"
    )


def add_run_options(
    parser: argparse.ArgumentParser,
    *,
    threads: str | None,
    duration: float,
    rounds: int,
    warmup: float | None = None,
) -> None:
    """The options every side-by-side script takes (defaults shown in the help);
    ``threads=None``: no ``--threads`` (the script sets its own thread counts)."""
    parser.add_argument("--quick", action="store_true", help="a short run (see below)")
    if threads is not None:
        parser.add_argument("--threads", type=thread_counts, help=f"thread counts ({threads})")
    parser.add_argument(
        "--duration",
        type=positive(float),
        help=f"seconds per cell, all rounds ({duration:g})",
    )
    parser.add_argument(
        "--rounds", type=positive(int), help=f"rounds per cell, peers interleaved ({rounds})"
    )
    if warmup is not None:
        parser.add_argument(
            "--warmup",
            type=positive(float, zero=True),
            default=warmup,
            help=f"unrecorded seconds before each cell ({warmup:g})",
        )
    parser.add_argument("--json", metavar="PATH", help="write every figure to this JSON file")
    parser.add_argument(
        "--dir", help="directory for the scratch databases (default: the system temp dir)"
    )


def cell_troubles(cells: Iterable[CellResult], label: str = "") -> list[str]:
    """What went wrong in each cell (errors, mismatches, hangs), ``label: `` first."""
    prefix = f"{label}: " if label else ""
    return [f"{prefix}{trouble}" for cell in cells if (trouble := cell.trouble()) is not None]


def finish(
    script: str,
    started: float,
    json_path: str | None,
    figures: dict[str, Any],
    trouble: Sequence[str] = (),
) -> int:
    """Print how long ``script`` took; write ``figures`` (and the time) to ``json_path``.

    Returns the exit status: 1 if the run had ``trouble`` (printed: a cell's errors,
    mismatches or hangs; what each script counts as such), else 0. A missed target is
    a finding, reported with the targets, not a failure.
    """
    elapsed = time.perf_counter() - started
    if trouble:
        print("\nTROUBLE (exit status 1; the tables above say more):")
        for line in trouble:
            print(f"  {line}")
    print(f"\n{script} took {elapsed:.0f} s")
    if json_path:
        write_json(json_path, {**figures, "trouble": list(trouble), "elapsed_s": elapsed})
        print(f"figures written to {json_path}")
    return 1 if trouble else 0


PassResult = dict[str, Any]
"""One pass's figures: ``cells``, ``info``, ``targets`` (a list of :class:`Target`) and
``trouble`` (:func:`cell_troubles` of its cells)."""


def run_as_slow_child(run_pass: Callable[[str], PassResult], json_path: str, delay_us: int) -> int:
    """The child side of :func:`run_slow_child`: run the ``slow`` pass, write its figures."""
    fsync_ms = check_slowsync(delay_us)
    print(f"slowsync in effect in this child: fsync {fsync_ms:.2f} ms (SLOWSYNC_US={delay_us})")
    result = run_pass("slow")
    print_targets(result["targets"], "Targets, slow pass")
    write_json(json_path, result)
    return 0


def run_passes(
    passes: Sequence[str],
    run_pass: Callable[[str], PassResult],
    run_slow: Callable[[], dict[str, Any]],
) -> tuple[dict[str, PassResult], list[Target], list[str]]:
    """Run each pass (``slow`` through ``run_slow``, in a child); figures, targets and
    trouble (each pass's ``trouble``, and a slow pass that could not run)."""
    results: dict[str, PassResult] = {}
    targets: list[Target] = []
    trouble: list[str] = []
    for name in passes:
        if name == "slow":
            try:
                child = run_slow()
            except (RuntimeError, subprocess.CalledProcessError) as error:
                detail = getattr(error, "stderr", "") or ""
                print(f"\nslow pass not run: {error} {detail}".rstrip())
                targets.append(Target("slow: the slow-disk pass ran", str(error), False))
                trouble.append(f"slow pass not run: {error}")
                continue
            results["slow"] = child
            targets += [Target(**t) for t in child["targets"]]
            trouble += [f"slow: {line}" for line in child["trouble"]]
            continue
        result = run_pass(name)
        results[name] = result
        targets += result["targets"]
        trouble += [f"{name}: {line}" for line in result["trouble"]]
    return results, targets, trouble

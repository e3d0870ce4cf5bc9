"""The atlas-actors command: demo, check, config, --help."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import apsw
import pytest

from atlas_actors.cli import main
from atlas_actors.workload import SCHEMA


def test_demo_runs_the_workload_and_reports_no_lost_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "demo.db"
    status = main(["demo", "--db", str(db), "--threads", "4", "--seconds", "1", "--no-progress"])
    out = capsys.readouterr().out
    assert status == 0
    assert "operations" in out and "p99" in out
    assert "lost writes  none" in out
    assert "errors       none" in out
    assert main(["check", str(db)]) == 0


def test_demo_with_chaos_restarts_actors_and_still_loses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "chaos.db"
    status = main(
        [
            "demo",
            "--db",
            str(db),
            "--threads",
            "4",
            "--seconds",
            "1.5",
            "--chaos",
            "0.3",
            "--no-progress",
            "--synchronous",
            "NORMAL",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    crashes = next(line for line in out.splitlines() if "crashes" in line)
    injected = int(crashes.split()[1])
    assert injected >= 2 and f"{injected} restarts" in crashes
    assert "lost writes  none" in out and "errors       none" in out


def test_demo_refuses_a_file_with_another_applications_tasks_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "atlas.db"
    connection = apsw.Connection(str(path))  # the README example's table, say
    connection.execute("CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT, status TEXT)")
    connection.execute("INSERT INTO tasks(title, status) VALUES ('mine', 'open')")
    connection.close()
    assert main(["demo", "--db", str(path), "--seconds", "0.3", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"{path} already has tables of another application" in err
    assert "tasks: no column project_id, assignee, priority, updated_at" in err
    assert "pass another one" in err and "--db" in err and "Traceback" not in err
    connection = apsw.Connection(str(path))  # untouched: no demo tables, no WAL mode
    try:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_schema")]
        assert tables == ["tasks"]
        assert connection.pragma("journal_mode") == "delete"
    finally:
        connection.close()


_DEMO_TASK_COLUMNS = (
    "id INTEGER PRIMARY KEY, project_id INTEGER, title TEXT, status TEXT, assignee TEXT, "
    "priority INTEGER, updated_at REAL"
)


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (", owner TEXT NOT NULL", "tasks: NOT NULL constraint failed: tasks.owner"),
        (", CHECK (status IN ('todo', 'done'))", "tasks: CHECK constraint failed"),
    ],
)
def test_demo_refuses_a_tasks_table_with_every_column_that_its_writes_would_fail_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, reason: str
) -> None:
    """Every column the demo uses, and more: a column of its own that must be set, or a
    CHECK on a value the demo writes. The demo switched the file to WAL, added its
    tables, failed every call and exited 0."""
    path = tmp_path / "app.db"
    connection = apsw.Connection(str(path))
    connection.execute(f"CREATE TABLE tasks({_DEMO_TASK_COLUMNS}{extra})")
    connection.close()
    demo = ["demo", "--db", str(path), "--seconds", "0.3", "--threads", "2", "--no-progress"]
    assert main(demo) == 1
    err = capsys.readouterr().err
    assert f"{path} already has tables of another application" in err
    assert reason in err and "pass another one" in err
    connection = apsw.Connection(str(path))  # untouched: no demo tables, no WAL mode
    try:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_schema")]
        assert tables == ["tasks"]
        assert connection.pragma("journal_mode") == "delete"
    finally:
        connection.close()


def test_demo_in_which_every_call_failed_exits_1_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo's own tables with a unique index on titles and the title its one worker
    inserts first taken: every call fails (the worker retries that insert), and the
    run, which measured nothing, exited 0."""
    path = tmp_path / "demo.db"
    connection = apsw.Connection(str(path))
    connection.execute(SCHEMA)
    connection.execute("CREATE UNIQUE INDEX tasks_title ON tasks(title)")
    connection.execute(
        "INSERT INTO projects VALUES (1, 'p'); "
        "INSERT INTO tasks(project_id, title, updated_at) VALUES (1, 'task 0.0', 0)"
    )
    connection.close()
    demo = ["demo", "--db", str(path), "--seconds", "0.3", "--threads", "1", "--no-progress"]
    assert main(demo) == 1
    captured = capsys.readouterr()
    assert "errors       ConstraintError=" in captured.out
    assert "every call failed" in captured.err and "Traceback" not in captured.err


def test_demo_runs_again_on_its_own_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = ["demo", "--db", str(tmp_path / "d.db"), "--seconds", "0.3", "--no-progress"]
    assert main(demo) == 0
    assert main(demo) == 0, capsys.readouterr().err


def test_ctrl_c_stops_the_demo_and_prints_the_run_so_far(tmp_path: Path) -> None:
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "atlas_actors.cli",
            "demo",
            "--db",
            str(tmp_path / "demo.db"),
            "--seconds",
            "60",
            "--threads",
            "2",
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert demo.stdout is not None and "atlas-actors demo:" in demo.stdout.readline()
        time.sleep(1.0)  # the storage opens and the workers run
        demo.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = demo.communicate(timeout=30)
    finally:
        demo.kill()
        demo.wait()
    assert time.monotonic() - sent < 10  # not the 60 s asked for
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert demo.returncode == 130, err
    assert "interrupted after" in out and "of 60s; the run so far:" in out
    assert "operations" in out and "lost writes  none" in out


def _indexed_table_damaged(path: Path, rows: int, value: str, start: int, end: int) -> None:
    """A table of ``rows`` rows of ``value`` with an index, bytes start..end (in pages
    from page 3, fractions allowed) overwritten: its b-tree pages are damaged."""
    connection = apsw.Connection(str(path))
    connection.execute("CREATE TABLE t(x); CREATE INDEX t_x ON t(x);")
    connection.execute(
        f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) "
        f"INSERT INTO t SELECT {value} FROM n"
    )
    connection.close()
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    first, last = int(page_size * start), min(len(data), int(page_size * end))
    data[first:last] = b"\x55" * (last - first)
    path.write_bytes(bytes(data))


def test_check_reports_a_damaged_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.db"
    _indexed_table_damaged(path, 2000, "i", 3, 6)  # integrity_check must notice
    assert main(["check", str(path), "--full"]) == 2
    assert "problem" in capsys.readouterr().out
    assert main(["check", str(tmp_path / "missing.db")]) == 1


def test_check_counts_and_lists_each_problem_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SQLite may report several problems in one row, a line each: each counts."""
    path = tmp_path / "index.db"
    _indexed_table_damaged(path, 3000, "randomblob(50)", 3 + 100 / 4096, 3 + 600 / 4096)
    assert main(["check", str(path)]) == 2
    out = capsys.readouterr().out.splitlines()
    count = int(out[1].split(": ")[1].split()[0])  # quick_check: N problem(s)
    listed = [line for line in out[2:] if line.startswith("  ") and "... and " not in line]
    assert count > 1 and len(listed) == min(count, 20), out


def test_check_counts_no_header_line_and_says_how_many_problems_it_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SQLite heads its list with ``*** in database main ***``, which was counted as a
    problem; and past 20 problems the rest were left out without a word."""
    path = tmp_path / "index.db"
    _indexed_table_damaged(path, 3000, "zeroblob(50)", 3 + 50 / 4096, 3 + 4000 / 4096)
    connection = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        rows = connection.execute("PRAGMA quick_check")
        lines = [line for (text,) in rows for line in str(text).splitlines() if line]
    finally:
        connection.close()
    assert lines[0] == "*** in database main ***"
    problems = lines[1:]
    assert len(problems) > 20
    assert main(["check", str(path)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[1] == f"quick_check: {len(problems)} problem(s)"
    listed = [f"  {problem}" for problem in problems[:20]]
    assert out[2:] == [*listed, f"  ... and {len(problems) - 20} more"]


def _hold_an_exclusive_lock(path: Path) -> subprocess.Popen[str]:
    """Another process holding ``path``'s write lock until its stdin closes."""
    code = (
        "import sqlite3, sys\n"
        f"c = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
        "c.execute('CREATE TABLE IF NOT EXISTS t(x)')\n"
        "c.execute('BEGIN EXCLUSIVE'); c.execute('INSERT INTO t VALUES (1)')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
        "c.execute('COMMIT')\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_check_of_a_file_locked_by_another_process_could_not_check_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "locked.db"
    holder = _hold_an_exclusive_lock(path)
    try:
        assert main(["check", str(path), "--timeout", "0.2"]) == 1  # not 2: no damage
        captured = capsys.readouterr()
        assert "problem" not in captured.out
        assert f"could not check {path}: database is locked" in captured.err
        assert "--timeout" in captured.err
        # Within the busy timeout, check waits for the lock instead of failing.
        release = threading.Timer(0.3, holder.communicate, kwargs={"input": ""})
        release.start()
        assert main(["check", str(path), "--timeout", "20"]) == 0
        assert "quick_check: ok" in capsys.readouterr().out
        release.join()
    finally:
        holder.kill()
        holder.wait()


def _wal_database(path: Path) -> None:
    """A WAL database with a table, closed cleanly: no -wal or -shm file left."""
    connection = apsw.Connection(str(path))
    connection.pragma("journal_mode", "wal")
    connection.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
    connection.close()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


@pytest.mark.parametrize("full", [False, True])
def test_check_of_a_closed_wal_database_leaves_no_files_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], full: bool
) -> None:
    # Reading a WAL database makes its -wal and -shm files; a read-only check must not
    # leave them (a read-only connection cannot remove them when it closes).
    path = tmp_path / "closed.db"
    _wal_database(path)
    assert main(["check", str(path), *(["--full"] if full else [])]) == 0
    assert "journal_mode=wal" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["closed.db"]


def test_check_leaves_the_wal_files_of_a_database_another_connection_has_open(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "open.db"
    _wal_database(path)
    other = apsw.Connection(str(path))
    try:
        other.execute("INSERT INTO t VALUES (2)")  # in the WAL, not yet checkpointed
        wal = tmp_path / "open.db-wal"
        wal_bytes = wal.stat().st_size
        assert wal_bytes > 0
        assert main(["check", str(path)]) == 0
        assert f"wal={wal_bytes} bytes" in capsys.readouterr().out
        assert wal.stat().st_size == wal_bytes and (tmp_path / "open.db-shm").exists()
        other.execute("INSERT INTO t VALUES (3)")  # its connection still works
    finally:
        other.close()  # the last one: SQLite checkpoints and removes both files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["open.db"]
    reader = apsw.Connection(str(path))
    assert reader.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,), (3,)]
    reader.close()


def test_check_through_a_link_leaves_a_crashed_writers_wal_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SQLite keeps a linked database's -wal next to the link's target: looked for next
    to the link, none was found, check opened read-write and, as the last connection,
    checkpointed and removed a crashed writer's WAL (it changed the database file)."""
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "t.db"
    _wal_database(target)
    code = (
        "import apsw, os, sys\n"
        "c = apsw.Connection(sys.argv[1])\n"
        "c.pragma('wal_autocheckpoint', 0)\n"
        "c.execute('INSERT INTO t VALUES (2)')\n"
        "os._exit(0)\n"  # a crash: the row only in the -wal
    )
    subprocess.run([sys.executable, "-c", code, str(target)], check=True, timeout=30)
    link = tmp_path / "link.db"
    link.symlink_to(target)
    before = target.read_bytes()
    wal_bytes = (target.parent / "t.db-wal").stat().st_size
    assert main(["check", str(link)]) == 0
    assert f"wal={wal_bytes} bytes" in capsys.readouterr().out  # the target's WAL
    assert target.read_bytes() == before  # the database file itself untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["t.db", "t.db-shm", "t.db-wal"]
    reader = apsw.Connection(str(target))
    assert reader.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,)]
    reader.close()


def test_check_of_a_database_file_it_may_not_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "shipped.db"
    _wal_database(path)
    path.chmod(0o444)
    immutable = False
    try:
        if os.geteuid() == 0:  # root writes whatever the mode says; chattr +i binds it
            chattr = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
            if chattr.returncode != 0:
                pytest.skip(f"running as root and chattr +i failed: {chattr.stderr.strip()}")
            immutable = True
        with pytest.raises(OSError):
            os.close(os.open(path, os.O_RDWR))
        assert main(["check", str(path)]) == 0
        out = capsys.readouterr().out
        assert "quick_check: ok" in out
        # Read as immutable (no side files), where SQLite says "delete": the header's.
        assert "journal_mode=wal " in out
        # No -wal or -shm of this user's left behind: the owner could not write them.
        assert sorted(p.name for p in tmp_path.iterdir()) == ["shipped.db"]
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(0o644)


def test_check_of_a_directory_or_a_missing_file_could_not_check_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(tmp_path)]) == 1
    assert f"could not check {tmp_path}: it is a directory" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "missing.db")]) == 1
    assert "could not check" in capsys.readouterr().err


def test_check_reports_a_file_that_is_not_a_database_as_a_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are notes, not a database\n" * 100)
    assert main(["check", str(path)]) == 2
    assert "problem" in capsys.readouterr().out


def test_check_help_documents_the_exit_statuses() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "atlas_actors.cli", "check", "--help"],
        capture_output=True,
        text=True,
    ).stdout
    assert "exit status" in out
    assert "0  the check passed" in out
    assert "1  the file could not be checked" in out
    assert "2  the check found problems" in out


def test_config_lists_every_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATLAS_READERS", "7")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "ATLAS_READERS" in out and "7" in out and "ATLAS_SYNCHRONOUS" in out


def test_config_shows_a_misspelled_variable_without_verbose() -> None:
    """The command that shows the configuration hid the warning about a misspelled
    variable unless -v was given (the log level without it is CRITICAL)."""
    run = subprocess.run(
        [sys.executable, "-m", "atlas_actors", "config"],
        capture_output=True,
        text=True,
        env={**os.environ, "ATLAS_READRES": "8"},
        timeout=60,
    )
    assert run.returncode == 0
    assert "ATLAS_READRES is not an atlas-actors setting" in run.stderr
    assert "did you mean ATLAS_READERS?" in run.stderr
    assert run.stderr.count("ATLAS_READRES") == 1  # once, not once per handler


def test_check_timeout_past_what_sqlite_takes_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SQLite's busy timeout is a C int of milliseconds: 3e6 s overflowed it, with a
    raw traceback."""
    path = tmp_path / "closed.db"
    _wal_database(path)
    with pytest.raises(SystemExit) as exited:
        main(["check", str(path), "--timeout", "3e6"])
    assert exited.value.code == 2
    assert "--timeout: must be at most 2147483, not 3e6" in capsys.readouterr().err
    assert main(["check", str(path), "--timeout", "2147483"]) == 0


def test_check_of_a_file_with_a_hot_journal_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A writer killed mid-transaction leaves a journal that SQLite must roll back, which
    check's read-only open cannot: it said "open the database read-write, or check
    permissions", of a writable file, with no option for either."""
    path = tmp_path / "hot.db"
    code = (
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA journal_mode=delete'); c.execute('PRAGMA cache_size=1')\n"
        "c.execute('CREATE TABLE t(x)')\n"
        "c.executemany('INSERT INTO t VALUES (?)', [('a' * 100,)] * 2000)\n"
        "c.execute('BEGIN'); c.execute('UPDATE t SET x = x || x')\n"
        "os._exit(0)\n"  # a crash: the journal stays, hot
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=30)
    assert (tmp_path / "hot.db-journal").exists()
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "hot.db-journal holds a transaction that was cut off" in err
    assert "Open the database read-write once" in err
    assert (tmp_path / "hot.db-journal").exists()  # check changed nothing


def test_bad_configuration_is_reported_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATLAS_READERS", "lots")
    assert main(["demo", "--db", str(tmp_path / "x.db"), "--seconds", "0.1"]) == 1
    assert "ATLAS_READERS='lots'" in capsys.readouterr().err


def test_help_lists_the_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "atlas_actors.cli", "--help"], capture_output=True, text=True
    ).stdout
    assert "demo" in out and "check" in out and "config" in out and "ATLAS_" in out


def test_python_dash_m_atlas_actors_runs_the_command() -> None:
    help_run = subprocess.run(
        [sys.executable, "-m", "atlas_actors", "--help"], capture_output=True, text=True
    )
    assert help_run.returncode == 0, help_run.stderr
    assert "demo" in help_run.stdout and "check" in help_run.stdout
    config_run = subprocess.run(
        [sys.executable, "-m", "atlas_actors", "config"], capture_output=True, text=True
    )
    assert config_run.returncode == 0 and "ATLAS_READERS" in config_run.stdout


@pytest.mark.parametrize("command", [["config"], ["--help"], ["check", "--help"]])
def test_output_into_a_closed_pipe_ends_quietly(command: list[str]) -> None:
    # `atlas-actors config | head -1`: the reader goes away before the output comes.
    read, write = os.pipe()
    os.close(read)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "atlas_actors", *command],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    assert "Traceback" not in run.stderr and "BrokenPipeError" not in run.stderr, run.stderr
    # (argparse's help ignores the closed pipe itself and exits 0)
    assert run.returncode == (0 if "--help" in command else 128 + signal.SIGPIPE)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--threads", "0", "must be a finite number above 0"),
        ("--threads", "-1", "must be a finite number above 0"),
        ("--seconds", "-1", "must be a finite number above 0"),
        ("--chaos", "-1", "must be a finite number 0 or more"),
        ("--seconds", "nan", "must be a finite number above 0"),
        ("--seconds", "inf", "must be a finite number above 0"),
        ("--chaos", "nan", "must be a finite number 0 or more"),
        ("--chaos", "inf", "must be a finite number 0 or more"),
        ("--threads", "5000", "--threads: must be at most 1024, not 5000"),
        ("--threads", "abc", "--threads: must be a whole number, not 'abc'"),
        ("--threads", "2.5", "--threads: must be a whole number, not '2.5'"),
        ("--seconds", "soon", "--seconds: must be a number, not 'soon'"),
        ("--synchronous", "sometimes", "--synchronous: invalid choice: 'SOMETIMES'"),
    ],
)
def test_demo_refuses_counts_and_durations_out_of_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--db", str(tmp_path / "x.db"), option, value])
    assert exited.value.code == 2  # argparse's usage error, before anything runs
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.db").exists()


def test_demo_takes_any_synchronous_mode_in_any_case_and_verbose_after_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As ATLAS_SYNCHRONOUS does (EXTRA too); ``-v`` also after ``demo``."""
    for mode in ("normal", "EXTRA"):
        demo = ["demo", "-v", "--db", str(tmp_path / f"{mode}.db"), "--seconds", "0.2"]
        assert main([*demo, "--threads", "2", "--no-progress", "--synchronous", mode]) == 0
        assert "lost writes  none" in capsys.readouterr().out


def test_demo_and_config_help_say_what_they_do() -> None:
    def help_of(command: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "atlas_actors", command, "--help"],
            capture_output=True,
            text=True,
        ).stdout

    demo = help_of("demo")
    assert "2  writes were lost" in demo and "130  interrupted" in demo
    assert "ATLAS_<FIELD>" in help_of("config")


def test_config_aligns_its_values(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    columns = {len(line) - len(line.split()[-1]) for line in lines}
    assert len(lines) > 40 and len(columns) == 1, lines

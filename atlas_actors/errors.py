"""The error taxonomy of atlas-actors.

Every exception the library raises derives from :class:`AtlasError`. Errors that come
from SQLite are wrapped in a :class:`SQLiteError` subclass chosen by the SQLite result
code, and keep that code (``result_code``, ``extended_result_code``) and the statement.
Each message says what happened and what to do next.

Classes (by category):

* transient: :class:`BusyError`, :class:`LockedError`, :class:`OperationTimeout`
* constraint: :class:`ConstraintError`
* validation: :class:`ValidationError`, :class:`QueryValidationError`,
  :class:`ParameterError`, :class:`SQLError`, :class:`TooBigError`, :class:`ConfigError`
* storage: :class:`DiskFullError`, :class:`DiskIOError`, :class:`CorruptionError`,
  :class:`ReadOnlyError`
* runtime: :class:`StorageUnavailable`, :class:`StorageClosedError`,
  :class:`ActorCrashedError`, :class:`DeadlockError`
* transactions: :class:`TransactionError`, :class:`TransactionTimeout`,
  :class:`TransactionConflict`, :class:`TransactionAborted`, :class:`WrongThreadError`
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import apsw

__all__ = [
    "TEXT_TYPES",
    "ActorCrashedError",
    "AtlasError",
    "BusyError",
    "ConfigError",
    "ConstraintError",
    "CorruptionError",
    "DeadlockError",
    "DiskFullError",
    "DiskIOError",
    "ErrorDiagnostics",
    "LockedError",
    "OperationTimeout",
    "ParameterError",
    "QueryValidationError",
    "ReadOnlyError",
    "SQLError",
    "SQLiteError",
    "StatementTypeError",
    "StorageClosedError",
    "StorageUnavailable",
    "TooBigError",
    "TransactionAborted",
    "TransactionConflict",
    "TransactionError",
    "TransactionTimeout",
    "TransientError",
    "ValidationError",
    "WrongThreadError",
    "analyze",
    "built_type_error",
    "not_pairs_error",
    "params_type_error",
    "shorten",
    "wrap_sqlite_error",
]


class AtlasError(Exception):
    """Base class of every error raised by atlas-actors."""

    reported = False
    """Set once the error was logged and counted (each error is reported once)."""

    routine = False
    """Set on a refusal whose cause was announced already (a write refused while the
    disk is full): counted like any error, logged at DEBUG, not as a new failure."""

    category: ClassVar[str] = "internal"
    """Taxonomy bucket (transient, constraint, validation, disk_full, io, corruption, ...)."""

    transient: ClassVar[bool] = False
    """True when retrying the same call later may succeed."""


class TransientError(AtlasError):
    """A temporary condition: retrying later may succeed."""

    category = "transient"
    transient = True


class OperationTimeout(TransientError, TimeoutError):
    """A call did not finish before its deadline.

    ``applied`` says what became of the operation: ``False`` when it was withdrawn before
    any actor started it (safe to retry), ``None`` when it had already started and may
    still complete (check before retrying a non-idempotent write).
    """

    category = "timeout"

    def __init__(
        self, operation: str, timeout: float, *, applied: bool | None, outcome: str = ""
    ) -> None:
        """``outcome`` replaces the sentence ``applied`` implies (a read stopped midway)."""
        self.operation = operation
        self.timeout = timeout
        self.applied = applied
        if not outcome:
            outcome = (
                "it was withdrawn before it started, so it is safe to retry"
                if applied is False
                else "it had already started and may still complete; check its effect "
                "before retrying a write"
            )
        super().__init__(
            f"{operation} did not finish within {timeout:.3f}s; {outcome}. "
            "Raise the timeout (timeout=... or ATLAS_DEFAULT_TIMEOUT) if the system is "
            "just busy."
        )


class StorageUnavailable(AtlasError):
    """The storage cannot serve calls: it failed (restart intensity exceeded) or closed."""

    category = "actor_failure"

    def __init__(self, message: str) -> None:
        super().__init__(message)


class StorageClosedError(StorageUnavailable):
    """The storage was closed; open it again with ``atlas_actors.open(path)``."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"storage {path!r} is closed; open it again with atlas_actors.open({path!r})"
        )


class ActorCrashedError(AtlasError):
    """The actor handling this call crashed while the call may have been in progress.

    The call may or may not have taken effect. The actor has been (or is being)
    restarted, so new calls are served; check the effect before retrying.
    """

    category = "actor_failure"

    def __init__(self, role: str, operation: str, cause: BaseException | None = None) -> None:
        self.role = role
        self.operation = operation
        self.cause = cause
        reason = f": {cause!r}" if cause is not None else ""
        super().__init__(
            f"the {role} actor crashed while handling {operation}{reason}; the call may "
            "or may not have taken effect. The actor is restarted automatically: check "
            "the effect, then retry."
        )


class DeadlockError(AtlasError):
    """A call would wait on itself (a cycle of waits); it was refused at once."""

    category = "deadlock"

    def __init__(self, cycle: Sequence[str], advice: str) -> None:
        self.cycle = list(cycle)
        super().__init__(f"deadlock: {' -> '.join(self.cycle)}; {advice}")


class TransactionError(AtlasError):
    """A transaction cannot go on (it ended, or was rolled back underneath its owner)."""

    category = "transaction"


class TransactionTimeout(TransactionError, TransientError):
    """The transaction held the writer lease or its snapshot past its timeout: rolled back."""

    category = "timeout"
    transient = True


class TransactionConflict(TransactionError, TransientError):
    """Another transaction committed since this one's snapshot: retry it from the start.

    Raised by a ``repeatable_read`` transaction's first write, as SQLite does with
    ``SQLITE_BUSY_SNAPSHOT``; ``db.transactions.run(fn, retries=...)`` retries it.
    """

    category = "transient"
    transient = True

    @classmethod
    def stale_snapshot(cls, tx_id: int) -> TransactionConflict:
        """The conflict of transaction ``tx_id``, whose snapshot is no longer current."""
        return cls(
            f"transaction {tx_id} read a snapshot that is no longer current (another "
            "transaction committed since): run it again from the start, or use "
            "db.transactions.run(fn, retries=...)"
        )


class TransactionAborted(TransactionError):
    """The transaction was rolled back (its reason is in the message); nothing committed.

    When SQLite's error rolled it back, that error is its ``__cause__`` (with the
    SQLite codes), and :func:`analyze` diagnoses the cause.
    """


class WrongThreadError(TransactionError):
    """A transaction was used from a thread other than the one that began it.

    The deadlock guard knows who holds the writer lease and pinned readers by thread:
    a transaction belongs to its thread. The transaction itself goes on unharmed.
    """

    category = "validation"


class ValidationError(AtlasError, ValueError):
    """Input was rejected before it reached SQLite (bad name, value, option)."""

    category = "validation"


class StatementTypeError(ValidationError, TypeError):
    """What a call was given to run is not SQL text (or, to ``write_all``, not pairs).

    A :class:`ValidationError` (so a ``ValueError``) that is also a ``TypeError``: it
    replaces the ``ValueError`` or ``TypeError`` Python raised before, whichever a
    caller catches.
    """


class ConfigError(ValidationError):
    """A configuration value is invalid."""


class QueryValidationError(ValidationError):
    """A built query names a table, column or operator that does not exist.

    ``suggestion`` holds the closest known name, when there is one.
    """

    def __init__(self, message: str, *, suggestion: str | None = None) -> None:
        self.suggestion = suggestion
        if suggestion is not None:
            message = f"{message}; did you mean {suggestion!r}?"
        super().__init__(message)


class SQLiteError(AtlasError):
    """An error reported by SQLite, with its result codes and the statement."""

    category = "sqlite"

    def __init__(
        self,
        message: str,
        *,
        sql: str | None = None,
        result_code: int | None = None,
        extended_result_code: int | None = None,
    ) -> None:
        self.sql = sql
        self.result_code = result_code
        self.extended_result_code = extended_result_code
        super().__init__(message)

    @property
    def code_name(self) -> str | None:
        """SQLite's symbolic name for the extended (or primary) result code."""
        code = self.extended_result_code or self.result_code
        if code is None:
            return None
        name = apsw.mapping_extended_result_codes.get(code) or apsw.mapping_result_codes.get(code)
        return str(name) if name is not None else None


class BusyError(SQLiteError, TransientError):
    """The database file is locked by another process (SQLITE_BUSY)."""

    category = "transient"
    transient = True


class LockedError(SQLiteError, TransientError):
    """A table is locked inside this process's shared cache (SQLITE_LOCKED)."""

    category = "transient"
    transient = True


class ConstraintError(SQLiteError):
    """A constraint (UNIQUE, NOT NULL, CHECK, FOREIGN KEY) failed; the call changed nothing."""

    category = "constraint"


class SQLError(SQLiteError, ValidationError):
    """The statement is invalid: a syntax error, an unknown table or column."""

    category = "validation"


class ParameterError(SQLiteError, ValidationError):
    """The parameters do not fit the statement (count, names or types)."""

    category = "validation"


class TooBigError(SQLiteError, ValidationError):
    """A value or statement exceeds SQLite's limits (SQLITE_TOOBIG)."""

    category = "validation"


class DiskFullError(SQLiteError):
    """The database or disk is full (SQLITE_FULL); reads go on, writes fail until space returns."""

    category = "disk_full"


class DiskIOError(SQLiteError):
    """The operating system reported an I/O error (SQLITE_IOERR)."""

    category = "io"


class CorruptionError(SQLiteError):
    """The database file is damaged (SQLITE_CORRUPT / SQLITE_NOTADB)."""

    category = "corruption"


class ReadOnlyError(SQLiteError):
    """A write was attempted on a read-only database or connection (SQLITE_READONLY).

    A storage opened on a file this process may not write (or with a ``mode=ro`` URI)
    is read-only from the start: it serves reads, and every write raises this at once.
    """

    category = "read_only"


_BY_APSW_CLASS: dict[type[BaseException], tuple[type[SQLiteError], str]] = {
    apsw.BusyError: (
        BusyError,
        "another process holds the database lock; the call may be retried",
    ),
    apsw.LockedError: (LockedError, "a table is locked; the call may be retried"),
    apsw.ConstraintError: (ConstraintError, "fix the values; nothing was changed"),
    apsw.SQLError: (SQLError, "fix the statement; the runtime keeps serving"),
    apsw.BindingsError: (ParameterError, "pass one value per placeholder"),
    apsw.RangeError: (ParameterError, "pass one value per placeholder"),
    apsw.MismatchError: (ParameterError, "pass a value of the column's type"),
    apsw.TooBigError: (
        TooBigError,
        "store smaller values, or raise the storage's max_value_bytes option "
        "(ATLAS_MAX_VALUE_BYTES) up to SQLite's own limit",
    ),
    apsw.FullError: (
        DiskFullError,
        "free disk space (or raise max_page_count); reads keep working",
    ),
    apsw.IOError: (DiskIOError, "check the disk and file system"),
    apsw.CorruptError: (
        CorruptionError,
        "stop writing, restore from a backup or run integrity_check on a copy",
    ),
    apsw.NotADBError: (CorruptionError, "the file is not a SQLite database"),
    apsw.ReadOnlyError: (ReadOnlyError, "open the database read-write, or check permissions"),
    apsw.CantOpenError: (
        DiskIOError,
        "check that the path names a file in an existing directory that this process "
        "may write (WAL creates -wal and -shm files next to the database)",
    ),
}


def _codes_of_classes() -> dict[type[BaseException], int]:
    """The primary result code of each of apsw's exception classes (built once)."""
    codes: dict[type[BaseException], int] = {}
    for code in apsw.mapping_result_codes.values():
        if isinstance(code, int) and code > 0:
            try:
                codes.setdefault(type(apsw.exception_for(code)), code)
            except ValueError:  # (a code apsw has no class for)
                continue
    return codes


_CODE_OF_CLASS = _codes_of_classes()


def wrap_sqlite_error(
    exc: BaseException, sql: str | None = None, params: object = None
) -> BaseException:
    """Translate an exception raised by apsw into the matching :class:`AtlasError`.

    apsw errors become the :class:`SQLiteError` subclass of their result code; apsw's
    answers to bad parameters become a :class:`ParameterError`: a ``TypeError`` (an
    unbindable value), an ``OverflowError`` (an int past 64 bits), a ``KeyError``
    naming one of ``sql``'s ``:name`` placeholders (a missing named value) and a
    ``UnicodeEncodeError`` of a value (a lone surrogate). apsw's refusals of the text
    itself (a ``UnicodeEncodeError`` of ``sql``, the ``ValueError`` of a NUL in it)
    become a :class:`SQLError`. ``params`` (when given) are the statement's: a str,
    bytes or bytearray that apsw could not bind (one value per character) is told to
    be a list. Anything else, atlas errors included, is returned unchanged. The result
    is meant to be raised ``from exc``.
    """
    if isinstance(exc, AtlasError):
        return exc
    if type(params) in TEXT_TYPES and isinstance(exc, apsw.BindingsError | TypeError):
        return params_type_error(params, sql)
    message = str(exc) or type(exc).__name__
    where = f" in {shorten(sql)!r}" if sql else ""
    if isinstance(exc, UnicodeEncodeError):
        if sql is not None and exc.object == sql:
            return SQLError(
                f"{message}{where}: SQL text must be valid Unicode (no lone surrogates); "
                "fix the text, or decode it with errors='replace'",
                sql=sql,
            )
        return ParameterError(
            f"{message} (a parameter){where}: text values must be valid Unicode (no lone "
            "surrogates); decode them with errors='replace', or pass bytes",
            sql=sql,
        )
    if isinstance(exc, ValueError) and sql and "\x00" in sql and "null character" in message:
        return SQLError(
            f"{message}{where}: SQL text cannot hold a NUL character ('\\x00'); remove it, "
            "or pass the value as a parameter (? placeholder)",
            sql=sql,
        )
    if isinstance(exc, TypeError):
        return ParameterError(
            f"{message}{where}: pass values of type None, int, float, str or bytes",
            sql=sql,
        )
    if isinstance(exc, OverflowError):
        return ParameterError(
            f"{message}{where}: integers must fit in 64 bits (-2**63 to 2**63-1); store "
            "larger ones as text or blobs",
            sql=sql,
        )
    if isinstance(exc, KeyError) and sql and _names_placeholder(sql, exc):
        return ParameterError(
            f"no value for the named parameter :{exc.args[0]}{where}: pass a dict with a "
            "value for every :name placeholder",
            sql=sql,
        )
    if not isinstance(exc, apsw.Error):
        return exc
    result: Any = getattr(exc, "result", None)
    extended: Any = getattr(exc, "extendedresult", None)
    # An error a Python VFS raised reaches the caller as that very exception, without
    # SQLite's codes: its class still names the primary one.
    result_code = result if isinstance(result, int) else _CODE_OF_CLASS.get(type(exc))
    extended_code = extended if isinstance(extended, int) else None
    atlas_class, advice = SQLiteError, ""
    for apsw_class, mapped in _BY_APSW_CLASS.items():
        if isinstance(exc, apsw_class):
            atlas_class, advice = mapped
            break
    return atlas_class(
        f"{message}{where}: {advice}" if advice else f"{message}{where}",
        sql=sql,
        result_code=result_code,
        extended_result_code=extended_code,
    )


TEXT_TYPES = frozenset((str, bytes, bytearray))
"""Sequences that are no parameter container: apsw would bind one character (or byte,
as an int) per placeholder."""


def params_type_error(params: object, sql: object = None, *, many: bool = False) -> ParameterError:
    """The error for parameters that are no container of values (``many``: of sets).

    A str, bytes or bytearray is a sequence too, which apsw would bind one character
    (or byte, as an int) per placeholder.
    """
    text = sql if isinstance(sql, str) else None
    where = f" in {shorten(text)!r}" if text else ""
    if many:
        expected = "a list of parameter sets (e.g. [['a'], ['b']])"
    else:
        expected = "a list or tuple of values (e.g. ['a']) or a dict of :name values"
    return ParameterError(
        f"params must be {expected}, not {type(params).__name__} ({params!r:.60}){where}",
        sql=text,
    )


def not_pairs_error(statements: object) -> StatementTypeError:
    """The error for a ``write_all`` given something that is no list of pairs."""
    return StatementTypeError(
        f"write_all takes a list of (sql, params) pairs, not {type(statements).__name__} "
        f"({statements!r:.60}); pass e.g. [('INSERT INTO t VALUES (?)', [1])]"
    )


def built_type_error(query: object, built: object) -> StatementTypeError:
    """The error for a query whose ``build()`` returned no ``(sql, params)`` pair."""
    return StatementTypeError(
        f"{type(query).__name__}.build() must return (sql, params): SQL text and a list, "
        f"tuple or dict of values; it returned {built!r:.60}"
    )


def built_params_error() -> QueryValidationError:
    """The error for parameters passed beside a built query (it carries its own)."""
    return QueryValidationError(
        "a built query carries its own parameters: pass params only with SQL text"
    )


def _names_placeholder(sql: str, error: KeyError) -> bool:
    """True if ``error``'s key is a named placeholder of ``sql`` (apsw's missing value)."""
    key = error.args[0] if len(error.args) == 1 else None
    return isinstance(key, str) and re.search(rf"[:@$]{re.escape(key)}\b", sql) is not None


def shorten(sql: str, limit: int = 120) -> str:
    """Return ``sql`` on one line, cut to ``limit`` characters, for messages."""
    flat = " ".join((sql if isinstance(sql, str) else repr(sql)).split())  # (never raise)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


Severity = Literal["low", "medium", "high"]


@dataclass(frozen=True, slots=True)
class ErrorDiagnostics:
    """What an error means (the plan's ``ErrorDiagnostics``)."""

    type: str
    """The error's class name (``ConstraintError``)."""
    severity: Severity
    """``low``: bad input; ``medium``: transient or usage; ``high``: storage or runtime."""
    recoverable: bool
    """True when the strategy in ``context["strategy"]`` can bring things back."""
    context: dict[str, Any] = field(default_factory=dict)
    """category, strategy, advice, SQLite codes, statement, message."""


# category -> (severity, recoverable, strategy, advice). What db.errors.recover(tx, retry)
# does for each strategy (atlas_actors.recovery): retry_with_backoff, retry and
# release_and_retry retry the work with backoff; restart waits for the actors; read_only
# retries once the storage accepts writes again (while the disk is full, one retry per
# disk_full_probe_interval goes through as a probe); retry_then_verify runs quick_check
# and retries only if the file checks out (a failed COMMIT's outcome is uncertain);
# stop_and_verify runs integrity_check and resumes writes if it passes; the others only
# roll back and report the advice. An OperationTimeout whose operation had started
# (applied=None) gets check_then_retry instead of its category's retry_with_backoff: it
# may still complete, so retrying blindly may apply a write twice; recover() retries
# only a transaction that never sent its COMMIT (rolled back: nothing of it applied).
_STRATEGIES: dict[str, tuple[Severity, bool, str, str]] = {
    "validation": ("low", True, "fix_input", "fix the statement or its values"),
    "constraint": ("low", True, "fix_input", "fix the values; nothing was changed"),
    "transient": ("medium", True, "retry_with_backoff", "retry after a short backoff"),
    "timeout": ("medium", True, "retry_with_backoff", "retry, or raise the timeout"),
    "deadlock": ("medium", True, "release_and_retry", "end the transaction you hold"),
    "transaction": ("medium", True, "retry", "run the transaction again"),
    "actor_failure": ("high", True, "restart", "the actor was restarted; retry"),
    "disk_full": ("high", True, "read_only", "free space; writes resume by themselves"),
    "io": ("high", True, "retry_then_verify", "check the disk; retry"),
    "corruption": ("high", False, "stop_and_verify", "restore from a backup"),
    "read_only": (
        "medium",
        False,
        "check_permissions",
        "make the file and its directory writable (chmod u+w), then reopen the storage",
    ),
}


_UNCERTAIN_ADVICE = (
    "its outcome is unknown (it had started and may still complete): check its effect, "
    "and retry only if it did not apply (or raise the timeout)"
)


def analyze(error: BaseException) -> ErrorDiagnostics:
    """Classify ``error``: severity, whether it is recoverable, and how (pure).

    An apsw error is classified as its wrapped form; a :class:`TransactionAborted` that
    SQLite's error caused, as that cause (the type stays the aborted one's); any other
    exception (from user code, say) is of category ``unknown``. An
    :class:`OperationTimeout` with ``applied=None`` (the operation had started and may
    still complete) gets the strategy ``check_then_retry``: check its effect before
    retrying; one with ``applied=False`` (withdrawn), ``retry_with_backoff``.
    """
    if isinstance(error, apsw.Error):
        error = wrap_sqlite_error(error)
    if isinstance(error, TransactionAborted) and isinstance(error.__cause__, SQLiteError):
        cause = analyze(error.__cause__)
        via = {**cause.context, "message": str(error), "cause": cause.type}
        return ErrorDiagnostics(type(error).__name__, cause.severity, cause.recoverable, via)
    if not isinstance(error, AtlasError):
        return ErrorDiagnostics(
            type=type(error).__name__,
            severity="medium",
            recoverable=False,
            context={"category": "unknown", "strategy": "none", "message": str(error)},
        )
    category = error.category
    severity, recoverable, strategy, advice = _STRATEGIES.get(
        category, ("medium", False, "none", "see the message")
    )
    if isinstance(error, StorageUnavailable):
        recoverable, strategy, advice = False, "reopen", "fix the cause and reopen the storage"
    elif isinstance(error, OperationTimeout) and error.applied is None:
        strategy, advice = "check_then_retry", _UNCERTAIN_ADVICE
    context: dict[str, Any] = {
        "category": category,
        "strategy": strategy,
        "advice": advice,
        "transient": error.transient,
        "message": str(error),
    }
    if isinstance(error, SQLiteError):
        context.update(
            result_code=error.result_code,
            extended_result_code=error.extended_result_code,
            code_name=error.code_name,
            sql=error.sql,
        )
    return ErrorDiagnostics(
        type=type(error).__name__,
        severity=severity,
        recoverable=recoverable,
        context=context,
    )

"""Alert rules over the metrics, and their evaluation (pure: no threads, no clock).

An :class:`AlertRule` reads one or more metrics of ``db.metrics.snapshot()`` and computes
a value: the metric itself (``value``, for gauges), how much it grew over a window
(``increase``, for counters: restarts in the last five minutes), its growth per second
(``rate``: errors per second) or the growth of one over the growth of several
(``ratio``: cache hits over lookups). The rule is *active* while ``value <op> threshold``;
once active for ``for_`` seconds it *fires*, and it *resolves* when no longer active.

:class:`AlertEvaluator` is fed successive ``(time, snapshot)`` pairs and returns the
transitions each one caused, as Prometheus evaluates its alerting rules
(https://prometheus.io/docs/prometheus/latest/configuration/alerting_rules/). Counters
that shrink (a connection reopened) are taken to have restarted from zero, as
Prometheus's ``increase`` does. ``db.alerts`` (:mod:`atlas_actors.telemetry.alerting`) runs
one over the storage's metrics, starting with the rules of
:mod:`atlas_actors.telemetry.default_alerts`.
"""

from __future__ import annotations

import math
import operator
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from atlas_actors.errors import ValidationError

__all__ = [
    "Alert",
    "AlertEvaluator",
    "AlertRule",
    "AlertState",
    "AlertTransition",
    "Comparison",
    "Condition",
    "Evaluation",
    "RuleFailure",
    "Severity",
]

Severity = Literal["critical", "warning"]
"""``critical``: act now (the storage fails or loses service); ``warning``: look soon."""

Condition = Literal["value", "increase", "rate", "ratio"]
"""How a rule turns its metrics into one value (see :class:`AlertRule`)."""

Comparison = Literal[">", ">=", "<", "<="]
"""How the value is compared with the threshold."""

AlertState = Literal["pending", "firing", "resolved", "inactive"]
"""A transition's new state: ``pending`` (active, waiting for ``for_``), ``firing``,
``resolved`` (was firing, no longer active) or ``inactive`` (stopped while pending)."""

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}

Snapshot = Mapping[str, float]
"""A ``db.metrics.snapshot()``: metric name → value."""


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One alert rule: what it reads, when it is active, how long before it fires.

    Construct with keywords; a bad value raises :class:`ValidationError`.
    """

    name: str
    """Unique name (``disk_full``); letters, digits and underscores."""
    severity: Severity
    """``critical`` or ``warning``."""
    metrics: tuple[str, ...]
    """The snapshot names it reads. ``value``, ``increase`` and ``rate`` sum them;
    ``ratio`` divides the increase of the first by the summed increase of the rest."""
    threshold: float
    """The value compared with (finite)."""
    description: str
    """What it means and what to do."""
    condition: Condition = "value"
    """``value``: the metrics now (a gauge; no data while any is missing). ``increase``:
    their growth over ``window`` seconds (a counter; a missing counter is 0). ``rate``:
    that growth per second. ``ratio``: see :attr:`metrics`."""
    comparison: Comparison = ">"
    """Active while ``value <comparison> threshold``."""
    for_: float = 0.0
    """Seconds the rule must stay active before it fires (0: at once)."""
    window: float = 60.0
    """Seconds of history ``increase``, ``rate`` and ``ratio`` look at."""
    min_count: float = 0.0
    """``ratio`` only: no value unless its denominator grew at least this much over the
    window (a hit rate of 2 reads says little)."""

    def __post_init__(self) -> None:
        _check_rule(self)

    def compute(self, history: Sequence[tuple[float, Snapshot]]) -> float | None:
        """The rule's value over ``history`` (oldest first, latest last); None: no data.

        Raises ``TypeError`` or ``ValueError`` when a metric is not a number.
        """
        if not history:
            return None
        now, latest = history[-1]
        if self.condition == "value":
            if any(name not in latest for name in self.metrics):
                return None
            return float(sum(_number(latest[name]) for name in self.metrics))
        span = _window(history, now - self.window)
        elapsed = now - span[0][0]
        if elapsed <= 0:
            return None
        if self.condition == "ratio":
            numerator = _increase(span, self.metrics[:1])
            denominator = _increase(span, self.metrics[1:])
            if denominator <= 0 or denominator < self.min_count:
                return None
            return numerator / denominator
        grown = _increase(span, self.metrics)
        return grown if self.condition == "increase" else grown / elapsed

    def active(self, value: float | None) -> bool:
        """True when ``value`` meets the condition (never for no data)."""
        return value is not None and _COMPARE[self.comparison](value, self.threshold)


def _check_rule(rule: AlertRule) -> None:
    """Reject a rule that cannot work, naming the field and the value."""
    name = rule.name
    if not isinstance(name, str) or not name or not name.replace("_", "a").isalnum():
        raise ValidationError(f"alert rule name={name!r}; use letters, digits and underscores")
    if rule.severity not in get_args(Severity):
        raise ValidationError(
            f"alert rule {name!r}: severity={rule.severity!r}; use one of {get_args(Severity)}"
        )
    if rule.condition not in get_args(Condition):
        raise ValidationError(
            f"alert rule {name!r}: condition={rule.condition!r}; use one of {get_args(Condition)}"
        )
    if rule.comparison not in _COMPARE:
        raise ValidationError(
            f"alert rule {name!r}: comparison={rule.comparison!r}; use one of {list(_COMPARE)}"
        )
    if (
        not isinstance(rule.metrics, tuple)
        or not rule.metrics
        or not all(isinstance(m, str) and m for m in rule.metrics)
    ):
        raise ValidationError(
            f"alert rule {name!r}: metrics={rule.metrics!r}; give a tuple of metric names"
        )
    if rule.condition == "ratio" and len(rule.metrics) < 2:
        raise ValidationError(
            f"alert rule {name!r}: a ratio needs a numerator and at least one denominator "
            f"metric, got metrics={rule.metrics!r}"
        )
    for field_name in ("threshold", "for_", "window", "min_count"):
        value = getattr(rule, field_name)
        if not _finite(value):
            raise ValidationError(
                f"alert rule {name!r}: {field_name}={value!r}; it must be a finite number"
            )
    for field_name in ("for_", "min_count"):
        if getattr(rule, field_name) < 0:
            raise ValidationError(
                f"alert rule {name!r}: {field_name}={getattr(rule, field_name)!r}; it must be >= 0"
            )
    if rule.window <= 0:
        raise ValidationError(f"alert rule {name!r}: window={rule.window!r}; it must be > 0")
    if not isinstance(rule.description, str) or not rule.description.strip():
        raise ValidationError(f"alert rule {name!r}: say what it means and what to do")


def _finite(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _number(value: object) -> float:
    """A snapshot value as a float; a gauge that returned something else is a bug.

    A NaN or an infinity is no reading (``ValueError``): the rule keeps its state
    rather than resolving at once and firing again at the next sample.
    """
    number = _reading(value)
    if number is None:
        raise ValueError(f"metric value {value!r} is not a finite number: no reading")
    return number


def _reading(value: object) -> float | None:
    """A snapshot value as a float, or None for a NaN or an infinity (no reading)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"metric value {value!r} is not a number")
    number = float(value)
    return number if math.isfinite(number) else None


def _window(
    history: Sequence[tuple[float, Snapshot]], start: float
) -> Sequence[tuple[float, Snapshot]]:
    """The samples from the latest one at or before ``start`` (else the oldest) on."""
    first = 0
    for index, (moment, _) in enumerate(history):
        if moment <= start:
            first = index
        else:
            break
    return history[first:]


def _increase(span: Sequence[tuple[float, Snapshot]], names: Iterable[str]) -> float:
    """Growth of the summed counters over ``span``; a drop counts as a restart from 0.

    A sample that is no reading (NaN) is skipped: one bad sample must not hide the
    growth of the whole window.
    """
    total = 0.0
    for name in names:
        previous: float | None = None
        for _, sample in span:
            current = _reading(sample.get(name, 0))
            if current is None:
                continue
            if previous is not None:
                total += current - previous if current >= previous else current
            previous = current
    return total


@dataclass(frozen=True, slots=True)
class Alert:
    """A rule that is pending or firing (``db.alerts.firing()``)."""

    rule: AlertRule
    """The rule."""
    state: Literal["pending", "firing"]
    """``pending`` until active for the rule's ``for_``, then ``firing``."""
    value: float
    """The rule's value at the last evaluation."""
    active_since: float
    """When the rule became active (the evaluator's clock)."""
    fired_at: float | None = None
    """When it fired, or None while pending."""

    @property
    def name(self) -> str:
        """The rule's name."""
        return self.rule.name

    @property
    def severity(self) -> Severity:
        """The rule's severity."""
        return self.rule.severity


@dataclass(frozen=True, slots=True)
class AlertTransition:
    """A change of a rule's state, as one evaluation found it."""

    rule: AlertRule
    """The rule."""
    state: AlertState
    """The new state."""
    previous: Literal["inactive", "pending", "firing"]
    """The state before."""
    value: float | None
    """The rule's value (None: no data, which ends an alert)."""
    time: float
    """When (the evaluator's clock)."""


@dataclass(frozen=True, slots=True)
class RuleFailure:
    """A rule that could not be evaluated (its state is left as it was)."""

    rule: AlertRule
    """The rule."""
    error: Exception
    """Why."""


@dataclass
class _Track:
    state: Literal["inactive", "pending", "firing"] = "inactive"
    since: float = 0.0
    fired_at: float | None = None
    value: float = 0.0


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What one :meth:`AlertEvaluator.evaluate` found."""

    transitions: tuple[AlertTransition, ...]
    """State changes, in rule order."""
    failures: tuple[RuleFailure, ...]
    """Rules that raised (skipped this time, their state unchanged)."""


class AlertEvaluator:
    """Evaluates rules over successive snapshots and tracks each rule's state.

    Not thread-safe: one caller at a time (``db.alerts`` holds a lock).
    """

    def __init__(self, rules: Iterable[AlertRule] = (), *, start: float | None = None) -> None:
        """Track ``rules``; ``start`` is when every counter was zero (the storage opened).

        Without ``start`` the first snapshot is the baseline: growth before it is unseen.
        """
        self._rules: dict[str, AlertRule] = {}
        self._tracks: dict[str, _Track] = {}
        self._history: deque[tuple[float, Snapshot]] = deque()
        if start is not None:
            self._history.append((start, {}))
        for rule in rules:
            self.add(rule)

    @property
    def last_time(self) -> float:
        """The time of the latest snapshot (``-inf`` before the first)."""
        return self._history[-1][0] if self._history else float("-inf")

    def rules(self) -> list[AlertRule]:
        """The rules, in the order they were added."""
        return list(self._rules.values())

    def add(self, rule: AlertRule) -> None:
        """Add ``rule``; ValidationError if it is no AlertRule or its name is taken."""
        if not isinstance(rule, AlertRule):
            raise ValidationError(f"expected an AlertRule, got {rule!r}")
        if rule.name in self._rules:
            raise ValidationError(
                f"an alert rule named {rule.name!r} exists; remove_rule({rule.name!r}) first "
                "or pick another name"
            )
        self._rules[rule.name] = rule
        self._tracks[rule.name] = _Track()

    def remove(self, name: str) -> AlertRule:
        """Remove the rule named ``name`` (its alert, if any, ends without a transition)."""
        if name not in self._rules:
            raise ValidationError(f"no alert rule named {name!r}; known: {sorted(self._rules)}")
        del self._tracks[name]
        return self._rules.pop(name)

    def evaluate(self, now: float, snapshot: Snapshot) -> Evaluation:
        """Record ``snapshot`` taken at ``now`` and return what changed.

        ``now`` must not go back in time (a monotonic clock).
        """
        history = self._history
        if history and now < history[-1][0]:
            raise ValidationError(f"time went back: {now} < {history[-1][0]}")
        history.append((now, dict(snapshot)))
        self._prune(now)
        transitions: list[AlertTransition] = []
        failures: list[RuleFailure] = []
        samples = tuple(history)
        for rule in list(self._rules.values()):
            try:
                value = rule.compute(samples)
            except Exception as error:
                failures.append(RuleFailure(rule, error))
                continue
            transition = self._step(rule, self._tracks[rule.name], now, value)
            if transition is not None:
                transitions.append(transition)
        return Evaluation(tuple(transitions), tuple(failures))

    def _step(
        self, rule: AlertRule, track: _Track, now: float, value: float | None
    ) -> AlertTransition | None:
        previous = track.state
        if value is not None and rule.active(value):
            track.value = value
            if previous == "inactive":
                track.since = now
            if previous != "firing" and now - track.since >= rule.for_:
                track.state, track.fired_at = "firing", now
                return AlertTransition(rule, "firing", previous, value, now)
            if previous == "inactive":
                track.state = "pending"
                return AlertTransition(rule, "pending", previous, value, now)
            return None
        if previous == "inactive":
            return None
        track.state, track.fired_at = "inactive", None
        new: AlertState = "resolved" if previous == "firing" else "inactive"
        return AlertTransition(rule, new, previous, value, now)

    def _prune(self, now: float) -> None:
        """Keep the samples the longest window needs (and one before it)."""
        longest = max((r.window for r in self._rules.values()), default=0.0)
        history = self._history
        while len(history) > 1 and history[1][0] <= now - longest:
            history.popleft()

    def alerts(self) -> list[Alert]:
        """Rules pending or firing, in rule order."""
        found = []
        for name, rule in self._rules.items():
            track = self._tracks[name]
            if track.state != "inactive":
                found.append(Alert(rule, track.state, track.value, track.since, track.fired_at))
        return found

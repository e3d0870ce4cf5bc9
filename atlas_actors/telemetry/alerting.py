"""``db.alerts``: the alert rules of one storage, evaluated at an interval.

The supervisor's tick calls :meth:`Alerts.tick` (every ``liveness_interval``); it takes
one metrics snapshot per ``alert_interval`` and evaluates every rule over it, so the
write and read paths pay nothing. Each transition (``pending``, ``firing``,
``resolved``, ``inactive``) is logged once on the ``atlas_actors.alerts`` logger (a
firing alert at ERROR when critical, WARNING when a warning; the others at INFO) with
the structured extra ``atlas``, and delivered as an ``alert`` event
(``db.events.on("alert", fn)``) in the thread that evaluated. A rule that raises is
logged once (until it evaluates again) and skipped; nothing here ever raises into the
tick.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from atlas_actors.events import EventBus
from atlas_actors.telemetry.alerts import Alert, AlertEvaluator, AlertRule, AlertTransition

__all__ = ["Alerts"]

log = logging.getLogger("atlas_actors.alerts")


class Alerts:
    """The rules of one storage, their state, and when they were last evaluated."""

    def __init__(
        self,
        *,
        rules: Iterable[AlertRule],
        snapshot: Callable[[], Mapping[str, float]],
        events: EventBus,
        interval: float | None,
        db_name: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Track ``rules`` over ``snapshot()``; counters are taken as zero now (the open).

        ``interval``: seconds between evaluations by :meth:`tick` (None or 0: only
        :meth:`check` evaluates). ``clock`` must be the clock the ticks pass.
        """
        self._snapshot = snapshot
        self._events = events
        self._clock = clock
        self.interval = interval or None
        """Seconds between evaluations by the tick (None: the tick never evaluates)."""
        self._db_name = db_name
        # Reentrant: an alert handler may call rules() or firing() from the same thread.
        self._lock = threading.RLock()
        self._evaluator = AlertEvaluator(rules, start=clock())
        self._next_due = clock() + self.interval if self.interval else float("inf")
        self._failing: set[str] = set()  # rules whose failure was logged, until they succeed

    def rules(self) -> list[AlertRule]:
        """Every rule, in the order added."""
        with self._lock:
            return self._evaluator.rules()

    def add_rule(self, rule: AlertRule) -> None:
        """Add ``rule``; ValidationError if it is no AlertRule or its name is taken."""
        with self._lock:
            self._evaluator.add(rule)

    def remove_rule(self, name: str) -> AlertRule:
        """Remove and return the rule named ``name``; ValidationError if there is none.

        Its alert, if pending or firing, is forgotten without an event.
        """
        with self._lock:
            self._failing.discard(name)
            return self._evaluator.remove(name)

    def check(self) -> list[Alert]:
        """Evaluate every rule now (one snapshot); returns the firing alerts."""
        with self._lock:
            self._evaluate(self._clock())
            return self.firing()

    def firing(self) -> list[Alert]:
        """The alerts firing at the last evaluation, in rule order."""
        with self._lock:
            return [a for a in self._evaluator.alerts() if a.state == "firing"]

    def pending(self) -> list[Alert]:
        """The rules active at the last evaluation but not yet for their ``for_``."""
        with self._lock:
            return [a for a in self._evaluator.alerts() if a.state == "pending"]

    def tick(self, now: float) -> None:
        """Evaluate if ``interval`` has passed since the last tick that did; never raises."""
        if now < self._next_due:
            return
        try:
            with self._lock:
                self._next_due = now + (self.interval or float("inf"))
                self._evaluate(now)
        except Exception:
            log.exception("evaluating the alert rules of %s failed", self._db_name)

    def _evaluate(self, now: float) -> None:
        snapshot = self._snapshot()
        evaluation = self._evaluator.evaluate(max(now, self._evaluator_time()), snapshot)
        for failure in evaluation.failures:
            if failure.rule.name not in self._failing:
                self._failing.add(failure.rule.name)
                log.warning(
                    "alert rule %r could not be evaluated (skipped until it can): %s",
                    failure.rule.name,
                    failure.error,
                    exc_info=failure.error,
                    extra={"atlas": {"alert": failure.rule.name, "db": self._db_name}},
                )
        failed = {f.rule.name for f in evaluation.failures}
        self._failing &= failed
        for transition in evaluation.transitions:
            self._announce(transition)

    def _evaluator_time(self) -> float:
        # check() (caller's clock read) and tick() (the ticker's earlier read) may race by
        # a little; the evaluator refuses time going back, so the later of the two wins.
        return self._evaluator.last_time

    def _announce(self, transition: AlertTransition) -> None:
        rule = transition.rule
        if transition.state == "firing":
            level = logging.ERROR if rule.severity == "critical" else logging.WARNING
        else:
            level = logging.INFO
        value = transition.value
        shown = "no data" if value is None else f"{value:g}"
        log.log(
            level,
            "alert %s %s (%s): %s %s %g; %s",
            rule.name,
            transition.state,
            rule.severity,
            shown,
            rule.comparison,
            rule.threshold,
            rule.description,
            extra={
                "atlas": {
                    "alert": rule.name,
                    "severity": rule.severity,
                    "state": transition.state,
                    "previous": transition.previous,
                    "value": value,
                    "threshold": rule.threshold,
                    "metrics": list(rule.metrics),
                    "db": self._db_name,
                }
            },
        )
        self._events.emit(
            "alert",
            "alerts",
            alert=rule.name,
            severity=rule.severity,
            state=transition.state,
            previous=transition.previous,
            value=value,
            threshold=rule.threshold,
            description=rule.description,
        )

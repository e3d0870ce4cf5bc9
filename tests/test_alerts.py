"""Alert rules and their evaluation, pure: snapshots and times made up, no threads."""

from __future__ import annotations

import math
from typing import Any

import pytest

from atlas_actors.config import StorageConfig
from atlas_actors.errors import ValidationError
from atlas_actors.telemetry.alerts import AlertEvaluator, AlertRule
from atlas_actors.telemetry.default_alerts import default_rules
from atlas_actors.telemetry.metrics import CATALOGUE


def rule(**fields: Any) -> AlertRule:
    values: dict[str, Any] = {
        "name": "r",
        "severity": "warning",
        "metrics": ("pool.waiting_requests",),
        "threshold": 0,
        "description": "callers wait; raise max_readers",
    }
    values.update(fields)
    return AlertRule(**values)


def states(evaluator: AlertEvaluator, now: float, snapshot: dict[str, float]) -> list[str]:
    return [t.state for t in evaluator.evaluate(now, snapshot).transitions]


def test_a_rule_goes_pending_then_fires_after_its_for_and_resolves_when_it_stops() -> None:
    evaluator = AlertEvaluator([rule(for_=30)])
    waiting = {"pool.waiting_requests": 3}
    assert states(evaluator, 0, waiting) == ["pending"]
    assert states(evaluator, 29, waiting) == []
    assert evaluator.alerts()[0].state == "pending"
    assert states(evaluator, 30, waiting) == ["firing"]
    (alert,) = evaluator.alerts()
    assert (alert.state, alert.value, alert.active_since, alert.fired_at) == ("firing", 3, 0, 30)
    assert states(evaluator, 40, waiting) == []
    assert states(evaluator, 50, {"pool.waiting_requests": 0}) == ["resolved"]
    assert evaluator.alerts() == []


def test_a_rule_that_stops_before_its_for_never_fires_and_starts_over() -> None:
    evaluator = AlertEvaluator([rule(for_=30)])
    assert states(evaluator, 0, {"pool.waiting_requests": 1}) == ["pending"]
    assert states(evaluator, 20, {"pool.waiting_requests": 0}) == ["inactive"]
    assert states(evaluator, 25, {"pool.waiting_requests": 1}) == ["pending"]
    assert states(evaluator, 50, {"pool.waiting_requests": 1}) == []  # 25 s, not 50
    assert states(evaluator, 55, {"pool.waiting_requests": 1}) == ["firing"]


def test_a_rule_without_for_fires_at_once() -> None:
    evaluator = AlertEvaluator([rule()])
    transitions = evaluator.evaluate(0, {"pool.waiting_requests": 1}).transitions
    assert [(t.previous, t.state) for t in transitions] == [("inactive", "firing")]


def test_a_missing_gauge_is_no_data_and_ends_an_alert() -> None:
    evaluator = AlertEvaluator([rule()])
    assert states(evaluator, 0, {}) == []
    assert states(evaluator, 1, {"pool.waiting_requests": 1}) == ["firing"]
    (transition,) = evaluator.evaluate(2, {}).transitions
    assert (transition.state, transition.value) == ("resolved", None)


def test_increase_counts_growth_over_the_window_from_a_zero_start() -> None:
    restarts = rule(
        metrics=("restarts",), condition="increase", window=60, comparison=">=", threshold=1
    )
    evaluator = AlertEvaluator([restarts], start=0)
    # The counter first appears already at 1: it grew since the storage opened at 0.
    assert states(evaluator, 10, {"restarts": 1}) == ["firing"]
    assert states(evaluator, 50, {"restarts": 1}) == []
    assert states(evaluator, 80, {"restarts": 1}) == ["resolved"]  # the restart was at 10
    assert states(evaluator, 90, {"restarts": 2}) == ["firing"]


def test_without_a_start_the_first_snapshot_is_the_baseline() -> None:
    restarts = rule(metrics=("restarts",), condition="increase", comparison=">=", threshold=1)
    evaluator = AlertEvaluator([restarts])
    assert states(evaluator, 10, {"restarts": 5}) == []


def test_rate_is_growth_per_second_and_a_counter_that_shrinks_restarted_from_zero() -> None:
    errors = rule(metrics=("errors.io", "errors.timeout"), condition="rate", window=10, threshold=1)
    assert errors.compute([(0, {}), (10, {"errors.io": 8, "errors.timeout": 4})]) == 1.2
    # 100 -> 30: reset, so it grew by 30 (not -70), as Prometheus's increase() reads it.
    assert errors.compute([(0, {"errors.io": 100}), (10, {"errors.io": 30})]) == 3.0
    # Only the last window (from the latest sample at or before now - window) counts.
    history = [(0, {"errors.io": 0}), (10, {"errors.io": 100}), (20, {"errors.io": 110})]
    assert errors.compute(history) == 1.0
    assert errors.compute([(5, {"errors.io": 3})]) is None  # one sample: no rate


def test_a_ratio_needs_its_minimum_count() -> None:
    hit_rate = rule(
        metrics=("cache.hits", "cache.hits", "cache.misses"),
        condition="ratio",
        comparison="<",
        threshold=0.5,
        min_count=10,
        window=60,
    )
    assert hit_rate.compute([(0, {}), (60, {"cache.hits": 1, "cache.misses": 3})]) is None
    value = hit_rate.compute([(0, {}), (60, {"cache.hits": 3, "cache.misses": 9})])
    assert value == 0.25
    assert hit_rate.active(value)


def test_a_rule_whose_metric_is_not_a_number_fails_alone_and_keeps_its_state() -> None:
    broken = rule(name="broken", metrics=("x.y",))
    evaluator = AlertEvaluator([broken, rule()])
    evaluation = evaluator.evaluate(0, {"x.y": "oops", "pool.waiting_requests": 1})  # type: ignore[dict-item]
    assert [f.rule.name for f in evaluation.failures] == ["broken"]
    assert isinstance(evaluation.failures[0].error, TypeError)
    assert [t.rule.name for t in evaluation.transitions] == ["r"]


def test_a_nan_reading_keeps_a_value_rules_state_and_is_skipped_by_a_rate() -> None:
    """A NaN gauge resolved a firing alert and fired it again at the next sample (two
    logged transitions, two events), and one NaN in a counter's window hid its growth
    until the NaN left the window."""
    gauge = rule(name="gauge", metrics=("g",), threshold=1)
    rate = rule(name="rate", metrics=("c",), condition="rate", window=10, threshold=1)
    evaluator = AlertEvaluator([gauge, rate], start=0.0)
    assert states(evaluator, 1, {"g": 5, "c": 0}) == ["firing"]
    evaluation = evaluator.evaluate(2, {"g": math.nan, "c": math.nan})
    assert evaluation.transitions == ()
    assert [f.rule.name for f in evaluation.failures] == ["gauge"]
    assert isinstance(evaluation.failures[0].error, ValueError)
    assert states(evaluator, 3, {"g": 5, "c": 300}) == ["firing"]  # the rate: 300 in 3 s
    assert [a.rule.name for a in evaluator.alerts()] == ["gauge", "rate"]
    assert rate.compute([(0, {"c": math.inf}), (10, {"c": 20})]) == 0.0  # no baseline


def test_history_is_bounded_by_the_longest_window() -> None:
    evaluator = AlertEvaluator([rule(condition="rate", window=10)], start=0)
    for second in range(1, 1000):
        evaluator.evaluate(second, {"pool.waiting_requests": second})
    assert len(evaluator._history) <= 12


def test_time_going_back_is_refused() -> None:
    evaluator = AlertEvaluator([rule()])
    evaluator.evaluate(10, {})
    with pytest.raises(ValidationError, match="time went back"):
        evaluator.evaluate(9, {})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"severity": "page"}, r"severity='page'; use one of \('critical', 'warning'\)"),
        ({"threshold": math.nan}, r"threshold=nan; it must be a finite number"),
        ({"threshold": math.inf}, r"threshold=inf"),
        ({"threshold": True}, r"threshold=True"),
        ({"for_": -1}, r"for_=-1; it must be >= 0"),
        ({"window": 0}, r"window=0; it must be > 0"),
        ({"condition": "mean"}, r"condition='mean'"),
        ({"comparison": "=="}, r"comparison='=='"),
        ({"metrics": "pool.idle"}, r"give a tuple of metric names"),
        ({"metrics": ()}, r"give a tuple of metric names"),
        ({"condition": "ratio"}, r"a ratio needs a numerator and at least one denominator"),
        ({"name": "has space"}, r"name='has space'; use letters, digits and underscores"),
        ({"description": " "}, r"say what it means and what to do"),
    ],
)
def test_bad_rules_are_refused_with_the_field_and_value(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        rule(**fields)


def test_a_duplicate_or_unknown_name_is_refused() -> None:
    evaluator = AlertEvaluator([rule()])
    with pytest.raises(ValidationError, match="an alert rule named 'r' exists"):
        evaluator.add(rule(threshold=5))
    with pytest.raises(ValidationError, match="no alert rule named 'nope'"):
        evaluator.remove("nope")
    with pytest.raises(ValidationError, match="expected an AlertRule"):
        evaluator.add("r")  # type: ignore[arg-type]


def test_default_rules_read_only_metrics_the_storage_reports() -> None:
    rules = default_rules(StorageConfig())
    assert len({r.name for r in rules}) == len(rules)
    for each in rules:
        unknown = set(each.metrics) - set(CATALOGUE)
        assert not unknown, f"{each.name} reads unknown metrics {unknown}"
    by_name = {r.name: r for r in rules}
    assert {r.name for r in rules if r.severity == "critical"} == {
        "storage_failed",
        "actor_restarts",
        "disk_full",
        "high_error_rate",
        "deadlock",
        "performance_degradation",
        "readers_down",  # (not the plan's: a connection fault is no restart since stop 18)
    }
    assert by_name["wal_growth"].threshold == StorageConfig().wal_size_limit
    # readers_down fires before a lasting fault fails the storage, whatever the timeout.
    for timeout in (StorageConfig().reader_fault_timeout, 4.0, 600.0):
        rule = {r.name: r for r in default_rules(StorageConfig(reader_fault_timeout=timeout))}
        assert 0 < rule["readers_down"].for_ < timeout
    small = {r.name: r for r in default_rules(StorageConfig(wal_size_limit=1024))}
    assert small["wal_growth"].threshold == 1024
    assert "errors.validation" not in by_name["high_error_rate"].metrics  # the caller's fault

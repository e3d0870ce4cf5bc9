"""The benchmarks' statistics: percentiles by nearest rank."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from _common import percentile


def test_percentiles_are_nearest_rank() -> None:
    """The smallest value with at least q of them at or below it. Rounding q * n to the
    nearest rank picked one rank too low whenever its fraction was under a half."""
    values = [float(v) for v in range(1, 1061)]
    assert percentile(values, 0.99) == 1050.0  # 0.99 * 1060 = 1049.4: rank 1050
    assert percentile(values[:100], 0.29) == 29.0  # (28.999999999999996 in floating point)
    assert percentile(values[:100], 0.5) == 50.0
    assert percentile([1.0, 100.0], 0.5) == 1.0
    assert percentile([5.0], 0.0) == 5.0
    assert math.isnan(percentile([], 0.5))

"""The learning-rate schedule (training.lr_factor): linear warm-up, cosine decay to min_ratio."""
import math

import numpy as np
import pytest

from molgiae.train.schedule import lr_factor

WARMUP, TOTAL, MIN = 10, 110, 0.05


def test_warm_up_is_linear_up_to_one():
    got = [lr_factor(s, WARMUP, TOTAL, MIN) for s in range(WARMUP)]
    assert got == pytest.approx([(s + 1) / WARMUP for s in range(WARMUP)])
    assert np.allclose(np.diff(got), 1 / WARMUP)
    assert lr_factor(WARMUP, WARMUP, TOTAL, MIN) == pytest.approx(1.0)  # first step after warm-up


def test_cosine_decays_monotonically_to_min_ratio_and_stays_there():
    decay = [lr_factor(s, WARMUP, TOTAL, MIN) for s in range(WARMUP, TOTAL + 1)]
    assert np.all(np.diff(decay) < 0)
    assert decay[-1] == pytest.approx(MIN)
    midway = lr_factor(WARMUP + (TOTAL - WARMUP) // 2, WARMUP, TOTAL, MIN)
    assert midway == pytest.approx(MIN + (1 - MIN) / 2)  # cos(π/2) = 0
    assert all(lr_factor(s, WARMUP, TOTAL, MIN) == pytest.approx(MIN) for s in (TOTAL + 1, 2 * TOTAL))
    assert all(MIN <= lr_factor(s, WARMUP, TOTAL, MIN) <= 1.0 for s in range(3 * TOTAL))


def test_no_warm_up_and_a_run_shorter_than_the_warm_up():
    assert lr_factor(0, 0, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 0, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(4, 200, 5, 0.1) == pytest.approx(5 / 200)  # still warming up when it ends
    assert math.isfinite(lr_factor(0, 0, 0, 0.1))

"""Performance profiles and benchmark scores against hand computations.

The definitions are AlgoPerf's (Dahl et al. 2023, section 4.5). Hand example, 3
submissions x 4 workloads (times; inf = target never reached):

    workload   A     B     C        fastest   ratios A, B, C
    w1         10    20    40       10        1,   2,   4
    w2         20    10    25       10        2,   1,   2.5
    w3         inf   30    15       15        inf, 2,   1
    w4         8     8     inf      8         1,   1,   inf

rho_A = 2/4 on [1, 2), 3/4 from 2 on; rho_B = 2/4 on [1, 2), 1 from 2 on; rho_C = 1/4 on
[1, 2.5), 2/4 on [2.5, 4), 3/4 from 4 on. Integrals of these step functions over [1, 4],
divided by 3: A (3 + 2 + 0 + 3) / 4 / 3 = 2/3, B (2 + 3 + 2 + 3) / 4 / 3 = 5/6,
C (0 + 1.5 + 3 + 0) / 4 / 3 = 3/8.
"""

import math

import numpy as np
import pytest

from cnnjax.study import benchmark_score, performance_profiles
from cnnjax.study.profiles import ratios

INF = math.inf
TIMES = {"A": {"w1": 10, "w2": 20, "w3": INF, "w4": 8},
         "B": {"w1": 20, "w2": 10, "w3": 30, "w4": 8},
         "C": {"w1": 40, "w2": 25, "w3": 15, "w4": INF}}


def test_ratios_by_hand():
  assert ratios(TIMES) == {"A": {"w1": 1.0, "w2": 2.0, "w3": INF, "w4": 1.0},
                           "B": {"w1": 2.0, "w2": 1.0, "w3": 2.0, "w4": 1.0},
                           "C": {"w1": 4.0, "w2": 2.5, "w3": 1.0, "w4": INF}}


def test_profiles_by_hand():
  taus = [1.0, 1.5, 2.0, 2.49, 2.5, 3.99, 4.0, 100.0]
  p = performance_profiles(TIMES, taus=taus)
  np.testing.assert_array_equal(p["A"], [.5, .5, .75, .75, .75, .75, .75, .75])
  np.testing.assert_array_equal(p["B"], [.5, .5, 1., 1., 1., 1., 1., 1.])
  np.testing.assert_array_equal(p["C"], [.25, .25, .25, .25, .5, .5, .75, .75])
  assert p["A"].shape == (len(taus),)


def test_score_by_hand_and_against_dense_quadrature():
  score = benchmark_score(TIMES)
  assert score == pytest.approx({"A": 2 / 3, "B": 5 / 6, "C": 3 / 8}, abs=1e-15)
  # The exact sum equals the integral of the step function: the trapezoid rule on a grid
  # of 3,000,001 points over [1, 4] is within its step-error bound (jumps <= 1, spacing
  # 1e-6, a few jumps) of it.
  taus = np.linspace(1.0, 4.0, 3_000_001)
  for s, rho in performance_profiles(TIMES, taus=taus).items():
    assert np.trapezoid(rho, taus) / 3.0 == pytest.approx(score[s], abs=1e-5)


def test_score_extremes_and_max_ratio():
  fastest_everywhere = {"a": {"w": 1.0, "v": 5.0}, "b": {"w": 2.0, "v": INF}}
  s = benchmark_score(fastest_everywhere)
  assert s["a"] == 1.0
  assert s["b"] == pytest.approx((4 - 2) / 2 / 3)
  # With max_ratio 2, a ratio of exactly 2 counts (rho is right-continuous) and adds 0.
  assert benchmark_score(fastest_everywhere, max_ratio=2.0)["b"] == 0.0


def test_workload_nobody_reached_counts_against_everyone():
  times = {"a": {"w": INF, "v": 1.0}, "b": {"w": INF, "v": 3.0}}
  assert ratios(times)["a"]["w"] == INF
  assert benchmark_score(times) == pytest.approx({"a": 0.5, "b": (4 - 3) / 2 / 3})


@pytest.mark.parametrize("times, match", [
    ({}, "at least one submission"),
    ({"a": {"w": 1.0}, "b": {"v": 1.0}}, "same"),
    ({"a": {"w": 0.0}}, r"times\['a'\]\['w'\]=0.0"),
    ({"a": {"w": float("nan")}}, "number > 0"),
    ({"a": {"w": "fast"}}, "number > 0"),
])
def test_bad_times_are_refused_by_name(times, match):
  with pytest.raises(ValueError, match=match):
    benchmark_score(times)


def test_bad_max_ratio():
  with pytest.raises(ValueError, match="max_ratio=1.0"):
    benchmark_score(TIMES, max_ratio=1.0)

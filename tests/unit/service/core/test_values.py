from __future__ import annotations

import math

import numpy as np
import pytest

from service.core.readings import RejectReason
from service.core.values import FeatureValues

FEATURES = ("temp", "load", "vib")


def test_dicts_and_lists_convert_in_card_order() -> None:
    parser = FeatureValues(FEATURES)
    x, problems = parser.parse(
        [{"vib": 3, "temp": 1.5, "load": np.float32(2)}, [4.0, 5, np.int64(6)], (7.0, 8.0, 9.0)]
    )
    assert problems == {}
    assert x.dtype == np.float64
    np.testing.assert_array_equal(x, [[1.5, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])


def test_a_single_feature_card() -> None:
    x, problems = FeatureValues(["temp"]).parse([{"temp": 1.0}, [2.0]])
    assert problems == {}
    np.testing.assert_array_equal(x, [[1.0], [2.0]])


def test_one_bad_row_does_not_spoil_the_others() -> None:
    parser = FeatureValues(FEATURES)
    x, problems = parser.parse(
        [
            {"temp": 1.0, "load": 2.0, "vib": 3.0},
            {"temp": "1", "load": 2.0, "vib": 3.0},
            {"temp": 1.0, "load": 2.0},
            {"temp": 1.0, "load": 2.0, "vib": 3.0, "x": 0},
            [1.0, 2.0, math.nan],
            42,
            [4.0, 5.0, 6.0],
        ]
    )
    assert {i: reason for i, (reason, _) in problems.items()} == {
        1: RejectReason.NON_NUMERIC,
        2: RejectReason.MISSING_FEATURE,
        3: RejectReason.UNKNOWN_FEATURE,
        4: RejectReason.NON_FINITE,
        5: RejectReason.INVALID,
    }
    np.testing.assert_array_equal(x[0], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(x[6], [4.0, 5.0, 6.0])
    assert "temp" in problems[1][1] and "vib" in problems[2][1] and "'x'" in problems[3][1]


@pytest.mark.parametrize("bad", [True, np.bool_(False), None, "2.0", b"2", [1.0], {"v": 1}, 1j])
def test_non_numbers_are_never_coerced(bad: object) -> None:
    _, problems = FeatureValues(FEATURES).parse([[1.0, bad, 3.0]])
    assert problems[0][0] == RejectReason.NON_NUMERIC


def test_imputation_mode_returns_nan_for_missing_and_non_finite_values() -> None:
    parser = FeatureValues(FEATURES, impute=True)
    x, problems = parser.parse(
        [{"temp": 1.0, "load": math.inf, "vib": 3.0}, {"temp": 1.0}, [math.nan, 2.0, 3.0]]
    )
    assert problems == {}
    assert np.isnan(x).tolist() == [
        [False, True, False],
        [False, True, True],
        [True, False, False],
    ]
    # non-numbers are still rejected
    _, problems = parser.parse([{"temp": None, "load": 1.0, "vib": 1.0}])
    assert problems[0][0] == RejectReason.NON_NUMERIC


def test_the_fast_path_and_the_row_path_agree() -> None:
    parser = FeatureValues(FEATURES)
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(50, 3)).tolist()
    fast, _ = parser.parse(rows)
    slow, _ = parser.parse([*rows, "spoiler"])  # one odd row sends the batch row by row
    np.testing.assert_array_equal(fast, slow[:50])


def test_matrix_is_float32_and_values_beyond_its_range_are_not_finite() -> None:
    x, problems = FeatureValues(FEATURES).matrix([[1.0, 2.0, 3.0], [1e39, 2.0, 3.0]])
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x[0], [1.0, 2.0, 3.0])
    assert problems[1][0] == RejectReason.NON_FINITE and "float32" in problems[1][1]
    assert list(problems) == [1]


def test_matrix_with_imputation_leaves_nan_where_a_value_is_missing_or_too_large() -> None:
    x, problems = FeatureValues(FEATURES, impute=True).matrix(
        [{"temp": 1.0, "load": 2.0}, [1e39, 2.0, math.inf]]
    )
    assert problems == {}
    assert np.isnan(x[0, 2]) and x[0, :2].tolist() == [1.0, 2.0]
    assert np.isnan(x[1, 0]) and np.isnan(x[1, 2]) and x[1, 1] == 2.0

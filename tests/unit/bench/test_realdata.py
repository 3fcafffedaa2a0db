from __future__ import annotations

import numpy as np
import pytest

from bench.realdata import (
    FEATURES,
    HORIZON,
    Segment,
    actuals,
    cell_mask,
    persistence,
    score,
)

_P, _OT = FEATURES.index("P_avg"), FEATURES.index("Ot_avg")


def _segment(ts: list[float], power: list[float], temp: list[float], sid: str = "T1") -> Segment:
    values = np.zeros((len(ts), len(FEATURES)))
    values[:, _P], values[:, _OT] = power, temp
    return Segment(sid, sid.split("#")[0], np.asarray(ts, np.float64), values)


def test_cells_are_the_targets_in_the_period_within_the_segment() -> None:
    ts = np.array([0.0, 10.0, 20.0, 30.0, 40.0])
    mask = cell_mask(ts, 3, start=20.0, end=40.0)
    # cell (t, h) targets reading t + 1 + h; target times 20 and 30 are in [20, 40)
    expected = np.array(
        [
            [False, True, True],  # targets 10, 20, 30
            [True, True, False],  # targets 20, 30, 40
            [True, False, False],  # targets 30, 40, past the end
            [False, False, False],  # target 40 is the end (exclusive)
            [False, False, False],  # nothing after the last reading
        ]
    )
    np.testing.assert_array_equal(mask, expected)


def test_persistence_carries_the_last_observed_reading() -> None:
    seg = _segment([0.0, 1.0, 2.0, 3.0], [np.nan, 1.0, np.nan, 3.0], [0.0] * 4)
    got = persistence([seg], ["P_avg"])["P_avg"][0][:, 0]
    np.testing.assert_array_equal(got, [np.nan, 1.0, 1.0, 3.0])


def test_actuals_are_the_later_readings_and_nan_past_the_end() -> None:
    got = actuals(np.array([1.0, 2.0, 3.0]), 2)
    np.testing.assert_array_equal(got, [[2.0, 3.0], [3.0, np.nan], [np.nan, np.nan]])


def test_persistence_mae_by_hand_skipping_nan_actuals_and_cells_before_the_start() -> None:
    # 16 readings 600 s apart; the period starts at the 14th reading (ts 7800), so only
    # targets at indices 13, 14 and 15 count; the actual at index 14 is missing (NaN).
    n = 16
    ts = [600.0 * i for i in range(n)]
    power = [float(i * i) for i in range(n)]
    temp = [float(i) for i in range(n)]
    power[14] = np.nan
    temp[14] = np.nan
    seg = _segment(ts, power, temp)
    start, end = 600.0 * 13, 600.0 * n
    masks = [cell_mask(seg.ts, HORIZON, start, end)]
    scores = score("persistence", persistence([seg]), [seg], masks, seconds=0.0)

    # step h (1-based) from reading t = target - h: |target - last observed value at t|;
    # the forecast from reading 14 (NaN) carries reading 13
    def last(t: int) -> int:
        return 13 if t == 14 else t

    p_errs = {h: [abs(j * j - last(j - h) ** 2) for j in (13, 15)] for h in range(1, 13)}
    t_errs = {h: [abs(j - last(j - h)) for j in (13, 15)] for h in range(1, 13)}
    pooled_p = [e for errs in p_errs.values() for e in errs]
    assert scores.cells == {"P_avg": 2 * HORIZON, "Ot_avg": 2 * HORIZON}
    assert scores.mae["P_avg"] == pytest.approx(np.mean(pooled_p))
    assert scores.mae["Ot_avg"] == pytest.approx((sum(range(1, 13)) + 2 + sum(range(2, 13))) / 24)
    assert scores.per_step["Ot_avg"][0] == pytest.approx((1 + 2) / 2)
    assert scores.per_step["P_avg"] == pytest.approx([np.mean(p_errs[h]) for h in p_errs])
    assert scores.per_step["Ot_avg"] == pytest.approx([np.mean(t_errs[h]) for h in t_errs])
    assert scores.extra == {}


def test_no_cell_reaches_across_segments() -> None:
    # Two segments of one turbine (cut at a gap): the second's first readings are targets
    # of none of the first's readings.
    first = _segment([0.0, 600.0], [0.0, 0.0], [0.0, 0.0], "T1#0")
    second = _segment([99_000.0, 99_600.0], [100.0, 110.0], [5.0, 6.0], "T1#1")
    segments = [first, second]
    masks = [cell_mask(s.ts, HORIZON, 1.0, 1e9) for s in segments]
    scores = score("persistence", persistence(segments), segments, masks, seconds=0.0)
    # 0 -> 600 (error 0) and 99,000 -> 99,600 (error 10 kW, 1 °C); nothing from 600 on
    assert scores.cells["P_avg"] == 2
    assert scores.mae == {"P_avg": 5.0, "Ot_avg": 0.5}


def test_a_missing_forecast_on_a_scored_cell_is_reported_not_scored() -> None:
    seg = _segment([0.0, 600.0, 1200.0], [1.0, 2.0, 4.0], [0.0, 0.0, 0.0])
    forecasts = persistence([seg])
    forecasts["P_avg"][0][1, 0] = np.nan
    masks = [cell_mask(seg.ts, HORIZON, 0.0, 1e9)]
    scores = score("m", forecasts, [seg], masks, seconds=0.0)
    assert scores.extra == {"missing": {"P_avg": 1, "Ot_avg": 0}}
    assert scores.cells["P_avg"] == 2
    assert scores.mae["P_avg"] == pytest.approx((1.0 + 3.0) / 2)

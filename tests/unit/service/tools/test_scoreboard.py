from __future__ import annotations

import numpy as np
import pytest

from service.simulate import simulate
from service.tools.scoreboard import Scoreboard
from service.tools.tail import ForecastView


def _view(
    sid: str, ts: float, period: float, nxt: dict[str, float], warm: bool = True
) -> ForecastView:
    return ForecastView(
        stream_id=sid,
        ts=ts,
        model="m:1",
        horizon_ts=[ts + period, ts + 2 * period],
        forecast={t: [v, v] for t, v in nxt.items()},
        warm=warm,
        partition=0,
        offset=0,
    )


def test_forecasts_are_scored_against_truth_and_persistence() -> None:
    sim = simulate(4, 50, seed=2)
    span = 50 * sim.period
    board = Scoreboard(sim, ["temp", "vibration"], ["sensor-00000"], span)
    t_col, v_col = sim.features.index("temp"), sim.features.index("vibration")
    model_err, persist_err = [], []
    for i in range(4):
        for k in range(10, 20):
            if not (sim.present[i, k] and sim.present[i, k + 1]):
                continue
            truth = sim.values[i, k + 1]
            nxt = {"temp": truth[t_col] + 0.5, "vibration": truth[v_col] - 0.25}
            board.on_forecast(_view(sim.stream_ids[i], float(sim.ts[k]), sim.period, nxt))
            model_err.append([0.5, 0.25])
            persist_err.append(np.abs(sim.values[i, k, [t_col, v_col]] - truth[[t_col, v_col]]))
    # a cold forecast counts as received, not scored
    board.on_forecast(
        _view(
            "sensor-00001", float(sim.ts[30]), sim.period, {"temp": 0, "vibration": 0}, warm=False
        )
    )
    acc = board.accuracy()
    assert [a[0] for a in acc] == ["temp", "vibration"]
    assert acc[0][1] == pytest.approx(0.5) and acc[1][1] == pytest.approx(0.25)
    expected_persist = np.mean(persist_err, axis=0)
    assert acc[0][2] == pytest.approx(expected_persist[0])
    assert acc[1][2] == pytest.approx(expected_persist[1])
    assert board.received.count == len(model_err) + 1
    assert board.warm == len(model_err)
    lines = board.accuracy_lines()
    assert f"over {len(model_err):,} warm forecasts" in lines[0]
    assert "temp 0.500 vs" in lines[1]


def test_actual_wraps_around_the_loop_and_knows_gaps() -> None:
    sim = simulate(3, 40, seed=5)
    span = 40 * sim.period
    board = Scoreboard(sim, ["temp"], [], span)
    col = sim.features.index("temp")
    for i, sid in enumerate(sim.stream_ids):
        for k in range(40):
            for loop in (0, 2):
                got = board.actual(sid, float(sim.ts[k]) + loop * span)
                if sim.present[i, k]:
                    assert got is not None and got[0] == sim.values[i, k, col]
                else:
                    assert got is None
    assert board.actual("nobody", float(sim.ts[0])) is None


def test_table_row_shows_actual_forecast_made_a_step_earlier_and_error() -> None:
    sim = simulate(2, 30, seed=0)
    board = Scoreboard(sim, ["temp"], ["sensor-00000", "sensor-00001"], 30 * sim.period)
    k = next(k for k in range(5, 29) if sim.present[0, k] and sim.present[0, k + 1])
    col = sim.features.index("temp")
    truth = float(sim.values[0, k + 1, col])
    board.on_forecast(_view("sensor-00000", float(sim.ts[k]), sim.period, {"temp": truth + 1.0}))
    board.on_forecast(_view("sensor-00000", float(sim.ts[k + 1]), sim.period, {"temp": 0.0}))
    lines = board.table(width=80)
    row = next(line for line in lines if line.startswith("sensor-00000"))
    assert f"{truth:.2f}" in row and f"{truth + 1.0:.2f}" in row and "+1.00" in row
    waiting = next(line for line in lines if line.startswith("sensor-00001"))
    assert "waiting" in waiting

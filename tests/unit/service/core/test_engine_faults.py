"""Faults in readings that must not poison a stream: values far outside the training range
(sensor error codes, float32's maximum) and a single timestamp far ahead of the stream's
clock. Each is checked against the oracle: the model run over the readings that should
have been applied."""

from __future__ import annotations

import numpy as np
import pytest

from service.core.engine import EngineConfig, StreamEngine
from service.core.readings import DropReason, Reading, RejectReason
from service.testing import ElmanLagModel, drive, readings_for
from tests.unit.service.core.test_engine import PERIOD, oracle

# the Elman test model's features are temp and load, scaled with std 2 and 3
RANGES = [(5.0, 25.0), (8.0, 22.0)]


@pytest.fixture
def ranged(elman: ElmanLagModel) -> ElmanLagModel:
    elman.card = elman.card.model_copy(update={"feature_ranges": RANGES})
    return elman


def _clean(steps: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(15.0, 2.0, (steps, 2))


@pytest.mark.parametrize("bad", [1037.55, 3.4e38, -273.15, 46.0])
def test_a_value_far_outside_the_training_range_is_rejected_and_never_applied(
    ranged: ElmanLagModel, bad: float
) -> None:
    values = _clean(6)
    readings = readings_for("pump-1", values, features=ranged.card.features, start=0.0)
    poisoned = Reading("pump-1", 2.5 * PERIOD, {"temp": bad, "load": 15.0}, offset=99)
    engine = StreamEngine(ranged)
    sink = drive(engine, [readings[:3], [poisoned], readings[3:]])
    (reject,) = sink.rejects
    assert reject.reason is RejectReason.OUT_OF_RANGE
    assert "temp=" in reject.detail and "training range 5..25" in reject.detail
    got = np.stack([f.values for f in sink.forecasts])
    np.testing.assert_allclose(got, oracle(ranged, values), rtol=1e-5, atol=1e-5)
    assert all(np.abs(f.values).max() < 1e3 for f in sink.forecasts)


def test_a_value_within_the_margin_is_applied(ranged: ElmanLagModel) -> None:
    # 25 + 10 std (2) = 45: 44.9 is unusual but possible
    values = np.array([[15.0, 15.0], [44.9, 15.0], [16.0, 14.0]])
    sink = drive(StreamEngine(ranged), [readings_for("p", values, features=["temp", "load"])])
    assert not sink.rejects and len(sink.forecasts) == 3


def test_clip_applies_the_bound_and_accept_the_value(ranged: ElmanLagModel) -> None:
    values = np.array([[15.0, 15.0], [1037.55, 15.0], [16.0, 14.0]])
    readings = readings_for("p", values, features=["temp", "load"])
    clipped = drive(StreamEngine(ranged, EngineConfig(out_of_range="clip")), [readings])
    expected = oracle(ranged, np.array([[15.0, 15.0], [45.0, 15.0], [16.0, 14.0]]))
    np.testing.assert_allclose(
        np.stack([f.values for f in clipped.forecasts]), expected, rtol=1e-5, atol=1e-5
    )
    readings = readings_for("p", values, features=["temp", "load"])
    accepted = drive(StreamEngine(ranged, EngineConfig(out_of_range="accept")), [readings])
    assert not accepted.rejects and len(accepted.forecasts) == 3
    np.testing.assert_allclose(
        np.stack([f.values for f in accepted.forecasts]), oracle(ranged, values), rtol=1e-4
    )


def test_a_card_without_ranges_checks_nothing(elman: ElmanLagModel) -> None:
    values = np.array([[15.0, 15.0], [1037.55, 15.0]])
    sink = drive(StreamEngine(elman), [readings_for("p", values, features=["temp", "load"])])
    assert not sink.rejects and len(sink.forecasts) == 2


# -- one timestamp far ahead ------------------------------------------------------------


def _with_jump(values: np.ndarray, at: int, jump: float) -> list[Reading]:
    """One reading per period, offsets in order; the reading at `at` is stamped `jump`
    seconds ahead of where it belongs."""
    readings = readings_for("pump-1", values, features=["temp", "load"], start=0.0)
    readings[at].ts += jump
    return readings


@pytest.mark.parametrize("jump", [20 * 3600.0, 2 * 365 * 86_400.0])
@pytest.mark.parametrize("batched", [False, True])
def test_a_stream_recovers_after_one_timestamp_far_ahead(
    elman: ElmanLagModel, jump: float, batched: bool
) -> None:
    values = _clean(12)
    readings = _with_jump(values, 5, jump)
    engine = StreamEngine(elman, EngineConfig(clock_recovery=2))
    sink = drive(engine, [readings] if batched else [[r] for r in readings])
    # reading 6 continues the clock from before the jump: dropped as late, counted; with
    # reading 7 the jump is judged a bad timestamp and the stream starts over from there
    assert [(r.offset, why) for r, why in sink.drops] == [(6, DropReason.LATE)]
    assert sum(r.clock_resets for r in sink.results) == 1
    assert [f.offset for f in sink.forecasts] == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11]
    after = np.stack([f.values for f in sink.forecasts[6:]])
    np.testing.assert_allclose(after, oracle(elman, values[7:]), rtol=1e-5, atol=1e-5)
    assert not sink.forecasts[6].warm and sink.forecasts[-1].warm
    assert engine.store.info("pump-1") is not None
    assert engine.store.info("pump-1").last_ts == readings[-1].ts  # type: ignore[union-attr]


def test_without_recovery_the_stream_waits_for_its_clock(elman: ElmanLagModel) -> None:
    readings = _with_jump(_clean(12), 5, 20 * 3600.0)
    sink = drive(StreamEngine(elman, EngineConfig(clock_recovery=0)), [[r] for r in readings])
    assert [r.offset for r, _ in sink.drops] == [6, 7, 8, 9, 10, 11]


def test_a_real_gap_followed_by_newer_readings_is_not_undone(elman: ElmanLagModel) -> None:
    values = _clean(10)
    readings = readings_for("pump-1", values, features=["temp", "load"], start=0.0)
    for r in readings[5:]:
        r.ts += 6 * 3600.0  # the sensor was off for six hours
    straggler = Reading("pump-1", 4.5 * PERIOD, {"temp": 15.0, "load": 15.0}, offset=100)
    for r in readings[7:]:
        r.offset += 1000
    batches = [[r] for r in readings[:7]] + [[straggler]] + [[r] for r in readings[7:]]
    sink = drive(StreamEngine(elman, EngineConfig(clock_recovery=2)), batches)
    assert [(r.offset, why) for r, why in sink.drops] == [(100, DropReason.LATE)]
    assert sum(r.clock_resets for r in sink.results) == 0
    assert len(sink.forecasts) == 10


@pytest.mark.parametrize("crash_after", [5, 6])
def test_a_restart_between_the_jump_and_the_recovery_recovers_as_without_it(
    elman: ElmanLagModel, crash_after: int
) -> None:
    """A checkpoint after every reading, a crash after reading `crash_after` (5: the jump
    ahead; 6: the first reading that continues the old clock, dropped as late), a restore
    from the checkpoints and the rest of the input: the same forecasts and the same clock
    reset as the run without the crash."""
    config = EngineConfig(clock_recovery=2)
    values = _clean(12)
    readings = _with_jump(values, 5, 20 * 3600.0)
    uninterrupted = StreamEngine(elman, config)
    whole = drive(uninterrupted, [[r] for r in readings])

    first, changelog = StreamEngine(elman, config), {}
    for reading in readings[: crash_after + 1]:
        drive(first, [[reading]])
        dirty = sorted(first.store.dirty_ids())
        changelog.update(zip(dirty, first.store.dump_many(dirty), strict=True))
        first.store.clear_dirty(dirty)
    restored = StreamEngine(elman, config)
    restored.store.load_many(list(changelog.items()))
    sink = drive(restored, [[r] for r in readings[crash_after + 1 :]])

    expected = [f for f in whole.forecasts if f.offset > crash_after]
    assert [f.offset for f in sink.forecasts] == [f.offset for f in expected] == [7, 8, 9, 10, 11]
    assert sum(r.clock_resets for r in sink.results) == 1
    for got, want in zip(sink.forecasts, expected, strict=True):
        np.testing.assert_allclose(got.values, want.values, rtol=1e-6, atol=1e-6)
    assert restored.store.info("pump-1") == uninterrupted.store.info("pump-1")

"""Cutting a batch into waves of distinct streams, and joining the rounds' forecasts."""

from __future__ import annotations

import numpy as np

from service.core.readings import ReadingBatch
from service.core.scoring import AnomalyScores
from service.core.state import StateStore
from service.core.waves import in_row_order, is_one_wave, waves
from service.testing import ElmanLagModel

MODEL = ElmanLagModel(hidden=4, lags=2, horizon=2, warmup_steps=1, seed=3)


def test_wave_k_holds_the_kth_reading_of_each_stream_in_row_order() -> None:
    ids = ["a", "b", "a", "c", "a", "b"]
    split = [w.tolist() for w in waves(ids, None)]
    assert split == [[0, 1, 3], [2, 5], [4]]


def test_a_wave_wider_than_the_capacity_cap_is_cut_into_chunks() -> None:
    ids = ["a", "b", "c", "d", "e", "a"]
    assert [w.tolist() for w in waves(ids, 2)] == [[0, 1], [2, 3], [4], [5]]
    assert list(waves([], 2)) == []


def test_one_wave_needs_distinct_known_and_new_streams() -> None:
    store = StateStore(MODEL.card.states)
    store.ensure(["a", "b"])
    slots = store.slots_of(["a", "b", "x", "y"])
    assert is_one_wave(["a", "b", "x", "y"], slots, store)
    assert not is_one_wave(["a", "b", "x", "x"], store.slots_of(["a", "b", "x", "x"]), store)
    assert not is_one_wave(["a", "a", "x"], store.slots_of(["a", "a", "x"]), store)


def test_the_rounds_forecasts_come_back_in_batch_row_order() -> None:
    batch = ReadingBatch.of(["a", "b", "a"], [1.0, 2.0, 3.0], np.zeros((3, 1)), offsets=[5, 6, 7])
    values = np.arange(3, dtype=np.float32).reshape(3, 1, 1)
    first = (np.array([0, 1]), values[[0, 1]], np.array([True, False]), None)
    second = (np.array([2]), values[[2]], np.array([True]), None)
    joined = in_row_order(batch, [second, first], period=60.0)
    assert joined.stream_ids == ["a", "b", "a"]
    assert joined.offsets.tolist() == [5, 6, 7]
    assert joined.values.ravel().tolist() == [0.0, 1.0, 2.0]
    assert joined.warm.tolist() == [True, False, True]
    assert joined.anomaly is None and joined.anomalous is None
    whole = in_row_order(batch, [(None, values, np.ones(3, np.bool_), None)], period=60.0)
    assert whole.ts is batch.ts


def test_the_rounds_anomaly_scores_follow_their_rows() -> None:
    batch = ReadingBatch.of(["a", "b", "a"], [1.0, 2.0, 3.0], np.zeros((3, 1)))
    values = np.zeros((3, 1, 1), np.float32)
    first = (
        np.array([0, 1]),
        values[:2],
        np.ones(2, np.bool_),
        AnomalyScores(np.array([0.5, 7.0], np.float32), np.array([[False], [True]])),
    )
    second = (
        np.array([2]),
        values[:1],
        np.ones(1, np.bool_),
        AnomalyScores(np.array([1.5], np.float32), np.array([[False]])),
    )
    joined = in_row_order(batch, [second, first], period=60.0)
    assert joined.anomaly is not None and joined.anomalous is not None
    assert joined.anomaly.tolist() == [0.5, 7.0, 1.5]
    assert joined.anomalous[:, 0].tolist() == [False, True, False]

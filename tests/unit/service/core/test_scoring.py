"""Forecasts scored against the readings that follow them, and anomaly scores.

Oracle: the scores computed independently from what the engine published (its warm
forecasts) and the readings it applied: for each applied reading, the stream's last
`horizon` warm forecasts before it, each scored at the step whose target time lies within
half a period of the reading, once per step. Streams come with jittered clocks (misses,
two readings in one target window), gaps that reset the state, late and duplicate readings,
missing values (imputed, not observations) and readings at the horizon's edge.
"""

from __future__ import annotations

from collections import defaultdict, deque

import numpy as np
import pytest

from service.core.engine import EngineConfig, StreamEngine
from service.core.model import OnnxStepModel
from service.core.readings import Reading
from service.core.scoring import ScoreSums
from service.testing import ListSink, build_onnx_lstm, interleave, random_batches

PERIOD = 60.0
HORIZON = 4
FEATURES = ("temp", "load")
TARGETS = ("temp", "load")


@pytest.fixture(scope="module")
def model() -> OnnxStepModel:
    card, proto, _ = build_onnx_lstm(
        hidden=6, features=FEATURES, targets=TARGETS, horizon=HORIZON, warmup_steps=3, seed=2
    )
    return OnnxStepModel(card, proto.SerializeToString())


def _stream(sid: str, rng: np.random.Generator, n: int, partition: int) -> list[Reading]:
    """Readings near the card's means with a jittered clock, gaps, a late and a duplicate
    reading, and missing values."""
    t, out = 1_000_000.0, []
    for i in range(n):
        step = PERIOD * rng.choice([1.0, 1.0, 1.0, 0.55, 1.45, 1.5, 0.4])
        if rng.random() < 0.03:
            step = PERIOD * rng.uniform(12, 14)  # a gap past max_gap_periods: a reset
        t += step
        values: dict[str, float] = {"temp": 10 + rng.normal(0, 2), "load": 20 + rng.normal(0, 3)}
        if rng.random() < 0.05:
            values.pop("load")  # missing: imputed with the last value, not an observation
        out.append(Reading(sid, t, values, partition, i))
    late = out[n // 2]
    out.insert(n // 2 + 2, Reading(sid, late.ts - 1.0, dict(late.values), partition, n))
    out.insert(
        n // 3, Reading(sid, out[n // 3 - 1].ts, {"temp": 1.0, "load": 2.0}, partition, n + 1)
    )
    return out


def _oracle(
    sink: ListSink, applied: dict[str, list[Reading]], values: dict[str, dict[float, np.ndarray]]
) -> np.ndarray:
    """``[4, horizon, targets]``: count, abs, squared and persistence abs error sums."""
    sums = np.zeros((4, HORIZON, len(TARGETS)))
    published = defaultdict(list)
    for f in sink.forecasts:
        if f.warm:
            published[f.stream_id].append(f)
    for sid, readings in applied.items():
        forecasts = iter(published[sid])
        outstanding: deque[list] = deque(maxlen=HORIZON)  # [forecast, highest step scored]
        pending = next(forecasts, None)
        for r in readings:
            for entry in outstanding:
                f, done = entry
                k = round((r.ts - f.ts) / PERIOD)
                if 1 <= k <= HORIZON and k > done and abs(r.ts - (f.ts + k * PERIOD)) <= PERIOD / 2:
                    entry[1] = k
                    truth = values[sid][r.ts]
                    base = values[sid][f.ts]
                    for j, name in enumerate(TARGETS):
                        if name not in r.values:
                            continue
                        err = truth[j] - f.values[k - 1, j]
                        sums[:, k - 1, j] += (1, abs(err), err**2, abs(truth[j] - base[j]))
            if pending is not None and pending.ts == r.ts:
                outstanding.append([pending, 0])
                pending = next(forecasts, None)
    return sums


def test_every_scored_pair_matches_the_oracle(model: OnnxStepModel) -> None:
    rng = np.random.default_rng(7)
    streams = [_stream(f"s{i}", rng, 150, partition=i % 3) for i in range(40)]
    engine = StreamEngine(model, EngineConfig(impute="last", history=0))
    sink, sums = ListSink(), ScoreSums(HORIZON, len(TARGETS))
    applied: dict[str, list[Reading]] = defaultdict(list)
    values: dict[str, dict[float, np.ndarray]] = defaultdict(dict)
    dropped = set()
    for batch in random_batches(interleave(streams, rng), rng, 97):
        result = engine.process(batch, now=0.0)
        sink.write(result)
        assert result.scores is not None
        sums.add(result.scores)
        dropped.update(id(r) for r, _ in result.drops)
        dropped.update(id(r.reading) for r in result.rejects)
    for stream in streams:
        for r in stream:
            if id(r) in dropped:
                continue
            applied[r.stream_id].append(r)
    # the values each reading was applied with: imputed ones carry the last value
    for sid, readings in applied.items():
        last: dict[str, float] = {}
        for r in readings:
            last.update(r.values)
            values[sid][r.ts] = np.array([last[t] for t in TARGETS], np.float32)
    want = _oracle(sink, applied, values)
    table, anomalies = sums.total()
    assert want[0].sum() > 2000  # plenty of pairs, at every step
    assert (want[0] > 0).all()
    np.testing.assert_array_equal(table[0], want[0])
    np.testing.assert_allclose(table[1:], want[1:], rtol=1e-4)
    # by partition: every stream's pairs land in its partition's table
    assert set(sums.tables) == {0, 1, 2}
    assert anomalies.sum() == 0  # readings drawn from the card's own range and noise


def test_a_spike_is_flagged_and_does_not_make_the_next_forecasts_explode(
    model: OnnxStepModel,
) -> None:
    rng = np.random.default_rng(3)
    n, spike_at = 200, 150
    temp = 10 + np.cumsum(rng.normal(0, 0.05, n))
    load = 20 + rng.normal(0, 0.3, n)
    temp[spike_at] += 40.0
    readings = [
        Reading("s", 60.0 * i, {"temp": float(temp[i]), "load": float(load[i])}, 0, i)
        for i in range(n)
    ]
    for policy in ("apply", "replace"):
        engine = StreamEngine(model, EngineConfig(anomaly_policy=policy))
        forecasts = engine.process(readings, now=0.0).forecasts
        flags = [f.ts for f in forecasts if f.anomalous is not None and f.anomalous.any()]
        assert flags == [60.0 * spike_at], policy
        spiked = forecasts[spike_at]
        assert spiked.anomaly > engine.config.anomaly_threshold
        after = np.stack([f.values for f in forecasts[spike_at + 1 : spike_at + 10]])
        # no forecast runs away: within the spike's own size of the readings
        assert np.abs(after[..., 0] - temp[spike_at + 1 : spike_at + 10, None]).max() < 45.0
        if policy == "replace":  # the state never saw the spike: forecasts stay near the data
            assert np.abs(after[..., 0] - temp[spike_at + 1 : spike_at + 10, None]).max() < 5.0


def test_scoring_continues_across_a_restore_with_no_pair_scored_twice(
    model: OnnxStepModel,
) -> None:
    """The outstanding forecasts are part of a stream's record: an engine restored from the
    records mid-way, fed the rest (and a replay of readings it already holds), scores
    exactly what an uninterrupted engine scores."""
    rng = np.random.default_rng(11)
    streams = [_stream(f"s{i}", rng, 80, partition=0) for i in range(12)]
    batches = random_batches(interleave(streams, rng), rng, 50)
    cut = len(batches) // 2

    def run(engine: StreamEngine, part: list[list[Reading]]) -> np.ndarray:
        sums = ScoreSums(HORIZON, len(TARGETS))
        for batch in part:
            result = engine.process(batch, now=0.0)
            assert result.scores is not None
            sums.add(result.scores)
        return sums.total()[0]

    config = EngineConfig(impute="last")
    whole = run(StreamEngine(model, config), batches)
    first = StreamEngine(model, config)
    before = run(first, batches[:cut])
    second = StreamEngine(model, config)
    ids = first.store.ids()
    second.store.load_many(list(zip(ids, first.store.dump_many(ids), strict=True)))
    replayed = batches[cut - 3 : cut]  # already applied: dropped, never scored again
    after = run(second, [*replayed, *batches[cut:]])
    np.testing.assert_array_equal(before[0] + after[0], whole[0])
    np.testing.assert_allclose(before + after, whole, rtol=1e-5)


def test_the_anomaly_scale_is_seeded_from_the_cards_one_step_error() -> None:
    from service.core.scoring import one_step_variance
    from service.testing import make_card

    targets = ("temp", "load")
    exported = make_card(
        targets=targets, metrics={"test.h1.rmse.temp": 0.5, "test.h1.rmse.load": 2.0}
    )
    np.testing.assert_allclose(one_step_variance(exported), [0.25, 4.0])
    older = make_card(targets=targets, metrics={"test.h1.arv": 0.1})  # std 2 and 3
    np.testing.assert_allclose(one_step_variance(older), [0.4, 0.9], rtol=1e-6)
    np.testing.assert_allclose(one_step_variance(make_card(targets=targets)), [4.0, 9.0])

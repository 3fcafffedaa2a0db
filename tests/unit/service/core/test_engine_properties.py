"""Property: batching and interleaving never change what the engine computes.

Any interleaving of per-stream-ordered readings, cut into batches of any sizes, gives the same
forecasts, drops, rejects and final states as feeding every reading on its own, stream by stream.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service.core.engine import EngineConfig, StreamEngine
from service.core.readings import Reading
from service.testing import ElmanLagModel, drive

MODEL = ElmanLagModel(hidden=6, lags=2, horizon=2, warmup_steps=2, seed=7)
PERIOD = MODEL.card.period

# what happens at each step of a stream: a normal reading, a long gap, a duplicate or late
# reading, a missing value, a reading replayed with an old offset, a reading that continues
# the stream's clock from before its last gap (after two, clock recovery: the gap was a bad
# timestamp)
_EVENTS = st.sampled_from(
    ["next", "next", "next", "next", "gap", "dup", "late", "nan", "replay", "stale", "stale"]
)


@st.composite
def _streams(draw: st.DrawFn) -> dict[str, list[Reading]]:
    n_streams = draw(st.integers(1, 5))
    out: dict[str, list[Reading]] = {}
    for k in range(n_streams):
        sid = f"s{k}"
        events = draw(st.lists(_EVENTS, min_size=1, max_size=12))
        seed = draw(st.integers(0, 2**16))
        rng = np.random.default_rng(seed)
        ts, offset, readings = 0.0, 0, []
        before_gap: float | None = None
        for event in events:
            values = rng.normal(15, 3, 2).tolist()
            if event == "stale" and before_gap is not None:
                before_gap += PERIOD
                readings.append(Reading(sid, before_gap, values, 0, offset))
            elif event in ("dup", "late") and readings:
                back = 0.0 if event == "dup" else PERIOD / 2
                readings.append(Reading(sid, readings[-1].ts - back, values, 0, offset))
            elif event == "replay" and readings:
                old = readings[-1]
                readings.append(Reading(sid, old.ts + 1.0, values, 0, old.offset))
                continue  # no new offset
            else:
                if event == "gap":
                    before_gap = ts
                ts += PERIOD * (30 if event == "gap" else 1)
                if event == "nan":
                    values[1] = math.nan
                readings.append(Reading(sid, ts, values, 0, offset))
            offset += 1
        out[sid] = readings
    return out


def _run(
    batches: list[list[Reading]], config: EngineConfig
) -> tuple[
    StreamEngine, dict[str, list[tuple[float, np.ndarray, bool]]], list[object], list[object]
]:
    engine = StreamEngine(MODEL, config)
    sink = drive(engine, batches)
    forecasts: dict[str, list[tuple[float, np.ndarray, bool]]] = {}
    for f in sink.forecasts:
        forecasts.setdefault(f.stream_id, []).append((f.ts, f.values, f.warm))
    drops = sorted((r.stream_id, r.offset, r.ts, reason) for r, reason in sink.drops)
    rejects = sorted(
        (r.reading.stream_id, r.offset, r.reason) for r in sink.rejects if r.reading is not None
    )
    return engine, forecasts, drops, rejects


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    streams=_streams(),
    order_seed=st.integers(0, 2**16),
    max_batch=st.integers(1, 20),
    impute=st.sampled_from(["reject", "last"]),
    gap_policy=st.sampled_from(["reset", "keep"]),
)
def test_any_interleaving_and_batching_gives_identical_results(
    streams: dict[str, list[Reading]],
    order_seed: int,
    max_batch: int,
    impute: str,
    gap_policy: str,
) -> None:
    config = EngineConfig(max_gap_periods=10, impute=impute, gap_policy=gap_policy)  # type: ignore[arg-type]
    reference = [[r] for rs in streams.values() for r in rs]

    rng = np.random.default_rng(order_seed)
    owners = np.repeat(np.arange(len(streams)), [len(rs) for rs in streams.values()])
    rng.shuffle(owners)
    cursors = dict.fromkeys(range(len(streams)), 0)
    lists = list(streams.values())
    merged = []
    for k in owners.tolist():
        merged.append(lists[k][cursors[k]])
        cursors[k] += 1
    batches, i = [], 0
    while i < len(merged):
        size = int(rng.integers(1, max_batch + 1))
        batches.append(merged[i : i + size])
        i += size

    ref_engine, ref_fc, ref_drops, ref_rejects = _run(reference, config)
    engine, fc, drops, rejects = _run(batches, config)

    assert drops == ref_drops
    assert rejects == ref_rejects
    assert fc.keys() == ref_fc.keys()
    for sid, expected in ref_fc.items():
        got = fc[sid]
        assert [(t, w) for t, _, w in got] == [(t, w) for t, _, w in expected]
        for (_, a, _), (_, b, _) in zip(got, expected, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert sorted(engine.store.ids()) == sorted(ref_engine.store.ids())
    for sid in ref_engine.store.ids():
        assert engine.store.info(sid) == ref_engine.store.info(sid)
        for a, b in zip(
            engine.store.states_of(sid) or [], ref_engine.store.states_of(sid) or [], strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def _reading(offset: int, ts: float, values: list[float]) -> Reading:
    return Reading("s0", ts, values, 0, offset)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(
    # a crash between a jump ahead (ts 1860) and the two readings that continue the clock
    # from before it: the restored stream must recover its clock as the uninterrupted one does
    streams={
        "s0": [
            _reading(0, 60.0, [15.4, 14.6]),
            _reading(1, 1860.0, [16.9, 15.3]),
            _reading(2, 1830.0, [13.4, 16.1]),
            _reading(2, 1831.0, [18.9, 17.8]),
            _reading(3, 1920.0, [12.9, 11.2]),
        ]
    },
    order_seed=0,
    crash_at=0.5,
    replay_back=0.0,
    max_batch=1,
)
@given(
    streams=_streams(),
    order_seed=st.integers(0, 2**16),
    crash_at=st.floats(0.0, 1.0),
    replay_back=st.floats(0.0, 1.0),
    max_batch=st.integers(1, 20),
)
def test_a_restore_then_replay_applies_every_reading_exactly_once(
    streams: dict[str, list[Reading]],
    order_seed: int,
    crash_at: float,
    replay_back: float,
    max_batch: int,
) -> None:
    """The exactly-once oracle of the fault tests, without a broker.

    A run checkpoints its state (`dump_many`) at a crash point; a new engine restores it
    (`load_many`) and replays the input from any earlier point (offsets not yet committed).
    Its final state equals an uninterrupted run's, and every replayed reading it did not
    drop gets the uninterrupted run's forecast.
    """
    config = EngineConfig(max_gap_periods=10, impute="last")
    rng = np.random.default_rng(order_seed)
    owners = np.repeat(np.arange(len(streams)), [len(rs) for rs in streams.values()])
    rng.shuffle(owners)
    lists, cursors, merged = list(streams.values()), [0] * len(streams), []
    for k in owners.tolist():
        merged.append(lists[k][cursors[k]])
        cursors[k] += 1
    # one input partition: offsets follow the merged order (a replayed record keeps its own)
    merged = [
        Reading(r.stream_id, r.ts, r.values, 0, i if r.offset >= 0 else -1)
        for i, r in enumerate(merged)
    ]
    cut = int(crash_at * len(merged))
    replay_from = int(cut * (1 - replay_back))

    def batches(readings: list[Reading]) -> list[list[Reading]]:
        out, i = [], 0
        while i < len(readings):
            size = int(rng.integers(1, max_batch + 1))
            out.append(readings[i : i + size])
            i += size
        return out

    whole = StreamEngine(MODEL, config)
    whole_sink = drive(whole, batches(merged))

    first = StreamEngine(MODEL, config)
    drive(first, batches(merged[:cut]))
    ids = sorted(first.store.dirty_ids())
    restored = StreamEngine(MODEL, config)
    restored.store.load_many(list(zip(ids, first.store.dump_many(ids), strict=True)))
    sink = drive(restored, batches(merged[replay_from:]))

    assert sorted(restored.store.ids()) == sorted(whole.store.ids())
    for sid in whole.store.ids():
        assert restored.store.info(sid) == whole.store.info(sid)
        for a, b in zip(
            restored.store.states_of(sid) or [], whole.store.states_of(sid) or [], strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # the readings after the crash get exactly the uninterrupted run's forecasts; those
    # before it that are replayed were already applied and are dropped
    expected = {f.offset: f for f in whole_sink.forecasts if f.offset >= cut}
    got = {f.offset: f for f in sink.forecasts}
    assert got.keys() == expected.keys()
    for offset, f in got.items():
        assert (f.stream_id, f.ts, f.warm) == (
            expected[offset].stream_id,
            expected[offset].ts,
            expected[offset].warm,
        )
        np.testing.assert_allclose(f.values, expected[offset].values, rtol=1e-6, atol=1e-6)

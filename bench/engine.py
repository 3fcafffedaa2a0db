"""Engine benchmark: the streaming engine against a bare onnxruntime call, and at scale.

    python -m bench.engine            # full run, about 40 s
    python -m bench.engine --quick    # a smoke run of a few seconds

1. Throughput by batch size, in stream-steps per second, four ways on the same batch:
   - engine: `StreamEngine.process_batch` end to end on a pre-built `ReadingBatch` (what the
     decoder hands over: ids, timestamps, a float32 value matrix), a `ForecastBatch` out
     (checks, slot lookup, gather, model, scatter, bookkeeping, de-normalised forecasts);
   - objects: `StreamEngine.process`, the adapter for `Reading` objects with dict values in
     and `Forecast` objects out (what tests and tools use);
   - state path: slot lookup, LRU marks, gather, model call, scatter and bookkeeping alone;
   - bare: `OnnxStepModel.step` alone with preallocated inputs.
   They run in alternating short trials and the best trial of each is reported (other
   processes only ever slow a trial down), with the share of the engine's time spent in
   the model call.
2. Scale: 10k, 100k and 1M active streams (and 1M with float16 state); `process_batch`
   throughput at batch 1,024 over streams drawn at random, and resident bytes per stream
   (growth of the process's RSS while the streams were created, and the store's own
   accounting) against the raw state bytes.

3. Few long streams: micro-batches of 2,000 simulated readings, of 2,000 streams x 1
   reading and of 4 streams x 500 readings, with ``engine.sequences`` on and off (a stream's
   readings in a row as one sequence on the model's time axis, or one call per reading of
   the busiest stream); readings/s from CPU time, best of alternating trials.

The model is ``sensors-demo`` from the registry when it is there, otherwise a 2x64 LSTM
built with onnx.helper (`service.testing.build_onnx_lstm`). Results are printed, not asserted.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.core.engine import EngineConfig, StreamEngine
from service.core.model import OnnxStepModel
from service.core.readings import Reading, ReadingBatch
from service.core.state import StateDType
from service.errors import SensorcastError
from service.registry import Registry
from service.simulate import SENSOR_FEATURES, simulate
from service.testing import build_onnx_lstm

__all__ = ["Feed", "load_model", "main", "rss_bytes"]


def load_model(registry: Path, name: str) -> tuple[OnnxStepModel, str]:
    try:
        loaded = Registry(registry).load(name)
    except SensorcastError:
        card, proto, _ = build_onnx_lstm(
            hidden=64,
            layers=2,
            features=("temp", "humidity", "vibration", "power"),
            targets=("temp",),
            horizon=12,
            name="lstm-2x64",
        )
        model = OnnxStepModel(card, proto.SerializeToString())
        return model, f"onnx.helper LSTM 2x64 (no {name!r} in {registry})"
    return OnnxStepModel.from_loaded(loaded), f"{loaded.card.ref} ({loaded.card.kind})"


class Feed:
    """Makes readings: each stream's next reading comes one period after its previous one."""

    def __init__(self, model: OnnxStepModel, ids: Sequence[str], seed: int = 0) -> None:
        card = model.card
        self.ids = tuple(ids)  # a tuple of str is not traversed by the garbage collector
        self.period = card.period
        self.seen = np.zeros(len(self.ids), np.int64)
        mean = np.asarray(card.scaler.features.mean)
        std = np.asarray(card.scaler.features.std)
        rng = np.random.default_rng(seed)
        # a small pool of value rows, reused: making readings is not what is measured
        rows = mean + std * rng.normal(size=(997, len(card.features)))
        self.pool = [dict(zip(card.features, row, strict=True)) for row in rows.tolist()]
        self.matrix = rows.astype(np.float32)

    def columns(self, streams: np.ndarray | None = None) -> ReadingBatch:
        """The same readings as `batch`, as the columns a decoder hands the engine."""
        picked = np.arange(len(self.ids)) if streams is None else streams
        steps = self.seen[picked]
        self.seen[picked] += 1
        ids = self.ids
        return ReadingBatch(
            [ids[i] for i in picked.tolist()],
            1_700_000_000.0 + steps * self.period,
            self.matrix[(picked + steps) % 997],
            np.zeros(len(picked), np.int32),
            steps.astype(np.int64),
            np.zeros(len(picked)),
        )

    def batch(self, streams: np.ndarray | None = None) -> list[Reading]:
        """One reading for each of `streams` (indices into the ids; all of them by default)."""
        picked = np.arange(len(self.ids)) if streams is None else streams
        steps = self.seen[picked]
        self.seen[picked] += 1
        ts = (1_700_000_000.0 + steps * self.period).tolist()
        pool, ids = self.pool, self.ids
        return [
            Reading(ids[i], t, pool[(i + k) % 997], 0, k)
            for i, t, k in zip(picked.tolist(), ts, steps.tolist(), strict=True)
        ]


@dataclass
class _Trial:
    engine_rate: float
    objects_rate: float
    state_rate: float
    bare_rate: float
    model_share: float


def _bench_batch(model: OnnxStepModel, batch: int, seconds: float) -> _Trial:
    """Engine, objects, state-path and bare calls in turn, one of each per turn, for about
    `seconds`; rates from each one's median call time.

    Interleaving call by call exposes the four to the same moments of a shared machine, and
    the median ignores the calls another process slowed down. The state path is the
    engine's work around the model without its checks and forecasts: slot lookup, LRU marks
    (which tell the streams are distinct), gather, the model call, scatter and bookkeeping,
    on arrays.
    """
    card = model.card
    feed = Feed(model, [f"sensor-{i:07d}" for i in range(batch)])
    engine = StreamEngine(model, EngineConfig())
    engine.process_batch(feed.columns(), now=0.0)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(batch, 1, card.n_features)).astype(np.float32)
    states = [np.full(s.batched_shape(batch), s.init, np.float32) for s in card.states]
    model.step(x, states)

    store = engine.store
    ids = [f"state-{i:07d}" for i in range(batch)]  # streams of their own: other timestamps
    store.ensure(ids)
    offsets = np.zeros(batch, np.int64)
    ts = np.full(batch, 1e10)
    times: dict[str, list[float]] = {"engine": [], "objects": [], "state": [], "bare": []}
    model_times: list[float] = []
    clock = time.perf_counter
    deadline = clock() + seconds
    while clock() < deadline or len(times["bare"]) < 5:
        columns = feed.columns()
        t0 = clock()
        result = engine.process_batch(columns, now=0.0)
        times["engine"].append(clock() - t0)
        model_times.append(sum(result.round_seconds))
        assert len(result.forecasts) == batch

        readings = feed.batch()
        t0 = clock()
        engine.process(readings, now=0.0)
        times["objects"].append(clock() - t0)

        ts += 1.0
        t0 = clock()
        slots = store.lookup(ids)
        assert slots is not None
        rows = store.claim(slots)
        assert rows is not None
        _, new_states = model.step(x, store.gather(slots, reuse=True))
        store.scatter(slots, new_states)
        store.advance(slots, ts, offsets, 0.0, offsets_increase=True, rows=rows)
        times["state"].append(clock() - t0)

        t0 = clock()
        model.step(x, states)
        times["bare"].append(clock() - t0)
    rate = {k: batch / float(np.median(v)) for k, v in times.items()}
    return _Trial(
        rate["engine"],
        rate["objects"],
        rate["state"],
        rate["bare"],
        float(np.median(model_times)) / float(np.median(times["engine"])),
    )


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class _Scale:
    label: str
    engine: StreamEngine
    feed: Feed
    rss_per_stream: float
    fill_seconds: float
    rates: list[float]


def _build_scale(model: OnnxStepModel, streams: int, dtype: StateDType) -> _Scale:
    """An engine holding `streams` streams, and the RSS it took to create them."""
    feed = Feed(model, [f"sensor-{i:07d}" for i in range(streams)], seed=streams)
    engine = StreamEngine(model, EngineConfig(state_dtype=dtype))
    chunk = 1024
    engine.process_batch(feed.columns(np.arange(chunk)), now=0.0)  # warm: onnxruntime's buffers
    gc.collect()
    before = rss_bytes()
    t0 = time.perf_counter()
    for start in range(chunk, streams, chunk):
        engine.process_batch(feed.columns(np.arange(start, min(start + chunk, streams))), now=0.0)
    fill = time.perf_counter() - t0
    gc.collect()
    rss = (rss_bytes() - before) / (streams - chunk)
    label = f"{streams:,}" + (" f16" if dtype == "float16" else "")
    return _Scale(label, engine, feed, rss, fill, [])


def _time_scale(scale: _Scale, batch: int, rng: np.random.Generator) -> None:
    """One `process_batch` call over `batch` streams drawn at random; its rate is kept."""
    columns = scale.feed.columns(rng.choice(len(scale.feed.ids), batch, replace=False))
    t0 = time.perf_counter()
    result = scale.engine.process_batch(columns, now=0.0)
    scale.rates.append(len(result.forecasts) / (time.perf_counter() - t0))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.engine", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--registry", type=Path, default=Path("models"))
    parser.add_argument("--model", default="sensors-demo", help="model name in the registry")
    args = parser.parse_args(argv)

    model, label = load_model(args.registry, args.model)
    batches = [1, 256] if args.quick else [1, 64, 256, 1024]
    scales: list[tuple[int, StateDType]] = [(10_000, "float32"), (100_000, "float32")]
    if not args.quick:
        scales += [(1_000_000, "float32"), (1_000_000, "float16")]
    seconds = 0.6 if args.quick else 3.0
    card = model.card
    print(
        f"model: {label}; {card.n_features} features, horizon {card.horizon}, states "
        + ", ".join(f"{s.name}{list(s.shape)}" for s in card.states)
    )
    print(f"onnxruntime: 1 intra-op thread, no spinning; {os.cpu_count()} CPUs on this machine\n")

    print("throughput by batch size (stream-steps/s, from median call times, calls interleaved)")
    print(
        f"{'batch':>6} {'engine':>11} {'objects':>11} {'state path':>11} {'bare ORT':>11} "
        f"{'engine/bare':>12} {'objects/bare':>13} {'state/bare':>11} {'model share':>12}"
    )
    for batch in batches:
        trial = _bench_batch(model, batch, seconds)
        print(
            f"{batch:>6} {trial.engine_rate:>11,.0f} {trial.objects_rate:>11,.0f} "
            f"{trial.state_rate:>11,.0f} {trial.bare_rate:>11,.0f} "
            f"{trial.engine_rate / trial.bare_rate:>12.0%} "
            f"{trial.objects_rate / trial.bare_rate:>13.0%} "
            f"{trial.state_rate / trial.bare_rate:>11.0%} {trial.model_share:>12.0%}"
        )

    print(
        "\nscale: batch 1,024 over streams drawn at random (median call, sizes interleaved); "
        "bytes per stream"
    )
    print(
        f"{'streams':>13} {'steps/s':>10} {'vs first':>9} {'RSS/stream':>11} "
        f"{'store/stream':>13} {'alloc/stream':>13} {'raw':>6} {'RSS/raw':>8} {'fill s':>7}"
    )
    built = [_build_scale(model, streams, dtype) for streams, dtype in scales]
    rng = np.random.default_rng(7)
    deadline = time.perf_counter() + seconds * len(built)
    while time.perf_counter() < deadline:  # call by call, so a busy moment hits every size
        for scale in built:
            _time_scale(scale, 1024, rng)
    first = float(np.median(built[0].rates))
    for scale in built:
        store = scale.engine.store
        n = len(store)
        rate = float(np.median(scale.rates))
        raw = store.raw_state_bytes_per_stream
        print(
            f"{scale.label:>13} {rate:>10,.0f} {rate / first:>9.0%} {scale.rss_per_stream:>11,.0f} "
            f"{store.state_bytes / n:>13,.0f} {store.allocated_bytes / n:>13,.0f} {raw:>6} "
            f"{scale.rss_per_stream / raw:>8.2f} {scale.fill_seconds:>7.1f}"
        )
    _print_long_streams(model, 1.0 if args.quick else 6.0)
    return 0


def _long_stream_batches(
    model: OnnxStepModel, streams: int, per_stream: int, count: int
) -> list[ReadingBatch]:
    """`count` micro-batches of `per_stream` consecutive readings of each of `streams`
    streams, interleaved by time, after one batch that creates the streams."""
    steps = 1 + per_stream * count
    sim = simulate(streams, steps, gaps=False, faults=False)
    n_features = model.card.n_features
    ids = np.array([sim.stream_ids[s] for s in range(streams)] * steps, dtype=object)
    ts = np.repeat(sim.ts, streams)
    values = sim.values.transpose(1, 0, 2).reshape(-1, n_features)
    cuts = [0, streams, *range(streams + streams * per_stream, len(ts) + 1, streams * per_stream)]
    return [
        ReadingBatch.of(list(ids[a:b]), ts[a:b], values[a:b], offsets=np.arange(a, b))
        for a, b in itertools.pairwise(cuts)
    ]


def _print_long_streams(model: OnnxStepModel, seconds: float) -> None:
    """Micro-batches of 2,000 readings: 2,000 streams x 1 against 4 streams x 500, with
    `engine.sequences` on and off, in alternating trials of `seconds`; the best counts."""
    if list(model.card.features) != list(SENSOR_FEATURES):
        return  # the simulated readings are sensors-demo's
    print("\nfew long streams: micro-batches of 2,000 readings (readings/s, best trial, CPU time)")
    shapes = {"2,000 x 1": (2_000, 1), "4 x 500": (4, 500)}
    best: dict[tuple[str, bool], float] = {}
    feeds = {name: _long_stream_batches(model, *shape, 12) for name, shape in shapes.items()}
    for _ in range(3):
        for name, batches in feeds.items():
            for sequences in (True, False):
                engine = StreamEngine(model, EngineConfig(sequences=sequences))
                engine.process_batch(batches[0], now=0.0)
                done, started = 0, time.process_time()
                for batch in batches[1:]:
                    engine.process_batch(batch, now=0.0)
                    done += len(batch)
                    if time.process_time() - started > seconds / 6:
                        break
                rate = done / (time.process_time() - started)
                best[(name, sequences)] = max(best.get((name, sequences), 0.0), rate)
    print(f"{'workload':>10} {'sequences on':>13} {'off':>10} {'on/off':>7}")
    for name in shapes:
        on, off = best[(name, True)], best[(name, False)]
        print(f"{name:>10} {on:>13,.0f} {off:>10,.0f} {on / off:>7.2f}")
    wide, long = best[("2,000 x 1", True)], best[("4 x 500", True)]
    print(f"4 x 500 / 2,000 x 1, sequences on: {long / wide:.2f}")


if __name__ == "__main__":
    raise SystemExit(main())

"""Model lifecycle benchmark: re-warming streams for a new model, the pause a hot swap adds
to the loop, and what each stream's kept readings cost in memory.

    python -m bench.lifecycle            # about a minute
    python -m bench.lifecycle --quick    # a smoke run of a few seconds

1. Re-warm throughput: streams holding K kept readings (K = the card's warm-up steps, 36 for
   ``sensors-demo``) are swapped to another model (`StreamEngine.replace_model`), then each
   gets one reading, 1,024 streams a micro-batch: every stream is re-warmed over its K
   readings first (K model calls per micro-batch, across its streams). Streams re-warmed per
   second, against the same readings without a swap, and against re-warming one stream
   per model call (the naive way, on a sample).
2. The swap's pause: `replace_model` at 100,000 streams (new state tensors, kept readings
   re-laid out, every stream marked due a re-warm), the loop waiting for it.
3. Bytes per stream at 1,000,000 streams holding K kept readings (filled through the state
   store, no model calls): the process's RSS growth and the store's own accounting, against
   the raw bytes (state tensors plus kept readings).

The model is ``sensors-demo`` from the registry when it is there, otherwise a 2x64 LSTM
built with onnx.helper. Results are printed, not asserted.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.engine import Feed, load_model, rss_bytes
from service.core.engine import EngineConfig, StreamEngine
from service.core.model import OnnxStepModel

__all__ = ["main"]

_BATCH = 1024


def _filled_engine(model: OnnxStepModel, streams: int, steps: int) -> tuple[StreamEngine, Feed]:
    """An engine whose `streams` streams each applied `steps` readings."""
    feed = Feed(model, [f"sensor-{i:07d}" for i in range(streams)], seed=streams)
    engine = StreamEngine(model, EngineConfig())
    for _ in range(steps):
        for start in range(0, streams, _BATCH):
            engine.process_batch(
                feed.columns(np.arange(start, min(start + _BATCH, streams))), now=0.0
            )
    return engine, feed


def _pass(engine: StreamEngine, feed: Feed, streams: int) -> tuple[float, float]:
    """One reading for every stream, `_BATCH` a call: wall seconds and re-warm model seconds."""
    started = time.perf_counter()
    rewarm = 0.0
    for start in range(0, streams, _BATCH):
        result = engine.process_batch(
            feed.columns(np.arange(start, min(start + _BATCH, streams))), now=0.0
        )
        rewarm += result.rewarm_seconds
    return time.perf_counter() - started, rewarm


def _naive_rewarm_rate(model: OnnxStepModel, engine: StreamEngine, sample: int) -> float:
    """Streams per second re-warmed one model call per reading per stream."""
    store, card = engine.store, model.card
    slots = store.slots_of(store.ids()[:sample])
    _, values, kept = store.kept_readings(slots)
    mean = np.asarray(card.scaler.features.mean, np.float32)
    std = np.asarray(card.scaler.features.std, np.float32)
    started = time.perf_counter()
    for row in range(len(slots)):
        states = [np.full(s.batched_shape(1), s.init, np.float32) for s in card.states]
        k = int(min(kept[row], card.warmup_steps))
        for x in values[row, values.shape[1] - k :]:
            _, states = model.step(((x - mean) / std)[None, None, :].astype(np.float32), states)
    return len(slots) / (time.perf_counter() - started)


def _bench_rewarm(model: OnnxStepModel, streams: int) -> None:
    k = model.card.warmup_steps
    engine, feed = _filled_engine(model, streams, k)
    plain, _ = _pass(engine, feed, streams)
    naive = _naive_rewarm_rate(model, engine, min(200, streams))
    engine.replace_model(OnnxStepModel(model.card, _graph_of(model)))
    swapped, rewarm_model = _pass(engine, feed, streams)
    rewarm = max(swapped - plain, 1e-9)
    print(
        f"re-warm, {streams:,} streams x K = {k} kept readings, {_BATCH:,} streams a batch:\n"
        f"  a pass of one reading per stream: {plain:.2f} s without a swap, {swapped:.2f} s "
        f"right after one\n"
        f"  re-warm: {streams / rewarm:,.0f} streams/s ({streams * k / rewarm:,.0f} "
        f"re-warm steps/s; model calls {rewarm_model / rewarm:.0%} of it)\n"
        f"  one stream per model call: {naive:,.0f} streams/s; batched is "
        f"{streams / rewarm / naive:.1f}x that",
        flush=True,
    )


def _graph_of(model: OnnxStepModel) -> bytes:
    """The model's graph again (a second session of the same model: another object)."""
    return model.graph_bytes


def _store_filled(model: OnnxStepModel, streams: int) -> tuple[StreamEngine, float, float]:
    """An engine whose `streams` streams hold K kept readings, filled through the store (no
    model calls); the RSS it took per stream, and the seconds."""
    engine = StreamEngine(model, EngineConfig())
    store, k = engine.store, model.card.warmup_steps
    rng = np.random.default_rng(0)
    values = rng.normal(size=(65_536, model.card.n_features)).astype(np.float32)
    chunk = 65_536
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    for start in range(0, streams, chunk):
        ids = [f"sensor-{i:07d}" for i in range(start, min(start + chunk, streams))]
        slots = store.ensure(ids, now=0.0)
        for step in range(k):
            ts = np.full(len(ids), 1.7e9 + 300.0 * step)
            store.advance(slots, ts, np.full(len(ids), step), 0.0, values[: len(ids)])
    seconds = time.perf_counter() - started
    gc.collect()
    return engine, (rss_bytes() - before) / streams, seconds


def _bench_swap_and_bytes(model: OnnxStepModel, swap_streams: int, byte_streams: int) -> None:
    engine, _, fill = _store_filled(model, swap_streams)
    other = OnnxStepModel(model.card, _graph_of(model))
    started = time.perf_counter()
    engine.replace_model(other)
    pause = time.perf_counter() - started
    print(
        f"hot swap at {swap_streams:,} streams (K = {model.card.warmup_steps} kept readings, "
        f"filled in {fill:.1f} s): replace_model paused the loop {pause * 1000:,.0f} ms",
        flush=True,
    )
    del engine
    gc.collect()
    engine, rss, fill = _store_filled(model, byte_streams)
    store = engine.store
    raw = store.raw_state_bytes_per_stream
    own = store.state_bytes / byte_streams
    print(
        f"bytes per stream at {byte_streams:,} streams with K kept readings (filled in "
        f"{fill:.1f} s): RSS {rss:,.0f}, store {own:,.0f}, raw {raw:,} "
        f"(state tensors {raw - store.history * (8 + 4 * model.card.n_features):,} + kept "
        f"readings {store.history * (8 + 4 * model.card.n_features):,}); RSS/raw "
        f"{rss / raw:.2f}, store/raw {own / raw:.2f}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.lifecycle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    parser.add_argument("--registry", type=Path, default=Path("models"), help="model registry")
    parser.add_argument("--model", default="sensors-demo", help="model name in the registry")
    args = parser.parse_args(argv)
    model, described = load_model(args.registry, args.model)
    print(f"model: {described}; warm-up steps K = {model.card.warmup_steps}", flush=True)
    rewarm, swap, sizes = (2_000, 20_000, 100_000) if args.quick else (20_000, 100_000, 1_000_000)
    _bench_rewarm(model, rewarm)
    _bench_swap_and_bytes(model, swap, sizes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

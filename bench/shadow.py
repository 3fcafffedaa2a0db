"""What online accuracy costs: scoring in the engine, and a challenger in shadow.

    python -m bench.shadow            # about a minute
    python -m bench.shadow --quick    # a smoke run of a few seconds

1. Scoring: the engine's readings per second over 10,000 streams, 1,024 readings a call,
   with forecasts scored (`engine.score_forecasts`, the default: outstanding forecasts kept,
   each reading scored and given its anomaly score) and without, alternating the two in
   rounds so that both see the same machine; and the bytes per stream each keeps.
2. A challenger in shadow: a whole `Service` on the in-memory transport (decode, engine,
   encode, send, checkpoints; no broker, so the figure is the service's own work) over the
   same pre-loaded readings: forecasts not scored, scored (the default), and scored with a
   challenger of the same size (the served model under another name: the same graph, the
   same cost), alternating.

The model is ``sensors-demo`` from the registry when it is there. Results are printed, not
asserted; docs/benchmarks.md records a run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from bench.engine import Feed, load_model
from service.app import Service
from service.config import load_settings
from service.core.engine import EngineConfig, StreamEngine
from service.core.model import OnnxStepModel
from service.registry import Registry, write_model
from service.testing import MemoryBroker, MemoryTransport

__all__ = ["main"]

_BATCH = 1024
_REGISTRY = Path("models")
_MODEL = "sensors-demo"


def _engine_rate(model: OnnxStepModel, streams: int, passes: int, score: bool) -> float:
    """Readings per second through a warm engine (warmed first, not timed)."""
    engine = StreamEngine(model, EngineConfig(score_forecasts=score))
    feed = Feed(model, [f"s{i:06d}" for i in range(streams)], seed=1)
    slices = [np.arange(a, min(a + _BATCH, streams)) for a in range(0, streams, _BATCH)]
    for _ in range(model.card.warmup_steps + 1):  # warm: forecasts outstanding, scored
        for rows in slices:
            engine.process_batch(feed.columns(rows), now=0.0)
    started = time.perf_counter()
    for _ in range(passes):
        for rows in slices:
            engine.process_batch(feed.columns(rows), now=0.0)
    return passes * streams / (time.perf_counter() - started)


def _scoring(model: OnnxStepModel, streams: int, passes: int, rounds: int) -> None:
    on, off = [], []
    for _ in range(rounds):
        off.append(_engine_rate(model, streams, passes, score=False))
        on.append(_engine_rate(model, streams, passes, score=True))
    a, b = statistics.median(off), statistics.median(on)
    print(f"engine, {streams:,} streams, {_BATCH} readings a call, median of {rounds} rounds:")
    print(f"  forecasts not scored {a:>10,.0f} readings/s")
    print(f"  scored + anomalies   {b:>10,.0f} readings/s   ({b / a:.2f}x)")
    kept = StreamEngine(model, EngineConfig()).store.scoring.bytes_per_stream
    print(f"  outstanding forecasts: {kept:,} bytes per stream")


def _load(broker: MemoryBroker, model: OnnxStepModel, streams: int, steps: int) -> None:
    """`steps` readings of each of `streams` streams on the broker's input, in time order."""
    card = model.card
    feed = Feed(model, [f"s{i:06d}" for i in range(streams)], seed=2)
    for _ in range(steps):
        batch = feed.columns()
        for i, sid in enumerate(batch.stream_ids):
            values = dict(zip(card.features, batch.values[i].tolist(), strict=True))
            body = {"stream_id": sid, "ts": float(batch.ts[i]), "values": values}
            broker.produce(i % broker.partitions, sid.encode(), json.dumps(body).encode())


def _service_rate(
    registry: Path, shadow: str | None, streams: int, steps: int, *, score: bool = True
) -> float:
    """Readings per second of a Service over pre-loaded readings, start to last commit."""
    model = OnnxStepModel.from_loaded(Registry(registry).load(_MODEL))
    broker = MemoryBroker(partitions=4)
    _load(broker, model, streams, steps)
    total = streams * steps
    overrides: dict[str, object] = {
        "http.enabled": False,
        "kafka.input_topic": "readings",
        "kafka.max_batch": 2000,
        "kafka.max_wait_ms": 5,
        "model.registry": str(registry),
        "model.name": _MODEL,
        "model.watch_interval": 0,
        "engine.score_forecasts": score,
    }
    if shadow is not None:
        overrides["model.shadow"] = shadow
    service = Service(load_settings(None, overrides), transport=MemoryTransport(broker))
    thread = threading.Thread(target=service.run, daemon=True)
    started = time.perf_counter()
    thread.start()
    while service.metrics.registry.get_sample_value("sensorcast_readings_consumed_total") != total:
        if not thread.is_alive():
            raise RuntimeError("the service stopped before consuming every reading")
        time.sleep(0.005)
    seconds = time.perf_counter() - started
    service.stop()
    thread.join(60)
    return total / seconds


def _shadow(streams: int, steps: int, rounds: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    try:
        shutil.copytree(_REGISTRY / _MODEL, root / _MODEL)
        # the challenger: the same graph under another name, the same cost
        loaded = Registry(_REGISTRY).load(_MODEL)
        card = loaded.card.model_copy(update={"name": "challenger"})
        folder = root / "challenger" / loaded.card.version
        folder.mkdir(parents=True)
        write_model(card, onnx.load_from_string(loaded.onnx_bytes), folder)
        unscored, alone, paired = [], [], []
        for _ in range(rounds):
            unscored.append(_service_rate(root, None, streams, steps, score=False))
            alone.append(_service_rate(root, None, streams, steps))
            paired.append(_service_rate(root, "challenger", streams, steps))
        u = statistics.median(unscored)
        a, b = statistics.median(alone), statistics.median(paired)
        print(
            f"service on the in-memory transport, {streams:,} streams x {steps} readings, "
            f"median of {rounds} rounds:"
        )
        print(f"  forecasts not scored         {u:>9,.0f} readings/s")
        print(f"  scored (the default)         {a:>9,.0f} readings/s   ({a / u:.2f}x)")
        print(f"  with a challenger in shadow  {b:>9,.0f} readings/s   ({b / a:.2f}x scored alone)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shadow", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    args = parser.parse_args(argv)
    model, what = load_model(_REGISTRY, _MODEL)
    print(f"model: {what}")
    if args.quick:
        _scoring(model, 2_000, 2, 1)
    else:
        _scoring(model, 10_000, 5, 3)
    if not (_REGISTRY / _MODEL).is_dir():
        print("no sensors-demo in ./models: the challenger benchmark needs the shipped model")
        return 0
    if args.quick:
        _shadow(200, 20, 1)
    else:
        _shadow(2_000, 50, 3)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The pipelines the service is compared with, each run as its own process.

    python -m bench.pipelines transport --bootstrap HOST:PORT --input T --output O --group G
    python -m bench.pipelines transport-confluent --bootstrap HOST:PORT --input T --output O --group G
    python -m bench.pipelines naive     --bootstrap HOST:PORT --input T --output O --group G

- ``transport``: the service's consumer and producer path without a model. The same
  `connect` (topics, `KafkaSource`, `KafkaSink`), settings, columnar decoding
  (`ReadingDecoder.decode_columns`), encoding (`ForecastEncoder.encode_batch`), send loop and
  checkpoint (flush, commit) as `Service`; every reading gets one of a fixed table of
  forecasts (values on the targets' scale, so the messages are as long as real ones)
  instead of a model's. What it sustains is the ceiling the transport puts on the service.
- ``transport-confluent``: the same pipeline with ``kafka.client=confluent``: the service's
  confluent-kafka transport (`service.kafka.confluent`: source, sink, topics) instead of
  kafka-python's; the ceiling of Sensorcast on that client.
- ``naive``: a typical first implementation. A kafka-python consumer iterated one message at
  a time, ``json.loads`` per message, a dict of per-stream numpy states, one onnxruntime call
  per reading, ``json.dumps`` and one ``producer.send`` per forecast.

Each prints ``assigned`` on stdout once the group hands them partitions, and run until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

import numpy as np

__all__ = ["main", "run_naive", "run_transport", "run_transport_confluent"]


class _Handler:
    """Rebalance handler of the transport pipeline: flushes before a revoke and commits what
    was processed, like the service."""

    def __init__(self) -> None:
        self.sink: Any = None
        self.offsets: Any = None

    def partitions_assigned(self, partitions: set[int]) -> None:
        if partitions:
            print("assigned", flush=True)

    def partitions_revoked(self, partitions: set[int]) -> dict[int, int]:
        if self.sink is not None:
            self.sink.flush(10.0)
        offsets: dict[int, int] = self.offsets.revoked(partitions) if self.offsets else {}
        if self.offsets is not None:
            self.offsets.forget(partitions)
        return offsets

    def partitions_lost(self, partitions: set[int]) -> None:
        if self.offsets is not None:
            self.offsets.forget(partitions)


def run_transport_confluent(args: argparse.Namespace, stop: threading.Event) -> None:
    run_transport(args, stop, client="confluent")


def run_transport(
    args: argparse.Namespace, stop: threading.Event, client: str = "kafka-python"
) -> None:
    from service.codec import ForecastEncoder, ReadingDecoder, max_future_seconds, next_offsets
    from service.config import KafkaSettings
    from service.core.readings import ForecastBatch
    from service.core.values import FeatureValues
    from service.kafka.connect import KafkaTransport
    from service.offsets import Offsets
    from service.registry import Registry

    settings = KafkaSettings(
        client=client,  # type: ignore[arg-type]
        bootstrap_servers=args.bootstrap,
        input_topic=args.input,
        output_topic=args.output,
        dead_letter_topic=args.output + ".dlq",
        group_id=args.group,
        client_id=f"bench-transport-{client}",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        **({"max_wait_ms": args.max_wait_ms} if args.max_wait_ms is not None else {}),
        **({"linger_ms": args.linger_ms} if args.linger_ms is not None else {}),
    )
    card = Registry(args.registry).load(args.model).card
    encoder = ForecastEncoder(card)
    # the service's decoder, checking each stream's partition against those seen so far
    partition_of: dict[str, int] = {}
    decoder = ReadingDecoder(
        max_message_bytes=settings.max_message_bytes,
        max_future_seconds=max_future_seconds(settings, card),
        partition_of=partition_of,
    )
    features = FeatureValues(card.features)
    # Fixed forecasts with the values a model gives, not zeros: float32 values of the
    # targets' scale format to the same text as real forecasts (705-byte messages of
    # sensors-demo, ~4.7 us each to encode, against 492 bytes and ~3.6 us for zeros), so
    # the transport moves and encodes what the service does.
    rng = np.random.default_rng(0)
    scale = card.scaler.targets
    shape = (settings.max_batch, card.horizon, len(card.targets))
    mean, std = np.asarray(scale.mean, np.float32), np.asarray(scale.std, np.float32)
    fixed = (mean + std * rng.standard_normal(shape)).astype(np.float32)
    handler = _Handler()
    clients = KafkaTransport(settings).open(settings, handler)
    source, sink = clients.source, clients.sink
    offsets = Offsets(settings.input_topic, source.commit)
    handler.sink, handler.offsets = sink, offsets
    mirror = clients.mirror_partitions
    next_checkpoint = time.monotonic() + settings.commit_interval
    while not stop.is_set():
        records = source.poll()
        if records:
            offsets.processed(next_offsets(records))
            # The service's Processor without the engine: decode to columns, one fixed
            # forecast per reading, encode, send.
            received = time.time()
            batch = decoder.decode_columns(records, received=received, values=features).batch
            partition_of.update(zip(batch.stream_ids, batch.partitions.tolist(), strict=True))
            n = len(batch.stream_ids)
            forecasts = ForecastBatch(
                batch.stream_ids,
                batch.ts,
                fixed[:n],
                np.ones(n, np.bool_),
                batch.partitions,
                batch.offsets,
                batch.received,
                card.period,
            )
            messages = encoder.encode_batch(forecasts)
            partitions = forecasts.partitions.tolist() if mirror else None
            sink.send_forecasts(forecasts.stream_ids, messages, partitions)
        if time.monotonic() >= next_checkpoint:
            sink.flush(settings.checkpoint_timeout)
            offsets.commit(settings.checkpoint_timeout)
            next_checkpoint = time.monotonic() + settings.commit_interval
    sink.flush(settings.checkpoint_timeout)
    offsets.commit(settings.checkpoint_timeout)
    source.close()
    sink.close()


def run_naive(args: argparse.Namespace, stop: threading.Event) -> None:
    import onnxruntime as ort
    from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer

    from service.registry import Registry

    loaded = Registry(args.registry).load(args.model)
    card = loaded.card
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(loaded.onnx_bytes, options, providers=["CPUExecutionProvider"])
    f_mean = np.array(card.scaler.features.mean, dtype=np.float32)
    f_std = np.array(card.scaler.features.std, dtype=np.float32)
    t_mean = np.array(card.scaler.targets.mean, dtype=np.float32)
    t_std = np.array(card.scaler.targets.std, dtype=np.float32)
    state_names = [s.name for s in card.states]
    init = {s.name: np.full(s.batched_shape(1), s.init, dtype=np.float32) for s in card.states}
    outputs = ["y"] + [name + "_out" for name in state_names]
    states: dict[str, dict[str, np.ndarray]] = {}
    steps: dict[str, int] = {}

    class _Assigned(ConsumerRebalanceListener):  # type: ignore[misc]
        def on_partitions_assigned(self, assigned: object) -> None:
            print("assigned", flush=True)

        def on_partitions_revoked(self, revoked: object) -> None:
            return None

    consumer = KafkaConsumer(
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        auto_offset_reset=args.offset_reset,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        consumer_timeout_ms=200,
    )
    consumer.subscribe([args.input], listener=_Assigned())
    producer = KafkaProducer(bootstrap_servers=args.bootstrap)
    while not stop.is_set():
        for msg in consumer:  # ends after consumer_timeout_ms without messages
            reading = json.loads(msg.value)
            sid = reading["stream_id"]
            x = np.array([[[reading["values"][f] for f in card.features]]], dtype=np.float32)
            x = (x - f_mean) / f_std
            state = states.get(sid) or {k: v.copy() for k, v in init.items()}
            result = session.run(outputs, {"x": x, **state})
            states[sid] = dict(zip(state_names, result[1:], strict=True))
            steps[sid] = steps.get(sid, 0) + 1
            y = result[0][0, 0] * t_std + t_mean
            forecast = {
                "stream_id": sid,
                "ts": reading["ts"],
                "model": {"name": card.name, "version": card.version},
                "horizon_ts": [reading["ts"] + card.period * (k + 1) for k in range(card.horizon)],
                "forecast": {t: y[:, j].tolist() for j, t in enumerate(card.targets)},
                "warm": steps[sid] >= card.warmup_steps,
                "partition": msg.partition,
                "offset": msg.offset,
            }
            producer.send(args.output, key=sid.encode(), value=json.dumps(forecast).encode())
            if stop.is_set():
                break
    producer.flush()
    consumer.close()
    producer.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipelines", description=__doc__)
    parser.add_argument("pipeline", choices=list(_PIPELINES))
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--registry", default="models")
    parser.add_argument("--model", default="sensors-demo")
    parser.add_argument("--offset-reset", default="earliest", choices=["earliest", "latest"])
    parser.add_argument("--max-wait-ms", type=int, help="transport: kafka.max_wait_ms")
    parser.add_argument("--linger-ms", type=int, help="transport: kafka.linger_ms")
    args = parser.parse_args(argv)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    _PIPELINES[args.pipeline](args, stop)
    return 0


_PIPELINES = {
    "transport": run_transport,
    "transport-confluent": run_transport_confluent,
    "naive": run_naive,
}

if __name__ == "__main__":
    sys.exit(main())

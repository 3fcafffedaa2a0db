"""What kafka-python alone sustains on this machine: consume-only and produce-only rates.

    python -m bench.kafkacaps --bootstrap HOST:PORT --topic T --records 200000

Consumes `records` records of `topic` from the start (no decoding), then produces as many
forecast-sized records (a real `ForecastEncoder` message) to ``<topic>.caps`` with the
sink's producer settings (acks=all, linger 5 ms, 256 KB batches, partition given). Prints
one JSON line: records/s and CPU microseconds per record (all of the process's threads)
for each. `bench.e2e` runs it beside the pipelines, so the transport's ceiling is measured
in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from service.codec import ForecastEncoder
from service.core.readings import ForecastBatch
from service.registry import Registry
from service.simulate import stream_id

__all__ = ["consume", "main", "produce"]

_PARTITIONS_TIMEOUT = 10.0


def consume(bootstrap: str, topic: str, records: int, timeout: float = 120.0) -> dict[str, float]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id="bench-caps-consumer",
        enable_auto_commit=False,
        max_poll_records=2000,
        fetch_max_wait_ms=50,
    )
    try:
        deadline = time.monotonic() + _PARTITIONS_TIMEOUT
        partitions = consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.1)
            partitions = consumer.partitions_for_topic(topic)
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions or ())])
        consumer.seek_to_beginning()
        got = 0
        started, cpu = time.perf_counter(), time.process_time()
        end = time.monotonic() + timeout
        while got < records and time.monotonic() < end:
            polled = consumer.poll(timeout_ms=100, max_records=2000)
            got += sum(len(batch) for batch in polled.values())
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        consumer.close()
    return {"records": got, "per_s": got / elapsed, "cpu_us": cpu / max(got, 1) * 1e6}


def _forecast_message(registry: str, model: str) -> bytes:
    card = Registry(registry).load(model).card
    n_targets = len(card.targets)
    batch = ForecastBatch(
        [stream_id(17)],
        np.array([1_700_000_000.0]),
        np.full((1, card.horizon, n_targets), 50.123456, np.float32),
        np.ones(1, np.bool_),
        np.zeros(1, np.int32),
        np.array([123_456], np.int64),
        np.zeros(1),
        card.period,
    )
    return ForecastEncoder(card).encode_batch(batch)[0]


def produce(
    bootstrap: str, topic: str, records: int, value: bytes, partitions: int = 4
) -> dict[str, float]:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="bench-caps-producer",
        acks="all",
        linger_ms=5,
        batch_size=256 * 1024,
    )
    keys = [stream_id(i).encode() for i in range(10_000)]
    try:
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(records):
            producer.send(topic, key=keys[i % 10_000], value=value, partition=i % partitions)
        producer.flush()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        producer.close()
    return {
        "records": records,
        "per_s": records / elapsed,
        "cpu_us": cpu / records * 1e6,
        "bytes": len(value),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.kafkacaps",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--registry", default="models")
    parser.add_argument("--model", default="sensors-demo")
    args = parser.parse_args(argv)
    value = _forecast_message(args.registry, args.model)
    out = {
        "consume": consume(args.bootstrap, args.topic, args.records),
        "produce": produce(args.bootstrap, args.topic + ".caps", args.records, value),
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

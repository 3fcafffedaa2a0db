"""What kafka-python alone sustains on this machine: consume-only and produce-only rates.

    python -m bench.kafkacaps --bootstrap HOST:PORT --topic T --records 200000

Consumes `records` records of `topic` from the start (no decoding), twice: with
kafka-python's own record parsing, then with the service's (`service.kafka.records`); then
produces as many
forecast-sized records (a real `ForecastEncoder` message) to ``<topic>.caps`` with the
sink's producer settings (acks=all, linger 5 ms, the sink's batch size, partition given),
twice: one ``send`` per record, then in micro-batches of 2,000 through `RecordAppender`,
as the service's sink sends them. Prints one JSON line: records/s and CPU microseconds per
record (all of the process's threads) for each. `bench.e2e` runs it beside the pipelines, so the transport's ceiling is measured
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
from service.kafka.appender import RecordAppender, runs_by_partition
from service.kafka.records import install as install_plain_records
from service.kafka.sink import BATCH_BYTES
from service.registry import Registry
from service.simulate import stream_id

__all__ = ["consume", "main", "produce"]

_PARTITIONS_TIMEOUT = 10.0
_MICRO_BATCH = 2000  # the service's default kafka.max_batch


def consume(
    bootstrap: str, topic: str, records: int, timeout: float = 120.0, plain: bool = False
) -> dict[str, float]:
    """Read `records` records of `topic` from the start, 2,000 a poll; `plain`: parsed as
    the service's source parses them (`service.kafka.records.PlainRecords`)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id="bench-caps-consumer",
        enable_auto_commit=False,
        max_poll_records=2000,
        fetch_max_wait_ms=50,
    )
    if plain and not install_plain_records(consumer):
        raise SystemExit("this kafka-python has no plain-records path")
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
    bootstrap: str,
    topic: str,
    records: int,
    value: bytes,
    partitions: int = 4,
    appender: bool = False,
) -> dict[str, float]:
    """Produce `records` copies of `value`, keyed by 10,000 streams, round-robin over
    `partitions`, with the sink's producer settings: one ``send`` each, or (`appender`)
    in micro-batches of 2,000 handed to `RecordAppender` a partition's run at a time, as
    the service's sink does."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="bench-caps-producer",
        acks="all",
        linger_ms=5,
        batch_size=BATCH_BYTES,
    )
    keys = [stream_id(i).encode() for i in range(10_000)]
    try:
        producer.partitions_for(topic)  # metadata first, as a running sink has it
        started, cpu = time.perf_counter(), time.process_time()
        if appender:
            _append_all(producer, topic, records, value, partitions, keys)
        else:
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


def _append_all(
    producer: KafkaProducer,
    topic: str,
    records: int,
    value: bytes,
    partitions: int,
    keys: list[bytes],
) -> None:
    failed: list[object] = []
    appender = RecordAppender.attach(producer, lambda run, errors: failed.extend(errors))
    if appender is None:
        raise SystemExit("this kafka-python has no RecordAppender path")
    for start in range(0, records, _MICRO_BATCH):
        n = min(_MICRO_BATCH, records - start)
        batch_keys = [keys[(start + j) % 10_000] for j in range(n)]
        targets = [(start + j) % partitions for j in range(n)]
        runs = runs_by_partition(targets, batch_keys, [value] * n)
        for partition, (run_keys, run_values) in runs.items():
            appender.append(topic, partition, run_keys, run_values)
    producer.flush()
    if failed:
        raise SystemExit(f"{len(failed)} records failed delivery")


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
        "plain": consume(args.bootstrap, args.topic, args.records, plain=True),
        "produce": produce(args.bootstrap, args.topic + ".caps", args.records, value),
        "append": produce(args.bootstrap, args.topic + ".caps", args.records, value, appender=True),
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

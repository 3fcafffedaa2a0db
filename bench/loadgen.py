"""Load generator: sensor readings for N streams, pre-loaded or at a fixed rate.

Readings go step by step: step ``s`` has one reading of every stream ``0..N-1`` (ids
``sensor-00000``...), stamped ``start_ts + s * period``. The k-th reading a rate run sends
(counting from its first step) is stream ``k % N`` at step ``start_step + k // N``, and the
run records the wall-clock time each reading was handed to the producer in ``sent[k]``. A
forecast names its reading's stream and ``ts`` (DESIGN.md section 3), so the consumer of
forecasts finds the produce time of the reading behind every forecast in that table, for any
pipeline, without extra headers on the service's messages (`latencies`).

A rate run sends with confluent-kafka when it is installed (about 1 us of CPU a send, so
the generator keeps up with tens of thousands of readings a second and takes little of the
cores it shares with the pipeline under test), else with kafka-python.

Values follow a daily cycle with noise around the demo model's means (~105-byte JSON records).
Each key's partition is computed once with kafka-python's own murmur2 partitioner, so records
land where a keyed send would put them, without hashing every record.

    python -m bench.loadgen preload --bootstrap HOST:PORT --topic T --streams 10000 --steps 20
    python -m bench.loadgen rate --bootstrap HOST:PORT --topic T --streams 10000 \\
        --rate 5000 --seconds 10 --start-step 20 --out sent.npy
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from kafka import KafkaProducer
from kafka.partitioner.default import murmur2

from service.simulate import stream_id

__all__ = [
    "LatencySummary",
    "ReadingPlan",
    "latencies",
    "main",
    "partition_of",
    "preload",
    "run_at_rate",
    "summarize",
]

START_TS = 1_700_000_000.0
PERIOD = 300.0
_DAY = 86_400.0
_TICK = 0.002  # seconds between sends of a rate run


def partition_of(key: bytes, n_partitions: int) -> int:
    """The partition kafka-python's default partitioner gives `key`."""
    return int(murmur2(key) & 0x7FFFFFFF) % n_partitions


@dataclass(frozen=True)
class ReadingPlan:
    """Which readings exist: `n_streams` streams, one reading each per step."""

    n_streams: int
    n_partitions: int
    start_ts: float = START_TS
    period: float = PERIOD

    def keys(self) -> list[bytes]:
        return [stream_id(i).encode() for i in range(self.n_streams)]

    def partitions(self, keys: Sequence[bytes]) -> list[int]:
        return [partition_of(k, self.n_partitions) for k in keys]

    def ts(self, step: int) -> float:
        return self.start_ts + step * self.period

    def step_records(self, step: int, keys: Sequence[bytes]) -> list[bytes]:
        """The JSON values of every stream's reading at `step`."""
        ts = self.ts(step)
        n = self.n_streams
        idx = np.arange(n)
        phase = (idx % 97) / 97.0 * 2 * np.pi
        cycle = np.sin(2 * np.pi * (ts % _DAY) / _DAY + phase)
        noise = np.sin(idx * 12.9898 + step * 78.233) * 43758.5453 % 1.0 - 0.5
        temp = (50.0 + 10.0 * cycle + noise).tolist()
        pressure = (101.0 + 1.5 * np.cos(2 * np.pi * (ts % _DAY) / _DAY + phase)).tolist()
        vibration = (2.5 + 0.8 * cycle + 0.3 * noise).tolist()
        return [
            b'{"stream_id":"%s","ts":%r,"values":{"temp":%.3f,"pressure":%.3f,"vibration":%.3f}}'
            % (keys[i], ts, temp[i], pressure[i], vibration[i])
            for i in range(n)
        ]

    def locate(self, stream: str, ts: float, start_step: int) -> int:
        """The index in a rate run's ``sent`` table of stream `stream`'s reading at `ts`."""
        step = round((ts - self.start_ts) / self.period)
        return (step - start_step) * self.n_streams + int(stream[7:])


def _producer(bootstrap: str, linger_ms: int) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap.split(","),
        client_id="sensorcast-loadgen",
        acks=1,
        linger_ms=linger_ms,
        batch_size=512 * 1024,
    )


def preload(bootstrap: str, topic: str, plan: ReadingPlan, steps: range) -> int:
    """Publish every stream's reading at each step of `steps`; return the number sent."""
    producer = _producer(bootstrap, linger_ms=20)
    keys = plan.keys()
    parts = plan.partitions(keys)
    sent = 0
    try:
        for step in steps:
            for key, part, value in zip(keys, parts, plan.step_records(step, keys), strict=True):
                producer.send(topic, key=key, value=value, partition=part)
            sent += plan.n_streams
        producer.flush()
    finally:
        producer.close()
    return sent


class _Sender:
    """Sends readings on confluent-kafka when installed, else kafka-python (linger 1 ms)."""

    def __init__(self, bootstrap: str) -> None:
        self._fast: Any = None
        self._slow: KafkaProducer | None = None
        self._count = 0
        try:
            from confluent_kafka import Producer
        except ImportError:
            self._slow = _producer(bootstrap, linger_ms=1)
            return
        self._fast = Producer(
            {
                "bootstrap.servers": bootstrap,
                "client.id": "sensorcast-loadgen",
                "acks": 1,
                "linger.ms": 1,
                "queue.buffering.max.messages": 1_000_000,
            }
        )

    def send(self, topic: str, key: bytes, value: bytes, partition: int) -> None:
        if self._slow is not None:
            self._slow.send(topic, key=key, value=value, partition=partition)
            return
        self._fast.produce(topic, value, key, partition)
        self._count += 1
        if self._count % 1000 == 0:
            self._fast.poll(0)  # delivery reports, so the queue never fills with them

    def close(self) -> None:
        if self._slow is not None:
            self._slow.flush()
            self._slow.close()
        else:
            self._fast.flush(30.0)


def run_at_rate(
    bootstrap: str,
    topic: str,
    plan: ReadingPlan,
    *,
    rate: float,
    seconds: float,
    start_step: int,
) -> np.ndarray:
    """Send ``rate`` readings a second for ``seconds``; return each one's send time.

    Sends are spread over ticks of 2 ms; every reading of a tick gets the time it was
    handed to the producer.
    """
    producer = _Sender(bootstrap)
    keys = plan.keys()
    parts = plan.partitions(keys)
    total = int(rate * seconds)
    sent = np.zeros(total)
    n = plan.n_streams
    values: list[bytes] = []
    values_step = -1
    k = 0
    started = time.time()
    try:
        while k < total:
            now = time.time()
            due = min(total, int((now - started) * rate) + 1)
            while k < due:
                step = start_step + k // n
                if step != values_step:
                    values, values_step = plan.step_records(step, keys), step
                i = k % n
                producer.send(topic, keys[i], values[i], parts[i])
                sent[k] = now
                k += 1
            wait = started + k / rate - time.time()
            time.sleep(max(_TICK, wait) if k < total else 0)
    finally:
        producer.close()
    return sent


@dataclass(frozen=True)
class LatencySummary:
    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def latencies(
    received: Iterable[tuple[str, float, float]],
    sent: np.ndarray,
    plan: ReadingPlan,
    start_step: int,
) -> np.ndarray:
    """Reading-to-forecast latencies in seconds.

    `received` holds (stream id, reading ts, time the forecast was consumed) of each forecast;
    forecasts of readings the run did not send (an earlier phase's) are left out, and a
    duplicate (a reading processed again) counts once, at its first arrival.
    """
    seen: set[int] = set()
    out: list[float] = []
    for stream, ts, got in received:
        k = plan.locate(stream, ts, start_step)
        if 0 <= k < len(sent) and k not in seen:
            seen.add(k)
            out.append(got - float(sent[k]))
    return np.asarray(out)


def summarize(lat: np.ndarray) -> LatencySummary:
    if len(lat) == 0:
        return LatencySummary(0, float("nan"), float("nan"), float("nan"))
    ms = lat * 1000.0
    return LatencySummary(
        len(ms),
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 99)),
        float(ms.max()),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("mode", choices=["preload", "rate"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--steps", type=int, default=1, help="preload: steps to publish")
    parser.add_argument("--start-step", type=int, default=0)
    parser.add_argument("--rate", type=float, default=1000.0, help="rate: readings per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="rate: how long")
    parser.add_argument("--out", help="rate: .npy file for the send times")
    args = parser.parse_args(argv)
    plan = ReadingPlan(args.streams, args.partitions)
    if args.mode == "preload":
        n = preload(
            args.bootstrap, args.topic, plan, range(args.start_step, args.start_step + args.steps)
        )
        print(f"sent {n}", flush=True)
        return 0
    sent = run_at_rate(
        args.bootstrap,
        args.topic,
        plan,
        rate=args.rate,
        seconds=args.seconds,
        start_step=args.start_step,
    )
    if args.out:
        np.save(args.out, sent)
    late = float(np.max(sent - (sent[0] + np.arange(len(sent)) / args.rate))) if len(sent) else 0
    print(f"sent {len(sent)} behind_schedule_max_ms {late * 1000:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

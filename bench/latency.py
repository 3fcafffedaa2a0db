"""Reading-to-forecast latency of the service alone, on a fresh broker, beside what the
broker and the transport give on their own.

    python -m bench.latency                                 # both clients, 1,000 streams, 15,000/s
    python -m bench.latency --client confluent --streams 10000 --rate 20000 --seconds 10
    python -m bench.latency --pipeline hop --pipeline sensorcast --max-wait-ms 20

`bench.e2e` measures latency after each pipeline has drained a large backlog, on a broker
that by then holds every pipeline's topics in memory; this one starts a fresh embedded
broker per measurement, pre-loads two readings per stream, starts the pipeline, and once it
has caught up sends readings at a fixed rate with `bench.loadgen` while a consumer notes
when each forecast arrives. It prints p50/p99/max from a reading handed to the producer to
its forecast consumed, for:

- ``sensorcast``: `sensorcast serve` with the shipped model, and from its own metrics over
  the same seconds the mean time it spent per micro-batch and per checkpoint: what the
  service adds on top of the two broker hops;
- ``transport``: `bench.pipelines transport` (the service's transport, a fixed forecast per
  reading, no model): the same two hops and the same batching without the model and the
  state changelog;
- ``hop``: no pipeline, the consumer reads the input topic itself: one broker hop, the
  floor under half of any pipeline's latency (client-independent: the load generator and
  the consumer use confluent-kafka when it is installed).

The pipelines and the load generator run in turn, each on a fresh broker, in one run, so
their figures can be compared; every measurement is printed as it ends.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from bench.e2e import ForecastCollector, _create_topics
from bench.loadgen import (
    LatencySummary,
    ReadingPlan,
    latencies,
    preload,
    run_at_rate,
    summarize,
)
from service.embedded import broker_bootstrap, die_with_parent, free_port

_ROOT = Path(__file__).resolve().parents[1]
_WATCHED = (
    "sensorcast_batch_seconds_sum",
    "sensorcast_batch_seconds_count",
    "sensorcast_checkpoint_seconds_sum",
    "sensorcast_checkpoint_seconds_count",
    "sensorcast_readings_consumed_total",
)


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in _WATCHED:
            out[name] = float(value)
    return out


def measure(
    pipeline: str, client: str, streams: int, rate: float, seconds: float, max_wait_ms: int | None
) -> str:
    """One measurement on a fresh broker; its line of results."""
    with broker_bootstrap() as bootstrap:
        topic, output = "latency-in", "latency-out"
        _create_topics(bootstrap, [topic, output, output + ".dlq"])
        plan = ReadingPlan(streams, 4)
        preloaded = preload(bootstrap, topic, plan, range(2))
        if pipeline == "hop":
            lat = _load(bootstrap, topic, topic, plan, rate, seconds)
            return _line("hop", "-", streams, rate, lat)
        if pipeline == "transport":
            return _transport(
                bootstrap, topic, output, plan, preloaded, client, rate, seconds, max_wait_ms
            )
        port = free_port()
        env = dict(os.environ)
        if max_wait_ms is not None:
            env["SENSORCAST_KAFKA__MAX_WAIT_MS"] = str(max_wait_ms)
        env.update(
            {
                "SENSORCAST_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
                "SENSORCAST_KAFKA__INPUT_TOPIC": topic,
                "SENSORCAST_KAFKA__OUTPUT_TOPIC": output,
                "SENSORCAST_KAFKA__DEAD_LETTER_TOPIC": output + ".dlq",
                "SENSORCAST_KAFKA__GROUP_ID": "latency",
                "SENSORCAST_KAFKA__AUTO_OFFSET_RESET": "earliest",
                "SENSORCAST_KAFKA__CLIENT": client,
                "SENSORCAST_HTTP__HOST": "127.0.0.1",
                "SENSORCAST_HTTP__PORT": str(port),
                "SENSORCAST_LOG__LEVEL": "WARNING",
                "SENSORCAST_MODEL__REGISTRY": str(_ROOT / "models"),
                "SENSORCAST_MODEL__NAME": "sensors-demo",
            }
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve"],
            env=env,
            cwd=_ROOT,
            preexec_fn=die_with_parent,
        )
        try:
            deadline = time.monotonic() + 60
            while True:  # caught up with the pre-loaded readings
                try:
                    if _metrics(port).get("sensorcast_readings_consumed_total", 0) >= preloaded:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    return f"sensorcast {client:12} did not catch up (exit {proc.poll()})"
                time.sleep(0.2)
            before = _metrics(port)
            lat = _load(bootstrap, topic, output, plan, rate, seconds)
            after = _metrics(port)
        finally:
            proc.terminate()
            proc.wait(30)

    def mean_ms(name: str) -> tuple[float, int]:
        count = after[f"{name}_count"] - before.get(f"{name}_count", 0)
        total = after[f"{name}_sum"] - before.get(f"{name}_sum", 0)
        return (1000 * total / count if count else float("nan")), int(count)

    batch, batches = mean_ms("sensorcast_batch_seconds")
    checkpoint, checkpoints = mean_ms("sensorcast_checkpoint_seconds")
    return _line("sensorcast", client, streams, rate, lat) + (
        f"; service: {batch:.1f} ms a batch ({batches}), {checkpoint:.1f} ms a checkpoint "
        f"({checkpoints})"
    )


def _transport(
    bootstrap: str,
    topic: str,
    output: str,
    plan: ReadingPlan,
    preloaded: int,
    client: str,
    rate: float,
    seconds: float,
    max_wait_ms: int | None,
) -> str:
    name = "transport" if client == "kafka-python" else "transport-confluent"
    command = [sys.executable, "-m", "bench.pipelines", name, "--bootstrap", bootstrap]
    command += ["--input", topic, "--output", output, "--group", "latency"]
    command += ["--registry", str(_ROOT / "models")]
    if max_wait_ms is not None:
        command += ["--max-wait-ms", str(max_wait_ms)]
    # caught up once its group has committed every pre-loaded reading (the broker's end
    # offsets of the output fall short of its end, see service.kafka.changelog)
    offsets = KafkaConsumer(bootstrap_servers=bootstrap, group_id="latency")
    inputs = [TopicPartition(topic, p) for p in range(4)]
    proc = subprocess.Popen(
        command, cwd=_ROOT, stdout=subprocess.DEVNULL, preexec_fn=die_with_parent
    )
    try:
        deadline = time.monotonic() + 60
        while sum(offsets.committed(tp) or 0 for tp in inputs) < preloaded:
            if time.monotonic() > deadline or proc.poll() is not None:
                return f"transport  {client:12} did not catch up (exit {proc.poll()})"
            time.sleep(0.2)
        lat = _load(bootstrap, topic, output, plan, rate, seconds)
    finally:
        offsets.close()
        proc.terminate()
        proc.wait(30)
    return _line("transport", client, streams=plan.n_streams, rate=rate, lat=lat)


def _load(
    bootstrap: str, topic: str, output: str, plan: ReadingPlan, rate: float, seconds: float
) -> LatencySummary:
    """Send readings to `topic` at `rate` for `seconds` (steps 2 on, after the pre-loaded
    two) while a consumer of `output` notes each arrival; then wait 2 s for stragglers."""
    collector = ForecastCollector(bootstrap, output)
    sent = run_at_rate(bootstrap, topic, plan, rate=rate, seconds=seconds, start_step=2)
    time.sleep(2.0)
    return summarize(latencies(collector.close(), sent, plan, 2))


def _line(pipeline: str, client: str, streams: int, rate: float, lat: LatencySummary) -> str:
    return (
        f"{pipeline:10} {client:12} {streams:>7,} streams {rate:>7,.0f}/s: p50 {lat.p50_ms:6.1f} "
        f"p99 {lat.p99_ms:6.1f} max {lat.max_ms:6.1f} ms ({lat.count:,} forecasts)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="3 s of load per client")
    parser.add_argument(
        "--client", choices=["kafka-python", "confluent"], action="append", help="default: both"
    )
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=15000.0, help="readings per second")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument(
        "--pipeline",
        choices=["sensorcast", "transport", "hop"],
        action="append",
        help="what to measure (repeatable); default: hop, then sensorcast and transport per client",
    )
    parser.add_argument(
        "--max-wait-ms", type=int, help="kafka.max_wait_ms of the pipelines (default: theirs)"
    )
    parser.add_argument("--trials", type=int, default=2, help="rounds of everything, each reported")
    args = parser.parse_args(argv)
    seconds, trials = (3.0, 1) if args.quick else (args.seconds, args.trials)
    pipelines = args.pipeline or ["hop", "sensorcast", "transport"]
    clients = args.client or ["kafka-python", "confluent"]
    for _ in range(trials):
        if "hop" in pipelines:
            print(measure("hop", "-", args.streams, args.rate, seconds, None), flush=True)
        for client in clients:
            for pipeline in pipelines:
                if pipeline != "hop":
                    line = measure(
                        pipeline, client, args.streams, args.rate, seconds, args.max_wait_ms
                    )
                    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

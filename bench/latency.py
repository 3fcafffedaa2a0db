"""Reading-to-forecast latency under light load, on a fresh broker, beside one bare broker
hop measured in the same run: with the service running, and without it.

    python -m bench.latency                     # the target workload, both clients, 3 trials
    python -m bench.latency --client confluent --trials 1
    python -m bench.latency --streams 10000 --rate 10000 --seconds 8 --pipeline transport

The default is the target workload of issue 19 and DESIGN.md section 8: 1,000 readings/s
over 1,000 streams for 4 s, default service settings. Every measurement starts a fresh
embedded broker (it keeps topics in memory and slows as they grow), pre-loads two readings
per stream and creates the output topic; then, with a pipeline running and caught up or
with none, `bench.loadgen` sends readings at the rate while two consumers, each in a
process of its own (`bench.collect`), note when each record arrives: one on the output
topic (the pipeline's forecasts) and one on the input topic itself (one bare broker hop,
reading the readings the pipeline reads). Apart, neither consumer's timestamps wait on the
load generator's or the other's thread for the GIL; the forecast collector is busy only
when a pipeline runs, so in one process it slowed the hop beside a pipeline and not the hop
alone. A trial is, per client:

- ``hop alone``: no pipeline; the same load and the same two consumers;
- ``sensorcast``: `sensorcast serve` with the shipped model and default settings (the
  `SENSORCAST_*` environment reaches it, so a setting can be tried without editing code);
  its reading-to-forecast p50/p99/max, the hop measured beside it, and from its own
  metrics the mean time it spent per micro-batch and per checkpoint;
- ``transport`` (with ``--pipeline transport``): `bench.pipelines transport`, the service's
  transport with a fixed forecast per reading, no model and no state changelog.

Each line also gives the CPU used over the load, as a share of one core: the broker's, the
pipeline's, the bench's (this process and its two consumers) and every other process's on
the machine (a shared machine's figures swing with it), and each pipeline line is judged
against the targets: p99 at most 50 ms, and the hop beside the pipeline within 1.5x of the
hop alone measured just before it (PASS or FAIL); the last line counts the measurements
that met both. Figures belong in docs/benchmarks.md; the request rates behind them come
from `bench.requestrates`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from bench.collect import CollectorProcess
from bench.e2e import _create_topics
from bench.loadgen import (
    LatencySummary,
    ReadingPlan,
    latencies,
    preload,
    run_at_rate,
    summarize,
)
from service.embedded import BOOTSTRAP_ENV, EmbeddedBroker, die_with_parent, free_port

__all__ = ["TARGET_HOP_RATIO", "TARGET_P99_MS", "cpu_seconds", "main", "measure", "serving"]

TARGET_P99_MS = 50.0
TARGET_HOP_RATIO = 1.5

_ROOT = Path(__file__).resolve().parents[1]
_PARTITIONS = 4
_INPUT, _OUTPUT = "latency-in", "latency-out"
_STRAGGLERS = 2.0  # seconds the consumers keep reading after the last reading is sent
_CATCH_UP = 60.0
_WATCHED = (
    "sensorcast_batch_seconds_sum",
    "sensorcast_batch_seconds_count",
    "sensorcast_checkpoint_seconds_sum",
    "sensorcast_checkpoint_seconds_count",
    "sensorcast_readings_consumed_total",
)


@dataclass(frozen=True)
class Result:
    """One measurement: the pipeline's latency (None with no pipeline), the hop's, the
    broker's CPU share over the load, and a note from the pipeline's own metrics."""

    pipeline: str
    client: str
    latency: LatencySummary | None
    hop: LatencySummary
    cpu: Cpu
    note: str = ""


@dataclass(frozen=True)
class Cpu:
    """CPU over the load, as a share of one core: the broker's, the pipeline's (None: not
    measured), the bench's (this process, which runs the load generator, and its two
    consumers' processes), and every other process's on the machine (None: unknown), which
    a shared machine's figures depend on."""

    broker: float | None
    pipeline: float | None
    bench: float
    others: float | None

    def __str__(self) -> str:
        def pct(share: float | None) -> str:
            return "-" if share is None else f"{100 * share:.0f}%"

        return (
            f"cpu: broker {pct(self.broker)}, pipeline {pct(self.pipeline)}, "
            f"bench {pct(self.bench)}, others {pct(self.others)}"
        )


def machine_seconds() -> float | None:
    """CPU seconds every process on the machine has used (None: no /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float | None:
    """User and system CPU seconds process `pid` has used (None: unknown)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _fresh_broker() -> Iterator[tuple[str, int | None]]:
    """(bootstrap, broker pid): a fresh embedded broker, or ``$KAFKA_BOOTSTRAP_SERVERS``."""
    external = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if external:
        yield external, None
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap, broker.pid


def service_env(bootstrap: str, client: str, http_port: int) -> dict[str, str]:
    """The environment of `sensorcast serve` on the bench's topics: default settings
    otherwise (the caller's ``SENSORCAST_*`` variables included)."""
    env = dict(os.environ)
    env.update(
        {
            "SENSORCAST_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "SENSORCAST_KAFKA__INPUT_TOPIC": _INPUT,
            "SENSORCAST_KAFKA__OUTPUT_TOPIC": _OUTPUT,
            "SENSORCAST_KAFKA__DEAD_LETTER_TOPIC": _OUTPUT + ".dlq",
            "SENSORCAST_KAFKA__GROUP_ID": "latency",
            "SENSORCAST_KAFKA__AUTO_OFFSET_RESET": "earliest",
            "SENSORCAST_KAFKA__CLIENT": client,
            "SENSORCAST_HTTP__HOST": "127.0.0.1",
            "SENSORCAST_HTTP__PORT": str(http_port),
            "SENSORCAST_LOG__LEVEL": "WARNING",
            "SENSORCAST_MODEL__REGISTRY": str(_ROOT / "models"),
            "SENSORCAST_MODEL__NAME": "sensors-demo",
        }
    )
    return env


def metrics(port: int) -> dict[str, float]:
    """The service's watched metrics, read from its ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in _WATCHED:
            out[name] = float(value)
    return out


@contextlib.contextmanager
def serving(bootstrap: str, client: str, preloaded: int) -> Iterator[tuple[int, int]]:
    """`sensorcast serve` on the bench's topics, caught up with the `preloaded` readings;
    yields its HTTP port and process id. Raises `RuntimeError` when it does not catch up in
    60 s."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve"],
        env=service_env(bootstrap, client, port),
        cwd=_ROOT,
        preexec_fn=die_with_parent,
    )
    try:
        deadline = time.monotonic() + _CATCH_UP
        while True:
            with contextlib.suppress(OSError):
                if metrics(port).get("sensorcast_readings_consumed_total", 0) >= preloaded:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"sensorcast {client} did not catch up (exit {proc.poll()})")
            time.sleep(0.2)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


@contextlib.contextmanager
def _transport(
    bootstrap: str, client: str, preloaded: int, max_wait_ms: int | None
) -> Iterator[int]:
    name = "transport" if client == "kafka-python" else "transport-confluent"
    command = [sys.executable, "-m", "bench.pipelines", name, "--bootstrap", bootstrap]
    command += ["--input", _INPUT, "--output", _OUTPUT, "--group", "latency"]
    command += ["--registry", str(_ROOT / "models")]
    if max_wait_ms is not None:
        command += ["--max-wait-ms", str(max_wait_ms)]
    # caught up once its group has committed every pre-loaded reading (the broker's end
    # offsets of the output fall short of its end, see service.kafka.changelog)
    offsets = KafkaConsumer(bootstrap_servers=bootstrap, group_id="latency")
    inputs = [TopicPartition(_INPUT, p) for p in range(_PARTITIONS)]
    proc = subprocess.Popen(
        command, cwd=_ROOT, stdout=subprocess.DEVNULL, preexec_fn=die_with_parent
    )
    try:
        deadline = time.monotonic() + _CATCH_UP
        while sum(offsets.committed(tp) or 0 for tp in inputs) < preloaded:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"transport {client} did not catch up (exit {proc.poll()})")
            time.sleep(0.2)
        yield proc.pid
    finally:
        offsets.close()
        proc.terminate()
        proc.wait(30)


def _load(
    bootstrap: str,
    plan: ReadingPlan,
    rate: float,
    seconds: float,
    pids: tuple[int | None, int | None],
) -> tuple[LatencySummary, LatencySummary, Cpu]:
    """Send readings at `rate` for `seconds` (steps 2 on, after the pre-loaded two) while one
    consumer notes each forecast's arrival and another each reading's; then wait for
    stragglers. (forecast latency, hop latency, CPU over the load); `pids`: the broker's and
    the pipeline's processes."""
    forecasts = CollectorProcess(bootstrap, _OUTPUT)
    hop = CollectorProcess(bootstrap, _INPUT)
    collectors = (forecasts.pid, hop.pid)

    def bench_seconds() -> float:
        return time.process_time() + sum(cpu_seconds(pid) or 0.0 for pid in collectors)

    before = [cpu_seconds(pid) for pid in pids] + [machine_seconds()]
    began, bench = time.monotonic(), bench_seconds()
    sent = run_at_rate(bootstrap, _INPUT, plan, rate=rate, seconds=seconds, start_step=2)
    time.sleep(_STRAGGLERS)
    after = [cpu_seconds(pid) for pid in pids] + [machine_seconds()]
    elapsed, bench = time.monotonic() - began, bench_seconds() - bench
    broker, pipeline, machine = (
        None if b is None or a is None else (a - b) / elapsed
        for b, a in zip(before, after, strict=True)
    )
    ours = (broker or 0.0) + (pipeline or 0.0) + bench / elapsed
    others = None if machine is None else max(0.0, machine - ours)
    cpu = Cpu(broker, pipeline, bench / elapsed, others)
    out = summarize(latencies(forecasts.close(), sent, plan, 2))
    return out, summarize(latencies(hop.close(), sent, plan, 2)), cpu


def measure(
    pipeline: str,
    client: str,
    *,
    streams: int,
    rate: float,
    seconds: float,
    max_wait_ms: int | None = None,
) -> Result:
    """One measurement on a fresh broker: `pipeline` is ``sensorcast``, ``transport`` or
    ``hop`` (no pipeline: the hop alone)."""
    plan = ReadingPlan(streams, _PARTITIONS)
    with _fresh_broker() as (bootstrap, pid):
        _create_topics(bootstrap, [_INPUT, _OUTPUT, _OUTPUT + ".dlq"])
        preloaded = preload(bootstrap, _INPUT, plan, range(2))
        if pipeline == "hop":
            _, hop, cpu = _load(bootstrap, plan, rate, seconds, (pid, None))
            return Result("hop alone", "-", None, hop, cpu)
        if pipeline == "transport":
            with _transport(bootstrap, client, preloaded, max_wait_ms) as pipeline_pid:
                lat, hop, cpu = _load(bootstrap, plan, rate, seconds, (pid, pipeline_pid))
            return Result("transport", client, lat, hop, cpu)
        with serving(bootstrap, client, preloaded) as (port, service_pid):
            before = metrics(port)
            lat, hop, cpu = _load(bootstrap, plan, rate, seconds, (pid, service_pid))
            after = metrics(port)
    return Result("sensorcast", client, lat, hop, cpu, _service_note(before, after))


def _service_note(before: dict[str, float], after: dict[str, float]) -> str:
    def mean_ms(name: str) -> str:
        count = after[f"{name}_count"] - before.get(f"{name}_count", 0)
        total = after[f"{name}_sum"] - before.get(f"{name}_sum", 0)
        return f"{1000 * total / count:.1f} ms ({count:.0f})" if count else "- (0)"

    return (
        f"service: {mean_ms('sensorcast_batch_seconds')} a batch, "
        f"{mean_ms('sensorcast_checkpoint_seconds')} a checkpoint"
    )


def _ms(lat: LatencySummary) -> str:
    return f"p50 {lat.p50_ms:6.1f} p99 {lat.p99_ms:6.1f} max {lat.max_ms:6.1f} ms ({lat.count:,})"


def line(result: Result, alone: Result | None = None) -> str:
    """The printed line of a measurement; a pipeline's is judged against the targets,
    with `alone` the hop measured without it."""
    head = f"{result.pipeline:10} {result.client:12}"
    if result.latency is None:
        return f"{head} hop {_ms(result.hop)}; {result.cpu}"
    text = f"{head} {_ms(result.latency)}\n{'':24}hop beside {_ms(result.hop)}"
    if alone is not None:
        ratio = result.hop.p99_ms / alone.hop.p99_ms
        p99_ok = result.latency.p99_ms <= TARGET_P99_MS and result.latency.count > 0
        hop_ok = ratio <= TARGET_HOP_RATIO
        text += (
            f", alone p99 {alone.hop.p99_ms:.1f} ms: {ratio:.2f}x\n{'':24}"
            f"p99 <= {TARGET_P99_MS:.0f} ms {'PASS' if p99_ok else 'FAIL'}; "
            f"hop ratio <= {TARGET_HOP_RATIO} {'PASS' if hop_ok else 'FAIL'}"
        )
    text += f"\n{'':24}{result.cpu}"
    if result.note:
        text += f"; {result.note}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="one trial")
    parser.add_argument(
        "--client", choices=["kafka-python", "confluent"], action="append", help="default: both"
    )
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1000.0, help="readings per second")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of load")
    parser.add_argument(
        "--pipeline",
        choices=["sensorcast", "transport"],
        action="append",
        help="measured after the hop alone, per client (repeatable); default: sensorcast",
    )
    parser.add_argument(
        "--max-wait-ms", type=int, help="the transport pipeline's kafka.max_wait_ms"
    )
    parser.add_argument("--trials", type=int, default=3, help="rounds of everything")
    args = parser.parse_args(argv)
    trials = 1 if args.quick else args.trials
    pipelines = args.pipeline or ["sensorcast"]
    clients = args.client or ["kafka-python", "confluent"]
    load = {"streams": args.streams, "rate": args.rate, "seconds": args.seconds}
    print(
        f"{args.streams:,} streams, {args.rate:,.0f} readings/s for {args.seconds:g} s, "
        "fresh broker per line",
        flush=True,
    )
    verdicts: list[bool] = []
    for _ in range(trials):
        for client in clients:
            for pipeline in pipelines:
                alone = measure("hop", "-", **load)
                print(line(alone), flush=True)
                try:
                    result = measure(pipeline, client, max_wait_ms=args.max_wait_ms, **load)
                except RuntimeError as exc:
                    print(f"{pipeline:10} {client:12} {exc}", flush=True)
                    verdicts.append(False)
                    continue
                print(line(result, alone), flush=True)
                assert result.latency is not None
                verdicts.append(
                    result.latency.p99_ms <= TARGET_P99_MS
                    and result.hop.p99_ms <= TARGET_HOP_RATIO * alone.hop.p99_ms
                )
    print(f"targets met in {sum(verdicts)} of {len(verdicts)} measurements", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end benchmark: Sensorcast against transport-only and naive pipelines, in one run.

    python -m bench.e2e            # 1k, 10k and 100k streams, about 35 minutes
    python -m bench.e2e --quick    # 1k and 10k streams, one trial, short phases, ~3 minutes

For each stream count, a fresh embedded broker (or ``$KAFKA_BOOTSTRAP_SERVERS``) gets one
input topic (4 partitions) pre-loaded by `bench.loadgen` with the same readings for all three
pipelines; each pipeline runs as its own process, in its own consumer group, reading that
topic from the start and writing its own forecast topic:

1. ``sensorcast``: the real service, ``python -m service.cli serve`` (`Service`), with the
   shipped ``sensors-demo`` model (LSTM 2x64), one onnxruntime thread, on kafka-python
   (``kafka.client``'s default);
2. ``transport``: `bench.pipelines` transport (the service's source, decoder, encoder and
   sink, a fixed forecast, no model), on kafka-python;
3. ``sensorcast-confluent``: the real service with ``kafka.client=confluent``;
4. ``transport-confluent``: the transport pipeline on the service's confluent-kafka transport;
5. ``naive``: `bench.pipelines` naive, on a time-bounded sample of the backlog;

and, for throughput only, ``sensorcast-fixed``, the service (kafka-python) with
``kafka.changelog_budget`` 1: a checkpoint every 5 s whatever its state writes cost, to show
what stretching the interval when they overrun their budget (the default) buys. Each
Sensorcast pipeline is compared with the transport of its own client.

Throughput: readings/s over the backlog from 10% to 90% of the pre-loaded readings'
forecasts, read from the forecast topic's end offsets every 50 ms (naive: from its first
second of output to the time bound). Sensorcast and transport run in alternating trials
(two in the full run, each a fresh consumer group from the start of the topic) and the best
trial of each counts: other processes on a shared machine only ever slow a trial down. CPU:
the pipeline process's user+system seconds over the same window, per million readings.
Memory: the process's peak resident set (VmHWM).

Latency: in every trial, with the pipeline caught up, `bench.loadgen` sends from a separate
process at half and at a quarter of the kafka-python Sensorcast's best sustained rate so far
(sensorcast-confluent: of its own; naive: half of its own) for a few seconds; a consumer here notes when each forecast arrives, and the
reading's send time comes from the load generator's table. The trial with the lowest p99
counts. The load generator, this consumer and the broker share the machine's cores with the
pipeline while latency is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic

from bench.loadgen import LatencySummary, ReadingPlan, latencies, preload, summarize
from service.embedded import broker_bootstrap, die_with_parent

__all__ = ["main"]

PARTITIONS = 4
PIPELINES = ("sensorcast", "transport", "naive")
#: Sensorcast again with a checkpoint every 5 s whatever its state writes cost, where the
#: default stretches the interval when they take more than a tenth of it (throughput only).
FIXED_INTERVAL = "sensorcast-fixed"
#: The service and the transport pipeline with ``kafka.client=confluent`` (librdkafka).
SENSORCAST_CONFLUENT = "sensorcast-confluent"
CONFLUENT = "transport-confluent"
_THROUGHPUT_ONLY = (FIXED_INTERVAL, CONFLUENT)
#: The transport-only pipeline each pipeline's rate is compared with: its own client's.
TRANSPORT_OF = {
    "sensorcast": "transport",
    FIXED_INTERVAL: "transport",
    "transport": "transport",
    SENSORCAST_CONFLUENT: CONFLUENT,
    CONFLUENT: CONFLUENT,
}
#: Latency is measured at these fractions of Sensorcast's sustained rate (naive: at half its own).
LATENCY_FRACTIONS: tuple[float, ...] = (0.5, 0.25)
_ROOT = Path(__file__).resolve().parent.parent
_SAMPLE = 0.05  # seconds between progress samples
_SETTLED = 1.0  # seconds without new forecasts that mean a backlog is done
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sizes:
    streams: tuple[int, ...]
    min_readings: int  # pre-loaded readings per stream count (at least 3 per stream)
    naive_seconds: float  # time bound of the naive pipeline's backlog sample
    latency_seconds: float
    drain_timeout: float
    trials: int  # alternating throughput trials of sensorcast and transport; the best counts


FULL = Sizes((1_000, 10_000, 100_000), 600_000, 25.0, 6.0, 240.0, 2)
QUICK = Sizes((1_000, 10_000), 40_000, 6.0, 3.0, 60.0, 1)


@dataclass
class Result:
    pipeline: str
    streams: int
    trial: int = 0
    rate: float = float("nan")
    cpu_per_million: float = float("nan")
    peak_rss_mb: float = float("nan")
    #: fraction of the reference rate -> (readings/s sent, latencies, forecasts missing)
    latency: dict[float, tuple[float, LatencySummary, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# -- processes --------------------------------------------------------------------------------


class Pipeline:
    """One pipeline process, with its CPU time and memory read from /proc."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            cmd,
            cwd=_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=die_with_parent,  # no pipeline outlives an interrupted benchmark
        )
        self.assigned = threading.Event()
        self._stderr: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip() == "assigned":
                self.assigned.set()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)
            del self._stderr[:-20]

    def cpu_seconds(self) -> float:
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime

    def memory_mb(self, key: str = "VmHWM") -> float:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self) -> str:
        return "".join(self._stderr[-10:])

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _start(
    name: str,
    bootstrap: str,
    topic: str,
    output: str,
    group: str,
    offset_reset: str = "earliest",
    settings: dict[str, str] | None = None,
) -> Pipeline:
    """Start pipeline `name`; `settings` are more environment variables for it."""
    env = dict(os.environ)
    if name.startswith("sensorcast"):
        env.update(
            {
                "SENSORCAST_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
                "SENSORCAST_KAFKA__INPUT_TOPIC": topic,
                "SENSORCAST_KAFKA__OUTPUT_TOPIC": output,
                "SENSORCAST_KAFKA__DEAD_LETTER_TOPIC": output + ".dlq",
                "SENSORCAST_KAFKA__GROUP_ID": group,
                "SENSORCAST_KAFKA__AUTO_OFFSET_RESET": offset_reset,
                "SENSORCAST_KAFKA__SESSION_TIMEOUT_MS": "6000",
                "SENSORCAST_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
                "SENSORCAST_HTTP__ENABLED": "false",
                "SENSORCAST_LOG__LEVEL": "WARNING",
                "SENSORCAST_MODEL__REGISTRY": str(_ROOT / "models"),
                "SENSORCAST_MODEL__NAME": "sensors-demo",
                **({"SENSORCAST_KAFKA__CHANGELOG_BUDGET": "1"} if name == FIXED_INTERVAL else {}),
                "SENSORCAST_KAFKA__CLIENT": (
                    "confluent" if name == SENSORCAST_CONFLUENT else "kafka-python"
                ),
            }
        )
        env.update(settings or {})
        cmd = [sys.executable, "-m", "service.cli", "serve"]
    else:
        cmd = [
            sys.executable,
            "-m",
            "bench.pipelines",
            name,
            "--bootstrap",
            bootstrap,
            "--input",
            topic,
            "--output",
            output,
            "--group",
            group,
            "--registry",
            str(_ROOT / "models"),
            "--offset-reset",
            offset_reset,
        ]
    return Pipeline(name, cmd, env)


# -- broker side ------------------------------------------------------------------------------


class OffsetWatch:
    """Sum of a topic's end offsets: how many records it holds."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="bench-watch")
        self._parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]

    def total(self) -> int:
        return int(sum(self._consumer.end_offsets(self._parts).values()))

    def close(self) -> None:
        self._consumer.close()


class ForecastCollector:
    """Consumes a forecast topic from its current end, noting when each record arrived.

    On confluent-kafka when it is installed: its fetches and record parsing run in C on its
    own threads, so the collector keeps up with tens of thousands of forecasts a second and
    takes little of the cores it shares with the pipeline; else on kafka-python."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.batches: list[tuple[float, list[bytes]]] = []
        self.count = 0
        self.last_arrival = 0.0
        self._stop = threading.Event()
        try:
            from confluent_kafka import OFFSET_END, Consumer
            from confluent_kafka import TopicPartition as Partition
        except ImportError:
            self._fast: Any = None
            self._consumer = KafkaConsumer(
                bootstrap_servers=bootstrap,
                client_id="bench-collector",
                fetch_max_wait_ms=5,
                max_poll_records=5000,
            )
            parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            self._consumer.assign(parts)
            self._consumer.seek_to_end()
            for tp in parts:
                self._consumer.position(tp)  # resolve the end now, before any reading is sent
        else:
            self._fast = Consumer(
                {
                    "bootstrap.servers": bootstrap,
                    "client.id": "bench-collector",
                    "group.id": "bench-collector",
                    "enable.auto.commit": False,
                    "fetch.wait.max.ms": 5,
                }
            )
            self._fast.assign([Partition(topic, p, OFFSET_END) for p in range(PARTITIONS)])
            # the end is resolved on the first fetch: let it happen before readings are sent
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and not all(
                tp.offset >= 0 for tp in self._fast.position(self._fast.assignment())
            ):
                self._fast.consume(1000, 0.05)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._fast is not None:
                # what is there now; else wait for one (consume would wait out its timeout
                # to fill the batch, and stamp the arrivals late)
                messages = self._fast.consume(5000, 0)
                if not messages:
                    first = self._fast.poll(0.02)
                    messages = [first, *self._fast.consume(4999, 0)] if first else []
                values = [m.value() for m in messages if m.error() is None]
            else:
                polled = self._consumer.poll(timeout_ms=20)
                values = [r.value for records in polled.values() for r in records]
            if values:
                got = time.time()
                self.batches.append((got, values))
                self.count += len(values)
                self.last_arrival = got

    def close(self) -> list[tuple[str, float, float]]:
        self._stop.set()
        self._thread.join()
        if self._fast is not None:
            self._fast.close()
        else:
            self._consumer.close()
        out = []
        for got, values in self.batches:
            for v in values:
                doc = json.loads(v)
                out.append((doc["stream_id"], float(doc["ts"]), got))
        return out


def _create_topics(bootstrap: str, names: Sequence[str]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-admin")
    try:
        admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names])
    finally:
        admin.close()


# -- phases -----------------------------------------------------------------------------------


def _throughput(
    pipe: Pipeline,
    watch: OffsetWatch,
    *,
    preloaded: int,
    bound: float | None,
    timeout: float,
    result: Result,
) -> None:
    """Sample output progress and CPU until the backlog is done (or the bound ends).

    The embedded broker reports a partition's end offset as the start of its last record
    batch, so "done" is: no new forecasts for a second, after at least 90% of the backlog.
    """
    samples: list[tuple[float, int, float]] = []
    started = time.monotonic()
    first_output: float | None = None
    changed, last_total = started, -1
    while True:
        now = time.monotonic()
        total = watch.total()
        samples.append((now, total, pipe.cpu_seconds()))
        if total != last_total:
            changed, last_total = now, total
        if total > 0 and first_output is None:
            first_output = now
        if total >= 0.9 * preloaded and now - changed >= _SETTLED:
            break
        if bound is not None and first_output is not None and now - first_output >= bound:
            break
        if now - started > timeout or not pipe.alive():
            result.notes.append(f"stopped after {now - started:.0f} s at {total} forecasts")
            if not pipe.alive():
                result.notes.append("process exited: " + pipe.stderr_tail())
            break
        time.sleep(_SAMPLE)
    result.peak_rss_mb = pipe.memory_mb("VmHWM")
    if bound is not None and samples[-1][1] < 0.9 * preloaded:
        t0 = (first_output or started) + 1.0
        window = [s for s in samples if s[0] >= t0]
        if len(window) < 2 or window[-1][1] == window[0][1]:
            return
        lo, hi = window[0], window[-1]
        result.notes.append(f"sample of {hi[1] - lo[1]:,} readings in {hi[0] - lo[0]:.0f} s")
    else:
        lo_n, hi_n = 0.1 * preloaded, 0.9 * preloaded
        lo = next((s for s in samples if s[1] >= lo_n), samples[-1])
        hi = next((s for s in samples if s[1] >= hi_n), samples[-1])
    if hi[1] > lo[1]:
        result.rate = (hi[1] - lo[1]) / (hi[0] - lo[0])
        result.cpu_per_million = (hi[2] - lo[2]) / (hi[1] - lo[1]) * 1e6


def _settle(watch: OffsetWatch, timeout: float) -> bool:
    """Wait until the pipeline has stopped producing (it has caught up)."""
    deadline = time.monotonic() + timeout
    changed, last = time.monotonic(), -1
    while time.monotonic() - changed < _SETTLED:
        total = watch.total()
        if total != last:
            changed, last = time.monotonic(), total
        if time.monotonic() > deadline:
            return False
        time.sleep(_SAMPLE)
    return True


def _latency(
    bootstrap: str,
    topic: str,
    output: str,
    plan: ReadingPlan,
    *,
    rate: float,
    seconds: float,
    start_step: int,
    fraction: float,
    result: Result,
) -> int:
    """Send at `rate` and measure; return how many readings were sent."""
    collector = ForecastCollector(bootstrap, output)
    with tempfile.TemporaryDirectory(prefix="sensorcast-bench-") as tmp:
        out = Path(tmp) / "sent.npy"
        cmd = [
            sys.executable,
            "-m",
            "bench.loadgen",
            "rate",
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--partitions",
            str(PARTITIONS),
            "--streams",
            str(plan.n_streams),
            "--rate",
            f"{rate:.1f}",
            "--seconds",
            str(seconds),
            "--start-step",
            str(start_step),
            "--out",
            str(out),
        ]
        done = subprocess.run(cmd, cwd=_ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not out.exists():
            collector.close()
            result.notes.append("load generator failed: " + done.stderr[-300:])
            return 0
        sent = np.load(out)
    # The collector may start a little before the end (see `_throughput`), so its count can
    # include older forecasts: wait for the count and for a quiet second.
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and (
        collector.count < len(sent) or time.time() - collector.last_arrival < _SETTLED
    ):
        time.sleep(_SAMPLE)
    lat = latencies(collector.close(), sent, plan, start_step)
    result.latency[fraction] = (rate, summarize(lat), len(sent) - len(lat))
    behind = done.stdout.strip().rsplit(" ", 1)[-1]
    if float(behind) > 50:
        result.notes.append(f"load generator up to {behind} ms behind schedule")
    return len(sent)


def _client_caps(bootstrap: str, topic: str, records: int) -> None:
    """kafka-python alone on the pre-loaded topic: the ceiling of any pipeline built on it."""
    cmd = [sys.executable, "-m", "bench.kafkacaps", "--bootstrap", bootstrap, "--topic", topic]
    cmd += ["--records", str(records), "--registry", str(_ROOT / "models")]
    done = subprocess.run(cmd, cwd=_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"   kafka-python alone: failed: {done.stderr[-300:]}", flush=True)
        return
    caps = json.loads(done.stdout.strip().splitlines()[-1])
    c, f, p, a = caps["consume"], caps["plain"], caps["produce"], caps["append"]
    both = 1 / (1 / f["per_s"] + 1 / a["per_s"])
    print(
        f"   kafka-python alone: consume {c['per_s']:,.0f} records/s ({c['cpu_us']:.1f} CPU us "
        f"each), with the source's parsing {f['per_s']:,.0f}/s ({f['cpu_us']:.1f} CPU us "
        f"each, {f['per_s'] / c['per_s']:.1f}x); produce {p['bytes']} B records with send {p['per_s']:,.0f}/s "
        f"({p['cpu_us']:.1f} CPU us each), with the sink's appender {a['per_s']:,.0f}/s "
        f"({a['cpu_us']:.1f} CPU us each, {a['per_s'] / p['per_s']:.1f}x); the source's "
        f"consume then the appender: {both:,.0f} records/s",
        flush=True,
    )


def _run_scale(
    bootstrap: str, n_streams: int, sizes: Sizes, tag: str, *, caps: bool = False
) -> list[Result]:
    plan = ReadingPlan(n_streams, PARTITIONS)
    topic = f"e2e-{tag}-{n_streams}"
    _create_topics(bootstrap, [topic])
    steps = max(3, math.ceil(sizes.min_readings / n_streams))
    started = time.perf_counter()
    preloaded = preload(bootstrap, topic, plan, range(steps))
    print(
        f"-- {n_streams:,} streams: {preloaded:,} readings ({steps} per stream) pre-loaded "
        f"in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    if caps:
        _client_caps(bootstrap, topic, preloaded)
    next_step = steps
    best: dict[str, Result] = {}
    best_latency: dict[str, dict[float, tuple[float, LatencySummary, int]]] = {
        name: {} for name in (*PIPELINES, SENSORCAST_CONFLUENT)
    }
    alternating = (*PIPELINES[:2], SENSORCAST_CONFLUENT, *_THROUGHPUT_ONLY)
    schedule = [(name, t) for t in range(sizes.trials) for name in alternating]
    schedule.append(("naive", 0))
    for name, trial in schedule:
        result = Result(name, n_streams, trial=trial)
        output = f"{topic}.{name}.{trial}"
        group = f"{topic}.{name}.{trial}"
        _create_topics(bootstrap, [output, output + ".dlq"])
        watch = OffsetWatch(bootstrap, output)
        pipe = _start(name, bootstrap, topic, output, group)
        try:
            _throughput(
                pipe,
                watch,
                preloaded=preloaded,
                bound=sizes.naive_seconds if name == "naive" else None,
                timeout=sizes.drain_timeout,
                result=result,
            )
            kept = best.setdefault(name, result)
            if result.rate > kept.rate:
                best[name] = result
                result.notes += [n for n in kept.notes if n not in result.notes]
            if name in _THROUGHPUT_ONLY or not math.isfinite(result.rate):
                continue
            if name == "naive":
                # Its backlog would take minutes: a fresh member starts at the topic's end.
                pipe.stop()
                watch.close()
                output = f"{topic}.naive.latency"
                _create_topics(bootstrap, [output, output + ".dlq"])
                watch = OffsetWatch(bootstrap, output)
                pipe = _start(name, bootstrap, topic, output, output, offset_reset="latest")
                if not pipe.assigned.wait(30.0):
                    result.notes.append("naive latency member never got partitions")
                    continue
                time.sleep(1.0)  # its positions are resolved on its first fetch
                reference, fractions = best[name].rate, LATENCY_FRACTIONS[:1]
            elif name == SENSORCAST_CONFLUENT:
                reference, fractions = best[name].rate, LATENCY_FRACTIONS
            else:
                reference, fractions = best["sensorcast"].rate, LATENCY_FRACTIONS
            for fraction in fractions:
                if not _settle(watch, sizes.drain_timeout):
                    result.notes.append("did not catch up before the latency phase")
                    break
                sent = _latency(
                    bootstrap,
                    topic,
                    output,
                    plan,
                    rate=fraction * reference,
                    seconds=sizes.latency_seconds,
                    start_step=next_step,
                    fraction=fraction,
                    result=result,
                )
                # Like throughput, the best trial counts: interference only adds latency.
                kept_lat = best_latency[name].get(fraction)
                got = result.latency.get(fraction)
                if got is not None and (kept_lat is None or got[1].p99_ms < kept_lat[1].p99_ms):
                    best_latency[name][fraction] = got
                next_step += math.ceil(sent / n_streams)
        finally:
            pipe.stop()
            watch.close()
            print(_line(result), flush=True)
    for name, kept in best.items():
        kept.latency = dict(best_latency.get(name, {}))
    order = (
        PIPELINES[0],
        FIXED_INTERVAL,
        PIPELINES[1],
        SENSORCAST_CONFLUENT,
        CONFLUENT,
        PIPELINES[2],
    )
    return [best[name] for name in order if name in best]


# -- report -----------------------------------------------------------------------------------


def _latency_text(r: Result) -> str:
    parts = []
    for fraction, (rate, lat, missing) in r.latency.items():
        parts.append(
            f"at {fraction:g} ({rate:,.0f}/s): p50 {lat.p50_ms:.1f} p99 {lat.p99_ms:.1f} "
            f"max {lat.max_ms:.1f} ms ({lat.count:,} forecasts, {missing} missing)"
        )
    return "; ".join(parts) or "latency n/a"


def _line(r: Result) -> str:
    notes = f" [{'; '.join(r.notes)}]" if r.notes else ""
    return (
        f"   {r.pipeline:19s} #{r.trial} {r.rate:9,.0f} readings/s  {r.cpu_per_million:6.1f} "
        f"CPU s/M  peak RSS {r.peak_rss_mb:6.0f} MB  {_latency_text(r)}{notes}"
    )


def _table(results: list[Result]) -> str:
    rows = [
        "| streams | pipeline | readings/s | vs transport (same client) | vs naive "
        "| CPU s / M readings | peak RSS |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    by = {(r.streams, r.pipeline): r for r in results}
    for r in results:
        transport = by.get((r.streams, TRANSPORT_OF.get(r.pipeline, "transport")))
        naive = by.get((r.streams, "naive"))
        vs_t = f"{r.rate / transport.rate:.0%}" if transport else ""
        vs_n = f"{r.rate / naive.rate:.1f}x" if naive else ""
        rows.append(
            f"| {r.streams:,} | {r.pipeline} | {r.rate:,.0f} | {vs_t} | {vs_n} "
            f"| {r.cpu_per_million:.1f} | {r.peak_rss_mb:.0f} MB |"
        )
    rows += [
        "",
        "| streams | pipeline | rate (share of Sensorcast's) | p50 | p99 | max | forecasts |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for fraction, (rate, lat, missing) in r.latency.items():
            share = (
                f"{fraction:g} of its own"
                if r.pipeline in ("naive", SENSORCAST_CONFLUENT)
                else f"{fraction:g}"
            )
            rows.append(
                f"| {r.streams:,} | {r.pipeline} | {rate:,.0f}/s ({share}) | {lat.p50_ms:.1f} ms "
                f"| {lat.p99_ms:.1f} ms | {lat.max_ms:.1f} ms | {lat.count:,}"
                + (f" ({missing} missing)" if missing else "")
                + " |"
            )
    rows += ["", *_summary(results)]
    return "\n".join(rows)


def _summary(results: list[Result]) -> list[str]:
    """Per stream count: Sensorcast over its own client's transport, for each client, and
    Sensorcast on confluent-kafka over naive."""
    by = {(r.streams, r.pipeline): r.rate for r in results}
    lines = []
    for n in sorted({r.streams for r in results}):
        parts = []
        for service, transport, label in (
            ("sensorcast", "transport", "kafka-python"),
            (SENSORCAST_CONFLUENT, CONFLUENT, "confluent"),
        ):
            if (n, service) in by and (n, transport) in by:
                parts.append(
                    f"Sensorcast/transport {label} {by[(n, service)] / by[(n, transport)]:.0%}"
                )
        if (n, SENSORCAST_CONFLUENT) in by and (n, "naive") in by:
            parts.append(
                f"Sensorcast-confluent/naive {by[(n, SENSORCAST_CONFLUENT)] / by[(n, 'naive')]:.1f}x"
            )
        if (n, SENSORCAST_CONFLUENT) in by and (n, "sensorcast") in by:
            parts.append(
                f"Sensorcast confluent/kafka-python "
                f"{by[(n, SENSORCAST_CONFLUENT)] / by[(n, 'sensorcast')]:.1f}x"
            )
        if parts:
            lines.append(f"{n:,} streams: " + "; ".join(parts))
    return lines


def _machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({model}), {mem_gb:.0f} GB RAM, Python "
        f"{platform.python_version()}, load average {load}"
    )


@contextlib.contextmanager
def _broker() -> Iterator[str]:
    with broker_bootstrap() as bootstrap:
        yield bootstrap


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.e2e",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument(
        "--streams", type=int, nargs="*", help="stream counts (default 1k 10k 100k)"
    )
    parser.add_argument("--trials", type=int, help="alternating throughput trials (default 2)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.trials:
        sizes = dataclasses.replace(sizes, trials=args.trials)
    streams = tuple(args.streams) if args.streams else sizes.streams
    print(_machine(), flush=True)
    tag = f"{int(time.time())}"
    results: list[Result] = []
    caps_at = 10_000 if 10_000 in streams else streams[0]
    for n in streams:
        with _broker() as bootstrap:  # a fresh broker per stream count
            results += _run_scale(bootstrap, n, sizes, tag, caps=n == caps_at)
    print()
    print(_table(results))
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Few long streams against many short ones: the same number of readings through the service.

    python -m bench.longstreams              # 4 x 20,000 against 4,000 x 20, both clients
    python -m bench.longstreams --quick      # 4 x 5,000 against 1,000 x 20, one trial

A backfill, a replay of history or a plant with a few high-rate sensors hands the service
micro-batches that hold many readings of each of a few streams. Applied round by round,
such a batch costs one model call per reading of its busiest stream; applied as sequences
on the model's time axis (`engine.sequences`, the default) it costs one call per distinct
run length. For each workload a fresh embedded broker gets one input topic (4 partitions)
pre-loaded by `bench.loadgen`; then `sensorcast serve` with the shipped ``sensors-demo``
model drains it from the start, in a fresh consumer group, on each client, with
``engine.sequences`` on and off, in alternating trials (the best counts: other processes
on a shared machine only ever slow a trial down). The rate is readings/s over the backlog
from 10% to 90% of its forecasts, as `bench.e2e` measures it.

Printed: each drain as it ends, then per client and setting the rate of each workload and
the ratio few-long / many-short (the target: at least 1 with sequences on).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.e2e import (
    PARTITIONS,
    SENSORCAST_CONFLUENT,
    OffsetWatch,
    Result,
    _broker,
    _create_topics,
    _machine,
    _start,
    _throughput,
)
from bench.loadgen import ReadingPlan, preload

_CLIENTS = ("sensorcast", SENSORCAST_CONFLUENT)
_DRAIN_TIMEOUT = 600.0


@dataclass(frozen=True)
class Workload:
    """`streams` streams of `readings` readings each."""

    streams: int
    readings: int

    @property
    def name(self) -> str:
        return f"{self.streams:,} x {self.readings:,}"


def _drain(
    bootstrap: str, topic: str, total: int, client: str, sequences: bool, tag: str
) -> Result:
    """One drain of `topic` by the service on `client`; its rate."""
    result = Result(f"{client} sequences={'on' if sequences else 'off'}", total)
    output = f"{tag}.out"
    _create_topics(bootstrap, [output, output + ".dlq"])
    watch = OffsetWatch(bootstrap, output)
    settings = {"SENSORCAST_ENGINE__SEQUENCES": "true" if sequences else "false"}
    pipe = _start(client, bootstrap, topic, output, tag, settings=settings)
    try:
        _throughput(pipe, watch, preloaded=total, bound=None, timeout=_DRAIN_TIMEOUT, result=result)
    finally:
        pipe.stop()
        watch.close()
    return result


def _run_workload(
    workload: Workload, trials: int, tag: str, settings: list[bool], clients: Sequence[str]
) -> dict[tuple[str, bool], float]:
    """Best rate per (client, sequences) over `trials` alternating drains, on a fresh broker."""
    best: dict[tuple[str, bool], float] = {}
    with _broker() as bootstrap:
        topic = f"long-{tag}-{workload.streams}"
        _create_topics(bootstrap, [topic])
        plan = ReadingPlan(workload.streams, PARTITIONS)
        started = time.perf_counter()
        total = preload(bootstrap, topic, plan, range(workload.readings))
        print(
            f"-- {workload.name}: {total:,} readings pre-loaded in "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
        for trial in range(trials):
            for client in clients:
                for sequences in settings:
                    run = f"{topic}.{client}.{int(sequences)}.{trial}"
                    result = _drain(bootstrap, topic, total, client, sequences, run)
                    key = (client, sequences)
                    best[key] = max(best.get(key, 0.0), result.rate)
                    notes = f"  ({'; '.join(result.notes)})" if result.notes else ""
                    print(
                        f"   {workload.name:>14}  {result.pipeline:<36} trial {trial}: "
                        f"{result.rate:>9,.0f} readings/s{notes}",
                        flush=True,
                    )
    return best


def _label(client: str) -> str:
    """The client library a pipeline runs on, as ``--client`` names it."""
    return "confluent" if client == SENSORCAST_CONFLUENT else "kafka-python"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.longstreams",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--trials", type=int, help="alternating trials (default 2; quick 1)")
    parser.add_argument(
        "--sequences-only", action="store_true", help="skip the drains with sequences off"
    )
    parser.add_argument(
        "--client",
        choices=("kafka-python", "confluent"),
        help="drain on this client only (default: both)",
    )
    args = parser.parse_args(argv)
    clients = [c for c in _CLIENTS if args.client is None or _label(c) == args.client]
    long, wide = (
        (Workload(4, 5_000), Workload(1_000, 20))
        if args.quick
        else (
            Workload(4, 20_000),
            Workload(4_000, 20),
        )
    )
    trials = args.trials or (1 if args.quick else 2)
    settings = [True] if args.sequences_only else [True, False]
    print(_machine(), flush=True)
    tag = f"{int(time.time())}"
    rates = {w: _run_workload(w, trials, tag, settings, clients) for w in (wide, long)}
    print()
    print(f"| client | engine.sequences | {wide.name} | {long.name} | ratio |")
    print("|---|---|---|---|---|")
    for client in clients:
        for sequences in settings:
            a, b = rates[wide][(client, sequences)], rates[long][(client, sequences)]
            name = {"confluent": "confluent-kafka"}.get(_label(client), "kafka-python")
            print(
                f"| {name} | {'on' if sequences else 'off'} "
                f"| {a:,.0f}/s | {b:,.0f}/s | {b / a:.2f}x |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

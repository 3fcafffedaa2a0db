"""What the service asks of the broker, per client role and API, idle and under light load.

    python -m bench.requestrates                   # both clients, 5 s idle, 1,000/s for 4 s
    python -m bench.requestrates --client confluent --idle 10 --rate 2000

For each client library: a fresh embedded broker behind a `service.testing.wiretap.Wiretap`
(a relay that reads every request's header: API, client id), the input topic pre-loaded
with two readings per stream, `sensorcast serve` with default settings caught up with them;
then two windows:

- ``idle``: nothing sent for ``--idle`` seconds (from 6 s after catching up, once the
  first checkpoint has written the pre-loaded readings' states);
- ``load``: `bench.loadgen` sends ``--rate`` readings/s over ``--streams`` streams for
  ``--seconds`` while the latency bench's two consumers read the forecasts and the readings.

It prints, per role (client id / producer, consumer or client: what its connections were
seen doing) and API, the requests a second in each window and how long the broker (and the
relay) took to answer them under load, mean and max; then the service's micro-batches a
second and the broker's CPU over each window.
The bench's own clients (``sensorcast-loadgen``, ``bench-collector``) are listed apart from
the service's. The relay adds a hop to every request: latency is `bench.latency`'s to
measure, not this.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.e2e import ForecastCollector, _create_topics
from bench.latency import _INPUT, _OUTPUT, _PARTITIONS, cpu_seconds, metrics, serving
from bench.loadgen import ReadingPlan, preload, run_at_rate
from service.testing.wiretap import Tally, TappedBroker, api_name

__all__ = ["Window", "main", "profile", "table"]

_BENCH_CLIENTS = ("sensorcast-loadgen", "bench-collector", "bench-admin", "kafka-python")
_SETTLE = 6.0  # seconds between catching up and the idle window


@dataclass(frozen=True)
class Window:
    """What was counted over one window: requests, the broker's CPU share, the service's
    micro-batches a second."""

    tally: Tally
    broker_cpu: float | None
    batches: float


def _window(tapped: TappedBroker, port: int, run: Callable[[], object]) -> Window:
    tap, count = tapped.wiretap, "sensorcast_batch_seconds_count"
    cpu, batches = cpu_seconds(tapped.pid), metrics(port).get(count, 0.0)
    tap.reset()
    run()
    tally = tap.snapshot()
    after = cpu_seconds(tapped.pid)
    batches = (metrics(port).get(count, 0.0) - batches) / tally.seconds
    share = None if cpu is None or after is None else (after - cpu) / tally.seconds
    return Window(tally, share, batches)


def _windows(
    client: str, *, idle: float, streams: int, rate: float, seconds: float
) -> tuple[Window, Window]:
    """The idle window and the load window of one client library."""
    plan = ReadingPlan(streams, _PARTITIONS)
    with TappedBroker() as tapped:
        bootstrap = tapped.bootstrap
        _create_topics(bootstrap, [_INPUT, _OUTPUT, _OUTPUT + ".dlq"])
        preloaded = preload(bootstrap, _INPUT, plan, range(2))
        with serving(bootstrap, client, preloaded) as (port, _pid):
            # the first checkpoint (5 s after start) writes the pre-loaded readings' states:
            # let it go before the idle window, which would count it otherwise
            time.sleep(_SETTLE)
            quiet = _window(tapped, port, lambda: time.sleep(idle))
            forecasts = ForecastCollector(bootstrap, _OUTPUT)
            hop = ForecastCollector(bootstrap, _INPUT)
            busy = _window(
                tapped,
                port,
                lambda: run_at_rate(
                    bootstrap, _INPUT, plan, rate=rate, seconds=seconds, start_step=2
                ),
            )
            forecasts.close()
            hop.close()
    return quiet, busy


def _is_bench(role: str) -> bool:
    return role.split("/")[0] in _BENCH_CLIENTS


def table(idle: Window, load: Window) -> str:
    """Requests a second per role and API in both windows, and the broker's time under load."""
    quiet, busy = idle.tally, load.tally
    rows = [
        f"{'role':30} {'api':16} {'idle/s':>8} {'load/s':>8} {'mean ms':>8} {'max ms':>8}",
    ]
    roles = sorted(set(quiet.roles()) | set(busy.roles()), key=lambda r: (_is_bench(r), r))
    keys = sorted(set(quiet.counts) | set(busy.counts))
    for role in roles:
        for r, api in keys:
            if r != role:
                continue
            count = busy.counts.get((role, api))
            mean = count.seconds / count.answered * 1000 if count and count.answered else 0.0
            worst = count.max_seconds * 1000 if count else 0.0
            rows.append(
                f"{role:30} {api_name(api):16} {quiet.rate(role, api):8.1f} "
                f"{busy.rate(role, api):8.1f} {mean:8.1f} {worst:8.1f}"
            )
    service = [r for r in roles if not _is_bench(r)]
    rows += [
        f"{'the service, all requests':47} {quiet.per_second(service):8.1f} "
        f"{busy.per_second(service):8.1f}",
        f"{'the service, micro-batches':47} {idle.batches:8.1f} {load.batches:8.1f}",
        f"{'everyone, all requests':47} {quiet.per_second():8.1f} {busy.per_second():8.1f}",
        f"{'broker cpu (share of one core)':47} {_pct(idle.broker_cpu):>8} "
        f"{_pct(load.broker_cpu):>8}",
    ]
    return "\n".join(rows)


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.0f}%"


def profile(
    client: str,
    *,
    idle: float = 5.0,
    streams: int = 1000,
    rate: float = 1000.0,
    seconds: float = 4.0,
) -> str:
    """The printed table of one client library's request rates."""
    quiet, busy = _windows(client, idle=idle, streams=streams, rate=rate, seconds=seconds)
    head = (
        f"{client}: requests a second, idle {quiet.tally.seconds:.1f} s | load {rate:,.0f} "
        f"readings/s over {streams:,} streams for {busy.tally.seconds:.1f} s"
    )
    return head + "\n" + table(quiet, busy)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.requestrates",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="2 s idle")
    parser.add_argument(
        "--client", choices=["kafka-python", "confluent"], action="append", help="default: both"
    )
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of the idle window")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1000.0, help="readings per second")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of load")
    args = parser.parse_args(argv)
    for client in args.client or ["kafka-python", "confluent"]:
        text = profile(
            client,
            idle=2.0 if args.quick else args.idle,
            streams=args.streams,
            rate=args.rate,
            seconds=args.seconds,
        )
        print(text + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

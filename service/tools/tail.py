"""Read forecasts from the output topic and show them: one line each, or a live table.

`ForecastView` is the forecast message of DESIGN.md section 3 as read back; `format_line`
and `format_table` render it; `follow` reads a topic (every partition, no consumer group,
so tailing never disturbs the service's group) and hands each forecast to a callback.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pydantic_core

from service.errors import SensorcastError

if TYPE_CHECKING:
    from service.config import KafkaSettings

__all__ = [
    "ForecastView",
    "TailError",
    "follow",
    "format_line",
    "format_table",
    "format_ts",
    "parse_forecast",
]

log = logging.getLogger(__name__)


class TailError(SensorcastError):
    """The forecast topic cannot be read; the message names the broker and topic."""


@dataclass(frozen=True, slots=True)
class ForecastView:
    """One forecast message: the stream, the time `ts` of the reading it was made from
    (epoch seconds), the model as ``name:version``, `forecast[target][k]` in original
    units for `horizon_ts[k]`, whether the stream was `warm`, and the `partition` and
    `offset` of the reading (-1 when the message lacks them).
    """

    stream_id: str
    ts: float
    model: str
    horizon_ts: list[float]
    forecast: dict[str, list[float]]
    warm: bool
    partition: int
    offset: int

    def step(self, k: int = 0) -> dict[str, float]:
        """Every target's forecast `k` steps ahead (0: the next reading)."""
        return {target: values[k] for target, values in self.forecast.items()}


def parse_forecast(value: bytes) -> ForecastView:
    """Decode a forecast message; raises `ValueError` when it is not one."""
    try:
        msg = pydantic_core.from_json(value)
        model = msg.get("model") or {}
        return ForecastView(
            stream_id=str(msg["stream_id"]),
            ts=float(msg["ts"]),
            model=f"{model.get('name', '?')}:{model.get('version', '?')}",
            horizon_ts=[float(t) for t in msg["horizon_ts"]],
            forecast={str(k): list(map(float, v)) for k, v in msg["forecast"].items()},
            warm=bool(msg["warm"]),
            partition=int(msg.get("partition", -1)),
            offset=int(msg.get("offset", -1)),
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"not a forecast message: {exc}") from exc


def format_ts(ts: float) -> str:
    """``2026-11-22 02:50:00`` (UTC)."""
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return f"{ts:.0f}"


def _num(x: float) -> str:
    return f"{x:.4g}" if abs(x) < 1e5 else f"{x:.3e}"


def format_line(view: ForecastView, steps: int = 3) -> str:
    """One readable line: time, stream, warm or cold, the next `steps` values per target."""
    parts = []
    for target, values in view.forecast.items():
        shown = " ".join(_num(v) for v in values[:steps])
        more = " …" if len(values) > steps else ""
        parts.append(f"{target}: {shown}{more}")
    state = "warm" if view.warm else "cold"
    return f"{format_ts(view.ts)}  {view.stream_id:<16} {state}  " + "  |  ".join(parts)


def format_table(latest: Mapping[str, ForecastView], rows: int, steps: int = 3) -> list[str]:
    """The latest forecast of up to `rows` streams, by stream id, as aligned lines."""
    if not latest:
        return ["(no forecasts yet)"]
    first = next(iter(latest.values()))
    targets = list(first.forecast)
    head = f"{'stream':<16} {'time (UTC)':<19}  warm  " + "  ".join(
        f"{t + ' +1..+' + str(steps):<{8 * steps}}" for t in targets
    )
    lines = [head, "-" * len(head)]
    for stream_id in sorted(latest)[:rows]:
        view = latest[stream_id]
        cells = "  ".join(
            " ".join(f"{_num(v):>7}" for v in view.forecast.get(t, [])[:steps]).ljust(8 * steps)
            for t in targets
        )
        warm = "yes " if view.warm else "no  "
        lines.append(f"{stream_id:<16} {format_ts(view.ts):<19}  {warm}  {cells}")
    if len(latest) > rows:
        lines.append(f"… and {len(latest) - rows} more streams")
    return lines


def _consumer(kafka: KafkaSettings) -> Any:
    """A kafka-python consumer on `kafka`'s bootstrap servers, TLS and SASL settings,
    outside any group, committing nothing."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    from service.kafka.probe import refusal, tls_preflight, unreachable
    from service.kafka.security import kafka_python_options

    refused = tls_preflight(kafka)
    if refused is not None:
        raise TailError(refusal(kafka, refused))
    try:
        return KafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers.split(","),
            group_id=None,
            enable_auto_commit=False,
            client_id="sensorcast-tail",
            **kafka_python_options(kafka),
        )
    except KafkaError as exc:
        raise TailError(unreachable(kafka, exc)) from exc


def _forecast_or_none(record: Any) -> ForecastView | None:
    """The forecast `record` holds, or None (with a debug line) when it holds none."""
    try:
        return parse_forecast(record.value)
    except ValueError as exc:
        log.debug("skipped record partition=%d offset=%d: %s", record.partition, record.offset, exc)
        return None


def _assign(consumer: Any, topic: str, from_beginning: bool, wait: float) -> None:
    from kafka import TopicPartition

    deadline = time.monotonic() + wait
    partitions: set[int] | None = None
    while not partitions:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            break
        if time.monotonic() > deadline:
            raise TailError(f"topic {topic} does not exist (waited {wait:.0f} s)")
        time.sleep(0.2)
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    if from_beginning:
        consumer.seek_to_beginning(*tps)
    else:
        consumer.seek_to_end(*tps)


def follow(
    kafka: KafkaSettings,
    topic: str,
    on_forecast: Callable[[ForecastView], None],
    *,
    from_beginning: bool = False,
    streams: Iterable[str] | None = None,
    stop: threading.Event | None = None,
    idle_timeout: float | None = None,
    wait_for_topic: float = 30.0,
    on_idle: Callable[[], None] | None = None,
) -> int:
    """Read `topic` on `kafka`'s broker (its bootstrap servers, TLS and SASL settings) until
    `stop` is set (or `idle_timeout` seconds pass with no forecast).

    Every forecast (of `streams`, when given) goes to `on_forecast`; `on_idle` runs after
    each poll. Records that are not forecasts are skipped and counted in the log. Returns how
    many forecasts were handed over.
    """
    wanted = set(streams or ()) or None  # None: every stream
    consumer = _consumer(kafka)
    handed = skipped = 0
    try:
        _assign(consumer, topic, from_beginning, wait_for_topic)
        last = time.monotonic()
        while stop is None or not stop.is_set():
            batch = consumer.poll(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    view = _forecast_or_none(record)
                    if view is None:
                        skipped += 1
                        continue
                    if wanted is not None and view.stream_id not in wanted:
                        continue
                    on_forecast(view)
                    handed += 1
                    last = time.monotonic()
                    if stop is not None and stop.is_set():
                        return handed
            if on_idle is not None:
                on_idle()
            if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                break
    finally:
        consumer.close()
        if skipped:
            log.warning("skipped %d records on %s that are not forecasts", skipped, topic)
    return handed

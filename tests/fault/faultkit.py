"""Helpers for the fault tests: `sensorcast serve` processes to kill, a deterministic paced
feed of readings, the input, output and changelog topics read to their end, and the oracle
(the in-process engine over the same records, uninterrupted).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from service.codec import ReadingDecoder
from service.core import statecodec
from service.core.engine import EngineConfig, StreamEngine
from service.core.model import OnnxStepModel
from service.core.readings import Reading
from service.embedded import free_port
from service.modelcard import ModelCard
from service.registry import Registry
from service.testing import RegisteredLstm
from tests.conftest import KafkaKit
from tests.integration.servicekit import http_get, reading, wait_until

PARTITIONS = 4
BASE_TS = 1_700_000_000.0
PERIOD = 300.0


@dataclass
class Names:
    input: str
    output: str
    dead_letters: str
    group: str

    @property
    def changelog(self) -> str:
        return f"{self.group}.state"

    @classmethod
    def fresh(cls, kafka: KafkaKit) -> Names:
        names = cls(kafka.name("in"), kafka.name("out"), kafka.name("dlq"), kafka.name("g"))
        kafka.create_topic(names.input, PARTITIONS)
        return names


def serve_env(
    kafka: KafkaKit, model: RegisteredLstm, names: Names, port: int, **extra: str
) -> dict[str, str]:
    env = {
        **os.environ,
        "SENSORCAST_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap,
        "SENSORCAST_KAFKA__INPUT_TOPIC": names.input,
        "SENSORCAST_KAFKA__OUTPUT_TOPIC": names.output,
        "SENSORCAST_KAFKA__DEAD_LETTER_TOPIC": names.dead_letters,
        "SENSORCAST_KAFKA__GROUP_ID": names.group,
        "SENSORCAST_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "SENSORCAST_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
        "SENSORCAST_KAFKA__COMMIT_INTERVAL": "0.3",
        "SENSORCAST_KAFKA__MAX_BATCH": "200",
        "SENSORCAST_MODEL__REGISTRY": str(model.registry),
        "SENSORCAST_MODEL__NAME": model.card.name,
        "SENSORCAST_HTTP__HOST": "127.0.0.1",
        "SENSORCAST_HTTP__PORT": str(port),
    }
    env.update({f"SENSORCAST_{k.upper()}": v for k, v in extra.items()})
    return env


class ServeProcess:
    """One `sensorcast serve` process with its own HTTP port and log file."""

    def __init__(
        self, kafka: KafkaKit, model: RegisteredLstm, names: Names, log_path: Path, **extra: str
    ) -> None:
        self.port = free_port()
        self.log_path = log_path
        env = serve_env(kafka, model, names, self.port, **extra)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in `_closed`
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready(self) -> bool:
        try:
            return http_get(self.port, "/readyz")[0] == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        wait_until(lambda: self.ready() or not self.alive(), timeout, "/readyz", poll=0.1)
        assert self.alive(), self.log()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        _, body = http_get(self.port, "/metrics")
        out = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def assigned(self) -> set[int]:
        """The partitions of the last assignment this process logged."""
        found = re.findall(r"partitions assigned topic=\S+ partitions=\[([0-9, ]*)\]", self.log())
        if not found:
            return set()
        return {int(p) for p in found[-1].split(",") if p.strip()}

    def kill(self) -> None:
        """SIGKILL: no checkpoint, no leaving the group."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._closed()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: the final checkpoint runs and the member leaves the group."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._closed()
        return code

    def wait_exit(self, timeout: float = 60.0) -> int:
        code = self.proc.wait(timeout)
        self._closed()
        return code

    def _closed(self) -> None:
        if not self._log.closed:
            self._log.close()

    def ensure_dead(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)
        self._closed()


def values_for(stream: int, step: int) -> dict[str, float]:
    """Deterministic sensor-like values of one stream at one step."""
    phase = 2 * np.pi * step / 24 + stream
    return {
        "temp": round(20.0 + 5.0 * float(np.sin(phase)) + 0.1 * stream, 4),
        "pressure": round(101.0 + float(np.cos(phase)), 4),
        "vibration": round(0.5 + 0.05 * ((step * 7 + stream * 3) % 11), 4),
    }


def stream_id(i: int) -> str:
    return f"fs-{i:03d}"


class Feed:
    """Produces `steps` readings for each of `streams` streams, one step at a time, paced."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        streams: int,
        steps: int,
        pause: float = 0.0,
        values: Callable[[int, int], dict[str, float]] | None = None,
    ) -> None:
        self.streams, self.steps, self.pause = streams, steps, pause
        self._values = values or values_for
        self.sent = 0
        self._topic = topic
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        self._stop = threading.Event()
        self._unpaced = threading.Event()  # set by `close` and `hurry`: no more pauses
        self._first = 0
        self._thread = threading.Thread(target=self._run, name="feed", daemon=True)
        self.error: BaseException | None = None

    @property
    def total(self) -> int:
        return self.streams * self.steps

    def send_steps(self, steps: Iterable[int]) -> None:
        for step in steps:
            ts = BASE_TS + PERIOD * step
            for i in range(self.streams):
                sid = stream_id(i)
                self._producer.send(
                    self._topic, key=sid.encode(), value=reading(sid, ts, self._values(i, step))
                )
            self._producer.flush()
            self.sent += self.streams

    def _run(self) -> None:
        try:
            for step in range(self._first, self.steps):
                if self._stop.is_set():
                    return
                self.send_steps([step])
                self._unpaced.wait(self.pause)
        except BaseException as exc:
            self.error = exc

    def start(self, first_step: int = 0) -> Feed:
        """Send the steps from `first_step` on, in a thread."""
        self._first = first_step
        self._thread.start()
        return self

    def hurry(self) -> None:
        """Send the steps left without pausing between them."""
        self._unpaced.set()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float = 120.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the feed did not finish"
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self._stop.set()
        self._unpaced.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self._producer.close()


def read_topic(
    bootstrap: str, topic: str, timeout: float = 60.0, partitions: int = PARTITIONS
) -> list[Any]:
    """Every record of `topic`, read until each partition's position reaches the high
    watermark that fetches report (the embedded broker's ListOffsets answer is not exact)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    records: list[Any] = []

    def caught_up() -> bool:
        for batch in consumer.poll(timeout_ms=200, max_records=100_000).values():
            records.extend(batch)
        marks = [consumer.highwater(tp) for tp in tps]
        return all(
            m is not None and consumer.position(tp) >= m for tp, m in zip(tps, marks, strict=True)
        )

    try:
        wait_until(caught_up, timeout, f"reading all of {topic}", poll=0)
    finally:
        consumer.close()
    return records


def distinct_forecasts(bootstrap: str, topic: str) -> dict[tuple[str, float], list[Any]]:
    """(stream id, ts) -> every forecast message published for it."""
    out: dict[tuple[str, float], list[Any]] = {}
    for record in read_topic(bootstrap, topic):
        message = json.loads(record.value)
        out.setdefault((message["stream_id"], message["ts"]), []).append(message)
    return out


def wait_for_forecasts(bootstrap: str, topic: str, expected: int, timeout: float) -> None:
    """Until `expected` distinct (stream id, ts) forecasts are on `topic`."""
    deadline = time.monotonic() + timeout
    while True:
        found = len(distinct_forecasts(bootstrap, topic))
        if found >= expected:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{found} of {expected} distinct forecasts after {timeout:.0f} s")
        time.sleep(0.3)


def committed_offsets(
    bootstrap: str, group: str, topic: str, partitions: int = PARTITIONS
) -> dict[int, int]:
    """`group`'s committed offset of each of `topic`'s partitions (0 where none)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) or 0 for p in range(partitions)}
    finally:
        consumer.close()


def committed_total(bootstrap: str, group: str, topic: str, partitions: int = PARTITIONS) -> int:
    """The sum over `topic`'s partitions of `group`'s committed offsets (0 where none): the
    number of input records checkpointed, since every partition starts at offset 0."""
    return sum(committed_offsets(bootstrap, group, topic, partitions).values())


def wait_committed(bootstrap: str, group: str, topic: str, expected: int, timeout: float) -> None:
    """Until `group` has checkpointed `expected` records of `topic`.

    Forecasts on the output topic do not say that the serving process is done: a process
    killed before its checkpoint has published forecasts whose readings its successor
    applies again from the changelog's states. Only the committed offsets say that the
    states holding every reading are on the changelog.
    """
    deadline = time.monotonic() + timeout
    while True:
        done = committed_total(bootstrap, group, topic)
        if done >= expected:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{done} of {expected} records checkpointed after {timeout:.0f} s")
        time.sleep(0.3)


@dataclass
class Oracle:
    """The uninterrupted run: the engine over every input record, in offset order."""

    engine: StreamEngine
    forecasts: dict[tuple[str, float], dict[str, list[float]]] = field(default_factory=dict)
    scores: np.ndarray | None = None
    """The forecast scores ``[4, horizon, targets]`` (count, abs, squared and persistence's
    abs error sums) of the uninterrupted run."""

    @classmethod
    def run(
        cls,
        bootstrap: str,
        model: RegisteredLstm,
        input_topic: str,
        *,
        swap: tuple[float, str] | None = None,
    ) -> Oracle:
        """The engine over every record; with `swap` (ts, version), the records before ts
        on the first version, then that version swapped in (`StreamEngine.replace_model`)
        for the rest."""
        registry = Registry(model.registry)

        def served(version: str) -> OnnxStepModel:
            return OnnxStepModel.from_loaded(registry.load(model.card.name, version))

        engine = StreamEngine(served("1" if swap else "latest"), EngineConfig())
        records = sorted(read_topic(bootstrap, input_topic), key=lambda r: (r.partition, r.offset))
        readings = cls.decode(records)
        phases = [readings]
        if swap is not None:
            phases = [
                [r for r in readings if r.ts < swap[0]],
                [r for r in readings if r.ts >= swap[0]],
            ]
        forecasts = []
        scores = None
        for i, readings in enumerate(phases):
            if i:
                engine.replace_model(served(swap[1] if swap else "latest"))
            result = engine.process(readings, now=time.time())
            assert not result.rejects and not result.drops
            forecasts += result.forecasts
            if result.scores is not None and swap is None:
                scores = result.scores.total()[0]
        targets = list(model.card.targets)
        oracle = cls(engine, scores=scores)
        for f in forecasts:
            columns = np.asarray(f.values).T.tolist()
            oracle.forecasts[(f.stream_id, f.ts)] = dict(zip(targets, columns, strict=True))
        return oracle

    @staticmethod
    def decode(records: list[Any]) -> list[Reading]:
        """The readings of input `records` (every one valid)."""
        decoder = ReadingDecoder(max_message_bytes=65_536, max_future_seconds=86_400.0)
        batch = decoder.decode(records, received=time.time())
        assert not batch.rejects
        return batch.readings

    def check_forecasts(self, published: dict[tuple[str, float], list[Any]]) -> None:
        """The same distinct (stream id, ts) set, and every copy carries the oracle's values."""
        assert set(published) == set(self.forecasts), (
            f"missing {sorted(set(self.forecasts) - set(published))[:5]}, "
            f"unexpected {sorted(set(published) - set(self.forecasts))[:5]}"
        )
        for key, messages in published.items():
            want = self.forecasts[key]
            for message in messages:
                for target, values in want.items():
                    np.testing.assert_allclose(
                        message["forecast"][target], values, rtol=1e-6, atol=1e-6, err_msg=str(key)
                    )

    def check_states(self, bootstrap: str, changelog: str) -> None:
        """The changelog's last record per stream equals the oracle's state to 1e-6, with the
        same last_ts, steps and applied offset."""
        latest: dict[str, bytes | None] = {}
        for record in read_topic(bootstrap, changelog):
            latest[record.key.decode()] = record.value
        store = self.engine.store
        live = {k: v for k, v in latest.items() if v is not None}
        assert set(live) == set(store.ids())
        ids = sorted(live)
        batch = statecodec.decode(ids, [live[s] for s in ids], store.layout)
        assert not batch.foreign.any(), "the changelog holds records of another model"
        for row, sid in enumerate(ids):
            info = store.info(sid)
            assert info is not None
            got = (float(batch.last_ts[row]), int(batch.steps[row]), int(batch.applied[row]))
            assert got == (info.last_ts, info.steps, info.applied_offset), (
                f"{sid}: changelog (last_ts, steps, applied_offset) {got}, uninterrupted run "
                f"{(info.last_ts, info.steps, info.applied_offset)}"
            )
            want = store.states_of(sid)
            assert want is not None
            for k, tensor in enumerate(want):
                np.testing.assert_allclose(
                    batch.tensors[k][row], tensor.reshape(-1), rtol=0, atol=1e-6, err_msg=sid
                )


def accuracy_totals(
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], card: ModelCard
) -> np.ndarray:
    """``[4, horizon, targets]``: the scored count and the error sums a process's /metrics
    counted for the model of `card` (zeros for series it does not expose). prometheus_client's
    parser names every counter sample ``..._total``; Prometheus keeps the names exposed."""
    out = np.zeros((4, card.horizon, card.n_targets))
    names = (
        "sensorcast_forecast_scored_total",
        "sensorcast_forecast_abs_error_sum",
        "sensorcast_forecast_squared_error_sum",
        "sensorcast_persistence_abs_error_sum",
    )
    for row, name in enumerate(names):
        for step in range(card.horizon):
            for j, target in enumerate(card.targets):
                labels = tuple(
                    sorted({"model": card.ref, "step": str(step + 1), "target": target}.items())
                )
                sample = name if name.endswith("_total") else f"{name}_total"
                out[row, step, j] = metrics.get((sample, labels), 0.0)
    return out


def streams_by_partition(bootstrap: str, input_topic: str) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for record in read_topic(bootstrap, input_topic):
        out.setdefault(record.partition, set()).add(record.key.decode())
    return out


def await_condition(condition: Callable[[], bool], timeout: float, what: str) -> None:
    wait_until(condition, timeout, what, poll=0.1)

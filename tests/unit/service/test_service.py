"""A whole `Service` (poll loop, checkpoints, rebalances, restores) on the in-memory
transport, no broker: the checkpoint's order, a failure at each of its steps, a revoke, a
lost partition and a restore, each compared with an uninterrupted run of the same readings:
its forecasts, its states, and its forecast scores as the metrics count them (each pair once,
over every process that served the readings).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.app import Service
from service.config import ServiceSettings, load_settings
from service.core.engine import EngineConfig, StreamEngine
from service.core.model import OnnxStepModel
from service.registry import Registry
from service.testing import ListSink, MemoryBroker, MemoryTransport, add_sensor_lstm
from service.testing.readings import readings_for
from service.testing.transport import MemorySink

STREAMS = 6  # over two partitions: even ones on 0, odd ones on 1
T0 = 1_700_000_000.0
PERIOD = 300.0


def _values(i: int, step: int) -> dict[str, float]:
    """Readings in the model's training range."""
    return {
        "temp": 20.0 + i + 0.5 * step,
        "pressure": 101.0 + 0.1 * i,
        "vibration": 0.5 + 0.05 * (step % 4),
    }


def _produce(broker: MemoryBroker, steps: range) -> None:
    for step in steps:
        for i in range(STREAMS):
            sid = f"s{i}"
            body = {"stream_id": sid, "ts": T0 + PERIOD * step, "values": _values(i, step)}
            broker.produce(i % 2, sid.encode(), json.dumps(body).encode())


def _settings(registry: Path, **overrides: Any) -> ServiceSettings:
    return load_settings(
        None,
        {
            "http.enabled": False,
            "kafka.input_topic": "readings",
            "kafka.commit_interval": 0.05,
            "kafka.max_wait_ms": 5,
            "kafka.max_batch": 4,
            "model.registry": str(registry),
            "model.name": "lstm-it",
            **overrides,
        },
    )


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    add_sensor_lstm(root)
    return root


def _wait(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Running:
    """A service on `broker` in a thread."""

    def __init__(self, settings: ServiceSettings, broker: MemoryBroker) -> None:
        self.broker = broker
        self.service = Service(settings, transport=MemoryTransport(broker))
        self.status: int | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.status = self.service.run()

    def metric(self, name: str, **labels: str) -> float:
        return self.service.metrics.registry.get_sample_value(name, labels) or 0.0

    def scores(self) -> np.ndarray:
        """The forecast scores the metrics counted, ``[4, horizon, targets]``."""
        totals = self.service.metrics.accuracy.totals("lstm-it:1")
        assert totals is not None
        return totals

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> int | None:
        if not self._thread.is_alive():
            return self.status
        self.service.stop()
        self._thread.join(30)
        assert not self._thread.is_alive()
        return self.status


@contextmanager
def running(settings: ServiceSettings, broker: MemoryBroker) -> Iterator[Running]:
    svc = Running(settings, broker)
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


def _committed_all(broker: MemoryBroker) -> Callable[[], bool]:
    def done() -> bool:
        with broker.lock:
            ends = {p: len(records) for p, records in enumerate(broker.input)}
            return all(broker.committed.get(p, 0) == n for p, n in ends.items() if n)

    return done


def _distinct_forecasts(broker: MemoryBroker) -> dict[tuple[str, float], Any]:
    out = {}
    for record in broker.forecasts:
        message = json.loads(record.value or b"{}")
        out[(message["stream_id"], message["ts"])] = message["forecast"]
    return out


def _states(broker: MemoryBroker) -> dict[str, bytes]:
    states: dict[str, bytes] = {}
    for p in range(broker.partitions):
        states.update(broker.changelog_state(p))
    return states


def _uninterrupted(registry: Path, steps: range) -> tuple[MemoryBroker, np.ndarray]:
    """The oracle: the same readings through one service that nothing disturbs; its broker
    and the scores it counted."""
    broker = MemoryBroker(partitions=2)
    _produce(broker, steps)
    with running(_settings(registry), broker) as svc:
        _wait(_committed_all(broker), "every reading committed")
        assert svc.stop() == 0
    return broker, svc.scores()


def _same_as_uninterrupted(
    broker: MemoryBroker, registry: Path, steps: range, *services: Running
) -> None:
    """Forecasts, states and (summed over `services`) counted scores as the oracle's."""
    oracle, scores = _uninterrupted(registry, steps)
    assert _distinct_forecasts(broker) == _distinct_forecasts(oracle)
    assert len(_distinct_forecasts(broker)) == STREAMS * len(steps)
    assert _states(broker) == _states(oracle)
    assert scores[0].sum() > 0
    counted = sum((svc.scores() for svc in services), np.zeros_like(scores))
    np.testing.assert_array_equal(counted[0], scores[0])
    np.testing.assert_allclose(counted, scores, rtol=1e-6)


def _checkpoint_steps(calls: list[str]) -> list[str]:
    return [c for c in calls if c.split(" ")[0] in ("flush", "send", "commit")]


def test_every_commit_comes_after_its_forecasts_and_states_are_acknowledged(
    registry: Path,
) -> None:
    broker = MemoryBroker(partitions=2)
    _produce(broker, range(6))
    with running(_settings(registry), broker) as svc:
        _wait(_committed_all(broker), "every reading committed")
        assert svc.stop() == 0
    steps = _checkpoint_steps(broker.calls)
    # Each commit of new offsets follows, since the states it covers were sent, a flush of
    # the forecasts and then of the changelog.
    sent_since = False
    flushed: list[str] = []
    for call in steps:
        if call == "send states":
            sent_since, flushed = True, []
        elif call.startswith("flush"):
            flushed.append(call)
        elif call.startswith("commit") and sent_since and call != "commit {}":
            assert flushed[-2:] == ["flush forecasts", "flush changelog"], steps
    assert any(c.startswith("commit {0:") for c in steps)
    _same_as_uninterrupted(broker, registry, range(6), svc)


@pytest.mark.parametrize("point", ["sink.flush", "changelog.send", "changelog.flush", "commit"])
def test_a_failure_at_any_checkpoint_step_commits_nothing_until_it_succeeds(
    point: str, registry: Path
) -> None:
    broker = MemoryBroker(partitions=2)
    _produce(broker, range(3))
    with running(_settings(registry), broker) as svc:
        _wait(_committed_all(broker), "the first readings committed")
        before, scored = dict(broker.committed), svc.scores()
        broker.fail(point)
        _produce(broker, range(3, 6))
        _wait(
            lambda: svc.metric("sensorcast_checkpoints_total", outcome="failed") >= 2,
            "failed checkpoints",
        )
        assert broker.committed == before
        if point != "commit":  # counted once their states are on the changelog
            np.testing.assert_array_equal(svc.scores(), scored)
        assert svc.service.readiness.snapshot()["broker_reachable"] is False
        broker.recover(point)
        _wait(_committed_all(broker), "every reading committed after the recovery")
        assert svc.service.readiness.snapshot()["broker_reachable"] is True
        assert svc.stop() == 0
    _same_as_uninterrupted(broker, registry, range(6), svc)


def test_a_restarted_service_restores_its_streams_and_skips_nothing(registry: Path) -> None:
    broker = MemoryBroker(partitions=2)
    _produce(broker, range(3))
    with running(_settings(registry), broker) as first:
        _wait(_committed_all(broker), "the first readings committed")
        assert first.stop() == 0
    _produce(broker, range(3, 6))
    calls = len(broker.calls)
    with running(_settings(registry), broker) as second:
        _wait(_committed_all(broker), "every reading committed")
        restored = second.metric("sensorcast_restored_streams", partition="0")
        assert second.stop() == 0
    assert broker.calls[calls : calls + 2] == ["assigned [0, 1]", "restore [0, 1]"]
    assert restored == STREAMS // 2
    _same_as_uninterrupted(broker, registry, range(6), first, second)


def test_a_revoke_checkpoints_and_commits_the_revoked_partitions_then_drops_them(
    registry: Path,
) -> None:
    broker = MemoryBroker(partitions=2)
    _produce(broker, range(3))
    with running(_settings(registry, **{"kafka.commit_interval": 60.0}), broker) as svc:
        _wait(
            lambda: svc.metric("sensorcast_readings_consumed_total") == 3 * STREAMS,
            "every reading consumed",
        )
        assert broker.committed == {}  # no periodic checkpoint yet
        mark = len(broker.calls)
        broker.assign({0})
        _wait(lambda: "assigned [0]" in broker.calls[mark:], "the rebalance")
        assert broker.calls[mark:] == [
            "revoked [0, 1]",
            "flush forecasts",
            "send states",
            "flush changelog",
            "commit {0: 9, 1: 9}",
            "assigned [0]",
        ]
        engine = svc.service.engine
        assert engine is not None
        _wait(lambda: sorted(engine.store.ids()) == ["s0", "s2", "s4"], "partition 1 dropped")
        assert svc.stop() == 0
    oracle, scores = _uninterrupted(registry, range(3))
    assert _states(broker) == _states(oracle)
    np.testing.assert_allclose(svc.scores(), scores, rtol=1e-6)  # counted with the revoke


def test_a_lost_partition_is_dropped_without_a_commit_and_restored_when_it_returns(
    registry: Path,
) -> None:
    broker = MemoryBroker(partitions=2)
    _produce(broker, range(3))
    with running(_settings(registry), broker) as svc:
        _wait(_committed_all(broker), "the first readings committed")
        mark = len(broker.calls)
        broker.lose({1})
        _wait(lambda: "lost [1]" in broker.calls[mark:], "the loss")
        engine = svc.service.engine
        assert engine is not None
        _wait(lambda: sorted(engine.store.ids()) == ["s0", "s2", "s4"], "partition 1 dropped")
        _produce(broker, range(3, 6))
        broker.assign({0, 1})
        _wait(_committed_all(broker), "every reading committed")
        assert svc.stop() == 0
    _same_as_uninterrupted(broker, registry, range(6), svc)


@pytest.fixture
def with_challenger(tmp_path: Path) -> Path:
    """A registry with the served model and a challenger of the same shapes."""
    root = tmp_path / "models"
    add_sensor_lstm(root)
    add_sensor_lstm(root, name="challenger", seed=7)
    return root


def test_a_challenger_in_shadow_forecasts_and_is_scored_without_changing_the_served_forecasts(
    registry: Path, with_challenger: Path
) -> None:
    root = with_challenger
    broker = MemoryBroker(partitions=2)
    _produce(broker, range(6))
    settings = _settings(root, **{"model.shadow": "challenger"})
    with running(settings, broker) as svc:
        _wait(_committed_all(broker), "every reading committed")
        assert svc.stop() == 0
    # the served forecasts are those of a run without a challenger
    _same_as_uninterrupted(broker, registry, range(6), svc)
    # the challenger's: one per reading, as the challenger alone would make them
    challenger = OnnxStepModel.from_loaded(Registry(root).load("challenger"))
    alone = StreamEngine(challenger, EngineConfig())
    sink, scores = ListSink(), np.zeros((4, 3, 1))
    for i in range(STREAMS):
        rows = [_values(i, step) for step in range(6)]
        values = [[r["temp"], r["pressure"], r["vibration"]] for r in rows]
        result = alone.process(readings_for(f"s{i}", values, start=T0, period=PERIOD), now=0.0)
        sink.write(result)
        assert result.scores is not None
        scores += result.scores.total()[0]
    shadow = {}
    for record in broker.shadow:
        message = json.loads(record.value or b"{}")
        assert message["model"] == {"name": "challenger", "version": "1"}
        shadow[(message["stream_id"], message["ts"])] = message["forecast"]["temp"]
    assert len(shadow) == STREAMS * 6
    for f in sink.forecasts:
        np.testing.assert_allclose(shadow[(f.stream_id, f.ts)], f.values[:, 0], rtol=1e-5)
    # scored under its own label, as the challenger alone scores
    counted = svc.service.metrics.accuracy.totals("challenger:1")
    assert counted is not None and counted[0].sum() > 0
    np.testing.assert_allclose(counted, scores, rtol=1e-6)


def test_a_restarted_challenger_is_seeded_from_the_served_models_streams(
    with_challenger: Path,
) -> None:
    root = with_challenger
    broker = MemoryBroker(partitions=2)
    settings = _settings(root, **{"model.shadow": "challenger"})
    _produce(broker, range(4))
    with running(settings, broker) as first:
        _wait(_committed_all(broker), "the first readings committed")
        assert first.stop() == 0
    _produce(broker, range(4, 8))
    with running(settings, broker) as second:
        _wait(_committed_all(broker), "every reading committed")
        shadow = second.service.shadow
        assert shadow is not None
        # every stream seeded from the restored champion: its applied offsets, not a cold start
        assert sorted(shadow.store.ids()) == [f"s{i}" for i in range(STREAMS)]
        for sid in shadow.store.ids():
            mine, theirs = shadow.store.info(sid), second.service.engine.store.info(sid)  # type: ignore[union-attr]
            assert mine is not None and theirs is not None
            assert (mine.applied_offset, mine.last_ts) == (theirs.applied_offset, theirs.last_ts)
            assert mine.steps >= 4  # re-warmed over the kept readings, then 4 more
        counted = second.service.metrics.accuracy.totals("challenger:1")
        assert counted is not None and counted[0].sum() > 0
        assert second.stop() == 0
    ts = {json.loads(r.value or b"{}")["ts"] for r in broker.shadow}
    assert ts == {T0 + PERIOD * step for step in range(8)}


@pytest.mark.parametrize("pause_ms", [7, 0])
def test_a_light_micro_batch_is_delivered_at_once_and_a_full_one_with_the_linger(
    registry: Path, monkeypatch: pytest.MonkeyPatch, pause_ms: int
) -> None:
    """Under light load (a micro-batch short of ``kafka.max_batch``) the forecasts go out at
    once, waited for at most ``kafka.fetch_pause_ms``; a backlog's full micro-batches, and
    every one with no pause, leave them to the producer's linger."""
    delivered: list[float] = []
    monkeypatch.setattr(MemorySink, "deliver", lambda sink, timeout: delivered.append(timeout))
    broker = MemoryBroker(partitions=2)
    _produce(broker, range(2))  # 12 readings: three full micro-batches of 4
    settings = _settings(registry, **{"kafka.fetch_pause_ms": pause_ms})
    with running(settings, broker) as svc:
        _wait(lambda: svc.metric("sensorcast_readings_consumed_total") >= 12, "the backlog")
        assert delivered == []
        body = {"stream_id": "s0", "ts": T0 + PERIOD * 2, "values": _values(0, 2)}
        broker.produce(0, b"s0", json.dumps(body).encode())
        _wait(lambda: svc.metric("sensorcast_readings_consumed_total") >= 13, "one more")
    assert delivered == ([pause_ms / 1000] if pause_ms else [])

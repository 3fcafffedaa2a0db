"""Forecast scores through a SIGKILL: no pair counted twice, and only the documented ones lost.

A `sensorcast serve` process scores forecasts while readings flow and is killed (SIGKILL)
right after a checkpoint; a successor restores the streams (with their outstanding
forecasts) and serves the rest. A process counts a pair once the changelog acknowledged the
state that holds it (docs/guarantees.md), so:

- the readings the first process handled after its last checkpoint whose states never
  reached the changelog are replayed, scored and counted by the successor alone;
- those whose states the first process had sent but not seen acknowledged (its checkpoint
  begun and not completed) are restored by the successor, already scored: those pairs, and
  only those, are counted by neither.

The oracle is the uninterrupted engine over every reading, its scores split by whether the
reading lies in that window (after the committed offset, at or before the applied offset of
the stream's last changelog record when the first process died).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from service.core import statecodec
from service.core.engine import EngineConfig, StreamEngine
from service.core.model import OnnxStepModel
from service.registry import Registry
from service.testing import RegisteredLstm, add_sensor_lstm
from tests.conftest import KafkaKit
from tests.fault.faultkit import (
    Feed,
    Names,
    Oracle,
    ServeProcess,
    accuracy_totals,
    await_condition,
    committed_offsets,
    read_topic,
    wait_committed,
)
from tests.integration.servicekit import CLIENTS

STREAMS = 20
STEPS = 60
PAUSE = 0.4  # seconds between the feed's steps
INTERVAL = 2.0  # the first process's checkpoint interval: the kill lands well before the next

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("client", CLIENTS)
def test_scores_are_counted_once_across_a_sigkill_and_a_restore(
    kafka: KafkaKit, tmp_path: Path, client: str
) -> None:
    model = add_sensor_lstm(tmp_path / "models")
    card = model.card
    names = Names.fresh(kafka)
    feed = Feed(kafka.bootstrap, names.input, STREAMS, STEPS, pause=PAUSE)
    log_path = tmp_path / "serve.log"
    first = ServeProcess(
        kafka, model, names, log_path, kafka__client=client, kafka__commit_interval=str(INTERVAL)
    )
    procs = [first]
    try:
        feed.start()
        first.wait_ready(90)
        await_condition(
            lambda: accuracy_totals(first.metrics(), card)[0].sum() > 0, 60, "pairs counted"
        )
        # killed right after a checkpoint: the scrape that shows it is the process's last word
        ok = first.metric("sensorcast_checkpoints_total", outcome="ok")
        while True:
            metrics = first.metrics()
            if metrics[("sensorcast_checkpoints_total", (("outcome", "ok"),))] > ok:
                break
            time.sleep(0.01)
        first.kill()
        first.wait_exit(30)
        feed.hurry()  # the pacing mattered up to the kill; the successor takes the rest at once
        counted_first = accuracy_totals(metrics, card)
        committed = committed_offsets(kafka.bootstrap, names.group, names.input)
        applied = _applied_offsets(kafka.bootstrap, names.changelog, model)
        feed.join()
        second = ServeProcess(kafka, model, names, log_path, kafka__client=client)
        procs.append(second)
        second.wait_ready(90)
        wait_committed(kafka.bootstrap, names.group, names.input, feed.total, 90)
        kept, lost = _oracle(kafka.bootstrap, model, names.input, committed, applied)
        await_condition(
            lambda: (
                (counted_first + accuracy_totals(second.metrics(), card))[0].sum() >= kept[0].sum()
            ),
            30,
            "every pair counted",
        )
        time.sleep(0.5)  # and nothing more
        counted = counted_first + accuracy_totals(second.metrics(), card)
        assert second.stop() == 0, second.log()
    finally:
        for proc in procs:
            proc.ensure_dead()
        feed.close()
    assert counted_first[0].sum() > 0 and counted[0].sum() > counted_first[0].sum()
    np.testing.assert_array_equal(counted[0], kept[0])  # none counted twice, none else lost
    np.testing.assert_allclose(counted[1:], kept[1:], rtol=1e-5)
    # what was lost is at most the pairs of one checkpoint interval's readings
    readings = (INTERVAL / PAUSE + 1) * STREAMS
    assert lost[0].sum() <= readings * card.horizon * card.n_targets


def _applied_offsets(bootstrap: str, changelog: str, model: RegisteredLstm) -> dict[str, int]:
    """Each stream's applied offset in its last changelog record."""
    latest: dict[str, bytes] = {}
    for record in read_topic(bootstrap, changelog):
        if record.value is not None:
            latest[record.key.decode()] = record.value
    ids = sorted(latest)
    layout = StreamEngine(_model(model), EngineConfig()).store.layout
    batch = statecodec.decode(ids, [latest[s] for s in ids], layout)
    return dict(zip(ids, batch.applied.tolist(), strict=True))


def _oracle(
    bootstrap: str,
    model: RegisteredLstm,
    topic: str,
    committed: dict[int, int],
    applied: dict[str, int],
) -> tuple[np.ndarray, np.ndarray]:
    """The uninterrupted engine's scores ``[4, horizon, targets]``: of the readings outside
    the lost window, and of those in it."""
    engine = StreamEngine(_model(model), EngineConfig())
    records = sorted(read_topic(bootstrap, topic), key=lambda r: (r.partition, r.offset))
    kept = np.zeros((4, model.card.horizon, model.card.n_targets))
    lost = np.zeros_like(kept)
    for record, reading in zip(records, Oracle.decode(records), strict=True):
        result = engine.process([reading], now=time.time())
        assert result.scores is not None
        window = committed[record.partition] <= record.offset <= applied.get(reading.stream_id, -1)
        (lost if window else kept)[...] += result.scores.total()[0]
    return kept, lost


def _model(model: RegisteredLstm) -> OnnxStepModel:
    return OnnxStepModel.from_loaded(Registry(model.registry).load(model.card.name))

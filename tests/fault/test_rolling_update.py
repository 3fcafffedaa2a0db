"""A rolling update: a replica serving version 1, a replica serving version 2 joins the
group while readings flow, then the first leaves. Partitions move from one version to the
other in both directions of the eager rebalance; the new owner restores version-1 records,
which are another model's, and re-warms each stream from its kept readings instead of
refusing them or continuing them. Every stream switches version once, every reading has
one forecast, and the final states equal version 2 run from its initial state over each
stream's readings from K before its switch (K = the warm-up steps)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from service.core.engine import EngineConfig, StreamEngine
from service.core.model import OnnxStepModel
from service.core.readings import Reading
from service.registry import Registry
from service.testing import add_sensor_lstm
from tests.conftest import KafkaKit
from tests.fault.faultkit import (
    Feed,
    Names,
    Oracle,
    ServeProcess,
    await_condition,
    distinct_forecasts,
    read_topic,
    wait_committed,
    wait_for_forecasts,
)

STREAMS = 30
STEPS = 40
WARMUP = 4

pytestmark = pytest.mark.slow


def test_two_replicas_on_two_versions_hand_partitions_over_without_a_loss(
    kafka: KafkaKit, tmp_path: Path
) -> None:
    model = add_sensor_lstm(tmp_path / "models", warmup_steps=WARMUP)
    add_sensor_lstm(model.registry, version="2", seed=13, warmup_steps=WARMUP)
    names = Names.fresh(kafka)
    # the first half of the readings while version 1 serves, the rest once it has left, so
    # that every stream gets readings on version 2 whatever the machine's speed
    feed = Feed(kafka.bootstrap, names.input, STREAMS, STEPS // 2, pause=0.25)
    rest = Feed(kafka.bootstrap, names.input, STREAMS, STEPS, pause=0.1)
    total = STREAMS * STEPS
    procs: list[ServeProcess] = []
    try:
        old = ServeProcess(kafka, model, names, tmp_path / "v1.log", model__version="1")
        procs.append(old)
        old.wait_ready(90)
        feed.start()
        await_condition(lambda: old.metric("sensorcast_readings_consumed_total") > 0, 60, "v1")
        new = ServeProcess(kafka, model, names, tmp_path / "v2.log", model__version="2")
        procs.append(new)
        new.wait_ready(90)  # assigned its share and restored it
        time.sleep(2.0)
        feed.join()
        assert old.stop() == 0, old.log()  # leaves: every partition goes to version 2
        rest.start(first_step=STEPS // 2)
        rest.join()
        wait_for_forecasts(kafka.bootstrap, names.output, total, 90)
        wait_committed(kafka.bootstrap, names.group, names.input, total, 60)
        rewarmed = new.metric("sensorcast_rewarms_total", reason="foreign_state")
        assert new.stop() == 0, new.log()
    finally:
        for proc in procs:
            proc.ensure_dead()
        feed.close()
        rest.close()
    for name in ("v1.log", "v2.log"):
        assert "Traceback" not in (tmp_path / name).read_text()
    assert rewarmed == STREAMS

    published = distinct_forecasts(kafka.bootstrap, names.output)
    switch: dict[str, float] = {}
    for (sid, ts), messages in published.items():
        versions = {m["model"]["version"] for m in messages}
        assert len(versions) == 1, f"{sid} at {ts}: forecasts of versions {versions}"
        if versions == {"2"}:
            switch[sid] = min(switch.get(sid, ts), ts)
    by_stream: dict[str, list[tuple[float, str]]] = {}
    for (sid, ts), messages in published.items():
        by_stream.setdefault(sid, []).append((ts, messages[0]["model"]["version"]))
    for sid, seen in by_stream.items():
        order = [v for _, v in sorted(seen)]
        assert order == sorted(order), f"{sid} switched back: {order}"

    # the oracle: version 2 from its initial state over each stream's readings from K
    # before its switch, as its re-warm then its readings under version 2 apply them
    registry = Registry(model.registry)
    engine = StreamEngine(
        OnnxStepModel.from_loaded(registry.load(model.card.name, "2")), EngineConfig()
    )
    oracle = Oracle(engine)
    records = sorted(
        read_topic(kafka.bootstrap, names.input), key=lambda r: (r.partition, r.offset)
    )
    readings = Oracle.decode(records)
    kept: list[Reading] = []
    for sid in {r.stream_id for r in readings}:
        mine = [r for r in readings if r.stream_id == sid]
        at = next(i for i, r in enumerate(mine) if r.ts >= switch[sid])
        kept += mine[max(0, at - WARMUP) :]
    kept.sort(key=lambda r: (r.partition, r.offset))
    result = engine.process(kept, now=time.time())
    assert not result.rejects and not result.drops
    oracle.check_states(kafka.bootstrap, names.changelog)
    # and each first version-2 forecast is the oracle's
    for f in result.forecasts:
        if f.ts == switch[f.stream_id]:
            (message,) = published[(f.stream_id, f.ts)][:1]
            np.testing.assert_allclose(
                message["forecast"]["temp"], f.values[:, 0], rtol=1e-5, atol=1e-5
            )

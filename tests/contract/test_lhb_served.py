"""The shipped real-data model served on its own data: `sensorcast serve`'s `Service` (on the
in-memory transport) over the first readings of the La Haute Borne built-in, every forecast
against the trained model run offline (`training.predict.offline_forecast`) on the same
readings and timestamps: the derived inputs (wind direction as sine and cosine, time of day
and year from `ts`) are computed alike in both."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from service.app import Service
from service.config import load_settings
from service.testing import MemoryBroker, MemoryTransport

MODELS = Path(__file__).resolve().parents[2] / "models"
STEPS = 120

pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(
    not (MODELS / "lhb-turbines").is_dir(), reason="no lhb-turbines in models/"
)


def test_lhb_turbines_serves_its_own_data_as_trained() -> None:
    from service.tools.sources import load_source
    from training.predict import offline_forecast

    try:
        table = load_source("la-haute-borne", streams=2, steps=STEPS)
    except Exception as exc:  # the openoa wheel is missing
        pytest.skip(str(exc))
    broker = MemoryBroker(partitions=2)
    turbines = sorted(set(table.stream_ids))
    complete = ~np.isnan(table.values).any(axis=1)  # readings with every feature
    for i, (sid, ts, values) in enumerate(table.readings()):
        if complete[i]:
            body = {"stream_id": sid, "ts": ts, "values": values}
            partition = turbines.index(sid) % 2
            broker.produce(partition, sid.encode(), json.dumps(body).encode())
    settings = load_settings(
        None,
        {
            "http.enabled": False,
            "kafka.input_topic": "readings",
            "kafka.commit_interval": 0.05,
            "model.registry": str(MODELS),
            "model.name": "lhb-turbines",
            "engine.max_gap_periods": 1e9,  # the offline run knows no gaps
        },
    )
    service = Service(settings, transport=MemoryTransport(broker))
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while len(broker.forecasts) < int(complete.sum()) and time.monotonic() < deadline:
        time.sleep(0.05)
    service.stop()
    thread.join(30)
    served = {}
    for record in broker.forecasts:
        message = json.loads(record.value or b"{}")
        served[(message["stream_id"], message["ts"])] = message["forecast"]
    assert len(served) == int(complete.sum())
    for sid in turbines:
        mine = np.asarray([s == sid for s in table.stream_ids]) & complete
        values, ts = table.values[mine], table.ts[mine]
        offline = offline_forecast(MODELS / "lhb-turbines" / "1", values, ts)
        for t, want in zip(ts.tolist(), offline, strict=True):
            got = served[(sid, t)]
            np.testing.assert_allclose(got["P_avg"], want[:, 0], rtol=1e-4, atol=1e-2)
            np.testing.assert_allclose(got["Ot_avg"], want[:, 1], rtol=1e-4, atol=1e-4)

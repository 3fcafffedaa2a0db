"""Test helpers: cards and small models built in code, and the engine driven with lists.

- `cards`: `make_card`, the one factory for model cards; every field is a keyword argument.
- `models`: `ElmanLagModel`, a tiny numpy `StepModel` whose two states sit on different
  batch axes; `build_onnx_lstm`, a stacked-LSTM ONNX step model built with `onnx.helper`
  (no torch), with `NumpyLstmModel`, its numpy oracle, whose golden vectors its card carries.
- `linear`: `build_onnx_linear`, the smallest graph honouring the contract and its card,
  for the card and registry tests; `linear_graph` breaks the contract one way at a time.
- `registry`: `add_sensor_lstm` writes an LSTM over the simulator's features into a
  registry folder and returns a `RegisteredLstm` (folder, card, oracle); `SENSOR_RANGES`.
- `transport`: `MemoryTransport` over a `MemoryBroker`, an in-memory Kafka on which a whole
  `Service` runs in a unit test (its checkpoint steps recorded, any of them made to fail).
- `readings`: `readings_for`, `interleave` and `random_batches` make readings, `drive` feeds
  them to a `StreamEngine` and `ListSink` collects the forecasts, rejects and drops.

Everything is importable from ``service.testing`` itself.
"""

from __future__ import annotations

from service.testing.cards import make_card
from service.testing.linear import build_onnx_linear, linear_graph
from service.testing.models import ElmanLagModel, NumpyLstmModel, build_onnx_lstm
from service.testing.readings import ListSink, drive, interleave, random_batches, readings_for
from service.testing.registry import SENSOR_RANGES, RegisteredLstm, add_sensor_lstm
from service.testing.transport import MemoryBroker, MemoryTransport, Produced

__all__ = [
    "SENSOR_RANGES",
    "ElmanLagModel",
    "ListSink",
    "MemoryBroker",
    "MemoryTransport",
    "NumpyLstmModel",
    "Produced",
    "RegisteredLstm",
    "add_sensor_lstm",
    "build_onnx_linear",
    "build_onnx_lstm",
    "drive",
    "interleave",
    "linear_graph",
    "make_card",
    "random_batches",
    "readings_for",
]

"""Live forecast accuracy: the engine's scored pairs as Prometheus counters, counted once.

The engine scores every warm forecast against the readings that follow it
(`service.core.scoring`), and each stream's state records which steps of its outstanding
forecasts were scored. A `ScoreLedger` holds one model's sums from the readings processed
since the last checkpoint, by input partition, and hands them to the counters only when
the changelog has acknowledged the states that hold them (`service.checkpoint`): a reading
whose state a crash lost is replayed and scored again by the process that replays it, and
only that process counts it, so no pair is counted twice. The pairs lost are those in the
states of the last checkpoint a killed process sent but never saw acknowledged, when its
successor restores those states (docs/guarantees.md). A partition revoked or lost before
its states were written drops its sums, which the partition's next owner scores again.

`AccuracyCollector` exposes the counters under exactly these names, labelled ``model``
(``name:version``), ``target`` and ``step`` (1 to the horizon); no per-stream label:

- ``sensorcast_forecast_scored_total``: forecast values scored;
- ``sensorcast_forecast_abs_error_sum``, ``sensorcast_forecast_squared_error_sum``: the sums
  of their absolute and squared errors, in the target's units;
- ``sensorcast_persistence_abs_error_sum``: persistence's absolute error on the same pairs
  (the reading the forecast was made at, as the forecast);
- ``sensorcast_anomalies_total`` (``model``, ``target``): readings whose one-step residual
  was over ``engine.anomaly_threshold``.

MAE is ``rate(abs_error_sum) / rate(scored_total)``, RMSE the root of the squared sum's, and
the skill against persistence ``1 - rate(abs_error_sum) / rate(persistence_abs_error_sum)``
(deploy/prometheus/rules.yml records them).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client.utils import floatToGoString

from service.core.scoring import ScoreSums
from service.modelcard import ModelCard

__all__ = ["ACCURACY_METRICS", "ACCURACY_SERIES", "AccuracyCollector", "ScoreLedger", "Scorekeeper"]

#: (name, help) of the per-step counters, in the order of a `ScoreSums` table's rows.
_STEP_COUNTERS = (
    ("sensorcast_forecast_scored_total", "Forecast values scored against the reading at their target time."),
    ("sensorcast_forecast_abs_error_sum", "Sum of the scored forecasts' absolute errors, in the target's units."),
    ("sensorcast_forecast_squared_error_sum", "Sum of the scored forecasts' squared errors, in the target's units squared."),
    ("sensorcast_persistence_abs_error_sum", "Sum of persistence's absolute errors on the same pairs (the reading the forecast was made at)."),
)  # fmt: skip
_ANOMALIES = (
    "sensorcast_anomalies_total",
    "Readings whose one-step residual was over engine.anomaly_threshold, by target.",
)

#: The series `AccuracyCollector` exposes, as Prometheus stores them.
ACCURACY_SERIES = (*(name for name, _ in _STEP_COUNTERS), _ANOMALIES[0])

#: The metric families `AccuracyCollector` exposes, as a parser names them.
ACCURACY_METRICS = (
    "sensorcast_forecast_scored",
    "sensorcast_forecast_abs_error_sum",
    "sensorcast_forecast_squared_error_sum",
    "sensorcast_persistence_abs_error_sum",
    "sensorcast_anomalies",
)


class AccuracyCollector:
    """Cumulative scores per model, rendered as counters (see the module doc).

    Rendered by hand rather than through a prometheus_client registry: its text format
    writes every counter with a ``_total`` suffix, and three of these counters are sums
    named ``..._sum`` (a counter's name need not end in ``_total`` in the text format).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # model label -> (target names, [4, horizon, targets] sums, anomalies per target)
        self._models: dict[str, tuple[list[str], np.ndarray, np.ndarray]] = {}

    def declare(self, model: str, targets: Sequence[str], horizon: int) -> None:
        """Expose `model`'s counters at zero from now on, so rates work from the start."""
        self.add(model, targets, ScoreSums(horizon, len(targets)))

    def add(self, model: str, targets: Sequence[str], sums: ScoreSums) -> None:
        """Count `sums` (committed) under `model`."""
        table, anomalies = sums.total()
        with self._lock:
            known = self._models.get(model)
            if known is None or known[1].shape != table.shape:
                known = (list(targets), np.zeros_like(table), np.zeros_like(anomalies))
                self._models[model] = known
            known[1][...] += table
            known[2][...] += anomalies

    def totals(self, model: str) -> np.ndarray | None:
        """The cumulative ``[4, horizon, targets]`` sums of `model` (None before any)."""
        with self._lock:
            known = self._models.get(model)
            return None if known is None else known[1].copy()

    def render(self) -> bytes:
        """The counters in the Prometheus text format (nothing before a model is declared)."""
        with self._lock:
            models = {m: (t, s.copy(), a.copy()) for m, (t, s, a) in self._models.items()}
        if not models:
            return b""
        lines: list[str] = []
        for row, (name, text) in enumerate(_STEP_COUNTERS):
            lines += [f"# HELP {name} {text}", f"# TYPE {name} counter"]
            for model, (targets, sums, _) in models.items():
                for step in range(sums.shape[1]):
                    for j, target in enumerate(targets):
                        labels = _labels(model=model, step=str(step + 1), target=target)
                        lines.append(f"{name}{{{labels}}} {_value(sums[row, step, j])}")
        name, text = _ANOMALIES
        lines += [f"# HELP {name} {text}", f"# TYPE {name} counter"]
        for model, (targets, _, anomalies) in models.items():
            for j, target in enumerate(targets):
                labels = _labels(model=model, target=target)
                lines.append(f"{name}{{{labels}}} {_value(anomalies[j])}")
        return ("\n".join(lines) + "\n").encode()


def _value(v: float) -> str:
    """A sample value as prometheus_client writes it (``1.0``, ``+Inf``)."""
    return str(floatToGoString(v))  # type: ignore[no-untyped-call]


def _labels(**labels: str) -> str:
    """Label pairs in the text format, values escaped."""

    def escaped(v: str) -> str:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return ",".join(f'{k}="{escaped(v)}"' for k, v in labels.items())


class ScoreLedger:
    """One model's scores of processed readings, held until their offsets are committed.

    `add` each micro-batch's sums; `begin` when a checkpoint encodes its states (the sums so
    far are theirs); `commit` what it took once the changelog acknowledged them, or `reopen`
    what an abandoned one took (a later checkpoint writes those states). `settle` the
    partitions of a revoke: counted when the revoke wrote their states, dropped when it did
    not (or when they were lost).
    """

    def __init__(
        self, collector: AccuracyCollector, model: str, targets: Sequence[str], horizon: int
    ) -> None:
        self.collector = collector
        self.model = model
        self.targets = list(targets)
        self._open = ScoreSums(horizon, len(self.targets))
        self._begun: ScoreSums | None = None

    def add(self, sums: ScoreSums | None) -> None:
        """A micro-batch's sums (None: its forecasts were not scored)."""
        if sums is not None:
            self._open.add(sums)

    def begin(self) -> None:
        """A checkpoint took its positions: the sums so far are its own."""
        taken = self._open.pop()
        if self._begun is not None:  # a checkpoint begun and never completed nor abandoned
            taken.add(self._begun)
        self._begun = taken

    def commit(self) -> None:
        """The states of the checkpoint begun last are on the changelog: count its sums."""
        begun, self._begun = self._begun, None
        if begun is not None and (begun.tables or begun.anomalies):
            self.collector.add(self.model, self.targets, begun)

    def reopen(self) -> None:
        """The checkpoint begun last was abandoned: its sums wait for the next one."""
        begun, self._begun = self._begun, None
        if begun is not None:
            self._open.add(begun)

    def settle(self, partitions: set[int], *, committed: bool) -> None:
        """Partitions leaving this member: their sums counted (`committed`) or dropped."""
        taken = self._open.pop(partitions)
        if self._begun is not None:
            taken.add(self._begun.pop(partitions))
        if committed and (taken.tables or taken.anomalies):
            self.collector.add(self.model, self.targets, taken)


class Scorekeeper:
    """The ledgers of every model that scored here: the served model, a shadow, and models
    swapped out (whose last sums their next checkpoint still counts)."""

    def __init__(self, collector: AccuracyCollector) -> None:
        self.collector = collector
        self._ledgers: dict[str, ScoreLedger] = {}

    def ledger(self, card: ModelCard) -> ScoreLedger:
        """The ledger of the model of `card`, labelled ``name:version``."""
        ledger = self._ledgers.get(card.ref)
        if ledger is None:
            ledger = ScoreLedger(self.collector, card.ref, card.targets, card.horizon)
            self.collector.declare(card.ref, card.targets, card.horizon)
            self._ledgers[card.ref] = ledger
        return ledger

    def __iter__(self) -> Iterator[ScoreLedger]:
        return iter(list(self._ledgers.values()))

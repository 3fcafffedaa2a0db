"""Live forecast accuracy as the service itself counts it: read from its ``/metrics``.

`LiveScore` scrapes the accuracy counters of a running ``sensorcast serve``
(``sensorcast_forecast_scored_total``, ``..._abs_error_sum``,
``sensorcast_persistence_abs_error_sum``; docs/service.md, "Online accuracy") and turns
them into MAE and skill against persistence per model version and target, over every
horizon step and at step 1, since the service started. What the demo shows is therefore
what Prometheus would see, not a tally of its own.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["LiveScore", "ModelScore"]

_SERIES = {
    # prometheus_client's parser names every counter sample ..._total
    "sensorcast_forecast_scored_total": "scored",
    "sensorcast_forecast_abs_error_sum_total": "abs",
    "sensorcast_persistence_abs_error_sum_total": "persistence",
}


@dataclass(frozen=True)
class ModelScore:
    """One model version's score on one target: values scored, and the sums of absolute
    errors (the model's and persistence's), over all steps and at step 1."""

    model: str
    target: str
    scored: float
    abs_error: float
    persistence: float
    scored_1: float
    abs_error_1: float
    persistence_1: float

    @staticmethod
    def _skill(abs_error: float, persistence: float) -> str:
        return f"{1.0 - abs_error / persistence:+.0%}" if persistence > 0 else "n/a"

    def line(self) -> str:
        """``temp  MAE 0.213 skill +48%   step 1: MAE 0.101 skill +20%   (12,345 scored)``."""
        if not self.scored:
            return f"{self.target}: nothing scored yet"
        mae = self.abs_error / self.scored
        text = f"{self.target} MAE {mae:.3g} skill {self._skill(self.abs_error, self.persistence)}"
        if self.scored_1:
            mae_1 = self.abs_error_1 / self.scored_1
            skill_1 = self._skill(self.abs_error_1, self.persistence_1)
            text += f" (step 1: {mae_1:.3g}, {skill_1})"
        return text


class LiveScore:
    """Reads the accuracy counters from ``http://127.0.0.1:<port>/metrics``."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"

    def scores(self) -> list[ModelScore]:
        """Each model version and target the service scored, by model then target (empty
        when the service cannot be reached)."""
        try:
            with urllib.request.urlopen(self.url, timeout=2) as response:
                body = response.read().decode()
        except (urllib.error.URLError, OSError):
            return []
        sums: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                kind = _SERIES.get(sample.name)
                if kind is None:
                    continue
                key = (sample.labels["model"], sample.labels["target"])
                sums[key][kind] += sample.value
                if sample.labels.get("step") == "1":
                    sums[key][f"{kind}_1"] += sample.value
        return [
            ModelScore(
                model,
                target,
                s["scored"],
                s["abs"],
                s["persistence"],
                s["scored_1"],
                s["abs_1"],
                s["persistence_1"],
            )
            for (model, target), s in sorted(sums.items())
        ]

    def lines(self) -> list[str]:
        """The live accuracy lines of the demo: one per model version, its targets side by
        side."""
        scores = self.scores()
        if not any(s.scored for s in scores):
            return ["live accuracy (the service's /metrics): waiting for warm forecasts"]
        by_model: dict[str, list[ModelScore]] = defaultdict(list)
        for score in scores:
            by_model[score.model].append(score)
        total = {m: sum(s.scored for s in ss) for m, ss in by_model.items()}
        out = [
            "live accuracy from the service's /metrics, every horizon step (skill vs persistence):"
        ]
        for model, model_scores in by_model.items():
            cells = "   ".join(s.line() for s in model_scores)
            out.append(f"  {model} ({total[model]:,.0f} values scored): {cells}")
        return out

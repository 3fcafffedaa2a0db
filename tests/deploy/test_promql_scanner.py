"""The PromQL scanner the other deploy tests rely on finds metric names and nothing else."""

from __future__ import annotations

import pytest

from tests.deploy.deploykit import exposed_series, metric_families, metric_names


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('up{job="sensorcast"} == 0', {"up"}),
        (
            'histogram_quantile(0.99, sum by (le, instance) (rate(a_bucket{instance=~"$instance"}[$__rate_interval])))',
            {"a_bucket"},
        ),
        ("sum(rate(a_total[5m])) / sum(rate(b_total[5m])) > 0.05", {"a_total", "b_total"}),
        ("sum(x) by (topic) > 1e3 and on (topic) deriv(y[10m:1m]) > 0", {"x", "y"}),
        ('absent(up{job="sensorcast"} == 1)', {"up"}),
        ('count(z{reason="and"}) unless w offset 5m', {"z", "w"}),
        ('sum(rate(a_total{job=~"$job"}[1m])) * 100', {"a_total"}),
    ],
)
def test_metric_names(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_series_names_follow_prometheus_suffixes() -> None:
    families = metric_families()
    assert families["sensorcast_readings_consumed"] == {"sensorcast_readings_consumed_total"}
    assert families["sensorcast_model_call_seconds"] == {
        "sensorcast_model_call_seconds_bucket",
        "sensorcast_model_call_seconds_count",
        "sensorcast_model_call_seconds_sum",
    }
    assert families["sensorcast_model"] == {"sensorcast_model_info"}
    assert "sensorcast_consumer_lag" in exposed_series()
    assert "sensorcast_readings_consumed" not in exposed_series()

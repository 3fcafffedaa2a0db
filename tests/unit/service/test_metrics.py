"""Metrics: every family defined once, on a registry of its own, parseable, label values
pre-initialised."""

from __future__ import annotations

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service import __version__
from service.core.engine import BatchResult
from service.core.readings import DropReason, ForecastBatch, RejectReason
from service.metrics import EVICTION_CAUSES, METRIC_NAMES, ArrayHistogram, ServiceMetrics


def _samples(metrics: ServiceMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }


def test_every_metric_is_exposed_with_help() -> None:
    metrics = ServiceMetrics()
    metrics.accuracy.declare("sensors:1", ["temp", "load"], 3)  # as serving a model does
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    # prometheus_client adds a `<name>_created` gauge per counter and histogram.
    names = {n for n in families if not n.endswith("_created")}
    assert sorted(names) == sorted(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert families[name].documentation, name


def test_each_instance_has_its_own_registry() -> None:
    a, b = ServiceMetrics(), ServiceMetrics()  # would raise on a shared registry
    a.readings_consumed.inc(3)
    assert b.registry.get_sample_value("sensorcast_readings_consumed_total") == 0
    assert a.registry.get_sample_value("sensorcast_readings_consumed_total") == 3
    assert REGISTRY.get_sample_value("sensorcast_readings_consumed_total") is None


def test_label_values_start_at_zero() -> None:
    samples = _samples(ServiceMetrics())
    for reason in RejectReason:
        assert samples[("sensorcast_rejects_total", (("reason", str(reason)),))] == 0
    for drop in DropReason:
        assert samples[("sensorcast_drops_total", (("reason", str(drop)),))] == 0
    for cause in EVICTION_CAUSES:
        assert samples[("sensorcast_evictions_total", (("cause", cause),))] == 0


def test_model_and_build_info() -> None:
    metrics = ServiceMetrics()
    metrics.set_model("sensors-demo", "3", "lstm", "0a1b")
    samples = _samples(metrics)
    labels = (("fingerprint", "0a1b"), ("kind", "lstm"), ("name", "sensors-demo"), ("version", "3"))
    key = ("sensorcast_model_info", labels)
    assert samples[key] == 1
    build = [k for k in samples if k[0] == "sensorcast_build_info"]
    assert len(build) == 1 and ("version", __version__) in build[0][1]


def test_histograms_count_observations() -> None:
    metrics = ServiceMetrics()
    for size in (1, 40, 900):
        metrics.batch_size.observe(size)
    samples = _samples(metrics)
    assert samples[("sensorcast_batch_size_count", ())] == 3
    assert samples[("sensorcast_batch_size_sum", ())] == 941
    assert samples[("sensorcast_batch_size_bucket", (("le", "50.0"),))] == 2


def test_an_array_histogram_exposes_what_a_histogram_observing_each_value_does() -> None:
    buckets = (0.001, 0.01, 0.1, 1.0, 10.0)
    values = np.array([0.0, 0.001, 0.0010001, 0.05, 0.1, 3.0, 10.0, 11.0, 1e6])
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    bulk = ArrayHistogram("age_seconds", "ages", buckets, ours)
    single = Histogram("age_seconds", "ages", buckets=buckets, registry=theirs)
    bulk.observe_many(values[:4])
    bulk.observe_many(np.empty(0))
    bulk.observe_many(values[4:])
    for v in values:
        single.observe(float(v))

    def exposed(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {
            (s.name, s.labels.get("le", "")): s.value
            for family in text_string_to_metric_families(generate_latest(registry).decode())
            for s in family.samples
            if not s.name.endswith("_created")
        }

    assert exposed(ours) == exposed(theirs)
    assert bulk.count() == len(values)


def test_reading_to_forecast_is_observed_per_forecast_and_the_batch_once() -> None:
    metrics = ServiceMetrics()
    result = BatchResult(ForecastBatch.empty(2, 1, 60.0), round_sizes=[3], round_seconds=[0.002])
    metrics.record_batch(3, result, 0.004, np.array([0.02, 0.03, 0.7]))
    samples = _samples(metrics)
    assert samples[("sensorcast_reading_to_forecast_seconds_count", ())] == 3
    assert samples[("sensorcast_reading_to_forecast_seconds_sum", ())] == 0.75
    assert samples[("sensorcast_reading_to_forecast_seconds_bucket", (("le", "0.05"),))] == 2
    assert samples[("sensorcast_batch_seconds_count", ())] == 1


def test_every_metric_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "service.md").read_text()
    table = doc[doc.index("## Metrics") :]
    undocumented = [name for name in METRIC_NAMES if f"| `{name}" not in table]
    assert not undocumented, f"add these to the metrics table in docs/service.md: {undocumented}"

"""Metrics: every family defined once, on a registry of its own, parseable, label values
pre-initialised."""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from service import __version__
from service.core.readings import DropReason, RejectReason
from service.metrics import EVICTION_CAUSES, METRIC_NAMES, ServiceMetrics


def _samples(metrics: ServiceMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }


def test_every_metric_is_exposed_with_help() -> None:
    families = {
        f.name: f for f in text_string_to_metric_families(ServiceMetrics().render().decode())
    }
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
    metrics.set_model("sensors-demo", "3", "lstm")
    samples = _samples(metrics)
    key = ("sensorcast_model_info", (("kind", "lstm"), ("name", "sensors-demo"), ("version", "3")))
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


def test_every_metric_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "service.md").read_text()
    table = doc[doc.index("## Metrics") :]
    undocumented = [name for name in METRIC_NAMES if f"| `{name}" not in table]
    assert not undocumented, f"add these to the metrics table in docs/service.md: {undocumented}"

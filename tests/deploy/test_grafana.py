"""deploy/grafana: the dashboard is valid, templated, queries only exposed metrics, shows every
metric family, and the compose stack provisions it with its data source."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.deploy.deploykit import DEPLOY, exposed_series, load_yaml, metric_families, metric_names

GRAFANA = DEPLOY / "grafana"


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GRAFANA / "sensorcast.json").read_text(encoding="utf-8"))
    return data


def _panels(panels: list[dict[str, Any]] | None = None) -> Iterator[dict[str, Any]]:
    for panel in _dashboard()["panels"] if panels is None else panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _exprs() -> list[str]:
    return [t["expr"] for p in _panels() for t in p.get("targets", [])]


def _variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in _dashboard()["templating"]["list"]}


def test_dashboard_identity() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "sensorcast"
    assert dashboard["title"]
    ids = [p["id"] for p in _panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_datasource_and_instance_are_template_variables() -> None:
    variables = _variables()
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["type"] == "query"
    assert instance["includeAll"] and instance["multi"]
    query = instance["query"]["query"] if isinstance(instance["query"], dict) else instance["query"]
    match = re.fullmatch(r"label_values\((\w+)(\{.*\})?,\s*instance\)", query)
    assert match and match.group(1) in exposed_series(), query


def test_every_panel_uses_the_datasource_variable() -> None:
    for panel in _panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_query_is_filtered_by_instance() -> None:
    for expr in _exprs():
        selectors = re.findall(r"sensorcast_\w+\{([^}]*)\}", expr)
        assert selectors, expr
        for selector in selectors:
            assert 'instance=~"$instance"' in selector, expr


@pytest.mark.parametrize("expr", _exprs())
def test_query_uses_only_exposed_metrics(expr: str) -> None:
    unknown = metric_names(expr) - exposed_series()
    assert not unknown, f"not exposed by service/metrics.py: {unknown}"


def test_every_metric_family_is_on_the_dashboard() -> None:
    used = set().union(*(metric_names(e) for e in _exprs()))
    missing = [name for name, series in metric_families().items() if not series & used]
    assert not missing, f"metrics missing from the dashboard: {missing}"


def test_latency_panels_are_quantiles_of_histograms() -> None:
    exprs = _exprs()
    for histogram in ("sensorcast_model_call_seconds", "sensorcast_reading_to_forecast_seconds"):
        quantiles = [e for e in exprs if "histogram_quantile" in e and f"{histogram}_bucket" in e]
        assert any("0.99" in e for e in quantiles), histogram
        assert all("by (le" in e for e in quantiles), histogram


def test_panels_do_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for panel in _panels():
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))


def test_compose_provisions_datasource_and_dashboard() -> None:
    compose = load_yaml(DEPLOY / "compose.yaml")
    grafana = compose["services"]["grafana"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"

    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "sensorcast.yml")["providers"]
    folder = providers[0]["options"]["path"]
    dashboard_mount = f"{folder}/sensorcast.json"
    assert mounts[dashboard_mount] == "./grafana/sensorcast.json"
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == dashboard_mount

    sources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    (source,) = sources
    assert source["type"] == "prometheus" and source["isDefault"]
    host, port = source["url"].removeprefix("http://").split(":")
    assert host in compose["services"]
    assert f"{port}:{port}" in compose["services"][host]["ports"]

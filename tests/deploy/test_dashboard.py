"""The Grafana dashboard and the alert rules reference only series the server exports.

The exported names come from the server's own metric registry (`server.metrics.Metrics`) rendered in
the Prometheus text format; tests/deploy/test_prometheus_live.py repeats the check against a live
`/metrics` scrape and runs every query through a real Prometheus.
"""

from __future__ import annotations

import pytest
from deploy_checks import (
    SCRAPE_SERIES,
    PromQLNameError,
    alert_exprs,
    dashboard_exprs,
    dashboard_panels,
    exported_series,
    load_dashboard,
    promql_metric_names,
)

# What issue 8 says the dashboard must show, as the series that carry it.
REQUIRED = {
    "request rate by strategy": "restrl:requests_total",
    "latency by strategy": "restrl:request_latency_seconds_bucket",
    "search nodes per request": "restrl:search_nodes_sum",
    "search samples per request": "restrl:search_samples_sum",
    "search tokens per request": "restrl:search_policy_tokens_sum",
    "value batch size": "restrl:value_batch_size_bucket",
    "cached-token ratio": "restrl:engine_cached_prompt_tokens_total",
    "queue depth": "restrl:queue_depth",
    "429s": "restrl:rejected_requests_total",
    "sandbox verdicts": "restrl:sandbox_verdicts_total",
    "model version": "restrl:model_info",
    "swap events": "restrl:swap_events_total",
}


@pytest.fixture(scope="module")
def server_series() -> set[str]:
    from server.metrics import Metrics

    return exported_series(Metrics().render().decode())


def test_extractor_finds_metrics_and_ignores_the_rest() -> None:
    expr = ('histogram_quantile(0.95, sum by (strategy, le) (rate(restrl:request_latency_seconds_bucket'
            '{instance=~"$instance", route="/v1/solve"}[$__rate_interval])))\n/ on (instance) group_left '
            'max by (instance) (restrl:model_info offset 5m) > bool 1e3 and up')
    assert promql_metric_names(expr) == {"restrl:request_latency_seconds_bucket", "restrl:model_info", "up"}
    assert promql_metric_names('sum(rate(restrl:requests_total{status="429"}[5m]))') == {"restrl:requests_total"}
    with pytest.raises(PromQLNameError):
        promql_metric_names("sum(rates(restrl:requests_total[5m]))")


def test_exported_series_expands_counters_and_histograms(server_series) -> None:
    assert {"restrl:requests_total", "restrl:request_latency_seconds_bucket", "restrl:request_latency_seconds_sum",
            "restrl:request_latency_seconds_count", "restrl:queue_depth", "restrl:model_info"} <= server_series
    assert "restrl:requests" not in server_series and "restrl:queue_depth_total" not in server_series


def test_every_query_references_only_exported_series(server_series) -> None:
    unknown = {}
    for where, expr in dashboard_exprs(load_dashboard()) + alert_exprs():
        missing = promql_metric_names(expr) - server_series - SCRAPE_SERIES
        if missing:
            unknown[where] = sorted(missing)
    assert not unknown, f"queries reference series the server does not export: {unknown}"


def test_every_required_view_is_on_the_dashboard() -> None:
    used = set().union(*(promql_metric_names(e) for _, e in dashboard_exprs(load_dashboard())))
    missing = {view: series for view, series in REQUIRED.items() if series not in used}
    assert not missing, missing


def test_panels_are_well_formed() -> None:
    dashboard = load_dashboard()
    panels = list(dashboard_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel.get("description"), f"{panel['title']!r} explains itself"
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"]["uid"] == "${datasource}"
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36

"""The Grafana dashboard (configs/grafana/dashboards/deepseek-serve.json) against the metrics the
server and vLLM really expose on /metrics."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_FILE = ROOT / "configs" / "grafana" / "dashboards" / "deepseek-serve.json"

# The deepseek_serve_* metrics the server exposes on /metrics, by type. The one list of them in
# the tests: switch it to the real metrics module once that lands.
SERVER_METRICS: dict[str, str] = {
    "deepseek_serve_requests_total": "counter",
    "deepseek_serve_prompt_tokens_total": "counter",
    "deepseek_serve_generation_tokens_total": "counter",
    "deepseek_serve_requests_aborted_total": "counter",
    "deepseek_serve_requests_rejected_total": "counter",
    "deepseek_serve_time_to_first_token_seconds": "histogram",
    "deepseek_serve_inter_token_latency_seconds": "histogram",
    "deepseek_serve_request_duration_seconds": "histogram",
    "deepseek_serve_requests_in_flight": "gauge",
    "deepseek_serve_requests_waiting": "gauge",
    "deepseek_serve_engine_healthy": "gauge",
}
# vLLM metrics the dashboard must show (their existence is checked against vLLM's source).
REQUIRED_VLLM_METRICS = {
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_hits",
    "vllm:prefix_cache_queries",
    "vllm:time_to_first_token_seconds",
}


def vllm_metric_types() -> dict[str, str]:
    """vLLM's Prometheus metrics and their types, read from the installed vLLM's source."""
    spec = importlib.util.find_spec("vllm")
    assert spec and spec.submodule_search_locations
    source = Path(next(iter(spec.submodule_search_locations))) / "v1" / "metrics" / "loggers.py"
    found = re.findall(
        r'_(counter|gauge|histogram)_cls\(\s*name="(vllm:[a-z0-9_:]+)"', source.read_text()
    )
    assert len(found) > 20, f"cannot read vLLM's metrics from {source}"
    return {name: kind for kind, name in found}


def exposed_names(metric_types: dict[str, str]) -> dict[str, str]:
    """Series names on /metrics (prometheus_client's suffixes) -> their metric's type."""
    out: dict[str, str] = {}
    for name, kind in metric_types.items():
        if kind == "counter":
            out[name.removesuffix("_total") + "_total"] = kind
        elif kind == "histogram":
            out.update({f"{name}{suffix}": kind for suffix in ("_bucket", "_sum", "_count")})
        else:
            out[name] = kind
    return out


def dashboard_panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = json.loads(DASHBOARD_FILE.read_text())["panels"]
    return [p for p in panels if p["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p["targets"]]


_METRIC_NAME = re.compile(r"\b(deepseek_serve_[a-z0-9_]+|vllm:[a-z0-9_:]+)")


def check_metric_names(exprs: list[str], known: dict[str, str]) -> None:
    for expr in exprs:
        for name in _METRIC_NAME.findall(expr):
            assert name in known, f"{name} is not exposed (in {expr})"
        for name in re.findall(r"\b(?:rate|increase)\((\S+?)[\[{]", expr):
            assert known.get(name) in {"counter", "histogram"}, f"rate() of a gauge: {expr}"


def test_dashboard_uses_only_metrics_that_exist() -> None:
    known = exposed_names(SERVER_METRICS) | exposed_names(vllm_metric_types())
    check_metric_names(dashboard_exprs(), known)
    with pytest.raises(AssertionError, match="not exposed"):
        check_metric_names(["sum(rate(deepseek_serve_request_total[5m]))"], known)
    with pytest.raises(AssertionError, match="not exposed"):
        check_metric_names(["sum(rate(vllm:prefix_cache_hits[5m]))"], known)  # no _total
    with pytest.raises(AssertionError, match="gauge"):
        check_metric_names(["rate(vllm:num_requests_running[5m])"], known)


def test_dashboard_shows_every_server_metric_and_the_engine_ones() -> None:
    used = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for expr in dashboard_exprs()
        for name in _METRIC_NAME.findall(expr)
    }
    used |= {name.removesuffix("_total") for name in used if name.startswith("vllm:")}
    assert set(SERVER_METRICS) <= used
    assert used >= REQUIRED_VLLM_METRICS
    # p50, p90 and p99 of each latency histogram.
    for histogram in (n for n, kind in SERVER_METRICS.items() if kind == "histogram"):
        quantiles = {
            float(q)
            for expr in dashboard_exprs()
            for q in re.findall(rf"histogram_quantile\(([0-9.]+), .*\b{histogram}_bucket", expr)
        }
        assert {0.5, 0.9, 0.99} <= quantiles, histogram


def test_dashboard_queries_are_well_formed() -> None:
    for expr in dashboard_exprs():
        depth = 0
        for char in expr:
            depth += {"(": 1, ")": -1}.get(char, 0)
            assert depth >= 0, expr
        assert depth == 0, expr
        if "histogram_quantile" in expr:
            assert "_bucket[" in expr, expr
            by = re.findall(r"by \(([^)]*)\)", expr)
            assert by and all("le" in [s.strip() for s in b.split(",")] for b in by), expr


def test_dashboard_panels_use_the_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard_panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]

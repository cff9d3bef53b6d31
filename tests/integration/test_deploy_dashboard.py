"""The Grafana dashboard (configs/grafana/dashboards/deepseek-serve.json) against the metrics the
server and vLLM really expose on /metrics."""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import promql_parser as promql
import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_FILE = ROOT / "configs" / "grafana" / "dashboards" / "deepseek-serve.json"

# The deepseek_serve_* metrics the server exposes on /metrics, by type (the series name of a
# counter, with _total). Once the server's metrics module is there, it must say the same.
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
# vLLM metrics the dashboard must show (the server exposes them through its lean engine logger).
REQUIRED_VLLM_METRICS = {
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_hits",
    "vllm:prefix_cache_queries",
    "vllm:time_to_first_token_seconds",
}


def test_the_metric_list_is_the_servers() -> None:
    from deepseek_serve.http.observability import Metrics

    real = {
        family.name + ("_total" if family.type == "counter" else ""): family.type
        for family in Metrics().registry.collect()
    }
    assert real == SERVER_METRICS


def vllm_source_metric_types() -> dict[str, str]:
    """vLLM's Prometheus metrics and their types, read from the installed vLLM's source."""
    spec = importlib.util.find_spec("vllm")
    assert spec and spec.submodule_search_locations
    source = Path(next(iter(spec.submodule_search_locations))) / "v1" / "metrics" / "loggers.py"
    found = re.findall(
        r'_(counter|gauge|histogram)_cls\(\s*name="(vllm:[a-z0-9_:]+)"', source.read_text()
    )
    assert len(found) > 20, f"cannot read vLLM's metrics from {source}"
    return {name: kind for kind, name in found}


def vllm_metric_types() -> dict[str, str]:
    """The vllm:* metrics the server exposes by default (``deepseek_serve.engine_stats``)."""
    from deepseek_serve import engine_stats as es

    return (
        {name: "gauge" for _, name, _ in es.GAUGES}
        | {name: "counter" for _, name, _ in es.COUNTERS}
        | {es.SUCCESS[0]: "counter"}
        | {name: "histogram" for _, name, _, _ in es.HISTOGRAMS}
    )


def test_the_lean_engine_metrics_keep_vllms_names_and_types() -> None:
    from deepseek_serve.engine_stats import FAMILIES

    ours = vllm_metric_types()
    assert set(ours) == set(FAMILIES)
    vllms = vllm_source_metric_types()
    assert {name: vllms.get(name) for name in ours} == ours


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


# Grafana's interval variables, as Prometheus would see them after Grafana substitutes them.
GRAFANA_MACROS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


@dataclass
class Query:
    """What a PromQL expression reads, from Prometheus's own grammar (promql-parser)."""

    selectors: set[str] = field(default_factory=set)
    rated: set[str] = field(default_factory=set)  # series under rate() / increase()
    quantiles: list[tuple[float, set[str], list[str]]] = field(default_factory=list)


def analyse(expr: str) -> Query:
    for macro, value in GRAFANA_MACROS.items():
        expr = expr.replace(macro, value)
    query = Query()

    def selectors_below(node: promql.Expr) -> set[str]:
        found: set[str] = set()

        def visit(inner: promql.Expr) -> None:
            if isinstance(inner, promql.VectorSelector) and inner.name:
                found.add(inner.name)

        promql.walk(node, visit)
        return found

    def by_labels_below(node: promql.Expr) -> list[str]:
        labels: list[str] = []

        def visit(inner: promql.Expr) -> None:
            if isinstance(inner, promql.AggregateExpr):
                modifier = inner.modifier
                by = modifier is not None and modifier.type == promql.AggModifierType.By
                labels.append(",".join(modifier.labels) if by else "")

        promql.walk(node, visit)
        return labels

    def visit(node: promql.Expr) -> None:
        if isinstance(node, promql.VectorSelector) and node.name:
            query.selectors.add(node.name)
        if isinstance(node, promql.Call) and node.func.name in {"rate", "increase"}:
            query.rated |= selectors_below(node)
        if isinstance(node, promql.Call) and node.func.name == "histogram_quantile":
            phi, inner = node.args
            assert isinstance(phi, promql.NumberLiteral), expr
            query.quantiles.append((phi.val, selectors_below(inner), by_labels_below(inner)))

    promql.walk(promql.parse(expr), visit)
    return query


def check_queries(exprs: list[str], known: dict[str, str]) -> None:
    for expr in exprs:
        query = analyse(expr)
        for name in query.selectors:
            assert name in known, f"{name} is not exposed (in {expr})"
        for name in query.rated:
            assert known[name] in {"counter", "histogram"}, f"rate() of a gauge: {expr}"
        for _, names, by in query.quantiles:
            assert names and all(n.endswith("_bucket") for n in names), f"not buckets: {expr}"
            assert by and all("le" in b.split(",") for b in by), f"le not kept: {expr}"


def test_dashboard_queries_parse_and_use_only_exposed_metrics() -> None:
    known = exposed_names(SERVER_METRICS) | exposed_names(vllm_metric_types())
    check_queries(dashboard_exprs(), known)
    # Each kind of mistake is caught.
    mistakes = {
        "sum(rate(deepseek_serve_request_total[5m]))": "not exposed",
        "sum(rate(vllm:prefix_cache_hits[5m]))": "not exposed",  # counters end in _total
        "rate(vllm:num_requests_running[5m])": "gauge",
        "histogram_quantile(0.9, sum(rate(vllm:time_to_first_token_seconds_bucket[5m])))": "le",
        "histogram_quantile(0.9, rate(vllm:time_to_first_token_seconds_sum[5m]))": "buckets",
        "sum(rate(deepseek_serve_requests_total[$__rate_interval])": "parenthesis",
        "rate(deepseek_serve_requests_total)": "matrix",
    }
    for expr, error in mistakes.items():
        with pytest.raises((AssertionError, ValueError), match=error):
            check_queries([expr], known)


def test_dashboard_shows_every_server_metric_and_the_engine_ones() -> None:
    queries = [analyse(expr) for expr in dashboard_exprs()]
    used = {re.sub(r"_(bucket|sum|count|total)$", "", n) for q in queries for n in q.selectors}
    assert {name.removesuffix("_total") for name in SERVER_METRICS} <= used
    assert used >= REQUIRED_VLLM_METRICS
    # p50, p90 and p99 of each of the server's latency histograms.
    for histogram in (n for n, kind in SERVER_METRICS.items() if kind == "histogram"):
        shown = {
            phi for q in queries for phi, names, _ in q.quantiles if f"{histogram}_bucket" in names
        }
        assert {0.5, 0.9, 0.99} <= shown, histogram


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

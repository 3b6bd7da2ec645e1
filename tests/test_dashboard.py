"""The Grafana dashboard: valid dashboard JSON, valid PromQL, and only real metric names,
each panel reading the process that exports them.

Metric names are never listed here: they are collected from the live code, in a fresh Python
process, by importing every module of ``hub_resilience`` and JupyterHub's ``jupyterhub.metrics``
and reading, per process, the registry it serves:

- the hub (``/hub/metrics``): prometheus-client's default registry (JupyterHub's metrics,
  ``hub_resilience.hub.metrics``, prometheus-client's process and platform collectors), plus
  the ``describe()`` of every collector class the package defines outside
  ``hub_resilience.service`` (registered only inside the hub);
- the resilience service (its ``/metrics``): ``hub_resilience.service.metrics.REGISTRY``.

tests/test_alerts.py checks the alert rules against the same names.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import jupyterhub.metrics
import pytest
import yaml

from hub_resilience.hub import metrics as hub_metrics
from hub_resilience.service import metrics as service_metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "monitoring" / "grafana-dashboard.json"

# --- metric names the code really exports ---------------------------------------------------

_COLLECT_NAMES = r"""
import importlib, inspect, json, pkgutil, sys
import jupyterhub.metrics  # noqa: F401 - JupyterHub's metrics register at import
import hub_resilience
from hub_resilience.service import metrics as service_metrics
from prometheus_client import REGISTRY
from prometheus_client.registry import Collector

families = {"hub": list(REGISTRY.collect()), "service": list(service_metrics.REGISTRY.collect())}
for info in pkgutil.walk_packages(hub_resilience.__path__, "hub_resilience."):
    if info.name.endswith(".__main__"):
        continue
    module = importlib.import_module(info.name)
    for obj in vars(module).values():
        if inspect.isclass(obj) and obj.__module__ == module.__name__ \
                and Collector in obj.__mro__[1:]:
            if not hasattr(obj, "describe"):
                sys.exit(f"{module.__name__}.{obj.__name__} has no describe(): add one so the "
                         "names of the metrics it exports can be checked")
            # describe() reports what a collector exports without needing its data source.
            process = "service" if info.name.startswith("hub_resilience.service.") else "hub"
            families[process].extend(object.__new__(obj).describe())
# Modules imported above registered more.
families["hub"].extend(REGISTRY.collect())
families["service"].extend(service_metrics.REGISTRY.collect())
print(json.dumps({
    process: sorted({(f.name, f.type) for f in found}
                    | {(s.name, "sample") for f in found for s in f.samples})
    for process, found in families.items()
}))
"""

#: Series names a family of each type exposes (prometheus-client's exposition; ``_created``
#: series count only where a collected sample shows them).
_SERIES_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum"),
    "info": ("_info",),
}


@functools.cache
def exported_metric_names_by_process() -> dict[str, frozenset[str]]:
    """Every series name each process exports: ``"hub"`` on /hub/metrics (JupyterHub's, the
    package's hub families, prometheus-client's), ``"service"`` on the resilience service's
    /metrics (its own families and prometheus-client's process collectors)."""
    env = {k: v for k, v in os.environ.items() if k != "JUPYTERHUB_METRICS_PREFIX"}
    result = subprocess.run(
        [sys.executable, "-c", _COLLECT_NAMES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"collecting metric names failed:\n{result.stderr}"
    by_process = {}
    for process, found in json.loads(result.stdout).items():
        names = set()
        for name, kind in found:
            if kind == "sample":
                names.add(name)
            else:
                names.update(name + suffix for suffix in _SERIES_SUFFIXES.get(kind, ("",)))
        by_process[process] = frozenset(names)
    return by_process


def exported_metric_names() -> frozenset[str]:
    """Every series name the package, JupyterHub and prometheus-client export, in either
    process."""
    return frozenset().union(*exported_metric_names_by_process().values())


def family_series(metric: object) -> set[str]:
    """The series names of one of the package's metric objects or collector classes."""
    if isinstance(metric, type):
        families = object.__new__(metric).describe()
    else:
        families = metric.describe()
    return {
        f.name + suffix for f in families for suffix in _SERIES_SUFFIXES.get(f.type, ("",))
    }


# --- PromQL --------------------------------------------------------------------------------

_PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
     "bool", "offset", "atan2", "inf", "nan"}
)
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])[A-Za-z_:][\w:]*")


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's variables so the expression is plain PromQL."""
    expr = expr.replace("$__rate_interval", "5m").replace("${__rate_interval}", "5m")
    expr = re.sub(r"\$__(?:interval|range)\b", "5m", expr)
    return _GRAFANA_VARIABLE.sub(".+", expr)


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (strings, label matchers, ranges,
    grouping labels, functions and keywords left out)."""
    expr = _STRING.sub('""', grafana_to_promql(expr))
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = _GROUPING.sub(" ", expr)
    names = set()
    for match in _IDENTIFIER.finditer(expr):
        word = match.group()
        if word.lower() in _PROMQL_KEYWORDS:
            continue
        if re.match(r"\s*\(", expr[match.end():]):
            continue  # a function or aggregation
        names.add(word)
    return names


def test_promql_metric_names_finds_names_and_only_names() -> None:
    expr = (
        'sum by (job, le) (rate(a_bucket{code=~"4..", x="y{z}"}[$__rate_interval] offset 1h))'
        " / on (job) group_left () b_total > bool 0.5 and on (job) time() - c:recorded"
        " unless topk(5, d{le=\"+Inf\"}) or vector(1e3) * Inf"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b_total", "c:recorded", "d"}


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run promtool, failing the test with a clear message when it is not installed."""
    if shutil.which("promtool") is None:
        pytest.fail(
            "promtool is not on PATH: install Debian's 'prometheus' package "
            "(scripts/bootstrap.sh does)"
        )
    return subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


# --- the dashboard -------------------------------------------------------------------------

#: The parts of Grafana's classic dashboard model (schemaVersion 39) that an import reads.
DASHBOARD_SCHEMA = {
    "type": "object",
    "required": ["title", "uid", "schemaVersion", "panels", "templating", "time"],
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "uid": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
        "schemaVersion": {"type": "integer", "minimum": 30},
        "editable": {"type": "boolean"},
        "graphTooltip": {"enum": [0, 1, 2]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "time": {
            "type": "object",
            "required": ["from", "to"],
            "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
        },
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {
                "list": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "type"],
                        "properties": {
                            "name": {"type": "string", "pattern": r"^\w+$"},
                            "type": {
                                "enum": ["query", "datasource", "custom", "constant",
                                         "interval", "textbox", "adhoc"]
                            },
                        },
                    },
                }
            },
        },
        "panels": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/panel"}},
    },
    "$defs": {
        "gridPos": {
            "type": "object",
            "required": ["h", "w", "x", "y"],
            "properties": {
                "h": {"type": "integer", "minimum": 1},
                "w": {"type": "integer", "minimum": 1, "maximum": 24},
                "x": {"type": "integer", "minimum": 0, "maximum": 23},
                "y": {"type": "integer", "minimum": 0},
            },
        },
        "datasource": {
            "type": "object",
            "required": ["type", "uid"],
            "properties": {"type": {"const": "prometheus"}, "uid": {"const": "${datasource}"}},
        },
        "panel": {
            "type": "object",
            "required": ["type", "id", "gridPos", "title"],
            "properties": {
                "type": {"enum": ["row", "timeseries", "stat", "gauge", "table", "bargauge",
                                  "heatmap", "text"]},
                "id": {"type": "integer", "minimum": 1},
                "title": {"type": "string", "minLength": 1},
                "gridPos": {"$ref": "#/$defs/gridPos"},
                "datasource": {"$ref": "#/$defs/datasource"},
                "targets": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["refId", "expr", "datasource"],
                        "properties": {
                            "refId": {"type": "string", "pattern": "^[A-Z]$"},
                            "expr": {"type": "string", "minLength": 1},
                            "datasource": {"$ref": "#/$defs/datasource"},
                        },
                    },
                },
                "fieldConfig": {
                    "type": "object",
                    "required": ["defaults", "overrides"],
                    "properties": {"overrides": {"type": "array"}},
                },
            },
            "if": {"properties": {"type": {"const": "row"}}},
            "then": {"required": ["panels"]},
            "else": {"required": ["targets", "datasource", "fieldConfig", "options"],
                     "properties": {"targets": {"minItems": 1}}},
        },
    },
}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


#: The dashboard's variables that select one process's targets, and that process.
PROCESS_VARIABLES = {"hub_job": "hub", "hub_instance": "hub", "service_job": "service"}
#: Per process, the variable that tells its target from the other process's when both
#: targets are in one job (a ServiceMonitor on both ports of the hub Service).
INSTANCE_VARIABLES = {"hub": "hub_instance"}


def _variables_used(expr: str) -> set[str]:
    return set(re.findall(r"\$\{?(\w+)", expr))


def _panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, expr) for every panel query."""
    return [
        (f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def _variable_queries(dashboard: dict) -> dict[str, str]:
    """The PromQL of every query variable, by the variable's name."""
    found = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        # Grafana's label_values(<series selector>, <label>): only the selector is PromQL.
        match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
        found[variable["name"]] = match.group(1) if match else query
    return found


def _queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, expr) for every panel query and every query variable."""
    return _panel_queries(dashboard) + [
        (f"variable {name}", expr) for name, expr in _variable_queries(dashboard).items()
    ]


def test_dashboard_is_valid_grafana_dashboard_json(dashboard: dict) -> None:
    jsonschema.validate(dashboard, DASHBOARD_SCHEMA)

    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, f"{panel['title']!r} is wider than the grid"
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in occupied, (
                    f"{panel['title']!r} overlaps {occupied[(x, y)]!r}"
                )
                occupied[(x, y)] = panel["title"]
        refs = [target["refId"] for target in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), f"{panel['title']!r} repeats a refId"

    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert any(
        v["type"] == "datasource" and v["query"] == "prometheus"
        for v in dashboard["templating"]["list"]
    ), "the dashboard needs a Prometheus data source variable"
    for where, expr in _queries(dashboard):
        for used in re.findall(r"\$\{?(\w+)", expr):
            assert used in variables or used.startswith("__"), f"{where} uses undefined ${used}"


def _standard_series() -> set[str]:
    """Series of prometheus-client's own process, platform and GC collectors."""
    from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

    families = [f for c in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR)
                for f in c.collect()]
    return {
        f.name + suffix for f in families for suffix in _SERIES_SUFFIXES.get(f.type, ("",))
    } | {sample.name for f in families for sample in f.samples}


def test_each_process_exports_only_its_own_families() -> None:
    """The dashboard and the alert rules tell the hub from the service by the families only
    one of them exports: only prometheus-client's own (process_*, ...) come from both."""
    by_process = exported_metric_names_by_process()
    hub, service = by_process["hub"], by_process["service"]
    # The collection itself must have found both sides, or the checks below mean nothing.
    assert family_series(hub_metrics.SPAWN_PHASE_SECONDS) <= hub
    assert family_series(hub_metrics.SpawnOutcomeCollector) <= hub
    assert family_series(hub_metrics.UserPodQoSCollector) <= hub
    assert family_series(jupyterhub.metrics.EVENT_LOOP_INTERVAL_SECONDS) <= hub
    assert "jupyterhub_request_duration_seconds_count" in hub
    assert family_series(service_metrics.CULLER_CYCLES) <= service
    assert family_series(service_metrics.STOPPED_SERVER_RESPONSES) <= service
    assert family_series(service_metrics.SERVICE_CULLER_ENABLED) <= service
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= hub & service

    both = hub & service - _standard_series()
    assert not both, f"exported by the hub and the service alike: {sorted(both)}"


def test_every_query_names_a_metric_the_code_exports(dashboard: dict) -> None:
    """Each panel reads one process (the hub's or the service's variables select it) and
    names only metrics that process exports; a metric both export is read from the
    process's instances, as both targets may be in one job."""
    by_process = exported_metric_names_by_process()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(PROCESS_VARIABLES) <= set(variables), "the dashboard lacks a process variable"

    problems = {}
    for where, expr in _panel_queries(dashboard):
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric name found in {expr!r}"
        processes = {PROCESS_VARIABLES[v] for v in _variables_used(expr) & set(PROCESS_VARIABLES)}
        if len(processes) != 1:
            problems[where] = f"selects the targets of {sorted(processes) or 'no process'}"
            continue
        (process,) = processes
        (other,) = set(by_process) - {process}
        if missing := names - by_process[process]:
            problems[where] = f"the {process} exports no {sorted(missing)}"
        elif (shared := names & by_process[other]) and (
            INSTANCE_VARIABLES.get(process) not in _variables_used(expr)
        ):
            problems[where] = f"{sorted(shared)} read without the {process}'s instances"
    for name, process in PROCESS_VARIABLES.items():
        expr = _variable_queries(dashboard)[name]
        names = promql_metric_names(expr)
        assert names, f"variable {name}: no metric name found in {expr!r}"
        (other,) = set(by_process) - {process}
        if wrong := names - (by_process[process] - by_process[other]):
            problems[f"variable {name}"] = f"{sorted(wrong)}: not the {process}'s alone"
    assert not problems, f"queries that do not read the process they are about: {problems}"

    for name in INSTANCE_VARIABLES.values():
        # "All" must mean the listed instances of the process, not every target.
        assert variables[name].get("allValue") in (None, ""), f"${name} has an allValue"


def test_every_query_is_valid_promql(dashboard: dict, tmp_path: Path) -> None:
    """promtool parses each query (Grafana variables replaced) as a recording rule."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)}
        for i, (_, expr) in enumerate(_queries(dashboard))
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_shows_what_the_issue_asks_for(dashboard: dict) -> None:
    """Spawn phases, outcomes with throttled apart from failed, hub event-loop lag (JupyterHub's
    loop interval) and CPU, stopped-server handler traffic, culler cycles, user pods by QoS
    class: each in a panel (a variable's query shows nothing)."""
    exprs = [expr for _, expr in _panel_queries(dashboard)]
    used = set().union(*(promql_metric_names(expr) for expr in exprs))
    wanted = {
        "spawn phases": family_series(hub_metrics.SPAWN_PHASE_SECONDS),
        "spawn outcomes": family_series(hub_metrics.SpawnOutcomeCollector),
        "event-loop lag": family_series(jupyterhub.metrics.EVENT_LOOP_INTERVAL_SECONDS),
        "hub CPU": {"process_cpu_seconds_total"},
        "stopped-server handler": family_series(service_metrics.STOPPED_SERVER_RESPONSES),
        "culler cycles": family_series(service_metrics.CULLER_CYCLES),
        "user pods by QoS": family_series(hub_metrics.UserPodQoSCollector),
    }
    for what, series in wanted.items():
        assert used & series, f"no panel shows {what} ({sorted(series)})"

    outcomes = [expr for expr in exprs if "spawn_outcomes" in expr]
    refusals = '"throttled|over_active_limit"'
    assert any(f"outcome=~{refusals}" in expr for expr in outcomes), "no panel of refusals"
    assert any(
        "outcome!~" in expr and "throttled" in expr for expr in outcomes
    ), "no panel of failures with the hub's refusals excluded"

"""The Prometheus alerting rules: promtool checks them, its unit tests pass, every alert is
tested both firing and quiet, names only metrics the code exports, each rule about one
process (the hub or the resilience service), and has a section in the troubleshooting page
its ``runbook`` annotation points to."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.test_dashboard import (
    exported_metric_names,
    exported_metric_names_by_process,
    promql_metric_names,
    run_promtool,
)

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "monitoring"
RULES = MONITORING / "alerts.yaml"
RULE_TESTS = MONITORING / "alerts-tests.yaml"
TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"


def _rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _alerts() -> list[dict]:
    return [rule for rule in _rules() if "alert" in rule]


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", RULES.name, cwd=MONITORING)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = run_promtool("test", "rules", RULE_TESTS.name, cwd=MONITORING)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """At least one promtool test where the alert fires and one where it stays silent."""
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert RULES.name in tests["rule_files"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {alert["alert"] for alert in _alerts()}
    assert len(names) >= 6
    assert not names - fires, f"alerts never tested firing: {sorted(names - fires)}"
    assert not names - quiet, f"alerts never tested quiet: {sorted(names - quiet)}"
    unknown = (fires | quiet) - names
    assert not unknown, f"tests of unknown alerts: {sorted(unknown)}"


def test_rules_name_only_metrics_the_code_exports() -> None:
    exported = exported_metric_names()
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    unknown = {}
    for rule in _rules():
        names = promql_metric_names(rule["expr"])
        assert names, f"{rule.get('alert') or rule.get('record')}: no metric in its expr"
        missing = names - exported - recorded
        if missing:
            unknown[rule.get("alert") or rule.get("record")] = sorted(missing)
    assert not unknown, f"rules name metrics nothing exports: {unknown}"


def test_each_rule_is_about_one_process() -> None:
    """Every metric a rule names comes from one process, and one of them from that process
    alone: a rule on process_* only would mix the hub and the service, and one that joined
    the two processes' families on (job, instance) would never match."""
    by_process = exported_metric_names_by_process()
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    mixed = {}
    for rule in _rules():
        names = promql_metric_names(rule["expr"]) - recorded
        owners = sorted(process for process, exported in by_process.items() if names <= exported)
        if len(owners) != 1:
            mixed[rule.get("alert") or rule.get("record")] = owners
    assert not mixed, f"rules not about exactly one process (processes exporting all): {mixed}"


def test_every_alert_has_severity_summary_and_a_troubleshooting_section() -> None:
    headings = {
        match.group(1).strip()
        for match in re.finditer(r"^#{2,4}\s+(.+)$", TROUBLESHOOTING.read_text(), re.M)
    }
    for alert in _alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert alert["annotations"]["summary"], name
        assert alert["annotations"]["runbook"] == f"troubleshooting.md#{name.lower()}", name
        assert name in headings, f"docs/troubleshooting.md has no '## {name}' section"

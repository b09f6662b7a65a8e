"""The SLO alerts: one rules file, rendered to a PrometheusRule, unit-tested by promtool.

- ``promtool check rules`` on deploy/prometheus/alerts.yml and on the groups the
  rendered Kubernetes PrometheusRule carries;
- ``promtool test rules`` on tests/deploy/prometheus/alerts_test.yml: synthetic
  series for which each alert fires, and series for which it stays quiet;
- the committed PrometheusRule is what render_rules.py makes of alerts.yml, and
  compose's Prometheus loads the same file.

promtool ships with Debian's ``prometheus`` package (.ci/run installs it).
"""

from __future__ import annotations

import runpy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.deploy import DEPLOY, REPO, exposed_metric_names, referenced_metric_names, run

RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "tests" / "deploy" / "prometheus" / "alerts_test.yml"
PROMETHEUS_RULE = DEPLOY / "k8s" / "base" / "prometheusrule.yaml"
EXPECTED_ALERTS = {
    "TandemHighLatencyP99",
    "TandemHigh5xxRatio",
    "TandemSustainedOverload",
    "TandemNotReady",
    "TandemReloadFailed",
    "TandemTeacherMismatch",
    "TandemTargetDown",
    "TandemScrapeAbsent",
}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: apt-get install prometheus (Debian ships promtool in it)")
    return found


def _alerts(groups: list[dict[str, Any]]) -> set[str]:
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def test_rules_file_is_valid_and_complete() -> None:
    result = run([promtool(), "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    groups = yaml.safe_load(RULES.read_text())["groups"]
    assert _alerts(groups) == EXPECTED_ALERTS
    for group in groups:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
    names = referenced_metric_names(RULES.read_text())
    assert names <= exposed_metric_names(), f"unknown metrics {names - exposed_metric_names()}"


def test_promtool_unit_tests_pass() -> None:
    result = run([promtool(), "test", "rules", str(RULE_TESTS)], cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    }
    assert tested == EXPECTED_ALERTS, f"alerts without a unit test: {EXPECTED_ALERTS - tested}"


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            (fires if case["exp_alerts"] else quiet).add(case["alertname"])
    assert fires == EXPECTED_ALERTS and quiet == EXPECTED_ALERTS


def test_prometheus_rule_is_rendered_from_the_rules_file(tmp_path: Path) -> None:
    render = runpy.run_path(str(DEPLOY / "prometheus" / "render_rules.py"))["render"]
    assert PROMETHEUS_RULE.read_text() == render(RULES.read_text()), (
        "deploy/k8s/base/prometheusrule.yaml is stale: python deploy/prometheus/render_rules.py"
    )
    manifest = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    # What the Prometheus Operator hands to Prometheus passes promtool too.
    extracted = tmp_path / "rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": manifest["spec"]["groups"]}))
    result = run([promtool(), "check", "rules", str(extracted)])
    assert result.returncode == 0, result.stdout + result.stderr
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "base" / "kustomization.yaml").read_text())
    assert PROMETHEUS_RULE.name in kustomization["resources"]


def test_compose_prometheus_loads_the_rules(tmp_path: Path) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["prometheus"]["volumes"])
    (rule_file,) = config["rule_files"]
    assert mounts["./prometheus/alerts.yml"] == rule_file
    # The config as compose mounts it, checked by promtool (rules included).
    config["rule_files"] = [str(RULES)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = run([promtool(), "check", "config", str(tmp_path / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr

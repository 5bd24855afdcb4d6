"""The Prometheus rules and the Grafana dashboard: valid, tested by promtool, on real metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
GRAFANA = ROOT / "deploy" / "grafana" / "momento-pipeline.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"
METRIC = re.compile(r"\b((?:pipeline|celery)_[a-z_]+)")
SUFFIXES = ("_bucket", "_sum", "_count")


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install -y prometheus (.ci/run does this)"
    return found


def documented() -> set[str]:
    return set(METRIC.findall(METRICS_DOC.read_text()))


def base_name(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def test_promtool_accepts_the_alerting_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout + result.stderr


def test_alerts_fire_on_lost_messages_a_stuck_outbox_an_unheld_topic_and_a_quiet_one() -> None:
    cases = Path(__file__).with_name("alerts_test.yml")
    result = subprocess.run(
        [promtool(), "test", "rules", cases.name],
        cwd=cases.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_the_rules_and_dashboard_use_is_documented() -> None:
    rules = yaml.safe_load(RULES.read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads(GRAFANA.read_text())
    expressions += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {base_name(name) for expr in expressions for name in METRIC.findall(expr)}
    assert len(used) >= 15
    assert used <= documented(), used - documented()
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])

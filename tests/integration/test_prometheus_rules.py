"""The alert rules in deploy/prometheus: promtool checks and unit-tests them, every alert is
tested firing, and each has its runbook line in docs/metrics.md. A deliberately broken
exposition fails `promtool check metrics` (the check the gateway's own /metrics passes)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "pswd-gateway.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "pswd-gateway.rules.test.yml"
METRICS_DOC = ROOT / "docs" / "metrics.md"

pytestmark = [pytest.mark.integration, pytest.mark.needs_tool("promtool", "prometheus")]


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def alerts() -> dict[str, dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_promtool_checks_the_rules() -> None:
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_pass() -> None:
    out = promtool("test", "rules", str(RULE_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_is_tested_firing() -> None:
    spec = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    fired = {
        case["alertname"]
        for test in spec["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert set(alerts()) - fired == set()


def test_every_alert_has_a_runbook_line() -> None:
    doc = METRICS_DOC.read_text(encoding="utf-8")
    headings = {
        re.sub(r"[^a-z0-9]", "", h.lower()) for h in re.findall(r"^#+ (.+)$", doc, re.MULTILINE)
    }
    for name, rule in alerts().items():
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        anchor = str(annotations["runbook"]).split("#", 1)[1]
        assert anchor == name.lower(), name
        assert anchor in headings, f"docs/metrics.md has no heading for {name}"


@pytest.mark.parametrize(
    ("exposition", "complaint"),
    [
        (
            '# HELP x_seconds Lateness.\n# TYPE x_seconds gauge\nx_seconds{quantile="0.99"} 1\n',
            "quantile",
        ),
        ("# HELP x Things.\n# TYPE x counter\nx 1\n", "_total"),
    ],
)
def test_a_broken_metric_fails_promtool(exposition: str, complaint: str) -> None:
    """What the gateway's exposition is checked with (test_gateway_twin) does fail on a defect."""
    out = promtool("check", "metrics", stdin=exposition)
    assert out.returncode != 0 or out.stdout.strip(), "promtool accepted a broken exposition"
    assert complaint in out.stdout + out.stderr

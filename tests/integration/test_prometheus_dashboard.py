"""The Grafana dashboard and the alert rules against a real Prometheus scraping a real gateway.

Prometheus (Debian's package, on loopback, a temporary data directory) scrapes the gateway on the
site's twin every second and evaluates deploy/prometheus/pswd-gateway.rules.yml. Every panel's
PromQL in deploy/grafana/dashboards/pswd-gateway.json returns series, every metric a rule reads
exists, and the twin's training rhythm with control off (the grid sees every edge) fires
PswdRampLimitExceeded.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pswd_gateway.bench.api import free_port
from pswd_gateway.config import GatewayConfig
from pswd_gateway.daemon import Gateway
from pswd_gateway.domain.identity import Identity
from pswd_gateway.domain.workloads import Announcement
from pswd_gateway.security.certs import init_opcua_certs
from pswd_gateway.simulation.config import SimulationConfig
from pswd_gateway.simulation.twin import Twin

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "pswd-gateway.json"
RULES = ROOT / "deploy" / "prometheus" / "pswd-gateway.rules.yml"
RATE_INTERVAL = "15s"
"""What Grafana's ``$__rate_interval`` becomes here (four 1 s scrapes and more)."""

pytestmark = [pytest.mark.integration, pytest.mark.needs_tool("prometheus", "prometheus")]


@dataclass
class Stack:
    gateway: Gateway
    prometheus: str
    """Base URL of Prometheus' HTTP API."""


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target in the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [
        (p["title"], t["expr"].replace("$__rate_interval", RATE_INTERVAL))
        for p in dashboard["panels"]
        for t in p.get("targets", [])
    ]


def rule_metrics() -> set[str]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    names: set[str] = set()
    for rule in (r for g in groups for r in g["rules"]):
        names |= set(re.findall(r"\bpswd_[a-z0-9_]+", rule["expr"]))
    return names


async def query(client: httpx.AsyncClient, base: str, promql: str) -> list[dict[str, Any]]:
    answer = (await client.get(f"{base}/api/v1/query", params={"query": promql})).json()
    assert answer["status"] == "success", (promql, answer)
    result = answer["data"]["result"]
    return result if isinstance(result, list) else [result]


async def start_prometheus(tmp: Path, target: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {"job_name": "pswd-gateway", "static_configs": [{"targets": [target]}]}
                ],
            }
        ),
        encoding="utf-8",
    )
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30.0
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited: {(tmp / 'prometheus.log').read_text()[-2000:]}")
            try:
                if (await client.get(f"{base}/-/ready")).status_code == 200:
                    return proc, base
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    proc.kill()
    pytest.fail("prometheus did not become ready in 30 s")


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    twin = Twin(
        SimulationConfig.model_validate(
            {"seed": 5, "ports": {"grid_meter": 0, "bess": 0, "thermal": 0, "redfish": [0, 0]}}
        )
    )
    await twin.start()
    gw: Gateway | None = None
    prom: subprocess.Popen[bytes] | None = None
    try:
        certs = tmp_path / "certs"
        init_opcua_certs(certs, ["127.0.0.1"])
        cfg = GatewayConfig.model_validate(
            {
                "site": {"it_load": ["gpu_hall_a", "gpu_hall_b"]},
                "devices": twin.gateway_devices(),
                "listeners": {
                    "metrics": {"host": "127.0.0.1", "port": 0},
                    "api": {"host": "127.0.0.1", "port": 0},
                    "opcua": {"host": "127.0.0.1", "port": free_port()},
                    "iec61850": {"host": "127.0.0.1", "port": free_port()},
                },
                "opcua": {"certs_dir": str(certs)},
                "storage": {"state_dir": str(tmp_path / "state")},
            }
        )
        gw = Gateway(cfg)
        await gw.start()
        assert gw.metrics_listener is not None
        prom, base = await start_prometheus(tmp_path, f"127.0.0.1:{gw.metrics_listener.port}")
        yield Stack(gw, base)
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(timeout=10)
        if gw is not None:
            await gw.stop()
        await twin.stop()


async def exercise(gw: Gateway) -> None:
    """What puts a series behind every panel: a workload, an API request."""
    assert gw.workloads is not None
    start = datetime.now(UTC) + timedelta(hours=1)
    announcement = Announcement.model_validate(
        {
            "workload_type": "ai_training",
            "flexibility": "fixed",
            "power_profile": {
                "peak_power_mw": 20.0,
                "ramp_rate_mw_per_sec": 10.0,
                "duration_estimate_sec": 600.0,
            },
            "timing_constraints": {
                "earliest_start_time": start.isoformat(),
                "deadline": (start + timedelta(hours=1)).isoformat(),
            },
        }
    )
    await gw.workloads.announce(announcement, Identity("test", "admin"))
    assert gw.api_listener is not None
    async with httpx.AsyncClient(timeout=5.0) as client:
        for _ in range(3):
            await client.get(f"http://127.0.0.1:{gw.api_listener.port}/v1/site")


async def test_every_panel_and_rule_query_returns_series_and_a_ramp_violation_fires(
    stack: Stack,
) -> None:
    await exercise(stack.gateway)
    async with httpx.AsyncClient(timeout=5.0) as client:
        # Until the ramp alert fires (the rhythm starts ~15 s into the twin) and every query has
        # the samples it needs (a rate needs two scrapes in its window; on a busy machine a
        # scrape can miss its 1 s slot), or the deadline: then the last answers are judged.
        deadline = time.monotonic() + 90.0
        while True:
            alerts = (await client.get(f"{stack.prometheus}/api/v1/alerts")).json()
            firing = [
                a
                for a in alerts["data"]["alerts"]
                if a["labels"]["alertname"] == "PswdRampLimitExceeded" and a["state"] == "firing"
            ]
            empty = [
                f"{title}: {promql}"
                for title, promql in panel_queries()
                if not await query(client, stack.prometheus, promql)
            ]
            missing = [
                name
                for name in sorted(rule_metrics())
                if not await query(client, stack.prometheus, f"{name}")
                and not await query(client, stack.prometheus, f"{name}_bucket")
            ]
            if (firing and not empty and not missing) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
    assert firing, "PswdRampLimitExceeded did not fire on the unsmoothed training rhythm"
    assert float(firing[0]["value"]) > 20e6
    assert empty == [], "panel queries without series:\n" + "\n".join(empty)
    assert missing == [], f"metrics the alert rules read but Prometheus has not: {missing}"

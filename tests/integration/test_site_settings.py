"""The site's settings have one owner: a SIGHUP reload or an operator's limit (the path MMS and
OPC UA take) is audited and in force at once in the control cycle and in placement."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from pswd_gateway.config import load_config
from pswd_gateway.control.cycle import grid_settings
from pswd_gateway.daemon import Gateway
from pswd_gateway.domain.identity import Identity
from pswd_gateway.domain.workloads import Announcement
from pswd_gateway.scheduling.scheduler import DoesNotFitError

pytestmark = pytest.mark.integration


def settings(tmp: Path, import_mw: float, ramp: float) -> dict[str, Any]:
    return {
        "site": {"grid_import_limit_mw": import_mw, "grid_ramp_limit_mw_per_s": ramp},
        "listeners": {
            "metrics": {"enabled": False, "port": 0},
            "api": {"enabled": False, "port": 0},
        },
        "storage": {"state_dir": str(tmp / "state"), "journal_synchronous": "normal"},
    }


def write(path: Path, cfg: dict[str, Any]) -> None:
    path.write_text(tomli_w.dumps(cfg), encoding="utf-8")


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Gateway, Path]]:
    """``Gateway.run()`` as ``pswd-gateway run`` does it: its own signal handlers, SIGHUP too."""
    path = tmp_path / "gateway.toml"
    write(path, settings(tmp_path, 400.0, 20.0))
    gw = Gateway(load_config(path), config_path=path)
    task = asyncio.create_task(gw.run())
    for _ in range(200):
        if gw.workloads is not None and gw.control is not None:
            break
        await asyncio.sleep(0.05)
    try:
        yield gw, path
    finally:
        gw.request_stop()
        await asyncio.wait_for(task, 15)


def job(peak_mw: float) -> Announcement:
    start = datetime.now(UTC) + timedelta(hours=1)
    return Announcement.model_validate(
        {
            "workload_type": "ai_training",
            "power_profile": {
                "peak_power_mw": peak_mw,
                "ramp_rate_mw_per_sec": 10.0,
                "duration_estimate_sec": 1800.0,
            },
            "timing_constraints": {
                "earliest_start_time": start.isoformat(),
                "deadline": (start + timedelta(hours=2)).isoformat(),
            },
        }
    )


def fits(gw: Gateway, peak_mw: float) -> bool:
    assert gw.workloads is not None
    assert gw.forecast is not None
    try:
        gw.workloads.scheduler.place("probe", job(peak_mw), [], gw.forecast.current(),
                                     datetime.now(UTC))  # fmt: skip
    except DoesNotFitError:
        return False
    return True


def control_ramp_w_per_s(gw: Gateway) -> float:
    """The ramp the control cycle would enforce now (from the settings it holds)."""
    assert gw.control is not None
    return grid_settings(gw.control.config, gw.control.site, 250e6, 120 * 3.6e9).ramp_limit_w_per_s


async def audit_actions(gw: Gateway) -> list[dict[str, Any]]:
    assert gw.journal is not None
    return await gw.journal.call(gw.journal.sync.audit_entries, 0, 100)


async def test_sighup_changes_the_control_cycle_and_what_the_scheduler_accepts(
    running: tuple[Gateway, Path], tmp_path: Path
) -> None:
    gw, path = running
    assert control_ramp_w_per_s(gw) == 20e6
    assert fits(gw, 350.0)
    write(path, settings(tmp_path, 150.0, 5.0))
    os.kill(os.getpid(), signal.SIGHUP)
    for _ in range(100):
        if gw.settings.current.grid_import_limit_mw == 150.0:
            break
        await asyncio.sleep(0.05)
    assert control_ramp_w_per_s(gw) == 5e6
    assert gw.control is not None
    assert gw.control.site.import_limit_mw == 150.0
    assert not fits(gw, 350.0)
    assert fits(gw, 200.0)
    reloads = [a for a in await audit_actions(gw) if a["action"] == "reload site settings"]
    assert reloads
    assert reloads[-1]["actor"] == "config-file"
    assert reloads[-1]["detail"]["grid_import_limit_mw"] == {"from": 400.0, "to": 150.0}


async def test_an_operators_import_limit_changes_placement_too(
    running: tuple[Gateway, Path],
) -> None:
    """MMS (`_mms_operate`) and OPC UA (`SetGridImportLimit`) both call `set_site_limit`."""
    gw, _ = running
    tso = Identity("tso", "operator")
    assert fits(gw, 350.0)
    await gw.set_site_limit("grid_import_limit_mw", 100.0, tso)
    assert not fits(gw, 350.0)
    assert gw.control is not None
    assert gw.control.site.grid_import_limit_mw == 100.0
    with pytest.raises(ValueError, match="grid_import_limit_mw"):
        await gw.set_site_limit("grid_import_limit_mw", -1.0, tso)
    assert gw.settings.current.grid_import_limit_mw == 100.0  # a refused value changes nothing
    await gw.set_site_limit("grid_import_limit_mw", 400.0, tso)
    await gw.set_site_limit("demand_response_limit_mw", 100.0, tso)
    assert fits(gw, 350.0)  # a demand-response limit binds only while active…
    await gw.set_site_limit("demand_response_active", value=True, who=tso)
    assert not fits(gw, 350.0)  # …and then placement as well as the control cycle
    actions = [a["action"] for a in await audit_actions(gw)]
    assert "set grid_import_limit_mw" in actions
    assert "set demand_response_active" in actions

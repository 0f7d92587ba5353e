"""The import forecast over IEC 61850 (FSCH1/FSCC1): libiec61850's own client, in a process of
its own, reads the schedule the MMS process (also a process of its own, as the gateway runs it)
serves from the plan, and the new one after the plan changes."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pytest
from test_iec61850 import SITE, client

from pswd_gateway.bench.api import free_port
from pswd_gateway.domain.identity import Identity
from pswd_gateway.northbound.iec61850.link import MmsSettings
from pswd_gateway.northbound.iec61850.process import MmsProcess
from pswd_gateway.northbound.iec61850.schedule import (
    ENTRIES,
    INTERVAL_S,
    ForecastSchedule,
    ScheduleState,
    forecast_schedule,
)
from pswd_gateway.scheduling.model import SiteForecast, SiteForecastSlot
from pswd_gateway.store import PointStore

pytestmark = pytest.mark.integration

FSCH: Final = "PSWDGRID/FSCH1"
FSCC: Final = "PSWDGRID/FSCC1"
ENTRIES_READ: Final = ["floats", f"{FSCH}.ValASG%03d.setMag.f", ENTRIES, "SP"]
ACCESS_DENIED: Final = 21
"""IED_ERROR_ACCESS_DENIED."""
WAIT_S: Final = 30.0
"""How long a change may take to reach the client (generous: the machine is shared)."""


def plan(imports_mw: list[float], slot_s: int = 900) -> SiteForecast:
    """A plan from the slot boundary at or before now, as the scheduler makes one."""
    now = time.time()
    start = datetime.fromtimestamp(math.floor(now / slot_s) * slot_s, UTC)
    rows = tuple(
        SiteForecastSlot(start + timedelta(seconds=i * slot_s), mw, mw, 0.0, 0.0, 300.0, 500.0)
        for i, mw in enumerate(imports_mw)
    )
    return SiteForecast(start, slot_s, rows, "test")


def mw(values_w: tuple[float, ...]) -> list[float]:
    return [v / 1e6 for v in values_w]


@dataclass
class Served:
    """The gateway's side: the MMS process, its port, and the plan it reads (replace it to
    change the plan)."""

    mms: MmsProcess
    port: int
    plan: SiteForecast


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """An MMS process whose plan steps 30 → 80 MW over 15-minute slots for 48 h, read every
    0.2 s."""
    port = free_port()
    settings = MmsSettings(port=port, anonymous_read=True, interval_s=0.05)
    mms = MmsProcess(PointStore(), lambda: SITE, settings, forecast=lambda: holder.plan,
                     forecast_every_s=0.2)  # fmt: skip
    holder = Served(mms, port, plan([30.0 + (i % 11) * 5.0 for i in range(192)]))
    await mms.start()
    try:
        yield holder
    finally:
        await mms.stop()


async def read_schedule(port: int) -> dict[str, Any]:
    """Everything of FSCH1 and FSCC1 a grid operator reads, by name, from one revision.

    The client reads one attribute at a time (the entries alone are 576 reads), so a new
    schedule written meanwhile would mix two revisions: the revision and start time are read
    again after the entries, and a read they changed under is taken again."""
    for _ in range(5):
        got = await _read_schedule_once(port)
        if (got.pop("param_rev_after"), got.pop("str_tm_after")) == (
            got["param_rev"],
            got["str_tm"],
        ):
            return got
    raise AssertionError(f"the schedule changed under five reads in a row: {got}")


async def _read_schedule_once(port: int) -> dict[str, Any]:
    reads: dict[str, list[Any]] = {
        "num_entr": ["int", f"{FSCH}.NumEntr.setVal", "SP"],
        "schd_intv": ["int", f"{FSCH}.SchdIntv.setVal", "SP"],
        "schd_intv_unit": ["int", f"{FSCH}.SchdIntv.units.SIUnit", "CF"],
        "str_tm": ["utc_ms", f"{FSCH}.StrTm01.setTm", "SP"],
        "schd_st": ["int", f"{FSCH}.SchdSt.stVal", "ST"],
        "schd_entr": ["int", f"{FSCH}.SchdEntr.stVal", "ST"],
        "val_mv": ["float", f"{FSCH}.ValMV.mag.f", "MX"],
        "val_mv_q": ["quality", f"{FSCH}.ValMV.q", "MX"],
        "param_rev": ["int", f"{FSCH}.NamPlt.paramRev", "ST"],
        "unit": ["int", f"{FSCH}.ValASG001.units.SIUnit", "CF"],
        "multiplier": ["int", f"{FSCH}.ValASG001.units.multiplier", "CF"],
        "act_schd_ref": ["string", f"{FSCC}.ActSchdRef.stVal", "ST"],
        "ctl_ent": ["string", f"{FSCC}.CtlEnt.setSrcRef", "SP"],
        "controller_mv": ["float", f"{FSCC}.ValMV.mag.f", "MX"],
        "entries": ENTRIES_READ,
        "param_rev_after": ["int", f"{FSCH}.NamPlt.paramRev", "ST"],
        "str_tm_after": ["utc_ms", f"{FSCH}.StrTm01.setTm", "SP"],
    }
    got = await client(port, list(reads.values()))
    assert got["connect"] == 0, got
    out: dict[str, Any] = {}
    for name, (value, err) in zip(reads, got["results"], strict=True):
        assert err in (0, []), (name, err)
        out[name] = value
    return out


async def until(port: int, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Read the schedule until ``done`` says so (at most :data:`WAIT_S`)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        got = await read_schedule(port)
        if done(got) or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.2)


def assert_serves(got: dict[str, Any], expected: ForecastSchedule) -> None:
    assert got["str_tm"] == round(expected.start_ts * 1000)
    assert len(got["entries"]) == ENTRIES
    assert got["entries"] == pytest.approx(mw(expected.values_w), rel=1e-6)


async def test_a_client_reads_the_plans_import_forecast_as_576_five_minute_entries(
    served: Served,
) -> None:
    got = await until(served.port, lambda g: g["schd_st"] == ScheduleState.RUNNING)
    expected = forecast_schedule(served.plan, got["str_tm"] / 1000)
    assert expected is not None
    assert (got["num_entr"], got["schd_intv"], got["schd_intv_unit"]) == (576, 300, 4)  # s
    assert (got["unit"], got["multiplier"]) == (62, 6)  # W x 10^6: MW
    start = got["str_tm"] / 1000
    assert start % INTERVAL_S == 0
    assert start <= time.time() < start + 2 * INTERVAL_S
    assert_serves(got, expected)
    for entry in (1, 2, 3, 4, 100, 288, 576):  # spot checks, against the plan itself
        at = start + (entry - 1) * INTERVAL_S
        k = min(int((at - served.plan.start.timestamp()) // 900), len(served.plan.slots) - 1)
        assert got["entries"][entry - 1] == pytest.approx(served.plan.slots[k].grid_import_mw)
    entry = got["schd_entr"]
    assert 1 <= entry <= 2
    assert got["val_mv"] == pytest.approx(got["entries"][entry - 1])
    assert got["controller_mv"] == got["val_mv"]
    assert got["val_mv_q"] & 0x3 == 0  # good
    assert got["param_rev"] >= 1  # 2 if the window moved on meanwhile
    assert got["act_schd_ref"] == FSCH
    assert got["ctl_ent"] == "PSWDGRID/MMXU1.TotW"


async def test_a_new_plan_reaches_the_client_with_a_new_revision(served: Served) -> None:
    """(Waited for by its values: the window moving on by an entry is a new revision too.)"""
    before = await until(served.port, lambda g: g["param_rev"] >= 1)
    served.plan = plan([120.0] * 8 + [45.0] * 184)
    changed_at = time.monotonic()
    got = await until(served.port, lambda g: g["entries"][0] == pytest.approx(120.0))
    took_s = time.monotonic() - changed_at
    assert got["param_rev"] > before["param_rev"]
    now_served = forecast_schedule(served.plan, got["str_tm"] / 1000)
    assert now_served is not None
    assert_serves(got, now_served)
    assert got["entries"][0] == pytest.approx(120.0)
    assert got["entries"][-1] == pytest.approx(45.0)
    print(f"plan change to the client's read of the new schedule: {took_s:.2f} s")


async def test_a_client_cannot_write_the_schedule(served: Served) -> None:
    """The write is refused and the entry keeps the gateway's value. The window moves on every
    5 minutes (and the first entry with it at a slot's start), so the value is compared only
    where the revision read around it is the one ``before`` was read at."""
    before = await until(served.port, lambda g: g["schd_st"] == ScheduleState.RUNNING)
    revision = ["int", f"{FSCH}.NamPlt.paramRev", "ST"]
    for _ in range(3):
        got = await client(served.port, [
            revision,
            ["write_float", f"{FSCH}.ValASG001.setMag.f", "SP", 999.0],
            ["float", f"{FSCH}.ValASG001.setMag.f", "SP"],
            revision,
        ])  # fmt: skip
        (rev_before, _), written, (value, _), (rev_after, _) = got["results"]
        assert written == ACCESS_DENIED
        assert value != pytest.approx(999.0)
        if rev_before == rev_after == before["param_rev"]:
            assert value == pytest.approx(before["entries"][0])
            return
        before = await read_schedule(served.port)
    raise AssertionError("the schedule changed under three writes in a row")


async def test_a_restarted_mms_process_serves_the_schedule_from_its_first_frame(
    served: Served,
) -> None:
    """The schedule is part of what a new MMS process gets before it serves: after a crash the
    client reads the same entries and revision, not an empty schedule."""
    before = await until(served.port, lambda g: g["schd_st"] == ScheduleState.RUNNING)
    pid = served.mms.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + WAIT_S
    while not (served.mms.up and served.mms.pid != pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert served.mms.restarts_total == 1
    after = await read_schedule(served.port)  # at once: no waiting for a later frame
    assert after["schd_st"] == ScheduleState.RUNNING
    assert after["param_rev"] >= before["param_rev"]  # the gateway's count, not the process's
    expected = forecast_schedule(served.plan, after["str_tm"] / 1000)
    assert expected is not None
    assert_serves(after, expected)


async def test_the_gateways_plan_is_served_and_a_new_workload_changes_it(tmp_path: Path) -> None:
    """The whole gateway: FSCH1 serves ``WorkloadService.site_forecast`` (base load), and an
    announced workload raises the entries it covers within the forecast's read period."""
    from pswd_gateway.config import GatewayConfig  # noqa: PLC0415
    from pswd_gateway.daemon import Gateway  # noqa: PLC0415
    from pswd_gateway.domain.workloads import Announcement  # noqa: PLC0415

    port = free_port()
    gw = Gateway(GatewayConfig.model_validate({
        "listeners": {
            "metrics": {"enabled": False, "port": 0},
            "api": {"enabled": False, "port": 0},
            "iec61850": {"host": "127.0.0.1", "port": port},
        },
        "site": {"grid_meter": "meter", "bess": "bess", "thermal": None},
        "storage": {"state_dir": str(tmp_path), "journal_synchronous": "normal"},
        "iec61850": {"anonymous_read": True, "update_interval_ms": 50},
        "scheduling": {"base_load_mw": 30.0},
    }))  # fmt: skip
    await gw.start()
    try:
        assert gw.workloads is not None
        first = await until(port, lambda g: g["schd_st"] == ScheduleState.RUNNING)
        expected = forecast_schedule(gw.workloads.site_forecast(), first["str_tm"] / 1000)
        assert expected is not None
        assert_serves(first, expected)
        assert first["entries"][0] == pytest.approx(30.0)
        begin = datetime.fromtimestamp(first["str_tm"] / 1000, UTC) + timedelta(hours=2)
        announcement = Announcement.model_validate({
            "workload_type": "ai_training",
            "flexibility": "fixed",
            "power_profile": {"peak_power_mw": 20.0, "ramp_rate_mw_per_sec": 10.0,
                              "duration_estimate_sec": 3600.0},
            "timing_constraints": {"earliest_start_time": begin.isoformat(),
                                   "deadline": (begin + timedelta(hours=2)).isoformat()},
        })  # fmt: skip
        await gw.workloads.announce(announcement, Identity("test", "admin"))
        after = await until(port, lambda g: max(g["entries"]) > 40.0)
        expected = forecast_schedule(gw.workloads.site_forecast(), after["str_tm"] / 1000)
    finally:
        await gw.stop()
    assert after["param_rev"] > first["param_rev"]
    assert expected is not None
    assert_serves(after, expected)
    assert max(after["entries"]) == pytest.approx(50.0)  # 30 MW base + the 20 MW job


async def test_the_soak_probe_reads_the_served_grid_power(served: Served) -> None:
    """``bench soak``'s MMS probe (its own process, libiec61850's client) reads MMXU1.TotW and
    says so; one whose first association the client lost says how many it made again."""
    from pswd_gateway.bench.soak import probe_mms_once  # noqa: PLC0415

    await until(served.port, lambda g: g["schd_st"] == ScheduleState.RUNNING)
    ok, detail = await probe_mms_once("127.0.0.1", served.port, "PSWDGRID/MMXU1.TotW.mag.f")
    assert ok, detail
    assert detail.startswith("connect 0, read PSWDGRID/MMXU1.TotW.mag.f error 0"), detail

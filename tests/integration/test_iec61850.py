"""IEC 61850: libiec61850's own client against the gateway's MMS server on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from pswd_gateway.bench.api import free_port
from pswd_gateway.config import SiteConfig
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.northbound.iec61850.server import MmsServer
from pswd_gateway.store import PointStore

pytestmark = pytest.mark.integration

m = pytest.importorskip("pyiec61850.pyiec61850")
SITE = SiteConfig(grid_meter="meter", bess="bess", thermal=None, it_load=())


@pytest.fixture
async def mms() -> AsyncIterator[tuple[MmsServer, PointStore, int]]:
    store = PointStore()
    port = free_port()
    server = MmsServer(store, lambda: SITE, port=port, interval_s=0.05)
    await server.start()
    try:
        yield server, store, port
    finally:
        await server.stop()


def feed(store: PointStore, grid_w: float, quality: Quality = Quality.GOOD) -> float:
    now = time.time()
    store.update(
        [
            Point("meter.active_power", grid_w, "W", quality, now, now),
            Point("meter.frequency", 50.01, "Hz", Quality.GOOD, now, now),
            Point("bess.soc", 0.42, "1", Quality.GOOD, now, now),
        ]
    )
    return now


def read(port: int, reference: str, fc: int) -> tuple[object, int]:
    con = m.IedConnection_create()
    try:
        _, err = m.IedConnection_connect(con, "127.0.0.1", port)
        assert err == 0, f"connect failed: {err}"
        if fc == m.IEC61850_FC_MX and reference.endswith(".f"):
            return m.IedConnection_readFloatValue(con, reference, fc)
        return m.IedConnection_readQualityValue(con, reference, fc)
    finally:
        m.IedConnection_close(con)
        m.IedConnection_destroy(con)


async def test_measurements_match_the_store_in_their_units(
    mms: tuple[MmsServer, PointStore, int],
) -> None:
    server, store, port = mms
    feed(store, 123.5e6)
    await asyncio.sleep(0.3)
    value, err = await asyncio.to_thread(read, port, "PSWDGRID/MMXU1.TotW.mag.f", m.IEC61850_FC_MX)
    assert err == 0
    assert value == pytest.approx(123.5)  # MW: unit W, multiplier M
    soc, err = await asyncio.to_thread(read, port, "PSWDBESS/ZBAT1.SoC.mag.f", m.IEC61850_FC_MX)
    assert err == 0
    assert soc == pytest.approx(42.0)
    assert server.stats.updates_total >= 3


async def test_an_invalid_device_is_served_with_invalid_quality(
    mms: tuple[MmsServer, PointStore, int],
) -> None:
    _, store, port = mms
    feed(store, 50e6)
    await asyncio.sleep(0.2)
    feed(store, 50e6, Quality.INVALID)
    await asyncio.sleep(0.3)
    quality, err = await asyncio.to_thread(read, port, "PSWDGRID/MMXU1.TotW.q", m.IEC61850_FC_MX)
    assert err == 0
    assert quality & 0x3 == m.QUALITY_VALIDITY_INVALID

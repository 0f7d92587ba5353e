"""Credentials and the zone policy rotate on SIGHUP, without a restart: a removed API token
stops working at the next request, a new one works, a narrowed conduit is in force at once, and
the change is audited by name (never a secret)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w
from test_http_api import body

from pswd_gateway.bench.api import free_port
from pswd_gateway.config import load_config
from pswd_gateway.daemon import Gateway
from pswd_gateway.security.passwords import hash_password

pytestmark = pytest.mark.integration


def settings(tmp: Path, port: int, token: str, access: str) -> dict[str, Any]:
    return {
        "listeners": {
            "metrics": {"enabled": False, "port": 0},
            "api": {"host": "127.0.0.1", "port": port},
        },
        "storage": {"state_dir": str(tmp / "state"), "journal_synchronous": "normal"},
        "api": {
            "tokens": [
                {
                    "name": token,
                    "role": "submitter",
                    "sha256": hashlib.sha256(f"secret-{token}".encode()).hexdigest(),
                }
            ]
        },
        "zones": {"enterprise": {"kind": "enterprise", "networks": ["127.0.0.1/32"]}},
        "conduits": [{"name": "ml", "zone": "enterprise", "listener": "api", "access": access}],
    }


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Gateway, Path, int]]:
    path, port = tmp_path / "gateway.toml", free_port()
    path.write_text(tomli_w.dumps(settings(tmp_path, port, "old", "announce")))
    gw = Gateway(load_config(path), config_path=path)
    task = asyncio.create_task(gw.run())
    for _ in range(200):
        if gw.api_listener is not None and gw.workloads is not None:
            break
        await asyncio.sleep(0.05)
    try:
        yield gw, path, port
    finally:
        gw.request_stop()
        async with asyncio.timeout(15):
            await task


async def test_sighup_rotates_tokens_and_conduits_and_audits_the_change(
    running: tuple[Gateway, Path, int], tmp_path: Path
) -> None:
    gw, path, port = running
    old = {"Authorization": "Bearer secret-old"}
    new = {"Authorization": "Bearer secret-new"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        assert (await http.post("/v1/workloads", json=body(), headers=old)).status_code == 201
        assert (await http.get("/v1/workloads", headers=new)).status_code == 401
        path.write_text(tomli_w.dumps(settings(tmp_path, port, "new", "read")))
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):
            if (await http.get("/v1/workloads", headers=new)).status_code == 200:
                break
            await asyncio.sleep(0.05)
        assert (await http.get("/v1/workloads", headers=old)).status_code == 401
        assert (await http.get("/v1/workloads", headers=new)).status_code == 200
        narrowed = await http.post("/v1/workloads", json=body(), headers=new)
    assert narrowed.status_code == 403
    assert "conduit 'ml' from zone 'enterprise' does not allow 'announce'" in narrowed.text
    assert gw.journal is not None
    audit = await gw.journal.call(gw.journal.sync.audit_entries, 0, 100)
    reload = [a for a in audit if a["action"] == "config reload"]
    assert reload
    assert reload[-1]["detail"]["api.tokens"] == {
        "added": ["new"],
        "removed": ["old"],
        "changed": [],
    }
    assert reload[-1]["detail"]["conduits"]["changed"] == ["ml"]
    assert "secret" not in str(reload[-1]["detail"])


MMS_CLIENT = Path(__file__).with_name("mms_client.py")


def mms_settings(tmp: Path, port: int, mms_port: int, password: str) -> dict[str, Any]:
    cfg = settings(tmp, port, "ml", "announce")
    cfg["listeners"]["iec61850"] = {"host": "127.0.0.1", "port": mms_port}
    cfg["iec61850"] = {
        "users": [
            {
                "name": "tso",
                "role": "operator",
                "password_hash": hash_password(password, iterations=1000),
            }
        ]
    }
    cfg["zones"]["scada"] = {"kind": "scada", "networks": ["127.0.0.1/32"]}
    cfg["conduits"].append(
        {"name": "tso-mms", "zone": "scada", "listener": "iec61850", "access": "operate"}
    )
    return cfg


async def _associate(port: int, password: str) -> int:
    """libiec61850's error code of an association with ``password`` (0: associated)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(MMS_CLIENT), str(port), password, "[]",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    connect: int = json.loads(out.decode().strip().splitlines()[-1])["connect"]
    return connect


async def test_sighup_rotates_mms_passwords_in_the_running_mms_process(tmp_path: Path) -> None:
    path, port, mms_port = tmp_path / "gateway.toml", free_port(), free_port()
    path.write_text(tomli_w.dumps(mms_settings(tmp_path, port, mms_port, "old-secret")))
    gw = Gateway(load_config(path), config_path=path)
    task = asyncio.create_task(gw.run())
    try:
        for _ in range(400):
            if gw.mms is not None and gw.mms.up:
                break
            await asyncio.sleep(0.05)
        assert gw.mms is not None
        assert gw.mms.up
        pid = gw.mms.pid
        assert await _associate(mms_port, "old-secret") == 0
        assert await _associate(mms_port, "new-secret") != 0
        path.write_text(tomli_w.dumps(mms_settings(tmp_path, port, mms_port, "new-secret")))
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):
            if await _associate(mms_port, "new-secret") == 0:
                break
            await asyncio.sleep(0.1)
        assert await _associate(mms_port, "new-secret") == 0
        assert await _associate(mms_port, "old-secret") != 0
        assert gw.mms.pid == pid  # the same MMS process: not restarted
        assert gw.journal is not None
        audit = await gw.journal.call(gw.journal.sync.audit_entries, 0, 200)
        reload = [a for a in audit if a["action"] == "config reload"]
        assert reload[-1]["detail"]["iec61850.users"] == {
            "added": [],
            "removed": [],
            "changed": ["tso"],
        }
        assert "secret" not in str(reload[-1]["detail"])
    finally:
        gw.request_stop()
        async with asyncio.timeout(15):
            await task

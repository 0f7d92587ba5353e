"""The gateway's MMS server (libiec61850) in a process of its own, for the hostile-input tests.

A fault inside libiec61850 (C) ends the process that runs it: here that is this process, not
pytest, so a test sees the crash as an exit status and can name the bytes that caused it.
Usage::

    python mms_server.py

Serves a minimal site on a free loopback port with two users (``tso-secret``: operator,
``analyst-secret``: viewer) and anonymous reads. Prints one JSON object a line: ``ready``
with the port, then ``operate`` and ``refused`` as the server's hooks are called (the site's
settings change as an operator's accepted control says). Stops when its standard input closes.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from pswd_gateway.bench.api import free_port
from pswd_gateway.config import Iec61850UserConfig, SiteConfig
from pswd_gateway.domain.identity import Identity
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.northbound.iec61850.server import MmsHooks, MmsServer
from pswd_gateway.security.passwords import hash_password
from pswd_gateway.store import PointStore

USERS = (
    Iec61850UserConfig(
        name="tso", role="operator", password_hash=hash_password("tso-secret", iterations=1000)
    ),
    Iec61850UserConfig(
        name="analyst",
        role="viewer",
        password_hash=hash_password("analyst-secret", iterations=1000),
    ),
)


def say(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}, default=str), flush=True)


class Site:
    def __init__(self) -> None:
        self.site = SiteConfig(grid_meter="meter", bess="bess", thermal=None, it_load=())

    async def operate(self, action: str, value: float | bool, caller: Identity) -> None:
        self.site = SiteConfig.model_validate({**self.site.model_dump(), action: value})
        say("operate", action=action, value=value, caller=caller.name)

    async def refused(self, caller: Identity, action: str, why: str) -> None:
        say("refused", action=action, why=why, caller=caller.name)


async def serve() -> None:
    store = PointStore()
    now = time.time()
    store.update(
        [
            Point("meter.active_power", 10e6, "W", Quality.GOOD, now, now),
            Point("bess.soc", 0.5, "1", Quality.GOOD, now, now),
        ]
    )
    site = Site()
    server = MmsServer(
        store,
        lambda: site.site,
        port=free_port(),
        interval_s=0.05,
        users=USERS,
        anonymous_read=True,
        max_connections=10,
        hooks=MmsHooks(operate=site.operate, refused=site.refused),
    )
    await server.start()
    say("ready", port=server.port, pid=os.getpid())
    try:
        await asyncio.to_thread(sys.stdin.read)  # until the test closes our standard input
    finally:
        await server.stop()
        say("stopped", connections_refused=server.stats.connections_refused_total)


if __name__ == "__main__":
    asyncio.run(serve())
    sys.stdout.flush()
    os._exit(0)  # skip pyiec61850's destructors at interpreter exit

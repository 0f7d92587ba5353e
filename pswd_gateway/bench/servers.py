"""Child process of ``bench poll``: N SunSpec grid-meter servers from the twin.

Prints one JSON line ``{"ports": [...]}`` once every server listens, serves until SIGTERM, then
prints ``{"cpu_s": ...}`` (CPU seconds this process used) and exits.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

from pswd_gateway.logging import configure_logging
from pswd_gateway.simulation.clock import SimClock
from pswd_gateway.simulation.config import SimulationConfig
from pswd_gateway.simulation.devices import GridMeterBehaviour, SiteContext
from pswd_gateway.simulation.modbus_servers import ModbusDeviceServer
from pswd_gateway.simulation.physics import SitePhysics
from pswd_gateway.simulation.sunspec_bank import SunSpecBank


async def serve(count: int) -> None:
    configure_logging("warning", "json")  # logs to stderr: stdout carries only the JSON lines
    cfg = SimulationConfig()
    site = SiteContext(SitePhysics(cfg), SimClock())
    servers = [
        ModbusDeviceServer(f"meter_{i:04d}", SunSpecBank(GridMeterBehaviour(cfg), site.sample))
        for i in range(count)
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for s in servers:
            await s.start()
        sys.stdout.write(json.dumps({"ports": [s.port for s in servers]}) + "\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await asyncio.gather(*(s.stop() for s in servers), return_exceptions=True)
    sys.stdout.write(json.dumps({"cpu_s": time.process_time()}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))

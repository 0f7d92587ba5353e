"""The twin a benchmark or a test starts as its own process dies with the process that started
it, even when that one is killed and cannot stop it (as a gateway crashed by a hostile MMS peer
once left two twins running)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TWIN = """
[simulation]
seed = 1
[simulation.ports]
grid_meter = 0
bess = 0
thermal = 0
redfish = [0, 0]
[simulation.redfish]
enabled = false
"""

STARTER = """
import asyncio, sys
from pathlib import Path
from pswd_gateway.simulation.twin import spawn_twin

async def main() -> None:
    twin = await spawn_twin(Path(sys.argv[1]))
    print(twin.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_the_twin_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    config = tmp_path / "twin.toml"
    config.write_text(TWIN)
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(config)], stdout=subprocess.PIPE, text=True
    )
    twin = 0
    try:
        assert starter.stdout is not None
        twin = int(starter.stdout.readline())
        time.sleep(1.0)  # the twin is up
        assert running(twin)
        starter.send_signal(signal.SIGKILL)  # no chance to stop its twin
        starter.wait(timeout=10)
        deadline = time.monotonic() + 10.0
        while running(twin) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not running(twin), "the twin outlived the process that started it"
    finally:
        if starter.poll() is None:
            starter.kill()
        if twin and running(twin):
            os.kill(twin, signal.SIGKILL)

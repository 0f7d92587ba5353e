"""``pswd-gateway bench opcua``: subscriptions and method calls against the live gateway.

The twin runs as its own process and the gateway (demo site, control and OPC UA on, free
loopback ports) in this one. A client process opens a Basic256Sha256 SignAndEncrypt session as
the demo ``operator``, subscribes ``items`` monitored items at 100 ms (the model's variables,
each monitored several times), counts notifications for ``duration_s``, then times ``calls``
calls of SetGridRampLimit (journalled and audited). Meanwhile the gateway's control cycle runs
on every meter reading; its lateness and reading→setpoint latency are reported for the same
window, with the gateway process's CPU.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pswd_gateway.bench.api import free_port
from pswd_gateway.bench.control import demo_config_text, percentiles, wait_port
from pswd_gateway.config import load_config
from pswd_gateway.daemon import Gateway
from pswd_gateway.logging import configure_logging
from pswd_gateway.runtime import HeapKeeper
from pswd_gateway.security.certs import (
    init_opcua_certs,
    make_client_certificate,
    trust_opcua_client,
)
from pswd_gateway.simulation.twin import spawn_twin, stop_process

__all__ = ["client_main", "run_opcua_bench"]

CLIENT_URI = "urn:pswd:bench-client"


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


async def measure_opcua(duration_s: float, items: int, calls: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pswd-bench-opcua-") as tmp:
        root = Path(tmp)
        text, ports = demo_config_text(root / "state", 20)
        opc_port = free_port()
        text = text.replace("port = 4840", f"port = {opc_port}")
        text = text.replace('certs_dir = "var/certs"', f'certs_dir = "{root / "certs"}"')
        config_path = root / "gateway.toml"
        config_path.write_text(text)
        cfg = load_config(config_path)
        init_opcua_certs(root / "certs", ["127.0.0.1", "localhost"])
        cert, key = make_client_certificate(root, "bench", CLIENT_URI)
        trust_opcua_client(root / "certs", cert)
        log = (root / "bench.log").open("a", encoding="utf-8")
        configure_logging("warning", "json", stream=log)
        twin = await spawn_twin(config_path)
        gw: Gateway | None = None
        try:
            await wait_port(ports["rf_b"], twin)
            gw = Gateway(cfg, config_path=config_path, heap=HeapKeeper())
            await gw.start()
            await asyncio.sleep(2.0)
            assert gw.control is not None
            stats = gw.control.stats
            client = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pswd_gateway.bench.opcua",
                f"opc.tcp://127.0.0.1:{opc_port}/pswd", str(cert), str(key),
                str(root / "certs" / "opcua" / "server_cert.der"),
                str(items), str(duration_s), str(calls),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            await asyncio.sleep(3.0)  # session and monitored items created
            stats.lateness_s.clear()
            stats.reading_to_setpoint_s.clear()
            cpu0, t0 = _cpu_s(), time.monotonic()
            await asyncio.sleep(duration_s)
            cpu = (_cpu_s() - cpu0) / (time.monotonic() - t0)
            control = {
                "reading_to_setpoint": percentiles(list(stats.reading_to_setpoint_s)),
                "cycle_lateness": percentiles(list(stats.lateness_s)),
            }
            out, _ = await client.communicate()
            result = json.loads(out.decode() or "{}")
        finally:
            if gw is not None:
                await gw.stop()
            await stop_process(twin)
            log.close()
    return {"client": result, "gateway_cpu_cores": round(cpu, 3), "control": control}


async def _client(
    url: str, cert: str, key: str, server_cert: str, items: int, duration_s: float, calls: int
) -> dict[str, Any]:
    from asyncua import Client, ua  # noqa: PLC0415
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256  # noqa: PLC0415

    client = Client(url, timeout=10)
    client.application_uri = CLIENT_URI
    await client.set_security(
        SecurityPolicyBasic256Sha256,
        certificate=cert,
        private_key=key,
        server_certificate=server_cert,
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )
    client.set_user("operator")
    client.set_password("pswd-demo-operator")
    count = 0

    class Handler:
        def datachange_notification(self, *_: Any) -> None:
            nonlocal count
            count += 1

    async with client:
        idx = await client.get_namespace_index("urn:pswd:gateway")
        names = [
            "GridConnection.ActivePower", "GridConnection.Frequency", "ITLoad.ActivePower",
            "Battery.ActivePower", "Battery.StateOfCharge",
            "ThermalPlant.ChilledWaterSupplyTemperature", "HeatRecovery.HeatExport",
            "HeatRecovery.SupplyTemperature",
        ]  # fmt: skip
        nodes = [client.get_node(ua.NodeId(f"PSWD.{n}", idx)) for n in names]
        sub = await client.create_subscription(100, Handler())
        targets = [nodes[i % len(nodes)] for i in range(items)]
        for i in range(0, len(targets), 250):
            await sub.subscribe_data_change(targets[i : i + 250], queuesize=1)
        await asyncio.sleep(3.0)
        count = 0
        t0 = time.monotonic()
        await asyncio.sleep(duration_s)
        rate = count / (time.monotonic() - t0)
        pswd = client.get_node(ua.NodeId("PSWD", idx))
        latencies = []
        for _ in range(calls):
            t = time.perf_counter()
            await pswd.call_method(f"{idx}:SetGridRampLimit", 20.0)
            latencies.append(time.perf_counter() - t)
    return {
        "monitored_items": items,
        "notifications_per_s": round(rate, 1),
        "method_call": percentiles(latencies),
    }


def client_main(argv: list[str]) -> int:
    url, cert, key, server_cert = argv[:4]
    items, duration, calls = int(argv[4]), float(argv[5]), int(argv[6])
    result = asyncio.run(_client(url, cert, key, server_cert, items, duration, calls))
    print(json.dumps(result))  # noqa: T201 - the output
    return 0


async def run_opcua_bench(duration_s: float, items: int, calls: int, as_json: bool) -> int:
    result = await measure_opcua(duration_s, items, calls)
    if as_json:
        print(json.dumps(result, indent=2))  # noqa: T201 - the command's output
        return 0
    c, ctl = result["client"], result["control"]
    print(  # noqa: T201
        f"{c.get('monitored_items')} monitored items at 100 ms: "
        f"{c.get('notifications_per_s')} notifications/s; gateway CPU "
        f"{result['gateway_cpu_cores']} cores; control: reading→setpoint p99 "
        f"{ctl['reading_to_setpoint']['p99_ms']} ms, cycle lateness p99 "
        f"{ctl['cycle_lateness']['p99_ms']} ms; SetGridRampLimit p50 "
        f"{c['method_call']['p50_ms']} ms, p99 {c['method_call']['p99_ms']} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(client_main(sys.argv[1:]))

"""The utility's side of the simulated site: the gateway's VENs pointed at the site's VTNs.

``make demo`` and ``pswd-gateway bench dr`` run an OpenADR 2.0b VTN
(:mod:`pswd_gateway.simulation.vtn2b`) and an OpenADR 3 VTN
(:mod:`pswd_gateway.simulation.vtn3`) on loopback; :func:`with_vens` gives the gateway's
configuration the VENs that talk to them.
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from pswd_gateway.config import GatewayConfig, OpenAdr2bConfig, OpenAdr3Config
from pswd_gateway.simulation.vtn2b import Vtn2b
from pswd_gateway.simulation.vtn3 import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PROGRAM,
    OpenAdr3Vtn,
)

__all__ = ["with_vens"]


def with_vens(cfg: GatewayConfig, vtn2b: Vtn2b | None, vtn3: OpenAdr3Vtn | None) -> GatewayConfig:
    """``cfg`` with its OpenADR 2.0b VEN on ``vtn2b`` (polling every 0.5 s) and its OpenADR 3
    VEN on ``vtn3`` (subscribed, with a webhook on loopback), each as the VTN knows it."""
    update: dict[str, Any] = {}
    if vtn2b is not None:
        update["openadr2b"] = OpenAdr2bConfig(
            enabled=True,
            vtn_url=vtn2b.url,
            vtn_name="demo-utility-2b",
            ven_name=vtn2b.ven_name,
            ven_id=vtn2b.ven_id,
            poll_interval_s=0.5,
        )
    if vtn3 is not None:
        update["openadr3"] = OpenAdr3Config(
            enabled=True,
            vtn_url=vtn3.url,
            vtn_name="demo-utility-3",
            program_names=(DEFAULT_PROGRAM,),
            client_id=DEFAULT_CLIENT_ID,
            client_secret=SecretStr(DEFAULT_CLIENT_SECRET),
        )
    return cfg.model_copy(update=update)

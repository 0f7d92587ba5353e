"""Operator controls over MMS: who may operate what, and which values are accepted.

Pure decisions, no libiec61850: the server's check handler asks :func:`judge` and answers the
client with the verdict's AddCause (IEC 61850-7-2, enhanced security reports it in
LastApplError); an accepted operate is then carried out on the asyncio loop (journalled and
audited first, in force from the next control cycle).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Final

from pswd_gateway.config import SiteConfig
from pswd_gateway.domain.identity import ROLE_PERMISSIONS, Identity
from pswd_gateway.northbound.iec61850.model import Control, DataObject
from pswd_gateway.northbound.iec61850.native import AddCause, Check

__all__ = ["ANONYMOUS", "SWITCH_NEEDS", "Verdict", "float32_decimal", "judge"]


ANONYMOUS: Final = Identity("anonymous", "viewer")
"""An association without a password: reads only."""


@dataclass(frozen=True, slots=True)
class Verdict:
    check: int
    add_cause: int
    why: str = ""

    @property
    def accepted(self) -> bool:
        return self.check == Check.ACCEPTED


ACCEPTED: Final = Verdict(Check.ACCEPTED, AddCause.UNKNOWN)

SWITCH_NEEDS: Final[dict[str, tuple[str, str]]] = {
    "demand_response_active": (
        "demand_response_limit_mw",
        "no demand-response limit is set: operate GAPC1.DRLimW first",
    ),
    "ffr_active": (
        "ffr_max_mw",
        "no fast-frequency-response maximum power is set: operate GAPC2.FFRMaxW first",
    ),
}
"""A switch's action → the site setting it needs before it may go on, and the refusal's words
(AddCause Blocked-by-process)."""


def float32_decimal(value: float) -> float:
    """The shortest decimal that is the same FLOAT32 as ``value``: what a client meant by an
    APC ctlVal (0.02 Hz arrives as the FLOAT32 nearest it, 0.019999999552965164, and is taken
    as 0.02, as the HTTP API would take it). Not finite: unchanged, for :func:`judge` to refuse."""
    if not math.isfinite(value):
        return value
    try:
        packed = struct.pack("<f", value)
    except OverflowError:  # not a FLOAT32 at all (no ctlVal is): as it is
        return value
    for digits in range(1, 10):  # 9 significant digits tell every FLOAT32 apart
        candidate = float(f"{value:.{digits}g}")
        try:
            if struct.pack("<f", candidate) == packed:
                return candidate
        except OverflowError:  # rounded past the largest FLOAT32: more digits
            continue
    return value


def judge(
    row: DataObject, value: float | bool | None, caller: Identity, site: SiteConfig
) -> Verdict:
    """Whether ``caller`` may operate ``row`` with ``value`` (in the row's unit and multiplier)."""
    ctl = row.control
    if ctl is None:
        return Verdict(
            Check.ACCESS_DENIED, AddCause.NOT_SUPPORTED, f"{row.reference} is status only"
        )
    if not caller.can(ctl.permission):
        allowed = sorted(r for r, p in ROLE_PERMISSIONS.items() if ctl.permission in p)
        why = (
            f"roles allowed: {', '.join(allowed)}"
            if ctl.permission not in ROLE_PERMISSIONS.get(caller.role, frozenset())
            else caller.why_not(ctl.permission)
        )
        return Verdict(
            Check.ACCESS_DENIED,
            AddCause.NO_ACCESS_AUTHORITY,
            f"{caller.name} ({caller.role}) may not operate {row.reference}; {why}",
        )
    if row.cdc == "SPC":
        return _judge_switch(ctl, value, site)
    return _judge_setpoint(row, ctl, value)


def _judge_switch(ctl: Control, value: float | bool | None, site: SiteConfig) -> Verdict:
    if not isinstance(value, bool):
        return Verdict(
            Check.VALUE_INVALID, AddCause.INCONSISTENT_PARAMETERS, "ctlVal must be a BOOLEAN"
        )
    needs = SWITCH_NEEDS.get(ctl.action)
    if value and needs is not None and getattr(site, needs[0]) is None:
        return Verdict(Check.VALUE_INVALID, AddCause.BLOCKED_BY_PROCESS, needs[1])
    return ACCEPTED


def _judge_setpoint(row: DataObject, ctl: Control, value: float | bool | None) -> Verdict:
    if not isinstance(value, float) or not math.isfinite(value):
        return Verdict(
            Check.VALUE_INVALID, AddCause.INCONSISTENT_PARAMETERS, "ctlVal must be a finite FLOAT32"
        )
    low_ok = value >= ctl.low if ctl.low_inclusive else value > ctl.low
    if not low_ok or value > ctl.high:
        bracket = "[" if ctl.low_inclusive else "("
        return Verdict(
            Check.VALUE_INVALID,
            AddCause.INCONSISTENT_PARAMETERS,
            f"{row.reference} = {value:g} is out of range {bracket}{ctl.low:g}, {ctl.high:g}] "
            f"(unit x10^{row.multiplier})",
        )
    return ACCEPTED

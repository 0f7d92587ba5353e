"""Who may operate which IEC 61850 control, and which values are accepted (no libiec61850)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pswd_gateway.config import SiteConfig
from pswd_gateway.domain.identity import Identity, Permission
from pswd_gateway.northbound.iec61850.controls import ANONYMOUS, judge
from pswd_gateway.northbound.iec61850.model import CONTROLS, TABLE
from pswd_gateway.northbound.iec61850.native import AddCause, Check

SITE = SiteConfig()
OPERATOR = Identity("mms:tso", "operator")
IMPORT = CONTROLS["GRID/GAPC1.ImpLimW"]
DR_LIMIT = CONTROLS["GRID/GAPC1.DRLimW"]
DR_ACT = CONTROLS["GRID/GAPC1.DRAct"]


@pytest.mark.parametrize(
    ("row", "value", "caller", "site", "check", "cause"),
    [
        (IMPORT, 250.0, OPERATOR, SITE, Check.ACCEPTED, AddCause.UNKNOWN),
        (IMPORT, 250.0, Identity("mms:boss", "admin"), SITE, Check.ACCEPTED, AddCause.UNKNOWN),
        (IMPORT, 250.0, Identity("mms:a", "viewer"), SITE, Check.ACCESS_DENIED,
         AddCause.NO_ACCESS_AUTHORITY),
        (IMPORT, 250.0, ANONYMOUS, SITE, Check.ACCESS_DENIED, AddCause.NO_ACCESS_AUTHORITY),
        (IMPORT, 0.0, OPERATOR, SITE, Check.VALUE_INVALID, AddCause.INCONSISTENT_PARAMETERS),
        (IMPORT, 10_000.5, OPERATOR, SITE, Check.VALUE_INVALID, AddCause.INCONSISTENT_PARAMETERS),
        (IMPORT, math.nan, OPERATOR, SITE, Check.VALUE_INVALID, AddCause.INCONSISTENT_PARAMETERS),
        (IMPORT, True, OPERATOR, SITE, Check.VALUE_INVALID, AddCause.INCONSISTENT_PARAMETERS),
        (IMPORT, None, OPERATOR, SITE, Check.VALUE_INVALID, AddCause.INCONSISTENT_PARAMETERS),
        (DR_LIMIT, 0.0, OPERATOR, SITE, Check.ACCEPTED, AddCause.UNKNOWN),
        (DR_ACT, True, OPERATOR, SITE, Check.VALUE_INVALID, AddCause.BLOCKED_BY_PROCESS),
        (DR_ACT, True, OPERATOR, SiteConfig(demand_response_limit_mw=50.0), Check.ACCEPTED,
         AddCause.UNKNOWN),
        (DR_ACT, False, OPERATOR, SITE, Check.ACCEPTED, AddCause.UNKNOWN),
        (DR_ACT, 1.0, OPERATOR, SITE, Check.VALUE_INVALID, AddCause.INCONSISTENT_PARAMETERS),
    ],
)  # fmt: skip
def test_verdicts(
    row: object, value: object, caller: Identity, site: SiteConfig, check: int, cause: int
) -> None:
    verdict = judge(row, value, caller, site)  # type: ignore[arg-type]
    assert (verdict.check, verdict.add_cause) == (check, cause)
    assert verdict.accepted == (check == Check.ACCEPTED)
    if not verdict.accepted:
        assert verdict.why  # the refusal says what was wrong


def test_every_control_has_a_range_or_is_a_switch() -> None:
    for row in TABLE:
        if row.control is None:
            continue
        assert row.cdc in {"APC", "SPC"}
        assert row.control.permission is Permission.OPERATE
        if row.cdc == "APC":
            assert row.control.high > row.control.low


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_a_setpoint_is_accepted_exactly_inside_its_range(value: float) -> None:
    verdict = judge(IMPORT, value, OPERATOR, SITE)
    inside = math.isfinite(value) and 0.0 < value <= 10_000.0
    assert verdict.accepted == inside


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_the_role_table_every_control_for_every_role(role: str) -> None:
    """Each MMS control is operated or refused for lack of authority exactly as the one role
    model says (the same table as the HTTP API and OPC UA)."""
    caller = Identity(f"mms:{role}", role)
    for row in TABLE:
        if row.control is None:
            continue
        value: float | bool = True if row.cdc == "SPC" else row.control.high
        verdict = judge(
            row, value, caller, SITE.model_copy(update={"demand_response_limit_mw": 100.0})
        )
        refused = verdict.add_cause == AddCause.NO_ACCESS_AUTHORITY
        assert refused != caller.can(row.control.permission), (role, row.reference, verdict)

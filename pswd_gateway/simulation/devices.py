"""The simulated devices: what each one shows of the physics and what its writes do.

- grid meter: SunSpec models 1 and 701 (W > 0 = import, the project's convention);
- BESS: SunSpec models 1, 701, 702, 704 and 802 (W > 0 = discharge), following 704 WSet;
- thermal plant: the plain register map ``config/devices/thermal-plant.toml``;
- vendor devices on their own plain maps: an Eastron SDM630 revenue meter
  (``eastron-sdm630.toml``, IEEE 754 floats in input registers) at the grid connection, a
  chiller plant controller (``chiller-controller.toml``) and a Trane RTHD chiller behind a
  Trane PIC (``trane-pic-rthd.toml``, input registers) over the same chilled-water plant.

The meter's and the PCS's measurements are what a real device shows, not the instantaneous
truth: :class:`~pswd_gateway.simulation.measurement.MeterView` and
:class:`~pswd_gateway.simulation.measurement.BessView` refresh them at fixed instants, the power
being the mean over the window just ended. Settings read back as written at once; what the PCS
does follows after its dead time (:class:`~pswd_gateway.simulation.physics.SitePhysics`).

Scale factors are chosen so that the values fit their int16 registers: the grid meter's W in
100 kW steps (W_SF = 5: ±3.2 GW, for the grid draws beyond the import limit a 40 ms edge can
make before the battery answers; with 10 kW steps it saturated at 327.67 MW and the control
loop saw a clipped load), the battery's in 10 kW steps (W_SF = 4: its 250 MW rating fits).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from pymodbus.constants import ExcCodes

from pswd_gateway import __version__
from pswd_gateway.config import DEVICE_MAPS_DIR
from pswd_gateway.logging import get_logger
from pswd_gateway.simulation.clock import SimClock
from pswd_gateway.simulation.config import SimulationConfig
from pswd_gateway.simulation.measurement import (
    BessReading,
    BessView,
    MeterView,
    meter_readings,
)
from pswd_gateway.simulation.physics import SitePhysics, Truth, bess_target_w
from pswd_gateway.simulation.sunspec_bank import put, scale_factor
from pswd_gateway.southbound.modbus.registermap import (
    DataType,
    RegisterMap,
    RegisterPoint,
    decode_point,
    encode_point,
    load_register_map,
)

__all__ = [
    "BESS_SCALE_FACTORS",
    "CHILLER_MAP_PATH",
    "METER_SCALE_FACTORS",
    "SDM630_MAP_PATH",
    "THERMAL_MAP_PATH",
    "TRANE_PIC_RTHD_MAP_PATH",
    "BessBehaviour",
    "GridMeterBehaviour",
    "PlainMapBank",
    "SiteContext",
    "chiller_controller_bank",
    "sdm630_bank",
    "thermal_plant_bank",
    "trane_pic_rthd_bank",
]

log = get_logger("simulation.devices")

THERMAL_MAP_PATH: Final = DEVICE_MAPS_DIR / "thermal-plant.toml"
SDM630_MAP_PATH: Final = DEVICE_MAPS_DIR / "eastron-sdm630.toml"
CHILLER_MAP_PATH: Final = DEVICE_MAPS_DIR / "chiller-controller.toml"
TRANE_PIC_RTHD_MAP_PATH: Final = DEVICE_MAPS_DIR / "trane-pic-rthd.toml"
SQRT3: Final = math.sqrt(3.0)

# model id -> scale-factor point -> exponent
_AC_701: Final[dict[str, int]] = {
    "A_SF": 0,
    "V_SF": 1,
    "Hz_SF": -3,
    "W_SF": 4,
    "PF_SF": -3,
    "VA_SF": 4,
    "Var_SF": 4,
    "TotWh_SF": 0,
    "TotVarh_SF": 0,
    "Tmp_SF": -1,
}
METER_SCALE_FACTORS: Final[dict[int, dict[str, int]]] = {
    701: _AC_701 | {"W_SF": 5, "VA_SF": 5, "Var_SF": 5},
}
BESS_SCALE_FACTORS: Final[dict[int, dict[str, int]]] = {
    701: _AC_701,
    702: {"W_SF": 4, "PF_SF": -3, "VA_SF": 4, "Var_SF": 4, "V_SF": 1, "A_SF": 0},
    704: {
        "PF_SF": -3,
        "WMaxLimPct_SF": -1,
        "WSet_SF": 0,
        "WSetPct_SF": -2,
        "VarSet_SF": 0,
        "VarSetPct_SF": -2,
    },
    802: {
        "AHRtg_SF": 1,
        "WHRtg_SF": 4,
        "WChaDisChaMax_SF": 4,
        "DisChaRte_SF": -2,
        "SoC_SF": -1,
        "DoD_SF": -1,
        "SoH_SF": 0,
        "V_SF": -1,
        "CellV_SF": -3,
        "A_SF": 1,
        "AMax_SF": 1,
        "W_SF": 4,
    },
}

# 701
_ST_OFF, _ST_ON = 0, 1
_INVST_OFF, _INVST_RUNNING, _INVST_STANDBY = 0, 3, 7
_CONN_DISCONNECTED, _CONN_CONNECTED = 0, 1
_THREE_PHASE = 2
_GRID_FOLLOWING = 1 << 0
# 702
_CAT_B, _CAT_3 = 1, 2
_CTRL_MAX_W_FIXED_W = (1 << 0) | (1 << 1)
_INT_ISL_UNCATEGORIZED = 1 << 0
# 802
_CHA_EMPTY, _CHA_DISCHARGING, _CHA_CHARGING, _CHA_FULL, _CHA_HOLDING = 2, 3, 4, 5, 6
_STATE_CONNECTED, _STATE_STANDBY, _STATE_SOC_PROTECTION = 3, 4, 5
_SETOP_CONNECT, _SETOP_DISCONNECT = 1, 2
_INV_STOPPED, _INV_STANDBY, _INV_STARTED = 1, 2, 3
_LITHIUM_ION = 4
_REMOTE = 0


@dataclass(frozen=True, slots=True)
class SiteContext:
    """The physics and the clock every simulated device reads from."""

    physics: SitePhysics
    clock: SimClock

    def now(self) -> float:
        return self.clock.now()

    def sample(self) -> Truth:
        """The site at this instant (integrates the physics up to now)."""
        return self.physics.advance(self.clock.now())


def _common(model: Any, *, model_name: str, serial: str) -> None:
    model.Mn.value = "pswd-gateway"
    model.Md.value = model_name
    model.Opt.value = "digital twin"
    model.Vr.value = __version__
    model.SN.value = serial
    model.DA.value = 1


def _scale_factors(model: Any, factors: Mapping[str, int]) -> None:
    for name, exponent in factors.items():
        model.points[name].value = exponent


def _ac_measurements(
    model: Any,
    *,
    w: float,
    var: float,
    voltage_ll: float,
    hz: float,
    wh_inj: float,
    wh_abs: float,
) -> None:
    """Three balanced phases of a 701 model."""
    va = math.hypot(w, var)
    pf = 1.0 if va == 0.0 else w / va
    amps = va / (SQRT3 * voltage_ll) if voltage_ll > 0 else 0.0
    voltage_ln = voltage_ll / SQRT3
    for suffix, share in (("", 1.0), ("L1", 1 / 3), ("L2", 1 / 3), ("L3", 1 / 3)):
        put(model, "W" + suffix, w * share)
        put(model, "VA" + suffix, va * share)
        put(model, "Var" + suffix, var * share)
        put(model, "PF" + suffix, pf)
        put(model, "A" + suffix, amps)
    put(model, "LLV", voltage_ll)
    put(model, "LNV", voltage_ln)
    for name in ("VL1L2", "VL2L3", "VL3L1"):
        put(model, name, voltage_ll)
    for name in ("VL1", "VL2", "VL3"):
        put(model, name, voltage_ln)
    put(model, "Hz", hz)
    put(model, "TotWhInj", wh_inj)
    put(model, "TotWhAbs", wh_abs)
    for phase in ("L1", "L2", "L3"):
        put(model, "TotWhInj" + phase, wh_inj / 3)
        put(model, "TotWhAbs" + phase, wh_abs / 3)


class GridMeterBehaviour:
    """The revenue meter at the point of common coupling: SunSpec 1 + 701.

    By default the meter follows SunSpec 701's own sign: ``W`` > 0 means the site injects into
    the grid, ``W`` < 0 that it draws from it; ``TotWhAbs`` counts imported (absorbed) energy and
    ``TotWhInj`` exported energy. The gateway's ``sunspec-meter`` map flips the sign so that its
    ``active_power`` is load-positive. ``import_positive=True`` serves W > 0 = import instead.

    ``view`` is what the meter shows (refreshed, averaged, noisy); without one it serves the
    instantaneous truth of each request.
    """

    model_ids: tuple[int, ...] = (1, 701)

    def __init__(
        self,
        cfg: SimulationConfig,
        *,
        import_positive: bool = False,
        view: MeterView | None = None,
    ) -> None:
        self.config = cfg
        self.sign = 1.0 if import_positive else -1.0
        self.view = view

    def initialise(self, models: Mapping[int, Any]) -> None:
        _common(models[1], model_name="twin grid meter", serial="TWIN-GM-0001")
        m = models[701]
        _scale_factors(m, METER_SCALE_FACTORS[701])
        m.ACType.value = _THREE_PHASE
        m.St.value = _ST_ON
        m.ConnSt.value = _CONN_CONNECTED
        m.Alrm.value = 0

    def update(self, model_id: int, model: Any, truth: Truth) -> None:
        if model_id != 701:
            return
        shown, energy = meter_readings(self.view, truth)
        _ac_measurements(
            model,
            w=self.sign * shown.w,
            var=self.sign * shown.var,
            voltage_ll=shown.voltage_v,
            hz=shown.frequency_hz,
            wh_inj=energy.exported_j / 3600.0,  # injected into the grid, whatever the W sign
            wh_abs=energy.imported_j / 3600.0,
        )

    def apply(self, writes: Mapping[tuple[int, str], int | str]) -> ExcCodes | None:
        del writes  # only model 1 DA is writable; it is stored and has no effect
        return None


class BessBehaviour:
    """Battery inverter and battery: SunSpec 1, 701, 702, 704 and 802.

    The PCS follows 704 ``WSet`` (W x 10^WSet_SF, > 0 = discharge) when ``WSetEna`` = 1 and
    ``WSetMod`` = WATTS, or ``WSetPct`` of ``WMax`` in W_MAX_PCT mode, after its dead time. A
    setpoint beyond the rating is accepted and clamped by the physics, as a real PCS would.
    802 ``SetOp`` = DISCONNECT or ``SetInvState`` ≠ STARTED idles it. Its measurements (701
    W/A/energy, 802 SoC/W/A) are ``view``'s (by default the ``[simulation.bess]`` refresh).
    """

    model_ids: tuple[int, ...] = (1, 701, 702, 704, 802)

    def __init__(self, site: SiteContext, view: BessView | None = None) -> None:
        self.site = site
        self.config = site.physics.config.bess
        self.view = view if view is not None else BessView.from_config(site.physics)
        self._connected = True
        self._started = True
        self._models: Mapping[int, Any] = {}
        self._refreshers: dict[int, Callable[[Any, Truth], None]] = {
            701: self._update_701,
            702: self._update_702,
            704: self._update_704,
            802: self._update_802,
        }
        self._writers = self._write_handlers()

    @property
    def rated_w(self) -> float:
        return self.config.power_mw * 1e6

    @property
    def rated_va(self) -> float:
        return self.rated_w * 1.1

    def _dc_voltage(self, soc: float) -> float:
        return self.config.dc_voltage_v * (0.9 + 0.2 * soc)

    def initialise(self, models: Mapping[int, Any]) -> None:
        self._models = models
        cfg = self.config
        _common(models[1], model_name="twin BESS PCS", serial="TWIN-BESS-0001")
        for model_id, factors in BESS_SCALE_FACTORS.items():
            _scale_factors(models[model_id], factors)
        m701 = models[701]
        m701.ACType.value = _THREE_PHASE
        m701.Alrm.value = 0
        m701.DERMode.value = _GRID_FOLLOWING
        self._nameplate(models[702])
        self._controls(models[704])
        m802 = models[802]
        capacity_wh = cfg.energy_mwh * 1e6
        put(m802, "AHRtg", capacity_wh / cfg.dc_voltage_v)
        put(m802, "WHRtg", capacity_wh)
        put(m802, "WChaRteMax", self.rated_w)
        put(m802, "WDisChaRteMax", self.rated_w)
        put(m802, "DisChaRte", 0.05)
        put(m802, "SoCMax", cfg.soc_max * 100)
        put(m802, "SoCMin", cfg.soc_min * 100)
        put(m802, "SocRsvMax", cfg.soc_max * 100)
        put(m802, "SoCRsvMin", cfg.soc_min * 100)
        put(m802, "SoH", 98)
        m802.LocRemCtl.value = _REMOTE
        m802.CtrlHb.value = 0
        m802.AlmRst.value = 0
        m802.Typ.value = _LITHIUM_ION
        for name in ("Evt1", "Evt2", "EvtVnd1", "EvtVnd2"):
            m802.points[name].value = 0
        put(m802, "VMax", self._dc_voltage(1.0))
        put(m802, "VMin", self._dc_voltage(0.0))
        put(m802, "AChaMax", self.rated_w / cfg.dc_voltage_v)
        put(m802, "ADisChaMax", self.rated_w / cfg.dc_voltage_v)
        m802.CellVMaxStr.value = 1
        m802.CellVMaxMod.value = 1
        m802.CellVMinStr.value = 2
        m802.CellVMinMod.value = 1
        m802.ReqInvState.value = 0
        m802.SetOp.value = _SETOP_CONNECT
        m802.SetInvState.value = _INV_STARTED

    def _nameplate(self, m: Any) -> None:
        volts = self.config.ac_voltage_kv * 1e3
        amps = self.rated_va / (SQRT3 * volts)
        for name, value in (
            ("WMaxRtg", self.rated_w),
            ("VAMaxRtg", self.rated_va),
            ("VarMaxInjRtg", 0.44 * self.rated_w),
            ("VarMaxAbsRtg", 0.44 * self.rated_w),
            ("WChaRteMaxRtg", self.rated_w),
            ("WDisChaRteMaxRtg", self.rated_w),
            ("VAChaRteMaxRtg", self.rated_va),
            ("VADisChaRteMaxRtg", self.rated_va),
            ("VNomRtg", volts),
            ("VMaxRtg", volts * 1.1),
            ("VMinRtg", volts * 0.9),
            ("AMaxRtg", amps),
            ("PFOvrExtRtg", 0.9),
            ("PFUndExtRtg", 0.9),
            ("WMax", self.rated_w),
            ("VAMax", self.rated_va),
            ("VarMaxInj", 0.44 * self.rated_w),
            ("VarMaxAbs", 0.44 * self.rated_w),
            ("WChaRteMax", self.rated_w),
            ("WDisChaRteMax", self.rated_w),
            ("VAChaRteMax", self.rated_va),
            ("VADisChaRteMax", self.rated_va),
            ("VNom", volts),
            ("VMax", volts * 1.1),
            ("VMin", volts * 0.9),
            ("AMax", amps),
            ("PFOvrExt", 0.9),
            ("PFUndExt", 0.9),
        ):
            put(m, name, value)
        m.NorOpCatRtg.value = _CAT_B
        m.AbnOpCatRtg.value = _CAT_3
        m.CtrlModes.value = _CTRL_MAX_W_FIXED_W
        m.IntIslandCatRtg.value = _INT_ISL_UNCATEGORIZED
        m.IntIslandCat.value = _INT_ISL_UNCATEGORIZED

    @staticmethod
    def _controls(m: Any) -> None:
        for name in (
            "PFWInjEna",
            "PFWInjEnaRvrt",
            "PFWAbsEna",
            "PFWAbsEnaRvrt",
            "WMaxLimPctEna",
            "WMaxLimPctEnaRvrt",
            "WSetEna",
            "WSetEnaRvrt",
            "VarSetEna",
            "VarSetEnaRvrt",
            "VarSetPri",
            "AntiIslEna",
        ):
            m.points[name].value = 0
        for name in (
            "PFWInjRvrtTms",
            "PFWInjRvrtRem",
            "PFWAbsRvrtTms",
            "PFWAbsRvrtRem",
            "WMaxLimPctRvrtTms",
            "WMaxLimPctRvrtRem",
            "WSetRvrtTms",
            "WSetRvrtRem",
            "VarSetRvrtTms",
            "VarSetRvrtRem",
            "WSet",
            "WSetRvrt",
            "WSetPct",
            "WSetPctRvrt",
            "VarSet",
            "VarSetRvrt",
            "VarSetPct",
            "VarSetPctRvrt",
        ):
            m.points[name].value = 0
        put(m, "WMaxLimPct", 100.0)
        put(m, "WMaxLimPctRvrt", 100.0)
        m.WSetMod.value = 1  # WATTS
        m.VarSetMod.value = 4  # VARS
        for group in ("PFWInj", "PFWInjRvrt", "PFWAbs", "PFWAbsRvrt"):
            g = m.groups[group]
            g.points["PF"].value = 1000  # 1.000 at PF_SF = -3
            g.points["Ext"].value = 0

    def update(self, model_id: int, model: Any, truth: Truth) -> None:
        refresh = self._refreshers.get(model_id)
        if refresh is not None:
            refresh(model, truth)

    def _update_701(self, m: Any, truth: Truth) -> None:
        command = truth.state.commands.bess  # what the PCS does now (after its dead time)
        shown = self.view.reading(truth.t)
        _ac_measurements(
            m,
            w=shown.power_w,
            var=0.0,
            voltage_ll=self.config.ac_voltage_kv * 1e3,
            hz=shown.frequency_hz,
            wh_inj=shown.discharged_j / 3600.0,
            wh_abs=shown.charged_j / 3600.0,
        )
        running = command.running
        m.St.value = _ST_ON if running else _ST_OFF
        m.ConnSt.value = _CONN_CONNECTED if self._connected else _CONN_DISCONNECTED
        if not running:
            m.InvSt.value = _INVST_OFF
        elif command.enabled:
            m.InvSt.value = _INVST_RUNNING
        else:
            m.InvSt.value = _INVST_STANDBY
        put(m, "TmpCab", 25.0 + 10.0 * abs(shown.power_w) / self.rated_w)

    def _update_702(self, m: Any, truth: Truth) -> None:
        command = truth.state.bess_requested  # settings read back as written
        for name, value in (
            ("WMax", command.wmax_w),
            ("WChaRteMax", command.max_charge_w),
            ("WDisChaRteMax", command.max_discharge_w),
        ):
            put(m, name, self.rated_w if value is None else value)

    def _update_704(self, m: Any, truth: Truth) -> None:
        command = truth.state.bess_requested
        m.WSetEna.value = int(command.enabled)
        m.WSetMod.value = 1 if command.watts_mode else 0
        put(m, "WSet", command.setpoint_w)
        put(m, "WSetPct", command.setpoint_pct)

    def _update_802(self, m: Any, truth: Truth) -> None:
        cfg = self.config
        params = self.site.physics.bess_params
        command = truth.state.commands.bess
        shown: BessReading = self.view.reading(truth.t)
        soc, watts = shown.soc, shown.power_w
        volts = self._dc_voltage(soc)
        idle = 1e-3 * self.rated_w
        put(m, "SoC", soc * 100)
        put(m, "DoD", (1.0 - soc) * 100)
        put(m, "NCyc", shown.discharged_j / (cfg.energy_mwh * 3.6e9))
        put(m, "V", volts)
        put(m, "A", watts / volts)
        put(m, "W", watts)
        cell = 3.0 + 0.35 * soc
        put(m, "CellVAvg", cell)
        put(m, "CellVMax", cell + 0.012)
        put(m, "CellVMin", cell - 0.015)
        m.Hb.value = int(truth.t) % 0xFFFF
        if watts > idle:
            m.ChaSt.value = _CHA_DISCHARGING
        elif watts < -idle:
            m.ChaSt.value = _CHA_CHARGING
        elif soc >= cfg.soc_max:
            m.ChaSt.value = _CHA_FULL
        elif soc <= cfg.soc_min:
            m.ChaSt.value = _CHA_EMPTY
        else:
            m.ChaSt.value = _CHA_HOLDING
        wanted = bess_target_w(params, command, 0.5 * (cfg.soc_min + cfg.soc_max))
        if not command.running:
            m.State.value = _STATE_STANDBY
        elif wanted != 0.0 and truth.bess_target_w == 0.0:
            m.State.value = _STATE_SOC_PROTECTION
        else:
            m.State.value = _STATE_CONNECTED

    def apply(self, writes: Mapping[tuple[int, str], int | str]) -> ExcCodes | None:
        changes: dict[str, float | bool | None] = {}
        for (model_id, path), raw in writes.items():
            handler = self._writers.get((model_id, path))
            if handler is not None and isinstance(raw, int):
                changes.update(handler(raw))
        running = self._connected and self._started
        if running != self.site.physics.latest.bess_requested.running:
            changes["running"] = running
        if changes:
            self.site.physics.command_bess(self.site.now(), **changes)
            # a setpoint alone comes 50 times a second from the control loop: debug
            emit = log.debug if changes.keys() == {"setpoint_w"} else log.info
            emit("bess_command", **changes)
        return None

    def _write_handlers(
        self,
    ) -> dict[tuple[int, str], Callable[[int], dict[str, float | bool | None]]]:
        def scaled(model_id: int, name: str, unset: int) -> Callable[[int], float | None]:
            def convert(raw: int) -> float | None:
                if raw == unset:
                    return None
                return raw * 10.0 ** scale_factor(self._models[model_id], name)

            return convert

        wset = scaled(704, "WSet", -(1 << 31))
        wset_pct = scaled(704, "WSetPct", -(1 << 15))
        wmax = scaled(702, "WMax", 0xFFFF)
        wcha = scaled(702, "WChaRteMax", 0xFFFF)
        wdis = scaled(702, "WDisChaRteMax", 0xFFFF)

        def set_op(raw: int) -> dict[str, float | bool | None]:
            self._connected = raw == _SETOP_CONNECT
            return {}

        def set_inv_state(raw: int) -> dict[str, float | bool | None]:
            self._started = raw == _INV_STARTED
            return {}

        return {
            (704, "WSetEna"): lambda raw: {"enabled": raw == 1},
            (704, "WSetMod"): lambda raw: {"watts_mode": raw == 1},
            (704, "WSet"): lambda raw: {"setpoint_w": wset(raw) or 0.0},
            (704, "WSetPct"): lambda raw: {"setpoint_pct": wset_pct(raw) or 0.0},
            (702, "WMax"): lambda raw: {"wmax_w": wmax(raw)},
            (702, "WChaRteMax"): lambda raw: {"max_charge_w": wcha(raw)},
            (702, "WDisChaRteMax"): lambda raw: {"max_discharge_w": wdis(raw)},
            (802, "SetOp"): set_op,
            (802, "SetInvState"): set_inv_state,
        }


# --------------------------------------------------------------------------------------------
# Plain register maps (the thermal plant)
# --------------------------------------------------------------------------------------------

_INT_RANGE: Final[dict[DataType, tuple[int, int]]] = {
    DataType.INT16: (-(1 << 15) + 1, (1 << 15) - 2),
    DataType.UINT16: (0, (1 << 16) - 2),
    DataType.INT32: (-(1 << 31) + 1, (1 << 31) - 2),
    DataType.UINT32: (0, (1 << 32) - 2),
    DataType.INT64: (-(1 << 63) + 1, (1 << 63) - 2),
    DataType.UINT64: (0, (1 << 64) - 2),
}
"""What a value saturates to: the type's range without the "not available" patterns at its
ends (int16 0x8000, 0x7FFF, uint16 0xFFFF …), which a clipped reading must not become."""


def _clamp_to_type(p: RegisterPoint, value: float) -> float:
    bounds = _INT_RANGE.get(p.type)
    if bounds is None or not math.isfinite(value):
        return value
    lo, hi = sorted(b * p.scale + p.offset for b in bounds)
    return min(max(value, lo), hi)


class PlainMapBank:
    """A :class:`~pswd_gateway.simulation.modbus_servers.RegisterBank` for a plain register
    map: values come from ``values[point](truth)`` and go through ``registermap.encode_point``;
    writes are decoded with ``decode_point``, checked against ``minimum``/``maximum`` and handed
    to ``on_write(point, value)``. Registers between points read as 0 and refuse writes."""

    def __init__(
        self,
        regmap: RegisterMap,
        sample: Callable[[], Truth],
        values: Mapping[str, Callable[[Truth], float]],
        on_write: Callable[[str, float], None],
    ) -> None:
        missing = sorted({p.name for p in regmap.points} - set(values))
        if missing:
            raise ValueError(f"register map {regmap.name!r}: no value for {', '.join(missing)}")
        if any(p.sf_address is not None for p in regmap.points):
            raise ValueError("PlainMapBank does not serve SunSpec scale-factor points")
        self.regmap = regmap
        self._sample = sample
        self._values = values
        self._on_write = on_write
        self._base = min(p.address for p in regmap.points)
        size = max(p.end for p in regmap.points) - self._base
        self._registers = [0] * size
        self._readonly = [True] * size
        for p in regmap.points:
            if p.access == "rw":
                first = p.address - self._base
                self._readonly[first : first + p.count] = [False] * p.count
        self.refresh(self._base, size)

    @property
    def base(self) -> int:
        return self._base

    @property
    def registers(self) -> list[int]:
        return self._registers

    @property
    def readonly(self) -> list[bool]:
        return self._readonly

    def refresh(self, address: int, count: int) -> None:
        end = address + count
        points = [p for p in self.regmap.points if p.address < end and address < p.end]
        if not points:
            return
        truth = self._sample()
        for p in points:
            value = _clamp_to_type(p, self._values[p.name](truth))
            regs = encode_point(p, value, self.regmap.orders(p))
            first = p.address - self._base
            self._registers[first : first + p.count] = regs

    def write(self, address: int, values: list[int]) -> ExcCodes | None:
        end = address + len(values)
        touched = [p for p in self.regmap.points if p.address < end and address < p.end]
        if sum(p.count for p in touched) != len(values):
            return ExcCodes.ILLEGAL_ADDRESS  # gap registers are not writable
        decoded: list[tuple[str, float]] = []
        for p in touched:
            if p.access != "rw" or p.address < address or p.end > end:
                return ExcCodes.ILLEGAL_ADDRESS
            first = p.address - address
            value = decode_point(p, values[first : first + p.count], self.regmap.orders(p))
            if value is None or not math.isfinite(value):
                return ExcCodes.ILLEGAL_VALUE
            if (p.minimum is not None and value < p.minimum) or (
                p.maximum is not None and value > p.maximum
            ):
                return ExcCodes.ILLEGAL_VALUE
            decoded.append((p.name, value))
        for name, value in decoded:
            self._on_write(name, value)
        self._registers[address - self._base : end - self._base] = values
        return None


THERMAL_VALUES: Final[dict[str, Callable[[Truth], float]]] = {
    "chw_supply_temp": lambda t: t.chw_supply_c,
    "chw_return_temp": lambda t: t.chw_return_c,
    "chw_supply_setpoint": lambda t: t.chw_setpoint_c,
    "chw_flow": lambda t: t.chw_flow_m3_s,
    "chiller_power": lambda t: t.chiller_w / 1e3,
    "chiller_cop": lambda t: t.chiller_cop,
    "heat_supply_temp": lambda t: t.heat_supply_c,
    "heat_supply_setpoint": lambda t: t.heat_setpoint_c,
    "heat_return_temp": lambda t: t.heat_return_c,
    "heat_export_power": lambda t: t.heat_delivered_w / 1e3,
    "heat_demand": lambda t: t.heat_demand_w / 1e3,
    "heat_pump_power": lambda t: t.heat_pump_w / 1e3,
    "heat_pump_cop": lambda t: t.heat_pump_cop,
    "chw_heat_load": lambda t: t.state.thermal.heat_load_w / 1e3,
}
"""Thermal-plant point → value in the map's unit (°C, m³/s, kW, ratio)."""


def thermal_plant_bank(site: SiteContext) -> PlainMapBank:
    """The chiller and heat-pump plant on ``config/devices/thermal-plant.toml``."""
    regmap = load_register_map(THERMAL_MAP_PATH)

    def on_write(point: str, value: float) -> None:
        now = site.now()
        if point == "chw_supply_setpoint":
            site.physics.set_chw_setpoint(now, value)
        elif point == "heat_supply_setpoint":
            site.physics.set_heat_setpoint(now, value)
        log.info("thermal_setpoint", point=point, value=value)

    return PlainMapBank(regmap, site.sample, THERMAL_VALUES, on_write)


def _sdm630_values() -> dict[str, Callable[[Truth], float]]:
    """SDM630 point → value in its map's unit: three balanced phases of the grid connection,
    total power > 0 = import (the meter's own sign), energies in kWh."""

    def phase_v(t: Truth) -> float:
        return t.grid_voltage_v / SQRT3

    def phase_a(t: Truth) -> float:
        return t.grid_va / (SQRT3 * t.grid_voltage_v) if t.grid_voltage_v > 0 else 0.0

    def pf(t: Truth) -> float:
        return 1.0 if t.grid_va == 0.0 else t.grid_w / t.grid_va

    values: dict[str, Callable[[Truth], float]] = {
        "current": lambda t: 3 * phase_a(t),
        "active_power": lambda t: t.grid_w,
        "apparent_power": lambda t: t.grid_va,
        "reactive_power": lambda t: t.grid_var,
        "power_factor": pf,
        "frequency": lambda t: t.frequency_hz,
        "energy_imported": lambda t: t.grid_import_j / 3.6e6,
        "energy_exported": lambda t: t.grid_export_j / 3.6e6,
        "voltage": lambda t: t.grid_voltage_v,
        "neutral_current": lambda _t: 0.0,
    }
    for phase in ("l1", "l2", "l3"):
        values["voltage_" + phase] = phase_v
        values["current_" + phase] = phase_a
        values["active_power_" + phase] = lambda t: t.grid_w / 3
    return values


def sdm630_bank(site: SiteContext) -> PlainMapBank:
    """An Eastron SDM630 at the grid connection (``config/devices/eastron-sdm630.toml``): the
    instantaneous truth of each request, as IEEE 754 floats; it has nothing to write."""

    def on_write(point: str, value: float) -> None:  # the map has no writable point
        log.info("sdm630_write_ignored", point=point, value=value)

    return PlainMapBank(load_register_map(SDM630_MAP_PATH), site.sample, _sdm630_values(), on_write)


_CHILLER_OFF, _CHILLER_RUNNING, _CHILLER_STANDBY = 0, 1, 2
_CONDENSER_APPROACH_K: Final = 5.0
"""Condenser water enters this much above the wet-bulb stand-in (25 °C) and leaves heated by
the chiller's rejected heat; a plausible picture, not a condenser model."""


def chiller_controller_bank(site: SiteContext, *, rated_w: float = 30e6) -> PlainMapBank:
    """A chiller plant controller (``config/devices/chiller-controller.toml``) over the twin's
    chilled-water plant: its setpoint write moves the plant's supply setpoint, its demand limit
    is kept and read back (the plant model has no capacity limit)."""
    demand_limit = [100.0]

    def capacity(t: Truth) -> float:
        return min(100.0, 100.0 * t.cooling_w / rated_w) if rated_w > 0 else 0.0

    values: dict[str, Callable[[Truth], float]] = {
        "unit_status": lambda t: _CHILLER_RUNNING if t.chiller_w > 0.0 else _CHILLER_STANDBY,
        "chw_supply_temp": lambda t: t.chw_supply_c,
        "chw_return_temp": lambda t: t.chw_return_c,
        "cw_entering_temp": lambda _t: 25.0 + _CONDENSER_APPROACH_K,
        "cw_leaving_temp": lambda t: 25.0 + _CONDENSER_APPROACH_K + 5.0 * capacity(t) / 100.0,
        "capacity": capacity,
        "chiller_power": lambda t: t.chiller_w / 1e3,
        "chw_flow": lambda t: t.chw_flow_m3_s * 1e3,
        "alarm_code": lambda _t: 0.0,
        "chw_supply_setpoint": lambda t: t.chw_setpoint_c,
        "demand_limit": lambda _t: demand_limit[0],
    }

    def on_write(point: str, value: float) -> None:
        if point == "chw_supply_setpoint":
            site.physics.set_chw_setpoint(site.now(), value)
        elif point == "demand_limit":
            demand_limit[0] = value
        log.info("chiller_setpoint", point=point, value=value)

    return PlainMapBank(load_register_map(CHILLER_MAP_PATH), site.sample, values, on_write)


# Trane PIC bitfields (BAS-SVX08D-E4, Appendix Tables A and B)
_RTHD_RUN_MODE_OFF, _RTHD_RUN_MODE_RUN = 0, 2  # bits 0-3; bits 4-7 = 0: cooling mode
_RTHD_ENABLED, _RTHD_CHW_FLOW, _RTHD_CW_FLOW = 1 << 9, 1 << 12, 1 << 13
_RTHD_COMPRESSOR_A_EXISTS, _RTHD_COMPRESSOR_A_RUNNING = 1 << 0, 1 << 8
_REFRIGERANT_APPROACH_K: Final = 2.0
"""Evaporator refrigerant this much below the leaving chilled water, condenser refrigerant this
much above the leaving condenser water: a plausible picture, not a refrigerant model."""


def trane_pic_rthd_bank(site: SiteContext, *, rated_w: float = 30e6) -> PlainMapBank:
    """A Trane RTHD chiller behind a Trane PIC (``config/devices/trane-pic-rthd.toml``) over the
    twin's chilled-water plant: read-only input registers, temperatures as (°C + 45) * 10; the
    status bitfields say running in cooling mode with water flowing while the chillers draw
    power."""

    def capacity(t: Truth) -> float:
        return min(100.0, 100.0 * t.cooling_w / rated_w) if rated_w > 0 else 0.0

    def cw_leaving(t: Truth) -> float:
        return 25.0 + _CONDENSER_APPROACH_K + 5.0 * capacity(t) / 100.0

    def status(t: Truth) -> float:
        running = t.chiller_w > 0.0
        flow = _RTHD_CHW_FLOW if t.chw_flow_m3_s > 0.0 else 0
        mode = _RTHD_RUN_MODE_RUN if running else _RTHD_RUN_MODE_OFF
        return float(mode | _RTHD_ENABLED | flow | _RTHD_CW_FLOW)

    def compressors(t: Truth) -> float:
        running = _RTHD_COMPRESSOR_A_RUNNING if t.chiller_w > 0.0 else 0
        return float(_RTHD_COMPRESSOR_A_EXISTS | running)

    values: dict[str, Callable[[Truth], float]] = {
        "active_chw_setpoint": lambda t: t.chw_setpoint_c,
        "capacity": capacity,
        "current_limit": lambda _t: 100.0,
        "chw_supply_temp": lambda t: t.chw_supply_c,
        "chw_return_temp": lambda t: t.chw_return_c,
        "cw_entering_temp": lambda _t: 25.0 + _CONDENSER_APPROACH_K,
        "cw_leaving_temp": cw_leaving,
        "chiller_status": status,
        "compressors_running": compressors,
        "evap_refrigerant_temp": lambda t: t.chw_supply_c - _REFRIGERANT_APPROACH_K,
        "cond_refrigerant_temp": lambda t: cw_leaving(t) + _REFRIGERANT_APPROACH_K,
    }

    def on_write(point: str, value: float) -> None:  # the map has no writable point
        log.info("trane_pic_write_ignored", point=point, value=value)

    return PlainMapBank(load_register_map(TRANE_PIC_RTHD_MAP_PATH), site.sample, values, on_write)

"""The grid meter as the SunSpec meter models 201-204 (integer + scale factor) and 211-214
(float) serve it, beside the 701 meter of :class:`~pswd_gateway.simulation.devices.
GridMeterBehaviour`.

``[simulation.grid] meter_model`` picks the model and ``meter_base_address`` where the chain
starts (0, 40000 or 50000). The chain is model 1 then the meter model. The meter models count
import positive: ``W`` > 0 is power drawn from the grid, ``TotWhImp`` the energy drawn and
``TotWhExp`` the energy fed in. The phases each carry an equal share of a balanced load: one
(201, 211), two (202, 212) or three (203, 204, 213, 214).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from pymodbus.constants import ExcCodes

from pswd_gateway import __version__
from pswd_gateway.simulation.config import SimulationConfig
from pswd_gateway.simulation.measurement import (
    EnergyReading,
    MeterReading,
    MeterView,
    meter_readings,
)
from pswd_gateway.simulation.physics import Truth
from pswd_gateway.simulation.sunspec_bank import put

__all__ = [
    "FLOAT_METER_MODELS",
    "INTEGER_METER_MODELS",
    "METER_MODELS",
    "SunSpecMeterBehaviour",
    "meter_map_name",
]

INTEGER_METER_MODELS: Final = (201, 202, 203, 204)
FLOAT_METER_MODELS: Final = (211, 212, 213, 214)
METER_MODELS: Final = (*INTEGER_METER_MODELS, *FLOAT_METER_MODELS)
"""The SunSpec meter models the twin's grid meter can serve besides 701."""

_PHASES: Final[dict[int, tuple[str, ...]]] = {
    1: ("A",),
    2: ("A", "B"),
    3: ("A", "B", "C"),
}
_PHASE_PAIRS: Final = ("AB", "BC", "CA")
_SCALE_FACTORS: Final[dict[str, int]] = {
    # int16 W in 100 kW steps covers ±3.2 GW (as the 701 meter); acc32 Wh in kWh 4.3 TWh
    "A_SF": 0,
    "V_SF": 1,
    "Hz_SF": -2,
    "W_SF": 5,
    "VA_SF": 5,
    "VAR_SF": 5,
    "PF_SF": -1,
    "TotWh_SF": 3,
    "TotVAh_SF": 3,
    "TotVArh_SF": 3,
}
SQRT3: Final = math.sqrt(3.0)
DER_AC_MODEL: Final = 701


def meter_map_name(model_id: int) -> str:
    """The gateway's register map for the twin's grid meter serving ``model_id``."""
    return "sunspec-meter" if model_id == DER_AC_MODEL else f"sunspec-meter-{model_id}"


def _phase_count(model_id: int) -> int:
    return {1: 1, 2: 2, 3: 3, 4: 3}[model_id % 10]


class SunSpecMeterBehaviour:
    """The grid meter at the point of common coupling: SunSpec 1 + one meter model.

    ``view`` is what the meter shows (refreshed, averaged, noisy); without one it serves the
    instantaneous truth of each request.
    """

    def __init__(
        self, model_id: int, cfg: SimulationConfig, *, view: MeterView | None = None
    ) -> None:
        if model_id not in METER_MODELS:
            raise ValueError(f"SunSpec meter model {model_id} is not one of {METER_MODELS}")
        self.model_id = model_id
        self.config = cfg
        self.view = view
        self.phases = _PHASES[_phase_count(model_id)]

    @property
    def model_ids(self) -> tuple[int, ...]:
        return (1, self.model_id)

    def initialise(self, models: Mapping[int, Any]) -> None:
        common = models[1]
        common.Mn.value = "pswd-gateway"
        common.Md.value = f"twin grid meter {self.model_id}"
        common.Opt.value = "digital twin"
        common.Vr.value = __version__
        common.SN.value = f"TWIN-GM-{self.model_id}"
        common.DA.value = 1
        meter = models[self.model_id]
        for name, exponent in _SCALE_FACTORS.items():
            if name in meter.points:
                meter.points[name].value = exponent
        meter.Evt.value = 0

    def update(self, model_id: int, model: Any, truth: Truth) -> None:
        if model_id != self.model_id:
            return
        shown, energy = meter_readings(self.view, truth)
        self._measurements(model, shown, energy)

    def _measurements(self, model: Any, shown: MeterReading, energy: EnergyReading) -> None:
        points = model.points
        share = 1.0 / len(self.phases)
        va = math.hypot(shown.w, shown.var)
        pf = 1.0 if va == 0.0 else shown.w / va
        voltage_ln = shown.voltage_v / SQRT3
        amps = va * share / voltage_ln if voltage_ln > 0 else 0.0
        pf_scale = 100.0 if points["PF"].pdef.get("units") == "Pct" else 1.0
        wh_imp = energy.imported_j / 3600.0
        wh_exp = energy.exported_j / 3600.0
        totals = {
            "W": shown.w,
            "VA": va,
            "VAR": shown.var,
            "A": amps * len(self.phases),
            "PF": pf * pf_scale,
            "PhV": voltage_ln,
            "PPV": shown.voltage_v,
            "Hz": shown.frequency_hz,
            "TotWhImp": wh_imp,
            "TotWhExp": wh_exp,
        }
        for name, value in totals.items():
            put(model, name, value)
        for phase in self.phases:
            put(model, f"Wph{phase}", shown.w * share)
            put(model, f"VAph{phase}", va * share)
            put(model, f"VARph{phase}", shown.var * share)
            put(model, f"Aph{phase}", amps)
            put(model, f"PFph{phase}", pf * pf_scale)
            put(model, f"PhVph{phase}", voltage_ln)
            put(model, f"TotWhImpPh{phase}", wh_imp * share)
            put(model, f"TotWhExpPh{phase}", wh_exp * share)
        if len(self.phases) > 1:
            pairs = _PHASE_PAIRS if len(self.phases) == len(_PHASE_PAIRS) else _PHASE_PAIRS[:1]
            for pair in pairs:
                for name in (f"PhVph{pair}", f"PPVph{pair}"):
                    if name in points:
                        put(model, name, shown.voltage_v)

    def apply(self, writes: Mapping[tuple[int, str], int | str]) -> ExcCodes | None:
        del writes  # only model 1 DA is writable; it is stored and has no effect
        return None

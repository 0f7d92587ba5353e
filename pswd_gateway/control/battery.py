"""The battery controller: the grid loop as a controller of the control cycle.

On a new grid-meter measurement it steps the grid loop (:class:`~pswd_gateway.control.loop.
GridLoop`: the battery's power at the meter's instant, the pure controllers of
:mod:`pswd_gateway.control.grid`, the guard); on a timer run it leads an announced edge or runs
the loop's idle step (ramp down when the meter went quiet, carry safe mode on). It asks for the
battery's power setpoint (``SET``) and bounds it by the battery's rating (``AT_LEAST``/
``AT_MOST``: a hard limit whatever a lower-priority controller adds).

What the step decided (:attr:`outcome`: decision, guard event, why nothing was decided) is kept
for the cycle's statistics and events.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pswd_gateway.config import ControlConfig, SiteConfig
from pswd_gateway.control.controllers import Kind, ProcessImage, SetpointRequest
from pswd_gateway.control.grid import Announced, GridSettings
from pswd_gateway.control.loop import GridLoop, LoopSettings, Outcome
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.domain.signals import BESS_POWER, BESS_SOC, GRID_POWER
from pswd_gateway.domain.units import from_mw, from_mwh
from pswd_gateway.store import Snapshot

__all__ = ["ENABLE_POINT", "SETPOINT_POINT", "BatteryController", "grid_settings"]

SETPOINT_POINT = "power_setpoint"
ENABLE_POINT = "power_setpoint_enabled"


def grid_settings(
    c: ControlConfig, site: SiteConfig, rated_w: float, energy_j: float
) -> GridSettings:
    """The grid controllers' settings from ``[control]`` and ``[site]`` and the battery's
    rating (W) and energy (J)."""
    return GridSettings(
        ramp_limit_w_per_s=site.grid_ramp_limit_w_per_s,
        import_limit_w=site.import_limit_w,
        bess_rated_w=rated_w,
        bess_capacity_j=energy_j,
        soc_min=c.soc_min,
        soc_max=c.soc_max,
        soc_target=c.soc_target,
        ramp_margin=c.ramp_margin,
        band_low_hz=c.band_low_hz,
        soc_restore_s=c.soc_restore_s,
        lookahead_s=c.announce_lead_s,
        payback_s=c.payback_s,
        payback_max_fraction=c.payback_max_fraction,
    )


@dataclass
class BatteryController:
    """The grid loop over the process image; asks for the battery's setpoint."""

    config: ControlConfig
    loop_settings: LoopSettings
    jobs: Callable[[float], Sequence[Announced]] = lambda _now: ()
    """Announced jobs on the wall clock (POSIX seconds), given the time now."""
    name: str = "battery"
    loop: GridLoop = field(init=False)
    outcome: Outcome = field(default_factory=lambda: Outcome(None), init=False)
    held_w: float | None = field(default=None, init=False)
    """The setpoint last decided; asked for again on runs that decide nothing new, so terms
    other controllers add go on top of it, and the cycle's write policy keeps it alive."""
    last_jobs: Sequence[Announced] = field(default=(), init=False)
    """The announced jobs as the last meter step saw them (fetched once per reading)."""

    def __post_init__(self) -> None:
        self.loop = GridLoop(self.loop_settings)

    def settings(self, snap: Snapshot, site: SiteConfig) -> GridSettings | None:
        """The grid settings of this run; ``None`` without a battery rating and energy."""
        c = self.config
        rated = from_mw(c.bess_power_mw) if c.bess_power_mw else None
        energy = from_mwh(c.bess_energy_mwh) if c.bess_energy_mwh else None
        if site.bess is not None:
            rated = rated or snap.value(f"{site.bess}.power_rating")
            energy = energy or snap.value(f"{site.bess}.energy_rating")
        if not rated or not energy:
            return None
        return grid_settings(c, site, rated, energy)

    def step(self, image: ProcessImage) -> list[SetpointRequest]:
        bess = image.site.bess
        if bess is None:
            self.outcome = Outcome(None, skipped="no battery")
            return []
        settings = self.settings(image.snap, image.site)
        self.outcome = self._decide(image, settings)
        setpoint = self.outcome.setpoint_w
        if setpoint is None:  # no new decision: the last one holds (a keep-alive)
            setpoint = self.held_w
        if setpoint is None:
            return []
        self.held_w = setpoint
        requests = [
            SetpointRequest(bess, ENABLE_POINT, 1.0),
            SetpointRequest(bess, SETPOINT_POINT, setpoint),
        ]
        if settings is not None:
            rated = settings.bess_rated_w
            requests += [
                SetpointRequest(bess, SETPOINT_POINT, -rated, Kind.AT_LEAST),
                SetpointRequest(bess, SETPOINT_POINT, rated, Kind.AT_MOST),
            ]
        return requests

    def _decide(self, image: ProcessImage, settings: GridSettings | None) -> Outcome:
        """A loop step on a new meter measurement; otherwise the timer's lead or idle run."""
        snap, now = image.snap, image.now
        meter = snap.get(f"{image.site.grid_meter}.{GRID_POWER.point}")
        usable = settings is not None and meter is not None and meter.quality is Quality.GOOD
        if (
            usable
            and meter is not None
            and settings is not None
            and self.loop.is_new(meter.source_ts)
        ):
            return self._step(image, meter, settings)
        if settings is not None and self.config.predictive:
            lead = self.loop.lead(now, self.jobs(now), settings)
            if lead.setpoint_w is not None:
                return lead
        outcome = self.loop.idle(now, settings)
        if not usable:
            return Outcome(outcome.setpoint_w, skipped="no usable grid or battery reading")
        return outcome

    def _step(self, image: ProcessImage, meter: Point, settings: GridSettings) -> Outcome:
        """A new meter measurement: the battery's readings up to now, then one loop step."""
        snap, site = image.snap, image.site
        soc = snap.usable(BESS_SOC, site)
        measured = snap.read(BESS_POWER, site)
        available = False
        if measured is not None and snap.usable(BESS_POWER, site) is not None:
            self.loop.battery(measured.source_ts, measured.value)
            available = soc is not None
        jobs = self.jobs(image.now) if self.config.predictive else ()
        self.last_jobs = jobs  # the timer's next lead is worked out from these
        return self.loop.step(
            meter.source_ts,
            meter.value,
            received=meter.received_ts,
            soc=soc,
            bess_available=available,
            jobs=jobs,
            settings=settings,
        )

"""The battery controller: the grid loop as a controller of the control cycle.

On a new grid-meter measurement it steps the grid loop (:class:`~pswd_gateway.control.loop.
GridLoop`: the battery's power at the meter's instant, the pure controllers of
:mod:`pswd_gateway.control.grid`, the guard); on a timer run it leads an announced edge or runs
the loop's idle step (ramp down when the meter went quiet, carry safe mode on). It asks for the
battery's power setpoint (``SET``) and bounds it by the battery's rating (``AT_LEAST``/
``AT_MOST``: a hard limit whatever a lower-priority controller adds).

On each step it also answers the grid meter's frequency (:mod:`pswd_gateway.control.ffr`: the
fast frequency response of ``[control.ffr]``, or as :meth:`BatteryController.shape_ffr` was
last told), and gives the response in force to the grid loop as a shift of its target.

What the step decided (:attr:`outcome`: decision, guard event, why nothing was decided) is kept
for the cycle's statistics and events.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pswd_gateway.config import ControlConfig, FfrConfig, SiteConfig
from pswd_gateway.control.controllers import Kind, ProcessImage, SetpointRequest
from pswd_gateway.control.ffr import Ffr, FfrSettings
from pswd_gateway.control.grid import Announced, GridSettings
from pswd_gateway.control.loop import GridLoop, LoopSettings, Outcome
from pswd_gateway.domain.grid_signals import FastFrequencyResponse
from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.domain.signals import BESS_POWER, BESS_SOC, GRID_FREQUENCY, GRID_POWER
from pswd_gateway.domain.units import from_mw, from_mwh
from pswd_gateway.store import Snapshot

__all__ = [
    "ENABLE_POINT",
    "SETPOINT_POINT",
    "BatteryController",
    "ffr_from_signal",
    "ffr_settings",
    "grid_settings",
]

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
        import_hold_margin_w=from_mw(c.import_hold_margin_mw),
    )


def ffr_from_signal(signal: FastFrequencyResponse, c: FfrConfig, nominal_hz: float) -> FfrSettings:
    """The response curve a grid signal sets: its deadband, droop and ramp; ``max_mw`` is both
    the response's bound and the power the droop is a share of (``[control.ffr]`` gives the
    frequency's maximum age)."""
    most = from_mw(signal.max_mw)
    return FfrSettings(
        enabled=signal.enabled,
        nominal_hz=nominal_hz,
        deadband_hz=signal.deadband_hz,
        droop_pct=signal.droop_pct,
        p_ref_w=most,
        max_w=most,
        ramp_w_per_s=from_mw(signal.ramp_mw_per_s),
        max_age_s=c.max_frequency_age_ms / 1000.0,
    )


def ffr_settings(c: FfrConfig, nominal_hz: float, rated_w: float) -> FfrSettings:
    """The response curve from ``[control.ffr]``, the site's nominal frequency and the battery's
    rating (W): ``p_ref_mw`` defaults to the rating, ``max_mw`` to ``p_ref_mw``, the ramp to
    ``max_mw`` per second."""
    p_ref = from_mw(c.p_ref_mw) if c.p_ref_mw is not None else rated_w
    most = from_mw(c.max_mw) if c.max_mw is not None else p_ref
    ramp = from_mw(c.ramp_mw_per_s) if c.ramp_mw_per_s is not None else most
    return FfrSettings(
        enabled=c.enabled,
        nominal_hz=nominal_hz,
        deadband_hz=c.deadband_hz,
        droop_pct=c.droop_pct,
        p_ref_w=p_ref,
        max_w=most,
        ramp_w_per_s=ramp,
        max_age_s=c.max_frequency_age_ms / 1000.0,
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
    ffr: Ffr = field(default_factory=Ffr, init=False)
    """The fast frequency response, stepped with each meter measurement."""
    ffr_shape: FfrSettings | None = field(default=None, init=False)
    """The curve the operator set (:meth:`shape_ffr`); ``None``: ``[control.ffr]``'s."""
    ffr_in_force_w: float = field(default=0.0, init=False)
    """The frequency response the battery carries now (> 0: the import is lowered): the last
    decision's; 0 while the loop is not deciding (a silent meter, safe mode)."""

    def __post_init__(self) -> None:
        self.loop = GridLoop(self.loop_settings)

    def shape_ffr(self, settings: FfrSettings | None) -> None:
        """Enable, disable or reshape the fast frequency response from now on (the operator's
        grid signal); ``None`` returns to ``[control.ffr]``. The response in force moves to the
        new curve at the new curve's ramp, never by a jump."""
        self.ffr_shape = settings

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
        if self.outcome.decision is not None:
            self.ffr_in_force_w = self.outcome.decision.ffr_w
        if self.loop.state is None:
            self.ffr_in_force_w = 0.0
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
            stepped = self._step(image, meter, settings)
            if self.loop.waiting is None or not self.config.predictive:
                return stepped
            # The reading waits for the battery's (a lost battery poll): a lead due now still
            # goes on the battery, or the edge would wait for that poll's timeout.
            lead = self.loop.lead(now, self.last_jobs, settings)
            return lead if lead.setpoint_w is not None else stepped
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
        ffr_w = self._ffr_step(image, meter.source_ts, settings)
        return self.loop.step(
            meter.source_ts,
            meter.value,
            received=meter.received_ts,
            now=image.now,
            soc=soc,
            bess_available=available,
            jobs=jobs,
            settings=settings,
            ffr_w=ffr_w,
        )

    def _ffr_step(self, image: ProcessImage, t: float, settings: GridSettings) -> float:
        """The frequency response in force at the meter's measurement ``t``, from the grid
        meter's frequency point (not plausible, or measured more than the curve's
        ``max_age_s`` before ``t``: ramped to zero)."""
        shape = self.ffr_shape or ffr_settings(
            self.config.ffr, float(image.site.nominal_frequency_hz), settings.bess_rated_w
        )
        self.ffr.shape(shape)
        if self.loop.state is None:  # the loop starts afresh: so does the response
            self.ffr.reset()
        point = image.snap.get(f"{image.site.grid_meter}.{GRID_FREQUENCY.point}")
        if point is None or not point.plausible:
            return self.ffr.step(t, None, None)
        return self.ffr.step(t, point.value, point.source_ts)

"""Carbon-aware placement of announced workloads, inside the site's limits.

The planning slots are ``slot_minutes`` long, from the current slot over ``horizon_h`` (plus a
day of tail so that jobs starting near the end are costed whole). A job at start ``s`` draws its
mean power in every slot it overlaps, in proportion to the overlap. Per slot:

- grid import: ``base + Σ jobs - d ≤ limit`` where ``limit`` is the site's import limit or a
  lower demand-response limit, and ``d`` is battery discharge, ``0 ≤ d ≤ bess_power_mw``,
  ``Σ d·Δt ≤ bess_usable_energy_mwh`` (no recharge credited: a conservative budget);
- cooling: ``base + Σ jobs ≤ cooling_capacity_mw``.

The objective is the jobs' carbon (kg CO2e from the forecast; load within the renewable supply
the forecast gives, beyond what the plan already draws there, draws none) plus
``price_weight x cost``, a tiny penalty on battery use, and a tiny earliness tie-break, less a
credit for heat: while the district-heating network has asked for heat (a heat request,
:attr:`Scheduler.heat_requests`), each MWh a job draws in the request's window up to the load
the request still needs earns ``heat_per_site_mwh x [heat] displaced_kg_per_mwh`` (the boiler
heat it displaces), so a flexible job moves into the window when the heat is worth more than
the carbon it costs there.

Two entry points:

- :meth:`Scheduler.place` puts one new job among the others, which stay where they are. This
  is exact (every candidate start is checked) and vectorised; it answers the HTTP POST.
- :meth:`Scheduler.optimise` re-plans every movable job together as a MILP solved by HiGHS
  (highspy), warm-started from the current plan, within a time limit. Candidate starts per job
  are pruned to ``max_candidates`` (the earliest, the latest, the current, and the lowest-carbon
  rest), which keeps 1,000 jobs tractable.

HiGHS was chosen over CP-SAT because the model is a plain MILP with continuous battery
variables and real-valued carbon costs (CP-SAT needs integer coefficients), and highspy is a
small wheel with no further dependencies.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import highspy
import numpy as np
import numpy.typing as npt

from pswd_gateway.config import HeatConfig, SchedulingConfig, SiteConfig
from pswd_gateway.domain.workloads import (
    Allocation,
    Announcement,
    BindingConstraint,
    Explanation,
    Flexibility,
)
from pswd_gateway.errors import DoesNotFitError
from pswd_gateway.scheduling.heat import Requested, heat_per_site_mwh, site_load_for_heat_mw
from pswd_gateway.scheduling.model import (
    CarbonForecast,
    OptimiseResult,
    PlacedJob,
    SiteForecast,
    SiteForecastSlot,
)
from pswd_gateway.scheduling.plan import build_physical_plan

__all__ = ["Scheduler"]

Array = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]

TAIL_S = 86_400
BATTERY_PENALTY_KG_PER_MWH = 1e-3
EARLINESS_KG_PER_SLOT = 1e-6
UNPLACED_PENALTY_KG = 1e9
TOL = 1e-6


@dataclass(frozen=True)
class _Slots:
    """The time slots of one plan: slot ``k`` starts at ``start + k·slot_s``."""

    start: datetime
    slot_s: int
    n: int
    """Slots including the tail."""
    n_start: int
    """Starts are allowed in the first ``n_start`` slots (the horizon)."""

    @property
    def slot_h(self) -> float:
        return self.slot_s / 3600.0

    def offset(self, t: datetime) -> float:
        return (t - self.start).total_seconds() / self.slot_s

    def at(self, offset: float) -> datetime:
        return self.start + timedelta(seconds=offset * self.slot_s)


@dataclass(frozen=True)
class _Horizon:
    """What each slot of the plan holds: import limit, carbon, price and the load placed.

    ``dr`` marks the slots whose limit a demand-response window lowered.
    """

    slots: _Slots
    limit: Array
    dr: npt.NDArray[np.bool_]
    carbon: Array
    price: Array | None
    fixed: Array
    """Base load plus every job held where it is."""
    source: str
    heat_room: Array | None = None
    """Site load (MW) heat requests still want over each slot, beyond ``fixed`` (None: no
    request, or no credit for heat)."""
    heat_credit: Array | None = None
    """kg CO2e credited per MWh of load inside ``heat_room``, per slot."""
    green_room: Array | None = None
    """Renewable supply (MW) the plan does not draw yet, per slot (None: the forecast gives
    none): load within it draws no grid carbon."""

    def grid_carbon_kg(self, load_mw: Array, lo: int, hi: int) -> Array:
        """The grid carbon of loads (rows: candidates, columns: slots ``lo`` to ``hi``), kg:
        what they draw beyond the renewable supply left, at the slot's intensity."""
        drawn = load_mw
        if self.green_room is not None:
            drawn = load_mw - np.minimum(load_mw, self.green_room[None, lo:hi])
        carbon: Array = (drawn @ self.carbon[lo:hi]) * self.slots.slot_h
        return carbon

    def heat_credit_kg(self, load_mw: Array, lo: int, hi: int) -> Array:
        """The heat credit of loads (rows: candidates, columns: slots ``lo`` to ``hi``), kg."""
        if self.heat_room is None or self.heat_credit is None:
            return np.zeros(load_mw.shape[0])
        served = np.minimum(load_mw, self.heat_room[None, lo:hi])
        credit: Array = (served @ self.heat_credit[lo:hi]) * self.slots.slot_h
        return credit

    @property
    def base_excess_mwh(self) -> float:
        """Battery energy the held jobs already need (import above the limit)."""
        return float(np.maximum(self.fixed - self.limit, 0.0).sum()) * self.slots.slot_h


@dataclass
class _LoadCache:
    slots: _Slots | None = None
    jobs: dict[str, tuple[PlacedJob, Array]] = field(default_factory=dict)
    total: Array = field(default_factory=lambda: np.zeros(0))


def _coverage(starts: Array, duration: float, n: int) -> Array:
    """Fraction of each slot (columns) covered by a job starting at each offset (rows)."""
    k = np.arange(n, dtype=float)
    s = starts[:, None]
    out: Array = np.clip(np.minimum(s + duration, k + 1.0) - np.maximum(s, k), 0.0, 1.0)
    return out


class Scheduler:
    """Places workloads; stateless apart from its configuration (safe from several threads)."""

    def __init__(
        self,
        scheduling: SchedulingConfig,
        site: SiteConfig,
        max_candidates: int = 48,
        heat: HeatConfig | None = None,
    ) -> None:
        self.cfg = scheduling
        self.site = site
        self.max_candidates = max_candidates
        self.heat = heat
        self.heat_requests: tuple[Requested, ...] = ()
        """The heat requests open now or ahead (the grid-signal service's): they bias
        placement towards their windows (None of it without ``heat``)."""
        self._cache = _LoadCache()
        self._cache_lock = threading.Lock()

    # ---- the slots and what each holds ----

    def _slots(self, now: datetime) -> _Slots:
        slot_s = self.cfg.slot_minutes * 60
        epoch = now.timestamp()
        start = now - timedelta(seconds=epoch % slot_s)
        n_start = self.cfg.horizon_h * 3600 // slot_s
        return _Slots(start, slot_s, n_start + TAIL_S // slot_s, n_start)

    # ---- the book of held jobs (kept by the caller, so a placement costs O(1) in their number)

    def hold(self, job: PlacedJob) -> None:
        """Record that ``job`` holds its start (replaces an earlier record of the same id)."""
        with self._cache_lock:
            cache = self._cache
            old = cache.jobs.pop(job.id, None)
            if old is not None and cache.slots is not None:
                cache.total -= old[1]
            vec = (
                self._job_load(job.announcement, cache.slots.offset(job.start), cache.slots)
                if cache.slots is not None
                else np.zeros(0)
            )
            cache.jobs[job.id] = (job, vec)
            if cache.slots is not None:
                cache.total += vec

    def release(self, workload_id: str) -> None:
        """Forget a held job (it ended, or moved to a state the plan no longer holds)."""
        with self._cache_lock:
            old = self._cache.jobs.pop(workload_id, None)
            if old is not None and self._cache.slots is not None:
                self._cache.total -= old[1]

    def held(self) -> list[PlacedJob]:
        with self._cache_lock:
            return [job for job, _ in self._cache.jobs.values()]

    def _held_load(self, slots: _Slots, fixed: Sequence[PlacedJob] | None) -> Array:
        """Base load plus the held jobs: ``fixed``, or (None) the book kept by hold/release."""
        if fixed is not None:
            load = np.full(slots.n, self.cfg.base_load_mw)
            for job in fixed:
                load += self._job_load(job.announcement, slots.offset(job.start), slots)
            return load
        with self._cache_lock:
            cache = self._cache
            if cache.slots != slots:  # a new slot began: recompute every held job once
                cache.slots = slots
                cache.total = np.full(slots.n, self.cfg.base_load_mw)
                for key, (job, _) in list(cache.jobs.items()):
                    vec = self._job_load(job.announcement, slots.offset(job.start), slots)
                    cache.jobs[key] = (job, vec)
                    cache.total += vec
            return cache.total.copy()

    def _horizon(
        self,
        slots: _Slots,
        forecast: CarbonForecast,
        fixed: Sequence[PlacedJob] | None,
    ) -> _Horizon:
        limit = np.full(slots.n, self.site.import_limit_mw)  # an operator's demand response too
        dr = np.zeros(slots.n, dtype=bool)
        for window in self.cfg.demand_response:
            a = max(0, math.floor(slots.offset(window.start)))
            b = min(slots.n, math.ceil(slots.offset(window.end)))
            if a < b:
                lower = limit[a:b] > window.import_limit_mw
                dr[a:b] |= lower
                limit[a:b] = np.minimum(limit[a:b], window.import_limit_mw)
        sampled = forecast.resampled(slots.start, slots.slot_s, slots.n)
        price = None
        if sampled.price_per_mwh is not None:
            price = np.asarray(sampled.price_per_mwh)
        load = self._held_load(slots, fixed)
        carbon = np.asarray(sampled.carbon_g_per_kwh)
        room, credit = self._heat_room(slots, load)
        green = None
        if sampled.renewable_mw is not None:
            green = np.maximum(np.asarray(sampled.renewable_mw) - load, 0.0)
        return _Horizon(slots, limit, dr, carbon, price, load, forecast.source, room, credit, green)

    def _heat_room(self, slots: _Slots, load: Array) -> tuple[Array | None, Array | None]:
        """Per slot: the site load the heat requests still want beyond ``load`` (MW, in
        proportion to the part of the slot a request covers), and the credit per MWh of it."""
        heat, requests = self.heat, self.heat_requests
        if heat is None or not requests or heat.displaced_kg_per_mwh <= 0.0:
            return None, None
        room, credit = np.zeros(slots.n), np.zeros(slots.n)
        for r in requests:  # the last request given wins where windows overlap (as the offer)
            a = max(0.0, slots.offset(r.start))
            b = float(slots.n) if r.end is None else min(float(slots.n), slots.offset(r.end))
            if a >= b:
                continue
            k = np.arange(math.floor(a), math.ceil(b))
            covered = np.minimum(k + 1.0, b) - np.maximum(k.astype(float), a)
            wanted = site_load_for_heat_mw(r.heat_mw, r.supply_c, heat)
            if not math.isfinite(wanted):
                continue
            room[k] = np.maximum(wanted - load[k], 0.0) * covered
            credit[k] = heat_per_site_mwh(r.supply_c, heat) * heat.displaced_kg_per_mwh
        if not room.any():
            return None, None
        return room, credit

    @staticmethod
    def _job_load(a: Announcement, start_offset: float, slots: _Slots) -> Array:
        duration = a.power_profile.duration_estimate_sec / slots.slot_s
        cov = _coverage(np.array([start_offset]), duration, slots.n)[0]
        load: Array = a.power_profile.mean_power_mw() * cov
        return load

    def _candidates(self, a: Announcement, slots: _Slots, now: datetime) -> Array:
        """Candidate start offsets: the first possible instant, then every slot boundary."""
        first = max(a.earliest_start, now)
        last = a.latest_start
        lo = slots.offset(first)
        hi = min(slots.offset(last), float(slots.n_start))
        if lo > hi + TOL:
            return np.zeros(0)
        if a.flexibility is Flexibility.FIXED:
            return np.array([lo])
        aligned = np.arange(math.ceil(lo - TOL), math.floor(hi + TOL) + 1, dtype=float)
        aligned = aligned[aligned > lo + TOL]
        return np.concatenate(([lo], aligned))

    # ---- evaluation of one job's candidates ---------------------------------------------------

    def _evaluate(
        self, a: Announcement, starts: Array, horizon: _Horizon
    ) -> tuple[Array, dict[BindingConstraint, npt.NDArray[np.bool_]], Array, Array]:
        """Per candidate: cost, violated constraints, carbon kg, worst excess over the battery.

        Only the slots the candidates can touch are computed; battery energy used elsewhere
        by the others is added as a constant.
        """
        slots = horizon.slots
        mean = a.power_profile.mean_power_mw()
        duration = a.power_profile.duration_estimate_sec / slots.slot_s
        lo = max(0, math.floor(float(starts.min())))
        hi = min(slots.n, math.ceil(float(starts.max()) + duration) + 1)
        cov = _coverage(starts - lo, duration, hi - lo)
        fixed, limit = horizon.fixed[lo:hi], horizon.limit[lo:hi]
        load = fixed[None, :] + mean * cov
        excess = np.maximum(load - limit[None, :], 0.0)
        outside = (
            horizon.base_excess_mwh - float(np.maximum(fixed - limit, 0.0).sum()) * slots.slot_h
        )
        battery_energy = excess.sum(axis=1) * slots.slot_h + outside
        touched = cov > 0
        over_power: Mask = np.asarray(
            ((excess > self.cfg.bess_power_mw + TOL) & touched).any(axis=1)
        )
        over_energy = battery_energy > self.cfg.bess_usable_energy_mwh + TOL
        over_cooling: Mask = np.asarray(
            ((load > self.cfg.cooling_capacity_mw + TOL) & touched).any(axis=1)
        )
        dr_hit: Mask = np.asarray(((excess > TOL) & horizon.dr[None, lo:hi] & touched).any(axis=1))
        energy_mwh = mean * cov * slots.slot_h
        carbon = horizon.grid_carbon_kg(mean * cov, lo, hi)
        cost = carbon.copy()
        if horizon.price is not None and self.cfg.price_weight_kg_per_currency > 0:
            cost += self.cfg.price_weight_kg_per_currency * (energy_mwh @ horizon.price[lo:hi])
        cost -= horizon.heat_credit_kg(mean * cov, lo, hi)
        cost += battery_energy * BATTERY_PENALTY_KG_PER_MWH
        cost += starts * EARLINESS_KG_PER_SLOT
        violations: dict[BindingConstraint, npt.NDArray[np.bool_]] = {
            "demand_response": over_power & dr_hit,
            "grid_import_limit": over_power & ~dr_hit,
            "bess_power": np.zeros_like(over_power),
            "bess_energy": over_energy & ~over_power,
            "cooling_capacity": over_cooling,
        }
        worst = (np.where(touched, excess, 0.0) - self.cfg.bess_power_mw).max(axis=1)
        return cost, violations, carbon, worst

    def _price(self, a: Announcement, start: float, horizon: _Horizon) -> float | None:
        if horizon.price is None:
            return None
        cov = _coverage(
            np.array([start]),
            a.power_profile.duration_estimate_sec / horizon.slots.slot_s,
            horizon.slots.n,
        )
        return float(
            (a.power_profile.mean_power_mw() * cov[0] * horizon.slots.slot_h) @ horizon.price
        )

    # ---- place one ----

    def place(
        self,
        workload_id: str,
        announcement: Announcement,
        others: Sequence[PlacedJob] | None,
        forecast: CarbonForecast,
        now: datetime,
    ) -> Allocation:
        """The cheapest feasible start for one job, the others held; else DoesNotFitError.

        ``others=None`` uses the book kept with :meth:`hold`/:meth:`release` (what the workload
        service does: a placement then costs the same with 10 or 10,000 jobs held).
        """
        del workload_id
        slots = self._slots(now)
        horizon = self._horizon(slots, forecast, others)
        starts = self._candidates(announcement, slots, now)
        if len(starts) == 0:
            if slots.offset(max(announcement.earliest_start, now)) > slots.n_start:
                raise DoesNotFitError(
                    f"its window opens after the planning horizon "
                    f"({self.cfg.horizon_h} h from now, scheduling.horizon_h): announce it "
                    "nearer its earliest_start_time",
                    "earliest_start",
                    None,
                )
            raise DoesNotFitError(
                f"its window has passed: the latest start was "
                f"{announcement.latest_start.isoformat()}",
                "deadline",
                None,
            )
        cost, violations, carbon, worst = self._evaluate(announcement, starts, horizon)
        feasible = ~np.logical_or.reduce(list(violations.values()))
        if not feasible.any():
            raise self._does_not_fit(announcement, starts, violations, worst, horizon, now)
        best = int(np.argmin(np.where(feasible, cost, np.inf)))
        return self._allocation(
            announcement, starts, best, cost, violations, carbon, horizon, now, solver="insert"
        )

    def _does_not_fit(
        self,
        a: Announcement,
        starts: Array,
        violations: Mapping[BindingConstraint, npt.NDArray[np.bool_]],
        worst: Array,
        horizon: _Horizon,
        now: datetime,
    ) -> DoesNotFitError:
        counts = {k: int(v.sum()) for k, v in violations.items()}
        binding = max(counts, key=lambda k: counts[k])
        slots = horizon.slots
        span = f"{_t(slots.at(starts[0]))} and {_t(slots.at(starts[-1]))}"
        if binding in {"grid_import_limit", "demand_response"}:
            what = (
                "the demand-response import limit"
                if binding == "demand_response"
                else f"the {self.site.import_limit_mw:g} MW import limit"
            )
            reason = (
                f"at every start between {span} the grid import would exceed {what} by more "
                f"than the battery's {self.cfg.bess_power_mw:g} MW can cover "
                f"(by at least {max(float(worst.min()), 0.0):.1f} MW)"
            )
        elif binding == "bess_energy":
            reason = (
                f"at every start between {span} the battery would need more than its "
                f"{self.cfg.bess_usable_energy_mwh:g} MWh to hold the import under its limit"
            )
        else:
            reason = (
                f"at every start between {span} the heat load would exceed the "
                f"{self.cfg.cooling_capacity_mw:g} MW cooling capacity"
            )
        later = self._earliest_feasible(a, horizon, now)
        return DoesNotFitError(reason, binding, later)

    def _earliest_feasible(
        self, a: Announcement, horizon: _Horizon, now: datetime
    ) -> datetime | None:
        slots = horizon.slots
        lo = max(slots.offset(a.earliest_start), slots.offset(now))
        starts = np.arange(math.ceil(lo), slots.n_start + 1, dtype=float)
        if len(starts) == 0:
            return None
        _, violations, _, _ = self._evaluate(a, starts, horizon)
        feasible = ~np.logical_or.reduce(list(violations.values()))
        if not feasible.any():
            return None
        return slots.at(float(starts[int(np.argmax(feasible))]))

    def _allocation(
        self,
        a: Announcement,
        starts: Array,
        chosen: int,
        cost: Array,
        violations: Mapping[BindingConstraint, npt.NDArray[np.bool_]],
        carbon: Array,
        horizon: _Horizon,
        now: datetime,
        *,
        solver: str,
    ) -> Allocation:
        slots = horizon.slots
        start = slots.at(float(starts[chosen]))
        ramp, battery, cooling = build_physical_plan(a, start, self.cfg, self.site)
        expected, run_now = float(carbon[chosen]), float(carbon[0])
        binding, reason = self._explain(a, starts, chosen, cost, violations, carbon, horizon)
        return Allocation(
            scheduled_start=start,
            scheduled_end=start + a.duration,
            grid_ramp_plan=ramp,
            battery_reservation=battery,
            cooling_preposition=cooling,
            expected_carbon_kg=round(expected, 3),
            run_now_carbon_kg=round(run_now, 3),
            carbon_saved_kg=round(run_now - expected, 3),
            expected_cost=self._price(a, float(starts[chosen]), horizon),
            explanation=Explanation(
                chosen_slot_start=start, binding_constraint=binding, reason=reason
            ),
            solver=solver,
            planned_at=now,
            forecast_source=horizon.source,
        )

    def _explain(
        self,
        a: Announcement,
        starts: Array,
        chosen: int,
        cost: Array,
        violations: Mapping[BindingConstraint, npt.NDArray[np.bool_]],
        carbon: Array,
        horizon: _Horizon,
    ) -> tuple[BindingConstraint, str]:
        saved = float(carbon[0] - carbon[chosen])
        start = _t(horizon.slots.at(float(starts[chosen])))
        if a.flexibility is Flexibility.FIXED:
            return "fixed_start", f"fixed start at {start} as announced"
        cleanest = int(np.argmin(cost))
        heat = self._heat_served(a, float(starts[chosen]), horizon)
        if cost[chosen] <= cost[cleanest] + 1e-6 and heat is not None:
            heat_mwh, credit_kg = heat
            grid = (
                f"saving {saved:,.0f} kg CO2e of grid carbon against starting at once"
                if saved >= 0
                else f"for {-saved:,.0f} kg CO2e more grid carbon than starting at once"
            )
            return "none", (
                f"start {start}: its load lets the site deliver {heat_mwh:,.1f} MWh of the heat "
                f"the district-heating network asked for, displacing {credit_kg:,.0f} kg CO2e "
                f"of boiler heat ({grid})"
            )
        if cost[chosen] <= cost[cleanest] + 1e-6:
            later = self._cleaner_after_window(a, horizon, float(carbon[chosen]))
            if later is not None:
                return "deadline", (
                    f"lowest-carbon start in the window ({start}, saves {saved:,.0f} kg CO2e "
                    f"against starting at once); a cleaner start at {_t(later)} lies past the "
                    "deadline"
                )
            if chosen == 0:
                return "none", f"starting at once ({start}) is the lowest-carbon choice"
            return "none", (
                f"lowest-carbon start in the window: {start}, saving {saved:,.0f} kg CO2e "
                "against starting at once"
            )
        better = cost < cost[chosen] - 1e-6
        counts = {k: int((v & better).sum()) for k, v in violations.items()}
        binding = max(counts, key=lambda k: counts[k])
        return binding, (
            f"start {start} (saves {saved:,.0f} kg CO2e against starting at once); every "
            f"lower-carbon start would break the {binding.replace('_', ' ')}"
        )

    def _heat_served(
        self, a: Announcement, start: float, horizon: _Horizon
    ) -> tuple[float, float] | None:
        """Heat (MWh) a job starting at ``start`` lets the site deliver against the heat
        requests, and its credit (kg CO2e); None when it serves none."""
        if self.heat is None or self.heat.displaced_kg_per_mwh <= 0.0:
            return None
        slots = horizon.slots
        cov = _coverage(
            np.array([start]), a.power_profile.duration_estimate_sec / slots.slot_s, slots.n
        )
        credit = float(horizon.heat_credit_kg(a.power_profile.mean_power_mw() * cov, 0, slots.n)[0])
        if credit < 0.5:
            return None
        return credit / self.heat.displaced_kg_per_mwh, credit

    def _cleaner_after_window(
        self, a: Announcement, horizon: _Horizon, chosen_carbon: float
    ) -> datetime | None:
        slots = horizon.slots
        lo = math.floor(slots.offset(a.latest_start)) + 1
        if lo >= slots.n_start:
            return None
        starts = np.arange(lo, slots.n_start)
        duration = a.power_profile.duration_estimate_sec / slots.slot_s
        whole, part = int(duration), duration - int(duration)
        cum = np.concatenate(([0.0], np.cumsum(horizon.carbon)))
        ends = np.minimum(starts + whole, slots.n - 1)
        per_mw = cum[ends] - cum[starts] + part * horizon.carbon[ends]  # prefix sums: O(n)
        carbon = a.power_profile.mean_power_mw() * slots.slot_h * per_mw
        best = int(np.argmin(carbon))
        if carbon[best] < chosen_carbon * (1 - 1e-3):
            return slots.at(float(starts[best]))
        return None

    # ---- global re-plan -----------------------------------------------------------------------

    def optimise(  # noqa: PLR0915 - one model, built in one place
        self,
        movable: Sequence[tuple[str, Announcement]],
        fixed: Sequence[PlacedJob],
        forecast: CarbonForecast,
        now: datetime,
        *,
        current: Mapping[str, datetime] | None = None,
        time_limit_s: float | None = None,
    ) -> OptimiseResult:
        """Re-place every movable job at once (MILP, HiGHS); ``fixed`` jobs stay put."""
        t0 = time.perf_counter()
        current = current or {}
        slots = self._slots(now)
        horizon = self._horizon(slots, forecast, fixed)
        unplaced: dict[str, DoesNotFitError] = {}
        jobs: list[tuple[str, Announcement, Array, Array, Array, Array]] = []
        for workload_id, a in movable:
            starts = self._candidates(a, slots, now)
            if workload_id in current:
                here = slots.offset(current[workload_id])
                if len(starts) and starts[0] - TOL <= here <= starts[-1] + TOL:
                    starts = np.unique(np.append(starts, here))
            if len(starts) == 0:
                unplaced[workload_id] = DoesNotFitError("its window has passed", "deadline", None)
                continue
            starts = self._prune(a, starts, horizon, current.get(workload_id), slots)
            cov = _coverage(starts, a.power_profile.duration_estimate_sec / slots.slot_s, slots.n)
            power = a.power_profile.mean_power_mw() * cov
            cost, _, carbon, _ = self._evaluate_costs(a, starts, power, horizon)
            jobs.append((workload_id, a, starts, power, cost, carbon))

        lp, n_x, battery_rows = self._model(jobs, horizon)
        h = highspy.Highs()  # type: ignore[no-untyped-call]
        h.setOptionValue("output_flag", False)  # noqa: FBT003 - highspy option API
        h.setOptionValue("threads", 1)
        h.setOptionValue("mip_rel_gap", 1e-4)
        h.setOptionValue("time_limit", float(time_limit_s or self.cfg.solver_time_limit_s))
        h.passModel(lp)
        warm = self._warm_start(jobs, current, slots, horizon, lp.num_col_, n_x, battery_rows)
        if warm is not None:
            solution = highspy.HighsSolution()
            solution.col_value = list(warm)
            solution.value_valid = True
            h.setSolution(solution)
        h.run()
        status = h.modelStatusToString(h.getModelStatus())
        info = h.getInfo()
        values = np.asarray(h.getSolution().col_value) if info.primal_solution_status else None

        allocations: dict[str, Allocation] = {}
        objective = 0.0
        col = 0
        for j, (workload_id, a, starts, _, cost, carbon) in enumerate(jobs):
            k = len(starts)
            chosen = None
            if values is not None:
                picks = values[col : col + k]
                if picks.max(initial=0.0) > 0.5:
                    chosen = int(np.argmax(picks))
            col += k
            if chosen is None:
                unplaced[workload_id] = DoesNotFitError(
                    "no start in its window fits with the other workloads",
                    "grid_import_limit",
                    None,
                )
                continue
            del j
            _, violations, _, _ = self._evaluate(a, starts, horizon)
            allocations[workload_id] = self._allocation(
                a, starts, chosen, cost, violations, carbon, horizon, now, solver="highs-milp"
            )
            objective += float(carbon[chosen])
        return OptimiseResult(
            allocations=allocations,
            unplaced=unplaced,
            status=status,
            objective_kg=objective,
            solve_s=time.perf_counter() - t0,
            candidates=n_x,
            mip_gap=float(info.mip_gap) if math.isfinite(info.mip_gap) else 0.0,
        )

    def _model(  # noqa: PLR0915 - one model, built in one place
        self,
        jobs: Sequence[tuple[str, Announcement, Array, Array, Array, Array]],
        horizon: _Horizon,
    ) -> tuple[highspy.HighsLp, int, npt.NDArray[np.int64]]:
        """The MILP in column form: x[j,c] per candidate, unplaced[j], battery d[t].

        Import and cooling rows are only added for slots where the held load plus every job at
        its most demanding candidate could break the limit: the others can never bind.
        """
        slots = horizon.slots
        potential = horizon.fixed.copy()
        for *_, power, _, _ in jobs:
            potential += power.max(axis=0)
        import_slots = np.nonzero(potential > horizon.limit + TOL)[0]
        cool_slots = np.nonzero(potential > self.cfg.cooling_capacity_mw + TOL)[0]
        import_row = np.full(slots.n, -1)
        import_row[import_slots] = np.arange(len(import_slots))
        cool_row = np.full(slots.n, -1)
        cool_row[cool_slots] = len(import_slots) + np.arange(len(cool_slots))
        row_assign = len(import_slots) + len(cool_slots)
        row_energy = row_assign + len(jobs)
        n_rows = row_energy + 1

        col_index: list[npt.NDArray[np.int64]] = []
        col_value: list[Array] = []
        col_count: list[npt.NDArray[np.int64]] = []
        costs: list[Array] = []
        for j, (_, _, starts, power, cost, _) in enumerate(jobs):
            k = len(starts)
            parts_i: list[npt.NDArray[np.int64]] = []
            parts_v: list[Array] = []
            parts_c: list[npt.NDArray[np.int64]] = []
            for rows_of in (import_row, cool_row):
                sub = power[:, rows_of >= 0] if (rows_of >= 0).any() else np.zeros((k, 0))
                rows = rows_of[rows_of >= 0]
                c_idx, t_idx = np.nonzero(sub > 0)
                parts_i.append(rows[t_idx] + 0 * c_idx)
                parts_v.append(sub[c_idx, t_idx])
                parts_c.append(c_idx)
            parts_i.append(np.full(k, row_assign + j))
            parts_v.append(np.ones(k))
            parts_c.append(np.arange(k))
            cand = np.concatenate(parts_c)
            order = np.argsort(cand, kind="stable")
            col_index.append(np.concatenate(parts_i)[order])
            col_value.append(np.concatenate(parts_v)[order])
            col_count.append(np.bincount(cand, minlength=k))
            costs.append(cost)
        n_x = sum(len(c) for c in costs)
        # one 'unplaced' column per job
        col_index.append(row_assign + np.arange(len(jobs)))
        col_value.append(np.ones(len(jobs)))
        col_count.append(np.ones(len(jobs), dtype=np.int64))
        costs.append(np.array([UNPLACED_PENALTY_KG * (1 + a.priority) for _, a, *_ in jobs]))
        # d[t] for the import rows that exist
        nb = len(import_slots)
        col_index.append(np.column_stack((np.arange(nb), np.full(nb, row_energy))).ravel())
        col_value.append(np.tile([-1.0, slots.slot_h], nb))
        col_count.append(np.full(nb, 2))
        costs.append(np.full(nb, BATTERY_PENALTY_KG_PER_MWH * slots.slot_h))

        counts = np.concatenate(col_count)
        n_cols = len(counts)
        row_lower = np.full(n_rows, -highspy.kHighsInf)
        row_upper = np.zeros(n_rows)
        row_upper[:nb] = (horizon.limit - horizon.fixed)[import_slots]
        row_upper[nb:row_assign] = (self.cfg.cooling_capacity_mw - horizon.fixed)[cool_slots]
        row_lower[row_assign:row_energy] = 1.0
        row_upper[row_assign:row_energy] = 1.0
        row_upper[row_energy] = self.cfg.bess_usable_energy_mwh
        col_upper = np.ones(n_cols)
        col_upper[n_cols - nb :] = self.cfg.bess_power_mw

        lp = highspy.HighsLp()
        lp.num_col_ = n_cols
        lp.num_row_ = n_rows
        lp.col_cost_ = np.concatenate(costs)
        lp.col_lower_ = np.zeros(n_cols)
        lp.col_upper_ = col_upper
        lp.row_lower_ = row_lower
        lp.row_upper_ = row_upper
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = np.concatenate(([0], np.cumsum(counts))).astype(np.int32)
        lp.a_matrix_.index_ = np.concatenate(col_index).astype(np.int32)
        lp.a_matrix_.value_ = np.concatenate(col_value)
        lp.integrality_ = [highspy.HighsVarType.kInteger] * (n_x + len(jobs)) + [
            highspy.HighsVarType.kContinuous
        ] * nb
        return lp, n_x, import_slots

    def _evaluate_costs(
        self, a: Announcement, starts: Array, power: Array, horizon: _Horizon
    ) -> tuple[Array, None, Array, None]:
        slots = horizon.slots
        energy = power * slots.slot_h
        carbon = horizon.grid_carbon_kg(power, 0, slots.n)
        cost = carbon + starts * EARLINESS_KG_PER_SLOT
        if horizon.price is not None and self.cfg.price_weight_kg_per_currency > 0:
            cost = cost + self.cfg.price_weight_kg_per_currency * (energy @ horizon.price)
        cost = cost - horizon.heat_credit_kg(power, 0, slots.n)
        del a
        return cost, None, carbon, None

    def _prune(
        self,
        a: Announcement,
        starts: Array,
        horizon: _Horizon,
        current: datetime | None,
        slots: _Slots,
    ) -> Array:
        if len(starts) <= self.max_candidates:
            return starts
        cov = _coverage(starts, a.power_profile.duration_estimate_sec / slots.slot_s, slots.n)
        mean = a.power_profile.mean_power_mw()
        carbon = horizon.grid_carbon_kg(mean * cov, 0, slots.n)
        carbon -= horizon.heat_credit_kg(mean * cov, 0, slots.n)
        keep = {0, len(starts) - 1}
        if current is not None:
            keep.add(int(np.argmin(np.abs(starts - slots.offset(current)))))
        for i in np.argsort(carbon, kind="stable"):
            if len(keep) >= self.max_candidates:
                break
            keep.add(int(i))
        return starts[sorted(keep)]

    def _warm_start(
        self,
        jobs: Sequence[tuple[str, Announcement, Array, Array, Array, Array]],
        current: Mapping[str, datetime],
        slots: _Slots,
        horizon: _Horizon,
        n_cols: int,
        n_x: int,
        battery_slots: npt.NDArray[np.int64],
    ) -> Array | None:
        """The current plan as a MIP start, when every job has one and it is feasible."""
        x = np.zeros(n_cols)
        load = horizon.fixed.copy()
        col = 0
        for j, (workload_id, _, starts, power, _, _) in enumerate(jobs):
            here = current.get(workload_id)
            if here is None:
                return None
            c = int(np.argmin(np.abs(starts - slots.offset(here))))
            if abs(starts[c] - slots.offset(here)) > TOL:
                return None
            x[col + c] = 1.0
            load += power[c]
            col += len(starts)
            del j
        excess = np.maximum(load - horizon.limit, 0.0)
        if (excess > self.cfg.bess_power_mw + TOL).any():
            return None
        if excess.sum() * slots.slot_h > self.cfg.bess_usable_energy_mwh + TOL:
            return None
        if (load > self.cfg.cooling_capacity_mw + TOL).any():
            return None
        x[n_x + len(jobs) :] = excess[battery_slots]
        return x

    # ---- the site forecast ----

    def site_forecast(
        self, placed: Sequence[PlacedJob] | None, forecast: CarbonForecast, now: datetime
    ) -> SiteForecast:
        slots = self._slots(now)
        horizon = self._horizon(slots, forecast, placed)
        rows = []
        for t in range(slots.n_start):
            load = float(horizon.fixed[t])
            limit = float(horizon.limit[t])
            bess = min(self.cfg.bess_power_mw, max(0.0, load - limit))
            rows.append(
                SiteForecastSlot(
                    start=slots.at(t),
                    site_load_mw=load,
                    grid_import_mw=load - bess,
                    bess_mw=bess,
                    heat_export_mw=min(
                        self.cfg.heat_demand_mw, self.cfg.heat_recovery_max_fraction * load
                    ),
                    carbon_g_per_kwh=float(horizon.carbon[t]),
                    import_limit_mw=limit,
                )
            )
        return SiteForecast(slots.start, slots.slot_s, tuple(rows), forecast.source)


def _t(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%d %H:%MZ")

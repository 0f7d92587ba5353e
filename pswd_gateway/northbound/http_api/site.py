"""``GET /v1/site``: the live site from the store, in the API's units (MW, °C).

Every field is a signal of the catalogue (:mod:`pswd_gateway.domain.signals`) read from the
snapshot; power is shown in MW through :func:`~pswd_gateway.domain.units.to_mw`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from pswd_gateway.config import SiteConfig
from pswd_gateway.domain import signals as sig
from pswd_gateway.domain.points import Quality
from pswd_gateway.domain.units import to_mw
from pswd_gateway.northbound.http_api.schemas import SignalOut, SiteOut
from pswd_gateway.scheduling.service import WorkloadService
from pswd_gateway.store import PointStore, Snapshot

__all__ = ["site_view"]


def site_view(
    store: PointStore,
    site: Callable[[], SiteConfig],
    service: WorkloadService,
    wall_clock: Callable[[], float] = time.time,
) -> Callable[[], SiteOut]:
    """A function answering the current :class:`SiteOut` (invalid readings become null)."""

    def view() -> SiteOut:
        now = wall_clock()
        snap = store.snapshot(now)
        cfg = site()

        def value(signal: sig.Signal) -> float | None:
            return snap.usable(signal, cfg)

        def mw(signal: sig.Signal) -> float | None:
            watts = snap.usable(signal, cfg)
            return None if watts is None else to_mw(watts)

        states = Counter(w.state.value for w in service.active.values())
        return SiteOut(
            at=datetime.fromtimestamp(now, UTC),
            site=cfg.name,
            grid_import_mw=mw(sig.GRID_POWER),
            grid_frequency_hz=value(sig.GRID_FREQUENCY),
            it_load_mw=mw(sig.IT_POWER),
            bess_power_mw=mw(sig.BESS_POWER),
            bess_soc=value(sig.BESS_SOC),
            chw_supply_temp_c=value(sig.CHW_SUPPLY_TEMP),
            heat_export_mw=mw(sig.HEAT_EXPORT_POWER),
            heat_supply_temp_c=value(sig.HEAT_SUPPLY_TEMP),
            grid_import_limit_mw=to_mw(_setting(sig.GRID_IMPORT_LIMIT, cfg)),
            grid_ramp_limit_mw_per_s=to_mw(_setting(sig.GRID_RAMP_LIMIT, cfg)),
            devices=snap.worst_quality_by_device(),
            workloads=dict(sorted(states.items())),
            signals=_signals(snap, cfg),
        )

    return view


def _signals(snap: Snapshot, site: SiteConfig) -> dict[str, SignalOut]:
    """Every catalogue signal (a new signal in the catalogue shows here without code)."""
    out = {}
    for signal in sig.SIGNALS:
        sample = snap.read(signal, site)
        usable = sample is not None and sample.quality is not Quality.INVALID
        out[signal.key] = SignalOut(
            value=sample.value if usable and sample is not None else None,
            unit=signal.unit.value,
            quality=None if sample is None else sample.quality.value,
            description=signal.description,
        )
    return out


def _setting(signal: sig.Signal, site: sig.SiteMap) -> float:
    """A signal that is a site setting: always known, in SI."""
    if signal.setting is None:
        msg = f"signal {signal.key} is not a site setting"
        raise ValueError(msg)
    return site.setting(signal.setting)

"""``GET /v1/site``: the live site from the store, in the API's units (MW, °C)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from pswd_gateway.config import SiteConfig
from pswd_gateway.domain.points import Quality
from pswd_gateway.northbound.http_api.schemas import SiteOut
from pswd_gateway.scheduling.service import WorkloadService
from pswd_gateway.store import PointStore, Snapshot

__all__ = ["site_view"]

W_PER_MW = 1e6


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

        def point(device: str | None, name: str, scale: float = 1.0) -> float | None:
            if device is None:
                return None
            value = snap.value(f"{device}.{name}")
            return None if value is None else value / scale

        states = Counter(w.state.value for w in service.active.values())
        return SiteOut(
            at=datetime.fromtimestamp(now, UTC),
            site=cfg.name,
            grid_import_mw=point(cfg.grid_meter, "active_power", W_PER_MW),
            grid_frequency_hz=point(cfg.grid_meter, "frequency"),
            it_load_mw=_it_load_mw(snap, cfg),
            bess_power_mw=point(cfg.bess, "active_power", W_PER_MW),
            bess_soc=point(cfg.bess, "soc"),
            chw_supply_temp_c=point(cfg.thermal, "chw_supply_temp"),
            heat_export_mw=point(cfg.thermal, "heat_export_power", W_PER_MW),
            heat_supply_temp_c=point(cfg.thermal, "heat_supply_temp"),
            grid_import_limit_mw=cfg.grid_import_limit_mw,
            grid_ramp_limit_mw_per_s=cfg.grid_ramp_limit_mw_per_s,
            devices=_worst_quality(snap),
            workloads=dict(sorted(states.items())),
        )

    return view


def _it_load_mw(snap: Snapshot, cfg: SiteConfig) -> float | None:
    total = snap.usable_total(cfg.it_load_points)
    return None if total is None else total / W_PER_MW


def _worst_quality(snap: Snapshot) -> dict[str, Quality]:
    worst: dict[str, Quality] = {}
    for p in snap:
        current = worst.get(p.device)
        if current is None or p.quality.rank > current.rank:
            worst[p.device] = p.quality
    return dict(sorted(worst.items()))

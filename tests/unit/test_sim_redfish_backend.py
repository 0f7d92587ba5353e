"""The physics behind a GPU hall's Redfish BMC: racks split the hall, limits cap them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pswd_gateway.simulation.clock import SimClock
from pswd_gateway.simulation.config import GridSimConfig, SimulationConfig, TraceConfig
from pswd_gateway.simulation.devices import SiteContext
from pswd_gateway.simulation.physics import SitePhysics
from pswd_gateway.simulation.redfish import RedfishTwinBackend
from pswd_gateway.simulation.redfish_backend import HallBackend


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def hall(index: int = 0) -> tuple[HallBackend, FakeTime, SiteContext]:
    cfg = SimulationConfig(
        grid=GridSimConfig(noise_mw=0.0, events=()),
        trace=TraceConfig(baseline_mw=100.0, jobs=()),
    )
    fake = FakeTime()
    site = SiteContext(SitePhysics(cfg), SimClock(fake, wall=lambda: 1_700_000_000.0))
    return HallBackend(site, index, cfg.redfish), fake, site


def test_backend_satisfies_the_pinned_redfish_protocol() -> None:
    """The backend has every method the Redfish twin server calls."""
    backend: RedfishTwinBackend = hall()[0]
    assert list(backend.chassis_ids())[:2] == ["Rack001", "Rack002"]
    assert len(backend.chassis_ids()) == 100


def test_racks_add_up_to_the_hall_power() -> None:
    """The racks' readings at one instant sum to the hall's IT power (half the site here)."""
    backend, fake, _ = hall(1)
    fake.now = 2.0
    total = sum(backend.chassis_reading(c).power_w for c in backend.chassis_ids())
    assert total == pytest.approx(50e6)


def test_readings_carry_posix_timestamps_and_growing_energy() -> None:
    """A reading is stamped with wall-clock time; its energy counter only grows."""
    backend, fake, _ = hall()
    fake.now = 1.0
    first = backend.chassis_reading("Rack010")
    fake.now = 3.0
    second = backend.chassis_reading("Rack010")
    assert second.timestamp == pytest.approx(1_700_000_003.0)
    assert second.energy_j > first.energy_j > 0.0
    assert second.energy_j - first.energy_j == pytest.approx(second.power_w * 2.0, rel=1e-6)
    assert 18.0 < second.inlet_temp_c < 35.0


def test_a_power_limit_caps_the_rack_and_the_site_it_load() -> None:
    """A limit below the rack's draw caps it; the hall (and so the site) loses the difference."""
    backend, fake, site = hall()
    fake.now = 1.0
    before = backend.chassis_reading("Rack003").power_w
    site_before = site.sample().it_w
    low, high = backend.power_limit_range_w("Rack003")
    limit = max(low, before - 100e3)
    backend.set_power_limit_w("Rack003", limit)
    assert backend.power_limit_w("Rack003") == limit
    fake.now = 2.0
    assert backend.chassis_reading("Rack003").power_w == pytest.approx(limit)
    assert site.sample().it_w == pytest.approx(site_before - (before - limit))
    backend.set_power_limit_w("Rack003", None)
    assert backend.power_limit_w("Rack003") is None
    assert high > low > 0.0


def test_limits_outside_the_range_and_unknown_chassis_are_refused() -> None:
    """A limit outside the advertised range is a ValueError; an unknown chassis a KeyError."""
    backend, _, _ = hall()
    low, high = backend.power_limit_range_w("Rack001")
    with pytest.raises(ValueError, match="within"):
        backend.set_power_limit_w("Rack001", low / 2)
    with pytest.raises(ValueError, match="within"):
        backend.set_power_limit_w("Rack001", high * 2)
    with pytest.raises(KeyError):
        backend.chassis_reading("Rack999")


def test_the_bmcs_serve_environment_metrics_unless_switched_to_the_older_power_resource() -> None:
    """redfish.power_resource defaults to EnvironmentMetrics; Power is the one alternative."""
    assert SimulationConfig().redfish.power_resource == "EnvironmentMetrics"
    cfg = SimulationConfig.model_validate({"redfish": {"power_resource": "Power"}})
    assert cfg.redfish.power_resource == "Power"
    with pytest.raises(ValidationError):
        SimulationConfig.model_validate({"redfish": {"power_resource": "Thermal"}})

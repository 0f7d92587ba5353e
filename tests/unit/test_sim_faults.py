"""The device faults' plan (``[simulation.faults]``): seeded, pure, per device."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pswd_gateway.simulation.config import (
    FAULTY_DEVICES,
    IMPERFECTIONS,
    BessSimConfig,
    FaultsSimConfig,
    GridSimConfig,
    SimulationConfig,
)
from pswd_gateway.simulation.faults import DeviceFaults


def test_the_defaults_are_the_documented_imperfections() -> None:
    """Every imperfection's default comes from the one table in config.py."""
    cfg = SimulationConfig()
    assert cfg.grid.meter_refresh_ms == IMPERFECTIONS["grid.meter_refresh_ms"] == 20.0
    assert cfg.grid.meter_noise_mw == IMPERFECTIONS["grid.meter_noise_mw"] == 0.1
    assert cfg.grid.meter_energy_refresh_ms == 1000.0
    assert cfg.bess.response_delay_ms == 10.0
    assert cfg.bess.response_ms == 20.0
    assert cfg.bess.measurement_refresh_ms == 20.0
    assert cfg.faults.reply_jitter_ms == 3.0
    assert cfg.faults.lost_reply_ratio == 0.002
    assert cfg.faults.stall_every_s == 60.0
    assert cfg.faults.stall_ms == 100.0
    assert cfg.faults.devices == FAULTY_DEVICES == ("grid_meter", "bess")


@pytest.mark.parametrize(
    ("model", "settings"),
    [
        (GridSimConfig, {"meter_refresh_ms": 0.5}),  # 0 (off) or at least 1 ms
        (GridSimConfig, {"meter_refresh_ms": -1.0}),
        (GridSimConfig, {"meter_noise_mw": 200.0}),
        (GridSimConfig, {"meter_energy_refresh_ms": 100_000.0}),
        (BessSimConfig, {"response_delay_ms": -1.0}),
        (BessSimConfig, {"measurement_refresh_ms": 0.1}),
        (FaultsSimConfig, {"lost_reply_ratio": 1.5}),
        (FaultsSimConfig, {"reply_jitter_ms": -3.0}),
        (FaultsSimConfig, {"stall_every_s": 1.0, "stall_ms": 1000.0}),  # never answers
        (FaultsSimConfig, {"devices": ["bess", "bess"]}),
        (FaultsSimConfig, {"devices": ["gpu_hall_a"]}),  # Redfish: not a Modbus device
        (FaultsSimConfig, {"lost_replies": 0.1}),  # unknown key
    ],
)
def test_imperfection_settings_out_of_range_are_refused(
    model: type[GridSimConfig | BessSimConfig | FaultsSimConfig], settings: dict[str, object]
) -> None:
    """Ranges are validated and unknown keys refused, with the field named."""
    with pytest.raises(ValidationError):
        model.model_validate(settings)


def test_zero_switches_each_fault_off() -> None:
    """0 jitter, 0 loss, 0 stall period: no fault at all."""
    cfg = FaultsSimConfig(reply_jitter_ms=0.0, lost_reply_ratio=0.0, stall_every_s=0.0)
    faults = DeviceFaults(cfg, 42, "grid_meter")
    assert not any(faults.lost(n) for n in range(10_000))
    assert all(faults.jitter_s(n) == 0.0 for n in range(100))
    assert not faults.stalls
    assert faults.next_stall(100.0) is None
    assert faults.stall_end(100.0) is None


def test_losses_and_jitter_are_seeded_per_device_and_request() -> None:
    """The same seed and device give the same plan; another seed or device another."""
    cfg = FaultsSimConfig(lost_reply_ratio=0.2, reply_jitter_ms=10.0)

    def plan(seed: int, device: str) -> list[tuple[bool, float]]:
        faults = DeviceFaults(cfg, seed, device)
        return [(faults.lost(n), faults.jitter_s(n)) for n in range(200)]

    assert plan(1, "bess") == plan(1, "bess")
    assert plan(1, "bess") != plan(2, "bess")
    assert plan(1, "bess") != plan(1, "grid_meter")


@settings(max_examples=30, deadline=None)
@given(ratio=st.floats(min_value=0.0, max_value=1.0), seed=st.integers(0, 2**32))
def test_the_lost_share_is_the_configured_ratio(ratio: float, seed: int) -> None:
    """Over 20 000 requests the share lost is the ratio (within 1.5 percentage points); 1
    loses every request."""
    faults = DeviceFaults(FaultsSimConfig(lost_reply_ratio=ratio), seed, "grid_meter")
    share = sum(faults.lost(n) for n in range(20_000)) / 20_000
    assert share == pytest.approx(ratio, abs=0.015)
    if ratio == 1.0:
        assert share == 1.0


def test_jitter_is_uniform_within_its_bound() -> None:
    """Each reply's jitter lies in [0, reply_jitter_ms); spread over the whole range."""
    faults = DeviceFaults(FaultsSimConfig(reply_jitter_ms=3.0), 7, "bess")
    jitters = [faults.jitter_s(n) for n in range(5000)]
    assert all(0.0 <= j < 0.003 for j in jitters)
    assert min(jitters) < 0.0002
    assert max(jitters) > 0.0028
    assert sum(jitters) / len(jitters) == pytest.approx(0.0015, rel=0.05)


@settings(max_examples=50, deadline=None)
@given(
    every_s=st.floats(min_value=0.5, max_value=600.0),
    stall_fraction=st.floats(min_value=0.001, max_value=0.9),
    seed=st.integers(0, 2**32),
    t=st.floats(min_value=0.0, max_value=10_000.0),
)
def test_one_stall_per_period_from_the_first_period_on(
    every_s: float, stall_fraction: float, seed: int, t: float
) -> None:
    """Stall k lasts stall_ms and lies within [k·period, (k + 1)·period); none in the first
    period; ``stall_end`` and ``next_stall`` agree with the windows."""
    cfg = FaultsSimConfig(stall_every_s=every_s, stall_ms=stall_fraction * every_s * 1000)
    faults = DeviceFaults(cfg, seed, "grid_meter")
    k = int(t // every_s)
    if k >= 1:
        start, end = faults.stall(k)
        assert k * every_s <= start < end <= (k + 1) * every_s + 1e-9
        assert end - start == pytest.approx(stall_fraction * every_s)
        inside = start <= t < end
        assert (faults.stall_end(t) == end) if inside else faults.stall_end(t) is None
    else:
        assert faults.stall_end(t) is None
    following = faults.next_stall(t)
    assert following is not None
    start, end = following
    assert t < end
    assert end - start == pytest.approx(stall_fraction * every_s)
    assert start >= every_s  # not in the first period
    if start > t:  # no stall is under way: the time until it is free
        assert faults.stall_end(t) is None


def test_devices_stall_at_their_own_seeded_offsets() -> None:
    """The meter and the BESS do not stall together (different offsets within the period)."""
    cfg = FaultsSimConfig()
    meter, bess = (DeviceFaults(cfg, 42, d) for d in ("grid_meter", "bess"))
    assert meter.stall(1) != bess.stall(1)
    assert meter.stall(2)[0] - meter.stall(1)[0] == pytest.approx(60.0)

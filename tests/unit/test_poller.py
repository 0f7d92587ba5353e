"""The poll scheduler, driven by a fake clock: deadlines, overruns, quality transitions."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from pswd_gateway.domain.points import Point, Quality
from pswd_gateway.errors import DeviceError
from pswd_gateway.southbound.poller import Poller
from pswd_gateway.store import PointStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class FakeDriver:
    """Answers reads from a script: a float is a reading, an exception is raised, a tuple
    ``("slow", seconds, value)`` advances the fake clock before answering."""

    name = "dev"
    poll_interval_s = 0.1
    timeout_s = 10.0

    def __init__(self, clock: FakeClock, script: list[object]) -> None:
        self.clock = clock
        self.script = script
        self.reads: list[float] = []
        self.connects = 0

    async def connect(self) -> None:
        self.connects += 1

    async def read(self) -> Sequence[Point]:
        self.reads.append(self.clock.now)
        step = self.script.pop(0) if self.script else 1.0
        if isinstance(step, Exception):
            raise step
        if isinstance(step, tuple):
            _, seconds, value = step
            self.clock.now += seconds
            step = value
        assert isinstance(step, float)
        return [Point("dev.x", step, "W", Quality.GOOD, self.clock.now, self.clock.now)]

    async def write(self, point: str, value: float) -> None:
        del point, value

    async def close(self) -> None:
        return None


async def run_for(poller: Poller, clock: FakeClock, seconds: float) -> None:
    stop_at = clock.now + seconds
    task = asyncio.create_task(poller.run())
    while clock.now < stop_at:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_polls_run_on_absolute_deadlines_without_drift() -> None:
    """Reads start at t0, t0+0.1, t0+0.2 … even though each read takes time."""
    clock = FakeClock()
    driver = FakeDriver(clock, [("slow", 0.03, 1.0)] * 50)
    poller = Poller(driver, PointStore(), invalid_after_s=1.0, clock=clock, sleep=clock.sleep)
    t0 = clock.now
    await run_for(poller, clock, 1.0)
    offsets = [round(t - t0, 6) for t in driver.reads[:10]]
    assert offsets == [round(0.1 * k, 6) for k in range(10)]
    assert poller.stats.overruns_total == 0


async def test_a_slow_poll_skips_slots_and_counts_them_never_queues() -> None:
    """A read that takes 0.35 s (from 0.1 to 0.45) misses the 0.2 and 0.3 slots: counted as
    overruns, not run; the 0.4 slot, only 50 ms late, runs at once and records its lateness."""
    clock = FakeClock()
    driver = FakeDriver(clock, [1.0, ("slow", 0.35, 2.0), 3.0, 4.0, 5.0])
    poller = Poller(driver, PointStore(), invalid_after_s=5.0, clock=clock, sleep=clock.sleep)
    t0 = clock.now
    await run_for(poller, clock, 0.7)
    offsets = [round(t - t0, 6) for t in driver.reads]
    assert offsets[:4] == [0.0, 0.1, 0.45, 0.5]
    assert poller.stats.overruns_total == 2
    assert poller.stats.lateness_percentiles().max == pytest.approx(0.05)


async def test_failures_turn_questionable_then_invalid_then_good_again() -> None:
    """One failure: questionable; invalid_after_s without a good read: invalid; a read: good."""
    clock = FakeClock()
    failure = DeviceError("dev", "no answer")
    driver = FakeDriver(clock, [1.0] + [failure] * 4 + [7.0])
    store = PointStore()
    poller = Poller(driver, store, invalid_after_s=0.5, clock=clock, sleep=clock.sleep)
    qualities: list[Quality] = []
    seen: list[tuple[float, Quality]] = []
    store.subscribe(lambda pts: qualities.extend(p.quality for p in pts))
    store.subscribe(lambda pts: seen.extend((p.value, p.quality) for p in pts))
    await run_for(poller, clock, 10.0)
    collapsed = [q for i, q in enumerate(qualities) if i == 0 or q is not qualities[i - 1]]
    assert collapsed == [Quality.GOOD, Quality.QUESTIONABLE, Quality.INVALID, Quality.GOOD]
    assert (7.0, Quality.GOOD) in seen


async def test_reconnect_backs_off_instead_of_hammering_the_device() -> None:
    """After a failure the driver is reconnected only after the back-off, not every slot."""
    clock = FakeClock()
    driver = FakeDriver(clock, [DeviceError("dev", "reset")] * 100)
    poller = Poller(driver, PointStore(), invalid_after_s=1.0, clock=clock, sleep=clock.sleep)
    await run_for(poller, clock, 10.0)
    # 100 slots in 10 s; three at once, then back-off 0.1, 0.2, 0.4 … 5 s: only a handful
    assert 5 <= driver.connects <= 12


async def test_one_lost_reply_costs_one_slot_not_a_back_off() -> None:
    """A single failure reconnects at the next slot; the device is read again at once."""
    clock = FakeClock()
    driver = FakeDriver(clock, [1.0, 2.0, TimeoutError(), 3.0, 4.0, 5.0])
    store = PointStore()
    poller = Poller(driver, store, invalid_after_s=1.0, clock=clock, sleep=clock.sleep)
    await run_for(poller, clock, 0.55)
    assert poller.stats.errors_total == 1
    assert driver.connects == 2  # the first connect and one reconnect, no slot skipped
    assert poller.stats.polls_total == poller.stats.errors_total + 5


async def test_lateness_is_recorded_per_poll() -> None:
    """Every slot records its lateness; percentiles come from the recent samples."""
    clock = FakeClock()
    driver = FakeDriver(clock, [1.0] * 20)
    poller = Poller(driver, PointStore(), invalid_after_s=1.0, clock=clock, sleep=clock.sleep)
    await run_for(poller, clock, 1.0)
    assert poller.stats.lateness.count == poller.stats.polls_total
    assert poller.stats.lateness_percentiles().max == pytest.approx(0.0, abs=1e-9)


async def test_writes_go_through_the_poller_counted_and_refused_while_the_device_is_gone() -> None:
    """A write is sent within the device's timeout and counted; while the device's readings are
    invalid it is refused at once (nothing sent), naming why."""
    clock = FakeClock()
    driver = FakeDriver(clock, [])
    sent: list[tuple[str, float]] = []

    async def write(point: str, value: float) -> None:
        sent.append((point, value))

    driver.write = write  # type: ignore[method-assign]
    poller = Poller(driver, PointStore(), invalid_after_s=0.5, clock=clock, sleep=clock.sleep)
    await poller.write("power_setpoint", 1e6)
    assert sent == [("power_setpoint", 1e6)]
    poller.stats.quality = Quality.INVALID
    poller.stats.last_error = "no answer"
    with pytest.raises(DeviceError, match="gone"):
        await poller.write("power_setpoint", 2e6)
    assert sent == [("power_setpoint", 1e6)]
    assert (poller.stats.writes_total, poller.stats.write_errors_total) == (2, 1)

"""The supervisor: components start in order and stop in reverse, tasks restart, health."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from pswd_gateway.runtime import Supervisor


@dataclass
class Part:
    name: str
    log: list[str]
    fail_stop: bool = False
    sick: list[str] = field(default_factory=list)

    async def start(self) -> None:
        self.log.append(f"start {self.name}")

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")
        if self.fail_stop:
            raise RuntimeError("stuck")

    def unhealthy(self, now: float) -> list[str]:
        return self.sick


async def test_components_start_in_order_and_stop_in_reverse_even_when_one_fails() -> None:
    log: list[str] = []
    sup = Supervisor()
    for name, fail in (("journal", False), ("pollers", True), ("control", False)):
        await sup.start(Part(name, log, fail_stop=fail))
    assert sup.names() == ["journal", "pollers", "control"]
    await sup.stop_all()
    assert log == [
        "start journal",
        "start pollers",
        "start control",
        "stop control",
        "stop pollers",
        "stop journal",  # the failed stop did not keep the journal open
    ]
    assert sup.names() == []


async def test_a_component_may_be_named_on_start() -> None:
    sup = Supervisor()

    class Anonymous:
        async def start(self) -> None: ...
        async def stop(self) -> None: ...

    await sup.start(Anonymous(), "opcua")
    assert sup.names() == ["opcua"]


async def test_a_crashed_task_is_counted_and_started_again() -> None:
    sup = Supervisor(backoff_s=0.0)
    runs = 0
    again = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs >= 3:
            again.set()
            await asyncio.Event().wait()
        raise RuntimeError("boom")

    task = sup.spawn("flaky", flaky)
    await asyncio.wait_for(again.wait(), 5.0)
    assert task.restarts == 2
    assert sup.unhealthy(0.0) == []
    await sup.stop_all()
    assert sup.tasks == {}


async def test_unhealthy_names_dead_tasks_and_unwell_parts_of_components() -> None:
    sup = Supervisor()
    await sup.start(Part("pollers", [], sick=["poll:meter"]))

    async def quick() -> None:
        return

    sup.spawn("forecast", quick)
    sup.tasks["forecast"].task.cancel()  # type: ignore[union-attr]
    await asyncio.sleep(0)
    assert sup.unhealthy(0.0) == ["forecast", "poll:meter"]
    await sup.stop_all()


async def test_a_task_that_swallows_its_cancellation_is_still_stopped() -> None:
    """asyncio.wait_for on Python 3.11 can swallow a cancellation that arrives with its result;
    a loop around it would run on. The supervisor cancels again until the task has ended."""
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed < 3:
                    continue  # as a lost cancellation would
                raise

    supervisor = Supervisor()
    supervisor.spawn("stubborn", stubborn)
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await supervisor.cancel("stubborn")
    assert swallowed == 3
    assert not supervisor.tasks

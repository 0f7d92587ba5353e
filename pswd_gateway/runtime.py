"""Components and the supervisor that starts, watches and stops them.

A component is anything with a ``name`` and ``start()``/``stop()``: the pollers, the control
cycle, the setpoint recorder, the workload service, each listener. The :class:`Supervisor` starts
them in the order given and stops them in the reverse order, each stop on its own (one failing
does not keep the rest running), and owns every long-running task the gateway spawns: a task
that crashes or returns is logged, counted and started again after a back-off. Health is asked
of the supervisor, not of each part: :meth:`Supervisor.unhealthy` names every task that is not
running and every component whose ``healthy()`` says no.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pswd_gateway.logging import get_logger
from pswd_gateway.tasks import cancel_and_wait

__all__ = ["RESTART_BACKOFF_S", "Component", "HeapKeeper", "Supervisor", "Task"]

log = get_logger("runtime")

RESTART_BACKOFF_S = 1.0
SLOW_STOP_S = 0.5
"""A component taking longer than this to stop is named in a warning."""
GC_GEN0_THRESHOLD = 10_000
GC_UNFREEZE_INTERVAL_S = 3600.0


@runtime_checkable
class Component(Protocol):
    """One part of the running gateway (its name: a ``name`` attribute, or given on start)."""

    async def start(self) -> None:
        """Start serving; return once started (a long-running loop is a spawned task)."""
        ...

    async def stop(self) -> None:
        """Stop and release what ``start`` took; safe to call once after ``start``."""
        ...


@runtime_checkable
class Checked(Protocol):
    """A component that can tell when it is unwell (a loop that stopped ticking …)."""

    def unhealthy(self, now: float) -> list[str]:
        """The names of its parts that are not healthy at monotonic time ``now``."""
        ...


@dataclass
class Task:
    """A supervised long-running coroutine."""

    name: str
    factory: Callable[[], Awaitable[object]]
    task: asyncio.Task[None] | None = None
    restarts: int = 0

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()


@dataclass
class Supervisor:
    """Starts components in order, stops them in reverse, restarts crashed tasks."""

    backoff_s: float = RESTART_BACKOFF_S
    components: list[tuple[str, Component]] = field(default_factory=list, init=False)
    tasks: dict[str, Task] = field(default_factory=dict, init=False)

    async def start(self, component: Component, name: str | None = None) -> None:
        """Start ``component`` now; it is stopped by :meth:`stop_all` (before earlier ones).
        ``name``: its name in logs and health (default: its ``name`` attribute)."""
        name = name or str(getattr(component, "name", type(component).__name__))
        await component.start()
        self.components.append((name, component))
        log.debug("component_started", component=name)

    def names(self) -> list[str]:
        """The started components, in start order."""
        return [name for name, _ in self.components]

    async def stop_all(self) -> None:
        """Stop every started component, last started first; then every task left."""
        while self.components:
            name, component = self.components.pop()
            started = time.monotonic()
            try:
                await component.stop()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("component_stop_failed", component=name)
            took = time.monotonic() - started
            (log.warning if took > SLOW_STOP_S else log.debug)(
                "component_stopped", component=name, took_s=round(took, 3)
            )
        for name in list(self.tasks):
            await self.cancel(name)

    def spawn(self, name: str, factory: Callable[[], Awaitable[object]]) -> Task:
        """Run ``factory()`` as a task, again after a back-off whenever it ends or crashes."""
        supervised = Task(name, factory)
        self.tasks[name] = supervised
        supervised.task = asyncio.create_task(self._supervise(supervised), name=name)
        return supervised

    async def cancel(self, name: str) -> None:
        """Stop the task ``name`` (no restart); nothing when there is none."""
        supervised = self.tasks.pop(name, None)
        if supervised is not None and supervised.task is not None:
            await cancel_and_wait(supervised.task)

    def unhealthy(self, now: float) -> list[str]:
        """Tasks not running and unwell parts of components, sorted, each once."""
        bad = {name for name, t in self.tasks.items() if not t.running}
        for _, component in self.components:
            if isinstance(component, Checked):
                bad.update(component.unhealthy(now))
        return sorted(bad)

    async def _supervise(self, supervised: Task) -> None:
        while True:
            try:
                await supervised.factory()
                log.warning("task_returned", task=supervised.name)
            except asyncio.CancelledError:
                raise
            except Exception:
                supervised.restarts += 1
                log.exception("task_crashed", task=supervised.name, restarts=supervised.restarts)
            await asyncio.sleep(self.backoff_s)


class HeapKeeper:
    """Keep the cyclic garbage collector off the request path.

    A full (generation 2) collection walks every tracked object; with thousands of workloads in
    memory that is a 50 to 200 ms stop of the event loop every few seconds under load. Survivors of
    a full collection are long-lived by definition, so they are frozen (``gc.freeze``) right
    after it and later full collections walk only what is new. Once an hour the frozen heap is
    released again, so cyclic garbage among once-long-lived objects is still reclaimed: one
    long pause per hour instead of one every few seconds.
    """

    def __init__(self, refreeze_after_s: float = GC_UNFREEZE_INTERVAL_S) -> None:
        self.refreeze_after_s = refreeze_after_s
        self.full_collections = 0
        self._thawed_at = time.monotonic()
        self._threshold = gc.get_threshold()

    def install(self) -> None:
        self._threshold = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
        gc.callbacks.append(self._on_gc)

    def uninstall(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        gc.unfreeze()
        gc.set_threshold(*self._threshold)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase != "stop" or info["generation"] != 2:  # the oldest generation
            return
        self.full_collections += 1
        if time.monotonic() - self._thawed_at >= self.refreeze_after_s:
            gc.unfreeze()  # the next full collection sees everything once more
            self._thawed_at = time.monotonic()
        else:
            gc.freeze()  # young generations are empty now: this freezes only survivors

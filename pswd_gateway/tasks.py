"""Small asyncio helpers every layer may use (like :mod:`pswd_gateway.errors` and
:mod:`pswd_gateway.logging`, outside the layers)."""

from __future__ import annotations

import asyncio

from pswd_gateway.logging import get_logger

__all__ = ["CANCEL_AGAIN_S", "cancel_and_wait"]

log = get_logger("tasks")

CANCEL_AGAIN_S = 0.2
"""A task still running this long after it was cancelled is cancelled again."""


async def cancel_and_wait(task: asyncio.Task[object] | None) -> None:
    """Cancel ``task`` and wait until it has ended (nothing for ``None``). A cancellation can be
    lost: on Python 3.11 ``asyncio.wait_for`` (pymodbus waits for its replies with it) swallows
    one that arrives as the awaited reply does, and a ``while True`` loop around it then runs on
    for ever. So the task is cancelled again every :data:`CANCEL_AGAIN_S` until it ends."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_AGAIN_S)
    if not task.cancelled() and task.exception() is not None:
        log.warning("task_failed_on_cancel", task=task.get_name(), error=repr(task.exception()))

"""Small asyncio helpers every layer may use (like :mod:`pswd_gateway.errors` and
:mod:`pswd_gateway.logging`, outside the layers)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
from typing import Final

from pswd_gateway.logging import get_logger

__all__ = ["CANCEL_AGAIN_S", "PARENT_PID_ENV", "cancel_and_wait", "die_with_parent"]

log = get_logger("tasks")

PR_SET_PDEATHSIG: Final = 1
PARENT_PID_ENV: Final = "PSWD_PARENT_PID"
"""Set by a process that starts a helper process of ours (the twin for a benchmark): the helper
dies with it (:func:`die_with_parent`)."""

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


def die_with_parent(parent: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` to this process when ``parent`` dies (Linux
    ``PR_SET_PDEATHSIG``), so a helper process never outlives the one that started it, even when
    that one was killed; exit now when it has died already."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:
        os._exit(1)

"""How a grid operator judges the draw at the connection point, from the meter's readings.

One definition for the soak bench, the whole-site tests, the offline smoothing bench and the
imperfection matrix. Readings are ``(t, W)`` pairs in time order (``t`` in seconds, the meter's
own time); each value holds until the next reading (sample and hold), so uneven polling weighs
every reading by how long it stood.

- *1 s-mean step*: the mean of a 1 s window minus the mean of the 1 s window before it, per
  second; :func:`max_step_w_per_s` slides the pair of windows in 100 ms steps (the strictest
  reading), :func:`seconds_over` counts whole seconds (windows aligned to ``t0``) whose mean
  moved by more than the limit from the second before.
- *band*: the largest distance of a reading from the mean of the readings in a window.
- *import limit crossed by the battery*: whole seconds whose mean grid import was above the
  limit while the battery's mean charged (a contracted capacity is judged on means).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence

__all__ = [
    "band_w",
    "bin_means",
    "import_crossings",
    "max_step_w_per_s",
    "mean_between",
    "seconds_over",
    "throughput_j",
]

Samples = Sequence[tuple[float, float]]
SLIDE_S = 0.1


def mean_between(samples: Samples, t0: float, t1: float) -> float | None:
    """Time-weighted mean over ``[t0, t1)`` with each reading held until the next one;
    ``None`` when no reading stands in the window."""
    if t1 <= t0 or not samples:
        return None
    times = [t for t, _ in samples]
    i = bisect.bisect_right(times, t0) - 1
    if i < 0:
        if times[0] >= t1:
            return None
        i = 0
        t0 = times[0]
    area = 0.0
    t = t0
    while i < len(samples) and t < t1:
        end = times[i + 1] if i + 1 < len(samples) else t1
        end = min(end, t1)
        if end > t:
            area += samples[i][1] * (end - t)
            t = end
        i += 1
    return area / (t - t0) if t > t0 else None


def max_step_w_per_s(samples: Samples, t0: float, t1: float, window_s: float = 1.0) -> float:
    """Largest ``|mean(t-w, t) - mean(t-2w, t-w)| / w`` for window ends ``t`` in ``[t0, t1]``,
    stepping by 100 ms (0 when no pair of windows has readings)."""
    worst = 0.0
    steps = max(0, math.floor((t1 - t0) / SLIDE_S))
    for k in range(steps + 1):
        t = t0 + k * SLIDE_S
        now = mean_between(samples, t - window_s, t)
        before = mean_between(samples, t - 2 * window_s, t - window_s)
        if now is not None and before is not None:
            worst = max(worst, abs(now - before) / window_s)
    return worst


def sliding_steps(samples: Samples, t0: float, t1: float, window_s: float = 1.0) -> list[float]:
    """Every ``|mean(t-w, t) - mean(t-2w, t-w)| / w`` for window ends ``t`` in ``[t0, t1]``,
    stepping by 100 ms (the distribution :func:`max_step_w_per_s` takes the largest of)."""
    out = []
    for k in range(max(0, math.floor((t1 - t0) / SLIDE_S)) + 1):
        t = t0 + k * SLIDE_S
        now = mean_between(samples, t - window_s, t)
        before = mean_between(samples, t - 2 * window_s, t - window_s)
        if now is not None and before is not None:
            out.append(abs(now - before) / window_s)
    return out


def step_quantile(
    samples: Samples, t0: float, t1: float, q: float, window_s: float = 1.0
) -> float | None:
    """The ``q`` quantile of :func:`sliding_steps` (``None``: no pair of windows)."""
    steps = sorted(sliding_steps(samples, t0, t1, window_s))
    return steps[min(len(steps) - 1, int(q * len(steps)))] if steps else None


def share_over(
    samples: Samples, t0: float, t1: float, limit_w_per_s: float, window_s: float = 1.0
) -> float | None:
    """Share of the sliding ``window_s`` windows ending in ``[t0, t1]`` (every 100 ms) whose mean
    moved by more than the limit from the window before: :func:`seconds_over` without its
    dependence on where a rhythm's edges fall against whole seconds. ``None``: no pair."""
    steps = sliding_steps(samples, t0, t1, window_s)
    return sum(s > limit_w_per_s for s in steps) / len(steps) if steps else None


def bin_means(samples: Samples, t0: float, t1: float, width_s: float = 1.0) -> list[float]:
    """Means of the whole ``width_s`` windows from ``t0`` up to ``t1``."""
    out: list[float] = []
    for k in range(max(0, math.floor((t1 - t0) / width_s))):
        m = mean_between(samples, t0 + k * width_s, t0 + (k + 1) * width_s)
        if m is not None:
            out.append(m)
    return out


def seconds_over(samples: Samples, t0: float, t1: float, limit_w_per_s: float) -> int:
    """Whole seconds from ``t0`` whose mean moved by more than the limit from the one before."""
    means = bin_means(samples, t0, t1)
    return sum(abs(b - a) > limit_w_per_s for a, b in itertools.pairwise(means))


def band_w(samples: Samples, t0: float, t1: float) -> float:
    """Largest distance of a reading in ``[t0, t1]`` from their mean (0 with no readings)."""
    inside = [w for t, w in samples if t0 <= t <= t1]
    if not inside:
        return 0.0
    mean = sum(inside) / len(inside)
    return max(abs(w - mean) for w in inside)


def throughput_j(samples: Samples, t0: float, t1: float) -> float:
    """Energy through the battery, both directions, from its power readings (held)."""
    inside = [s for s in samples if t0 <= s[0] <= t1]
    return sum(abs(wa) * (tb - ta) for (ta, wa), (tb, _) in itertools.pairwise(inside))


def import_crossings(
    grid: Samples, bess: Samples, t0: float, t1: float, limit_w: float
) -> list[tuple[float, float, float]]:
    """(second, mean grid W, mean battery W) of each whole second from ``t0`` in which the
    grid's mean was above ``limit_w`` while the battery's mean charged (< 0)."""
    out: list[tuple[float, float, float]] = []
    for k in range(max(0, math.floor(t1 - t0))):
        a = t0 + k
        g = mean_between(grid, a, a + 1.0)
        b = mean_between(bess, a, a + 1.0)
        if g is not None and b is not None and g > limit_w and b < 0.0:
            out.append((a, g, b))
    return out

"""Seeded randomness as a pure function of (seed, stream, index): no generator state to carry.

The twin computes every quantity from the exact time of a request, so its randomness must be
addressable by time too. A SplitMix64 hash turns ``(seed, stream, index)`` into a uniform number;
:func:`value_noise` interpolates Gaussian knots placed every ``interval_s`` seconds.
"""

from __future__ import annotations

import functools
import math
from typing import Final

__all__ = ["gaussian", "splitmix64", "uniform", "value_noise"]

_MASK: Final = 0xFFFFFFFFFFFFFFFF
_GOLDEN: Final = 0x9E3779B97F4A7C15


def splitmix64(x: int) -> int:
    """One SplitMix64 step: a well-mixed 64-bit hash of ``x``."""
    z = (x + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


@functools.lru_cache(maxsize=4096)  # neighbouring requests ask for the same knots again
def _key(seed: int, stream: int, index: int) -> int:
    return splitmix64(splitmix64(splitmix64(seed & _MASK) ^ (stream & _MASK)) ^ (index & _MASK))


def uniform(seed: int, stream: int, index: int) -> float:
    """A uniform number in [0, 1) addressed by ``(seed, stream, index)``."""
    return (_key(seed, stream, index) >> 11) * (1.0 / (1 << 53))


def gaussian(seed: int, stream: int, index: int) -> float:
    """A standard normal number addressed by ``(seed, stream, index)`` (Box-Muller)."""
    k = _key(seed, stream, index)
    u1 = ((k >> 32) + 1) / 4294967297.0  # (0, 1]
    u2 = (k & 0xFFFFFFFF) / 4294967296.0  # [0, 1)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def value_noise(seed: int, stream: int, t: float, interval_s: float, *, smooth: bool) -> float:
    """Band-limited noise of unit variance at the knots: Gaussian knots every ``interval_s``,
    interpolated linearly (``smooth=False``) or with a cosine (``smooth=True``)."""
    x = t / interval_s
    k = math.floor(x)
    frac = x - k
    a = gaussian(seed, stream, k)
    b = gaussian(seed, stream, k + 1)
    if smooth:
        frac = 0.5 - 0.5 * math.cos(math.pi * frac)
    return a + (b - a) * frac

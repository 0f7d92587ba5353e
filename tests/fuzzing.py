"""How long the hostile-input suites run: bounded in `make test`, long under `make fuzz`.

Each property names how many examples it gets in an ordinary run; ``PSWD_FUZZ_EXAMPLES`` (an
integer: examples per property) replaces that number for every one of them, through the
``pswd-fuzz`` profile, so a long run is one environment variable away.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

__all__ = ["FUZZ_EXAMPLES_ENV", "bounded", "long_run", "long_run_marks"]

FUZZ_EXAMPLES_ENV = "PSWD_FUZZ_EXAMPLES"


def long_run() -> int | None:
    """Examples per property asked for by ``PSWD_FUZZ_EXAMPLES``; None for a bounded run."""
    raw = os.environ.get(FUZZ_EXAMPLES_ENV, "").strip()
    if not raw:
        return None
    try:
        examples = int(raw)
    except ValueError:
        raise ValueError(
            f"{FUZZ_EXAMPLES_ENV}={raw!r}: must be an integer (examples per property)"
        ) from None
    if examples < 1:
        raise ValueError(f"{FUZZ_EXAMPLES_ENV}={raw!r}: must be at least 1")
    return examples


settings.register_profile(
    "pswd-fuzz",
    max_examples=long_run() or 100,
    deadline=None,  # real servers on a shared box: time is not the property
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    print_blob=True,
)


def bounded(examples: int) -> settings:
    """The ``pswd-fuzz`` profile with ``examples`` per property, unless a long run asks for more."""
    return settings(settings.get_profile("pswd-fuzz"), max_examples=long_run() or examples)


def long_run_marks() -> list[pytest.MarkDecorator]:
    """For a module's ``pytestmark``: a long run is not cut by the per-test timeout."""
    return [pytest.mark.timeout(0)] if long_run() else []

"""One exception hierarchy. Every message says what was wrong, where, and what to do."""

from __future__ import annotations

from datetime import datetime

__all__ = [
    "ConfigError",
    "DeviceError",
    "DeviceTimeoutError",
    "DoesNotFitError",
    "ForbiddenError",
    "ForecastError",
    "IdempotencyConflictError",
    "NotFoundError",
    "PswdError",
    "RhythmRefusedError",
    "SecurityPolicyError",
    "WriteRefusedError",
]


class PswdError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(PswdError):
    """The configuration is invalid; ``problems`` lists ``(path, message)`` pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"{path}: {msg}" if path else msg for path, msg in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


class SecurityPolicyError(ConfigError):
    """The configuration breaks the security policy (e.g. a demo credential off loopback)."""


class DeviceError(PswdError):
    """A device did not answer as expected; ``device`` names it."""

    def __init__(self, device: str, message: str) -> None:
        self.device = device
        super().__init__(f"device {device!r}: {message}")


class DeviceTimeoutError(DeviceError):
    """A device request ran past its timeout."""


class WriteRefusedError(DeviceError):
    """A write was refused before it reached the device (out of range, read-only point)."""


class ForecastError(PswdError):
    """A forecast source could not be read or said something invalid; ``source`` names it."""

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        super().__init__(f"forecast {source}: {message}")


class DoesNotFitError(PswdError):
    """A workload cannot be placed inside its window.

    ``binding_constraint`` names the limit that rules it out; ``earliest_feasible_start`` is the
    first start (past the deadline, within the planning horizon) at which it would fit, if any.
    """

    def __init__(
        self,
        reason: str,
        binding_constraint: str,
        earliest_feasible_start: datetime | None,
    ) -> None:
        self.reason = reason
        self.binding_constraint = binding_constraint
        self.earliest_feasible_start = earliest_feasible_start
        super().__init__(reason)


class NotFoundError(PswdError):
    """No such object (a workload id, …); ``what`` names it."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"{what} not found")


class ForbiddenError(PswdError):
    """The caller's role does not allow this; the message says which role would."""


class RhythmRefusedError(PswdError):
    """A rhythm hint that cannot be taken: the workload does not run (``not-running``), announced
    no training rhythm (``no-rhythm``), or an edge lies outside the window a hint may tell
    (``out-of-window``, ``field`` names it as a JSON pointer)."""

    def __init__(self, kind: str, message: str, field: str | None = None) -> None:
        self.kind = kind
        self.field = field
        super().__init__(message)


class IdempotencyConflictError(PswdError):
    """An ``Idempotency-Key`` reused for another body (``mismatch``) or still in flight."""

    def __init__(self, key: str, kind: str) -> None:
        self.key = key
        self.kind = kind
        if kind == "mismatch":
            msg = (
                f"Idempotency-Key {key!r} was already used with a different request body; "
                "use a new key for a new request"
            )
        else:
            msg = f"a request with Idempotency-Key {key!r} is still being processed; retry shortly"
        super().__init__(msg)

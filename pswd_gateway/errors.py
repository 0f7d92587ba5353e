"""One exception hierarchy. Every message says what was wrong, where, and what to do."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeviceError",
    "DeviceTimeoutError",
    "PswdError",
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

"""Password hashes for OPC UA users: PBKDF2-HMAC-SHA256, salted, stored as one string.

Format: ``pbkdf2_sha256$<iterations>$<salt, base64>$<hash, base64>`` (the form Django and
passlib use). Verification takes constant time in the hash comparison.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Final

__all__ = ["PASSWORD_HASH_PATTERN", "hash_password", "verify_password"]

ITERATIONS: Final = 100_000
PASSWORD_HASH_PATTERN: Final = (
    r"^pbkdf2_sha256\$[0-9]{4,7}\$[A-Za-z0-9+/=]{8,64}\$[A-Za-z0-9+/=]{40,64}$"  # noqa: S105
)


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return "$".join(
        (
            "pbkdf2_sha256",
            str(iterations),
            base64.b64encode(salt).decode(),
            base64.b64encode(digest).decode(),
        )
    )


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(salt), int(iterations)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(expected, actual)

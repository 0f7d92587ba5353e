"""Identities, secrets and certificates (IEC 62443-3-3 SR 1.x)."""

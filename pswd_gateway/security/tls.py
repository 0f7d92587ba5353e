"""One TLS client context for the whole process, built once.

``httpx.AsyncClient()`` without ``verify`` builds a TLS context for every client, reading the CA
bundle: 30 ms on a 2-core edge box, with the event loop blocked.
A driver that reconnects after a failed poll, or a probe that opens a client per question, would
stall the control cycle that long each time. Contexts are safe to share between connections; the
CA bundle is read once per process (a changed bundle is read at the next start).
"""

from __future__ import annotations

import functools
import ssl

import httpx

__all__ = ["default_client_context"]


@functools.cache
def default_client_context() -> ssl.SSLContext:
    """httpx's default TLS client context (its CA bundle, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``;
    host names checked), shared."""
    return httpx.create_ssl_context()

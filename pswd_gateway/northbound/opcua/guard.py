"""What asyncua's server lets through and we do not.

asyncua 2.1.0 opens a secure channel with SecurityPolicy None even when the server offers no
None endpoint: ``SecureConnection.select_policy`` finds no configured policy for the request and
keeps the channel's initial None policy instead of refusing. A client can then create and
activate a session (user name and password in clear text) on that channel. The processor below
closes the hole for every connection of our server:

- on a channel whose policy is None, every service except GetEndpoints, FindServers and
  CloseSecureChannel is answered ``BadSecurityModeRejected`` — unless the configuration offers
  None explicitly (``opcua.allow_none``, which the configuration allows on loopback only);
- an OpenSecureChannel for a policy or mode the server does not offer gets an OPC UA Error
  message (``BadSecurityPolicyRejected``) instead of a silently dropped connection;
- the session's user is put in a context variable for the duration of each request, so method
  handlers know who calls them; so is the conduit the connection came through
  (:class:`GuardedProtocol` asks the zone policy at accept and closes a connection from a
  network that no conduit lets reach this listener, before a byte is read).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any, Final

from asyncua import ua
from asyncua.common.connection import SecureConnection
from asyncua.crypto.permission_rules import User
from asyncua.server import binary_server_asyncio, uaprocessor
from asyncua.server.binary_server_asyncio import OPCUAProtocol
from asyncua.server.uaprocessor import UaProcessor
from asyncua.ua.ua_binary import struct_from_binary, uatcp_to_binary

from pswd_gateway.security.zones import Admission

__all__ = [
    "NONE_ALLOWED_SERVICES",
    "GuardedProcessor",
    "GuardedProtocol",
    "current_admission",
    "current_user",
    "install",
]

_log = logging.getLogger(__name__)

current_user: contextvars.ContextVar[User | None] = contextvars.ContextVar(
    "pswd_opcua_user", default=None
)
current_admission: contextvars.ContextVar[Admission | None] = contextvars.ContextVar(
    "pswd_opcua_admission", default=None
)

NONE_POLICY_URI: Final = "http://opcfoundation.org/UA/SecurityPolicy#None"
NONE_ALLOWED_SERVICES: Final = frozenset(
    {
        ua.NodeId(ua.ObjectIds.GetEndpointsRequest_Encoding_DefaultBinary),
        ua.NodeId(ua.ObjectIds.FindServersRequest_Encoding_DefaultBinary),
        ua.NodeId(ua.ObjectIds.CloseSecureChannelRequest_Encoding_DefaultBinary),
    }
)


def _offers_none(connection: SecureConnection) -> bool:
    return any(p.matches(NONE_POLICY_URI) for p in connection._policies)  # noqa: SLF001


CREATE_ITEMS: Final = ua.NodeId(ua.ObjectIds.CreateMonitoredItemsRequest_Encoding_DefaultBinary)
DELETE_ITEMS: Final = ua.NodeId(ua.ObjectIds.DeleteMonitoredItemsRequest_Encoding_DefaultBinary)


class GuardedProcessor(UaProcessor):
    """asyncua's processor with the checks described in the module docstring."""

    refused_total: int = 0
    admission: Admission | None = None
    """The conduit this connection came through (set by :class:`GuardedProtocol`)."""
    max_monitored_items: int = 50_000
    """Per session (connection); set from the configuration when the server starts."""
    _items: int = 0

    def _count_items(self, typeid: Any, body: Any) -> None:
        """Monitored items per session stay under the limit (a client cannot starve the loop)."""
        if typeid == CREATE_ITEMS:
            params = struct_from_binary(ua.CreateMonitoredItemsParameters, body.copy())
            wanted = len(params.ItemsToCreate or [])
            if self._items + wanted > self.max_monitored_items:
                GuardedProcessor.refused_total += 1
                _log.warning("opcua_monitored_items_refused have=%s wanted=%s", self._items, wanted)
                raise ua.uaerrors.BadTooManyMonitoredItems
            self._items += wanted
        elif typeid == DELETE_ITEMS:
            gone = struct_from_binary(ua.DeleteMonitoredItemsParameters, body.copy())
            self._items = max(0, self._items - len(gone.MonitoredItemIds or []))

    def open_secure_channel(self, algohdr: Any, seqhdr: Any, body: Any) -> None:
        uri = algohdr.SecurityPolicyURI
        connection = self._connection
        if not connection.is_open() and uri != NONE_POLICY_URI:
            request = struct_from_binary(ua.OpenSecureChannelRequest, body.copy())
            mode = request.Parameters.SecurityMode
            if not any(p.matches(uri, mode) for p in connection._policies):  # noqa: SLF001
                GuardedProcessor.refused_total += 1
                _log.warning("opcua_policy_refused uri=%s mode=%s", uri, mode)
                err = ua.ErrorMessage(
                    ua.StatusCode(ua.StatusCodes.BadSecurityPolicyRejected),
                    f"this server does not offer {uri} with {mode.name}",
                )
                self._transport.write(uatcp_to_binary(ua.MessageType.Error, err))
                self._transport.close()
                return
        super().open_secure_channel(algohdr, seqhdr, body)

    async def _process_message(self, typeid: Any, requesthdr: Any, seqhdr: Any, body: Any) -> Any:
        policy = self._connection.security_policy
        if (
            policy.URI in (None, NONE_POLICY_URI)
            and typeid not in NONE_ALLOWED_SERVICES
            and not _offers_none(self._connection)
        ):
            GuardedProcessor.refused_total += 1
            _log.warning("opcua_none_channel_refused service=%s", typeid.Identifier)
            raise ua.uaerrors.BadSecurityModeRejected
        self._count_items(typeid, body)
        token = current_user.set(self.session.user if self.session is not None else None)
        via = current_admission.set(self.admission)
        try:
            return await super()._process_message(typeid, requesthdr, seqhdr, body)
        finally:
            current_admission.reset(via)
            current_user.reset(token)


class GuardedProtocol(OPCUAProtocol):
    """asyncua's connection, admitted only through a conduit of the zone policy."""

    admit: Callable[[object], Admission | None] | None = None
    """Set when the server starts: the policy's answer for a peer (None: refused)."""

    def connection_made(self, transport: Any) -> None:
        admission = None
        if GuardedProtocol.admit is not None:
            admission = GuardedProtocol.admit(transport.get_extra_info("peername"))
            if admission is None:
                transport.abort()
                return
        super().connection_made(transport)
        if isinstance(self.processor, GuardedProcessor):
            self.processor.admission = admission


def install() -> None:
    """Make asyncua's binary server create :class:`GuardedProcessor` for each connection."""
    binary_server_asyncio.UaProcessor = GuardedProcessor  # type: ignore[misc]
    binary_server_asyncio.OPCUAProtocol = GuardedProtocol  # type: ignore[misc]
    uaprocessor.GuardedProcessor = GuardedProcessor  # type: ignore[attr-defined]

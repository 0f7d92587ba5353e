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
  network that no conduit lets reach this listener, before a byte is read);
- a message whose header declares more than the receive buffer is refused when its header
  arrives (asyncua would buffer it whole), and a message that cannot be decoded ends its
  connection with an OPC UA Error (asyncua logs a traceback and reads on).
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

HEADER_SIZE: Final = 8
"""OPC UA TCP message header: type (3), chunk type (1), message size (UInt32)."""
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
    malformed_total: int = 0
    """Connections closed for a message that could not be decoded or was too large."""
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

    def data_received(self, data: bytes) -> None:
        """asyncua buffers a message whole before it looks at its size, whatever its header
        declares (up to 4 GiB per connection): a header declaring more than the receive buffer
        is refused as soon as it arrives."""
        if self._too_large(self._buffer[:HEADER_SIZE] + data[:HEADER_SIZE]):
            return  # the message under way, or the one starting
        super().data_received(data)
        self._too_large(self._buffer)  # the next one, still incomplete

    def _too_large(self, pending: bytes) -> bool:
        processor = self.processor
        if processor is None or len(pending) < HEADER_SIZE:
            return False
        declared = int.from_bytes(pending[4:HEADER_SIZE], "little")
        limit = processor._limits.max_recv_buffer  # noqa: SLF001 - this connection's, after HEL
        if declared <= limit:
            return False
        self._buffer = b""
        self._refuse(
            ua.StatusCodes.BadTcpMessageTooLarge,
            f"a message of {declared} bytes exceeds the receive buffer of {limit} bytes",
        )
        return True

    async def _process_one_msg(self, header: Any, buf: Any) -> bool:
        """asyncua logs a message it cannot decode with its traceback and reads on from the
        same connection; OPC UA (Part 6) answers an Error and closes it."""
        try:
            return await super()._process_one_msg(header, buf)
        except Exception as exc:  # noqa: BLE001 - any undecodable message ends its connection
            code = getattr(exc, "code", None)
            status = code if isinstance(code, int) else ua.StatusCodes.BadDecodingError
            self._refuse(status, f"{type(exc).__name__}: {exc}"[:200])
            return False

    def _refuse(self, status: int, why: str) -> None:
        GuardedProcessor.malformed_total += 1
        _log.warning(
            "opcua_message_refused peer=%s status=%s why=%s",
            self.peer_name,
            ua.StatusCode(status).name,
            why,
        )
        if self.transport is not None and not self.transport.is_closing():
            err = ua.ErrorMessage(ua.StatusCode(status), why)
            self.transport.write(uatcp_to_binary(ua.MessageType.Error, err))
            self.transport.close()


def install() -> None:
    """Make asyncua's binary server create :class:`GuardedProcessor` for each connection."""
    binary_server_asyncio.UaProcessor = GuardedProcessor  # type: ignore[misc]
    binary_server_asyncio.OPCUAProtocol = GuardedProtocol  # type: ignore[misc]
    uaprocessor.GuardedProcessor = GuardedProcessor  # type: ignore[attr-defined]

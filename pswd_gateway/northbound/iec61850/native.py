"""The libiec61850 calls made while the MMS server runs, through ctypes.

pyiec61850's SWIG wrappers keep the interpreter lock during every C call. While the server runs,
libiec61850's own thread calls back into Python (a control, an association, a connection) while
holding its model lock; a SWIG call from our worker thread waiting for that lock while holding
the interpreter lock would deadlock both. ctypes lets go of the interpreter lock for each call,
so everything after ``IedServer_start`` goes through here. The model is still built with the
SWIG bindings (pyiec61850-ng); a SWIG object's address is ``int(obj.this)``.

The library is the one pyiec61850-ng bundles (``pyiec61850_ng.libs/libiec61850-*.so``), so both
views share one copy of libiec61850 and its state.
"""

from __future__ import annotations

import ctypes
from ctypes import (
    CFUNCTYPE,
    POINTER,
    c_bool,
    c_char_p,
    c_float,
    c_int,
    c_int32,
    c_uint8,
    c_uint16,
    c_uint64,
    c_void_p,
)
from functools import cache
from pathlib import Path
from typing import Any, Final

__all__ = [
    "AUTHENTICATOR",
    "CHECK_HANDLER",
    "CONNECTION_HANDLER",
    "CONTROL_HANDLER",
    "TLS_EVENT_HANDLER",
    "AddCause",
    "Check",
    "Result",
    "address",
    "library",
]


class Check:
    """``CheckHandlerResult``."""

    ACCEPTED: Final = -1
    HARDWARE_FAULT: Final = 1
    TEMPORARILY_UNAVAILABLE: Final = 2
    ACCESS_DENIED: Final = 3
    VALUE_INVALID: Final = 11


class Result:
    """``ControlHandlerResult``."""

    FAILED: Final = 0
    OK: Final = 1
    WAITING: Final = 2


class AddCause:
    """IEC 61850-7-2 AddCause values used here (``ControlAddCause``)."""

    UNKNOWN: Final = 0
    NOT_SUPPORTED: Final = 1
    BLOCKED_BY_MODE: Final = 8
    BLOCKED_BY_PROCESS: Final = 9
    NO_ACCESS_AUTHORITY: Final = 20
    INCONSISTENT_PARAMETERS: Final = 26


AUTH_NONE: Final = 0
AUTH_PASSWORD: Final = 1
AUTH_TLS: Final = 3
"""``ACSE_AUTH_TLS``: no ACSE password, and the client certificate of the TLS session (which
libiec61850 verified in the handshake) is handed to the authenticator instead."""


class _AcseAuthenticationParameter(ctypes.Structure):
    """``struct sAcseAuthenticationParameter`` (iso_connection_parameters.h): the mechanism and
    a union whose ``password`` and ``certificate`` members are both (``uint8_t*``, ``int``).
    pyiec61850 has no accessor for the certificate."""

    _fields_ = (
        ("mechanism", c_int),
        ("buf", POINTER(c_uint8)),
        ("length", c_int),
    )


AUTHENTICATOR = CFUNCTYPE(c_bool, c_void_p, c_void_p, POINTER(c_void_p), c_void_p)
"""``bool (*)(void* parameter, AcseAuthenticationParameter, void** token, IsoAppRef*)``."""
CONNECTION_HANDLER = CFUNCTYPE(None, c_void_p, c_void_p, c_bool, c_void_p)
"""``void (*)(IedServer, ClientConnection, bool connected, void* parameter)``."""
CHECK_HANDLER = CFUNCTYPE(c_int, c_void_p, c_void_p, c_void_p, c_bool, c_bool)
"""``CheckHandlerResult (*)(ControlAction, void* parameter, MmsValue* ctlVal, bool test,
bool interlockCheck)``."""
CONTROL_HANDLER = CFUNCTYPE(c_int, c_void_p, c_void_p, c_void_p, c_bool)
"""``ControlHandlerResult (*)(ControlAction, void* parameter, MmsValue* ctlVal, bool test)``."""
TLS_EVENT_HANDLER = CFUNCTYPE(None, c_void_p, c_int, c_int, c_char_p, c_void_p)
"""``void (*)(void* parameter, TLSEventLevel, int eventCode, const char* message,
TLSConnection)`` (tls_config.h)."""

_P = c_void_p
_SIGNATURES: Final[dict[str, tuple[Any, list[Any]]]] = {
    "IedServerConfig_create": (_P, []),
    "IedServerConfig_destroy": (None, [_P]),
    "IedServerConfig_setMaxMmsConnections": (None, [_P, c_int]),
    "IedServerConfig_enableFileService": (None, [_P, c_bool]),
    "IedServerConfig_enableDynamicDataSetService": (None, [_P, c_bool]),
    "IedServerConfig_enableLogService": (None, [_P, c_bool]),
    "IedServerConfig_isFileServiceEnabled": (c_bool, [_P]),
    "IedServerConfig_isDynamicDataSetServiceEnabled": (c_bool, [_P]),
    "IedServer_createWithConfig": (_P, [_P, _P, _P]),
    "IedServer_setLocalIpAddress": (None, [_P, c_char_p]),
    "IedServer_setGooseInterfaceId": (None, [_P, c_char_p]),
    "IedServer_start": (None, [_P, c_int]),
    "IedServer_isRunning": (c_bool, [_P]),
    "IedServer_enableGoosePublishing": (None, [_P]),
    "IedServer_stop": (None, [_P]),
    "IedServer_destroy": (None, [_P]),
    "IedServer_getNumberOfOpenConnections": (c_int, [_P]),
    "IedServer_lockDataModel": (None, [_P]),
    "IedServer_unlockDataModel": (None, [_P]),
    "IedServer_updateFloatAttributeValue": (None, [_P, _P, c_float]),
    "IedServer_updateBooleanAttributeValue": (None, [_P, _P, c_bool]),
    "IedServer_updateInt32AttributeValue": (None, [_P, _P, c_int32]),
    "IedServer_updateQuality": (None, [_P, _P, c_uint16]),
    "IedServer_updateUTCTimeAttributeValue": (None, [_P, _P, c_uint64]),
    "IedServer_setAuthenticator": (None, [_P, AUTHENTICATOR, _P]),
    "IedServer_setConnectionIndicationHandler": (None, [_P, CONNECTION_HANDLER, _P]),
    "IedServer_setPerformCheckHandler": (None, [_P, _P, CHECK_HANDLER, _P]),
    "IedServer_setControlHandler": (None, [_P, _P, CONTROL_HANDLER, _P]),
    "AcseAuthenticationParameter_getAuthMechanism": (c_int, [_P]),
    "AcseAuthenticationParameter_getPassword": (POINTER(c_uint8), [_P]),
    "AcseAuthenticationParameter_getPasswordLength": (c_int, [_P]),
    "ClientConnection_getPeerAddress": (c_char_p, [_P]),
    "ClientConnection_getSecurityToken": (_P, [_P]),
    "ClientConnection_abort": (c_bool, [_P]),
    "ControlAction_setAddCause": (None, [_P, c_int]),
    "ControlAction_isSelect": (c_bool, [_P]),
    "ControlAction_getClientConnection": (_P, [_P]),
    "ControlAction_getControlObject": (_P, [_P]),
    "ControlAction_getOrIdent": (POINTER(c_uint8), [_P, POINTER(c_int)]),
    "MmsValue_getType": (c_int, [_P]),
    "MmsValue_getElement": (_P, [_P, c_int]),
    "MmsValue_toFloat": (c_float, [_P]),
    "MmsValue_getBoolean": (c_bool, [_P]),
    "ModelNode_getObjectReference": (c_char_p, [_P, c_char_p]),
    "DataAttribute_create": (_P, [c_char_p, _P, c_int, c_int, c_uint8, c_int, ctypes.c_uint32]),
    "DataAttribute_setValue": (None, [_P, _P]),
    "MmsValue_newIntegerFromInt32": (_P, [c_int32]),
    "MmsValue_newVisibleString": (_P, [c_char_p]),
    "MmsValue_delete": (None, [_P]),
    "IedServer_setWriteAccessPolicy": (None, [_P, c_int, c_int]),
    "IedServer_updateInt64AttributeValue": (None, [_P, _P, ctypes.c_int64]),
    "PhyComAddress_create": (_P, [c_uint8, c_uint16, c_uint16, POINTER(c_uint8)]),
    "GSEControlBlock_addPhyComAddress": (None, [_P, _P]),
    "TLSConfiguration_create": (_P, []),
    "TLSConfiguration_destroy": (None, [_P]),
    "TLSConfiguration_setOwnCertificateFromFile": (c_bool, [_P, c_char_p]),
    "TLSConfiguration_setOwnKeyFromFile": (c_bool, [_P, c_char_p, c_char_p]),
    "TLSConfiguration_addCACertificateFromFile": (c_bool, [_P, c_char_p]),
    "TLSConfiguration_addCRL": (c_bool, [_P, POINTER(c_uint8), c_int]),
    "TLSConfiguration_resetCRL": (None, [_P]),
    "TLSConfiguration_setChainValidation": (None, [_P, c_bool]),
    "TLSConfiguration_setAllowOnlyKnownCertificates": (None, [_P, c_bool]),
    "TLSConfiguration_setTimeValidation": (None, [_P, c_bool]),
    "TLSConfiguration_setMinTlsVersion": (None, [_P, c_int]),
    "TLSConfiguration_enableSessionResumption": (None, [_P, c_bool]),
    "TLSConfiguration_clearCipherSuiteList": (None, [_P]),
    "TLSConfiguration_addCipherSuite": (None, [_P, c_int]),
    "TLSConfiguration_setEventHandler": (None, [_P, TLS_EVENT_HANDLER, _P]),
    "TLSConnection_getPeerAddress": (_P, [_P, c_char_p]),
}

MMS_STRUCTURE: Final = 1
MMS_BOOLEAN: Final = 2
MMS_FLOAT: Final = 6


def _path() -> str:
    import pyiec61850  # noqa: PLC0415 - only where the MMS server is used

    here = Path(pyiec61850.__file__).parent
    for folder, pattern in (
        (here.parent / "pyiec61850_ng.libs", "libiec61850*.so*"),
        (here.parent / "pyiec61850.libs", "libiec61850*.so*"),
        (here, "libiec61850*.so*"),
    ):
        found = sorted(folder.glob(pattern))
        if found:
            return str(found[0])
    raise OSError(f"libiec61850 not found next to pyiec61850 in {here}")


@cache
def library() -> ctypes.CDLL:
    """libiec61850 with the signatures of the functions used here."""
    lib = ctypes.CDLL(_path())
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


def address(swig_object: Any) -> int:
    """The C address behind a pyiec61850 (SWIG) object."""
    return int(swig_object.this)


def add_units(m: Any, data_object: Any, si_unit: int, multiplier: int) -> None:
    """Give a data object ``units`` (CF: SIUnit, multiplier) with their values. CDC_OPTION_UNIT
    adds nothing in these bindings, and a SWIG DataAttribute cannot be a parent node."""
    lib = library()
    parent = address(data_object)
    units = lib.DataAttribute_create(
        b"units", parent, m.IEC61850_CONSTRUCTED, m.IEC61850_FC_CF, 0, 0, 0
    )
    for name, code in ((b"SIUnit", si_unit), (b"multiplier", multiplier)):
        attr = lib.DataAttribute_create(
            name, units, m.IEC61850_ENUMERATED, m.IEC61850_FC_CF, 0, 0, 0
        )
        lib.DataAttribute_setValue(attr, lib.MmsValue_newIntegerFromInt32(code))


def attribute(parent: int, name: str, kind: int, fc: int, trigger: int = 0, value: int = 0) -> int:
    """A data attribute of ``kind`` (``IEC61850_*``) under ``parent`` (an address), with its
    first value (an MmsValue address, or 0 for the type's zero): for the data objects the
    bindings have no CDC helper for (TSG, TSS, ORG, ORS, an LPL with paramRev)."""
    lib = library()
    attr = int(lib.DataAttribute_create(name.encode(), parent, kind, fc, trigger, 0, 0))
    if value:
        lib.DataAttribute_setValue(attr, value)  # a copy
        lib.MmsValue_delete(value)
    return attr


def text_value(text: str) -> int:
    """A new VisibleString MmsValue (an attribute's first value)."""
    return int(library().MmsValue_newVisibleString(text.encode()))


def int_value(number: int) -> int:
    """A new INT32 MmsValue (an attribute's first value)."""
    return int(library().MmsValue_newIntegerFromInt32(number))


def float_of(value: int | None) -> float | None:
    """The float in an MmsValue: a FLOAT, or an AnalogueValue structure's ``f``."""
    lib = library()
    if not value:
        return None
    kind = lib.MmsValue_getType(value)
    if kind == MMS_STRUCTURE:
        value = lib.MmsValue_getElement(value, 0)
        if not value:
            return None
        kind = lib.MmsValue_getType(value)
    if kind != MMS_FLOAT:
        return None
    return float(lib.MmsValue_toFloat(value))


def bool_of(value: int | None) -> bool | None:
    lib = library()
    if not value or lib.MmsValue_getType(value) != MMS_BOOLEAN:
        return None
    return bool(lib.MmsValue_getBoolean(value))


def password_of(auth: int | None) -> bytes | None:
    """The password an association carries, or None without password authentication."""
    lib = library()
    if not auth or lib.AcseAuthenticationParameter_getAuthMechanism(auth) != AUTH_PASSWORD:
        return None
    length = lib.AcseAuthenticationParameter_getPasswordLength(auth)
    data = lib.AcseAuthenticationParameter_getPassword(auth)
    return bytes(data[:length]) if data and length > 0 else b""


def certificate_of(auth: int | None) -> bytes | None:
    """The DER client certificate an association over TLS carries, or None when it carries
    none (a password, or no TLS)."""
    if not auth:
        return None
    param = ctypes.cast(auth, POINTER(_AcseAuthenticationParameter)).contents
    if param.mechanism != AUTH_TLS or not param.buf or param.length <= 0:
        return None
    return bytes(param.buf[: param.length])


def tls_peer(connection: int | None) -> str:
    """A TLS connection's peer as libiec61850 writes it (``host:port``), or ``""``."""
    if not connection:
        return ""
    buffer = ctypes.create_string_buffer(64)  # TLSConnection_getPeerAddress wants at least 61
    library().TLSConnection_getPeerAddress(connection, buffer)
    return buffer.value.decode(errors="replace")


def originator(action: int) -> str:
    """The orIdent a client put into the control (what the client says it is), as text."""
    size = c_int(0)
    data = library().ControlAction_getOrIdent(action, ctypes.byref(size))
    if not data or size.value <= 0:
        return ""
    return bytes(data[: size.value]).decode("utf-8", "replace")

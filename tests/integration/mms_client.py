"""libiec61850's own MMS client, run as a process by the IEC 61850 tests.

pyiec61850's calls keep the interpreter lock while they wait for the server; the gateway's
server calls back into Python for associations and controls, so a client in the gateway's own
process would wait on itself. Usage::

    python mms_client.py PORT PASSWORD COMMANDS_JSON

PASSWORD may be empty (no ACSE authentication). Prints one JSON object: ``connect`` (the
IedClientError) and ``results``, one per command.

MMS over TLS when ``PSWD_MMS_TLS_CA`` names the CA that signed the server's certificate; the
client then shows ``PSWD_MMS_TLS_CERT`` with its key ``PSWD_MMS_TLS_KEY`` (none when unset).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import pyiec61850.pyiec61850 as m


def _names(linked_list: Any) -> list[str]:
    out = []
    element = m.LinkedList_getNext(linked_list) if linked_list else None
    while element:
        out.append(m.toCharP(m.LinkedList_getData(element)))
        element = m.LinkedList_getNext(element)
    return out


def browse(con: Any, ied: str) -> dict[str, Any]:
    devices, err = m.IedConnection_getLogicalDeviceList(con)
    model: dict[str, dict[str, list[str]]] = {}
    extras: list[str] = []
    for ld in _names(devices):
        lns, _ = m.IedConnection_getLogicalDeviceDirectory(con, ld)
        inst = ld.removeprefix(ied)
        model[inst] = {}
        for ln in _names(lns):
            ref = f"{ld}/{ln}"
            dos, _ = m.IedConnection_getLogicalNodeDirectory(con, ref, m.ACSI_CLASS_DATA_OBJECT)
            model[inst][ln] = _names(dos)
            for cls in ("ACSI_CLASS_URCB", "ACSI_CLASS_BRCB", "ACSI_CLASS_DATA_SET"):
                found, _ = m.IedConnection_getLogicalNodeDirectory(con, ref, getattr(m, cls))
                extras.extend(f"{inst}/{ln}.{n}" for n in _names(found))
    return {"err": err, "model": model, "extras": extras}


def _apc(value: float) -> Any:
    structure = m.MmsValue_createEmptyStructure(1)
    m.MmsValue_setElement(structure, 0, m.MmsValue_newFloat(value))
    return structure


def operate(con: Any, ref: str, value: Any, sbo: bool) -> dict[str, Any]:
    try:
        ctl = m.ControlObjectClient_create(ref, con)
    except RuntimeError:  # the binding raises where the C function returns NULL
        ctl = None
    if ctl is None:
        # Nothing was sent to the control: the client could not read its model (the
        # association was lost, or there is no such control). Safe to try again.
        state = m.IedConnection_getState(con)
        return {"ok": False, "error": "control object not created", "state": state}
    m.ControlObjectClient_setOrigin(ctl, "test-desk", 3)  # orCat 3: remote control
    ctl_val = m.MmsValue_newBoolean(value) if isinstance(value, bool) else _apc(float(value))
    out: dict[str, Any] = {"ctl_model": m.ControlObjectClient_getControlModel(ctl)}
    if sbo:
        out["selected"] = bool(m.ControlObjectClient_selectWithValue(ctl, ctl_val))
        out["select_add_cause"] = m.ControlObjectClient_getLastApplError(ctl).addCause
        if not out["selected"]:
            out["ok"] = False
            out["add_cause"] = out["select_add_cause"]
            return out
    out["ok"] = bool(m.ControlObjectClient_operate(ctl, ctl_val, 0))
    out["add_cause"] = m.ControlObjectClient_getLastApplError(ctl).addCause
    return out


def typed_value(kind: str, value: Any) -> Any:
    """An MmsValue of any type, for controls operated with the wrong one: ``float`` and ``int``
    inside an AnalogueValue structure (as APC expects), ``bare_float``, ``bool``, ``bare_int``,
    ``string``, ``empty_struct``."""
    if kind == "float":
        return _apc(float(value))
    if kind == "int":
        structure = m.MmsValue_createEmptyStructure(1)
        m.MmsValue_setElement(structure, 0, m.MmsValue_newIntegerFromInt32(int(value)))
        return structure
    if kind == "bare_float":
        return m.MmsValue_newFloat(float(value))
    if kind == "bool":
        return m.MmsValue_newBoolean(bool(value))
    if kind == "bare_int":
        return m.MmsValue_newIntegerFromInt32(int(value))
    if kind == "string":
        return m.MmsValue_newVisibleString(str(value))
    if kind == "empty_struct":
        return m.MmsValue_createEmptyStructure(0)
    raise ValueError(f"unknown value type {kind}")


def operate_typed(con: Any, ref: str, kind: str, value: Any, sbo: bool) -> dict[str, Any]:
    """Like :func:`operate`, with a ctlVal of the type named by ``kind`` (see typed_value)."""
    try:
        ctl = m.ControlObjectClient_create(ref, con)
    except RuntimeError:
        ctl = None
    if ctl is None:
        return {"ok": False, "error": "control object not created"}
    m.ControlObjectClient_setOrigin(ctl, "test-desk", 3)
    ctl_val = typed_value(kind, value)
    out: dict[str, Any] = {}
    if sbo:
        out["selected"] = bool(m.ControlObjectClient_selectWithValue(ctl, ctl_val))
        if not out["selected"]:
            out["ok"] = False
            out["add_cause"] = m.ControlObjectClient_getLastApplError(ctl).addCause
            return out
    out["ok"] = bool(m.ControlObjectClient_operate(ctl, ctl_val, 0))
    out["add_cause"] = m.ControlObjectClient_getLastApplError(ctl).addCause
    return out


READS = {
    "float": m.IedConnection_readFloatValue,
    "int": m.IedConnection_readInt32Value,
    "int64": m.IedConnection_readInt64Value,
    "bool": m.IedConnection_readBooleanValue,
    "quality": m.IedConnection_readQualityValue,
    "string": m.IedConnection_readStringValue,
}
"""``[kind, reference, FC]`` → ``[value, error]``."""


def floats(con: Any, template: str, count: int, fc: int) -> list[Any]:
    """``template % i`` for i = 1 … count read as floats (a schedule's entries): the values, and
    the errors that were not 0."""
    values, errors = [], []
    for i in range(1, count + 1):
        value, err = m.IedConnection_readFloatValue(con, template % i, fc)
        values.append(value)
        if err:
            errors.append(err)
    return [values, errors]


def write_float(con: Any, ref: str, fc: int, value: float) -> int:
    """Write a float attribute; the error (0: written)."""
    _, err = m.IedConnection_writeFloatValue(con, ref, fc, value)
    return int(err)


def utc_ms(con: Any, ref: str, fc: int) -> list[Any]:
    """A Timestamp attribute (``t``) in ms since the epoch, and the error."""
    value, err = m.IedConnection_readObject(con, ref, fc)
    return [m.MmsValue_getUtcTimeInMs(value) if err == 0 else None, err]


def dataset(con: Any, ref: str) -> list[Any]:
    """The members of a dataset (``LD/LN.DO[FC]``), and the error."""
    members, err = m.IedConnection_getDataSetDirectory(con, ref, None)
    return [_names(members), err]


def services(con: Any) -> dict[str, int]:
    """The error of a file directory request and of creating a data set (services the server
    does not offer): 0 would mean they were served."""
    _, file_err = m.IedConnection_getFileDirectory(con, "/")
    refs = m.LinkedList_create()
    m.LinkedList_addStringCopy(refs, "PSWDGRID/MMXU1.TotW[MX]")
    _, dataset_err = m.IedConnection_createDataSet(con, "@tmp", refs)
    return {"file_directory": file_err, "create_dataset": dataset_err}


MORE_READS = {
    "utc_ms": lambda con, args, fc: utc_ms(con, args[0], fc),
    # [template, count, FC]: a schedule's entries
    "floats": lambda con, args, _: floats(
        con, args[0], int(args[1]), getattr(m, f"IEC61850_FC_{args[2]}")
    ),
    # [reference, FC, value]: the error of writing it
    "write_float": lambda con, args, fc: write_float(con, args[0], fc, float(args[2])),
}
"""``[kind, …]`` → what the function answers (args, and the FC named second where there is one)."""


def run(con: Any, command: list[Any]) -> Any:
    kind, *args = command
    if kind == "services":
        return services(con)
    if kind == "operate_typed":  # [reference, value type, value, select before operate]
        return operate_typed(con, args[0], args[1], args[2], bool(args[3]))
    fc = getattr(m, f"IEC61850_FC_{args[1]}") if len(args) > 1 and isinstance(args[1], str) else 0
    if kind in READS:
        return list(READS[kind](con, args[0], fc))
    if kind in MORE_READS:
        return MORE_READS[kind](con, args, fc)
    if kind == "dataset":
        return dataset(con, args[0])
    if kind == "browse":
        return browse(con, args[0])
    if kind == "connect_again":  # another association while this one stays open
        extra = connection(PASSWORD[0])
        _, err = m.IedConnection_connect(extra, "127.0.0.1", args[0])
        return err
    if kind == "operate":
        return operate(con, args[0], args[1], bool(args[2]) if len(args) > 2 else False)
    if kind == "wait_file":
        return wait_file(args[0])
    raise ValueError(f"unknown command {kind}")


def wait_file(path: str) -> bool:
    """Hold the association until the test writes ``path`` (at most 20 s)."""
    deadline = time.monotonic() + 20.0
    while not os.path.exists(path) and time.monotonic() < deadline:  # noqa: PTH110
        time.sleep(0.05)
    return os.path.exists(path)  # noqa: PTH110


PASSWORD = [""]


def connection(password: str) -> Any:
    ca = os.environ.get("PSWD_MMS_TLS_CA")
    if ca:
        tls = m.TLSConfiguration_create()
        assert m.TLSConfiguration_addCACertificateFromFile(tls, ca), ca
        cert, key = os.environ.get("PSWD_MMS_TLS_CERT"), os.environ.get("PSWD_MMS_TLS_KEY")
        if cert and key:
            assert m.TLSConfiguration_setOwnCertificateFromFile(tls, cert), cert
            assert m.TLSConfiguration_setOwnKeyFromFile(tls, key, None), key
        con = m.IedConnection_createWithTlsSupport(tls)
    else:
        con = m.IedConnection_create()
    source = os.environ.get("PSWD_MMS_SOURCE")  # connect from this local address
    if source:
        m.IedConnection_setLocalAddress(con, source, 0)
    m.IedConnection_setConnectTimeout(con, 5000)
    m.IedConnection_setRequestTimeout(con, 5000)
    if password:
        params = m.MmsConnection_getIsoConnectionParameters(m.IedConnection_getMmsConnection(con))
        auth = m.AcseAuthenticationParameter_create()
        m.AcseAuthenticationParameter_setAuthMechanism(auth, m.ACSE_AUTH_PASSWORD)
        m.AcseAuthenticationParameter_setPassword(auth, password)
        m.IsoConnectionParameters_setAcseAuthenticationParameter(params, auth)
    return con


def main() -> None:
    port, password, commands = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    PASSWORD[0] = password
    con = connection(password)
    _, err = m.IedConnection_connect(con, "127.0.0.1", port)
    results = [run(con, c) for c in commands] if err == 0 else []
    if err == 0:
        m.IedConnection_close(con)
    print(json.dumps({"connect": err, "results": results}), flush=True)
    os._exit(0)  # skip pyiec61850's destructors at interpreter exit


if __name__ == "__main__":
    main()

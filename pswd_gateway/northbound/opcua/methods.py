"""The methods on ``PSWD``: announce and cancel workloads, set the grid limits, send and
withdraw grid signals, acknowledge a demand-response window.

Every call is checked against the caller's role (:data:`METHOD_PERMISSIONS`, from the one role
model in :mod:`pswd_gateway.domain.identity`); a refusal is answered with its own status code
and audited. Accepted limit changes are audited by whoever applies them (``set_limit``), grid
signals by the grid-signal service, an acknowledgement here, before it takes effect.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from asyncua import Node, ua
from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from pswd_gateway.config import DemandResponseWindow
from pswd_gateway.domain.grid_signals import (
    SignalInvalidError,
    SignalKind,
    SignalRequest,
    SignalSource,
)
from pswd_gateway.domain.identity import Identity, Permission
from pswd_gateway.domain.workloads import (
    MAX_REASON_CHARS,
    Action,
    Announcement,
    IllegalTransitionError,
)
from pswd_gateway.errors import ForbiddenError, NotFoundError, PswdError
from pswd_gateway.grid_signals import GridSignalService
from pswd_gateway.journal import AuditEntry, JournalError
from pswd_gateway.logging import get_logger
from pswd_gateway.northbound.opcua import guard
from pswd_gateway.northbound.opcua.security import RoleUserManager
from pswd_gateway.scheduling.service import WorkloadService

__all__ = [
    "LIMIT_RANGE_MW",
    "MAX_SIGNAL_JSON_BYTES",
    "METHOD_PERMISSIONS",
    "LimitSetter",
    "Methods",
    "dr_event_id",
    "no_limits",
]

log = get_logger("opcua")

METHOD_PERMISSIONS: Final[dict[str, Permission]] = {
    "AnnounceWorkload": Permission.ANNOUNCE,
    "CancelWorkload": Permission.ACT_OWN,
    "AcknowledgeDemandResponse": Permission.OPERATE,
    "SetGridImportLimit": Permission.OPERATE,
    "SetGridRampLimit": Permission.OPERATE,
    "SubmitGridSignal": Permission.OPERATE,
    "WithdrawGridSignal": Permission.OPERATE,
}
"""What each method needs, from the one role model (``domain.identity``): the same roles as
the HTTP API and IEC 61850. Cancelling someone else's workload needs ``act_any`` as well
(the workload service decides)."""

LIMIT_RANGE_MW: Final = (0.0, 10_000.0)
"""A grid limit set over OPC UA is above the first and at most the second (MW or MW/s), as in
the configuration."""

MAX_SIGNAL_JSON_BYTES: Final = 64 * 1024
"""The longest grid signal ``SubmitGridSignal`` takes (UTF-8 bytes of its JSON); a longer one is
BadOutOfRange before it is parsed (a valid signal is well under 1 KiB)."""

_SIGNAL: Final[TypeAdapter[SignalRequest]] = TypeAdapter(SignalRequest)
"""One grid signal of any kind, chosen by ``kind``: the body of ``POST /v1/grid/signals``."""

LimitSetter = Callable[[str, float, Identity], Awaitable[None]]
"""Applies and audits an operator's limit: (``grid_import_limit_mw`` or
``grid_ramp_limit_mw_per_s``, value, who)."""
Handler = Callable[..., Awaitable[list[ua.Variant]]]
Refusal = Callable[[str, str, str], Awaitable[None]]


def _pointer(error: ErrorDetails) -> str:
    """The field of a grid signal's validation error as ``POST /v1/grid/signals`` names it:
    ``/shed_mw``, not under the kind pydantic chose (``shed.shed_mw``); ``/kind`` for an
    unknown or missing kind; ``/`` for text that is not JSON."""
    loc = error["loc"]
    if loc and loc[0] in SignalKind.__members__.values():
        loc = loc[1:]
    elif not loc and str(error["type"]).startswith("union_tag"):
        loc = ("kind",)
    return "/" + "/".join(str(part) for part in loc)


def dr_event_id(start: datetime) -> str:
    """The id of a demand-response window: ``dr-`` and its start in UTC, to the minute."""
    return "dr-" + start.astimezone(UTC).strftime("%Y%m%dT%H%MZ")


async def no_limits(_what: str, _value: float, _who: Identity) -> None:
    """The limit setter of a server that only exports its model."""
    raise ua.uaerrors.BadNotSupported


def _answering_status(
    name: str, method: Handler, refused: Refusal, arity: int
) -> Callable[..., Awaitable[Any]]:
    """asyncua turns any exception of a method into BadUnexpectedError (and logs it with its
    traceback); answer ours precisely, and audit every refusal. asyncua does not count the
    arguments against the method's declaration: a call with too few or too many is refused
    here (``arity``: how many it declares)."""

    async def call(parent: ua.NodeId, *args: ua.Variant) -> list[ua.Variant] | ua.StatusCode:
        try:
            if len(args) < arity:
                raise ua.uaerrors.BadArgumentsMissing
            if len(args) > arity:
                raise ua.uaerrors.BadTooManyArguments
            return await method(parent, *args)
        except ua.UaStatusCodeError as exc:
            status = ua.StatusCode(exc.code).name
            log.info("opcua_method_refused", method=name, status=status)
            user = guard.current_user.get()
            await refused(getattr(user, "name", None) or "unknown", f"opcua {name}", status)
            return ua.StatusCode(exc.code)

    return call


class Methods:
    """The methods' handlers, with the role check and the audit of each."""

    def __init__(
        self,
        users: RoleUserManager,
        workloads: WorkloadService | None,
        set_limit: LimitSetter,
        windows: Sequence[DemandResponseWindow],
        signals: GridSignalService | None = None,
    ) -> None:
        self.users = users
        self.workloads = workloads
        self.set_limit = set_limit
        self.windows = windows
        self.signals = signals
        """Where ``SubmitGridSignal`` and ``WithdrawGridSignal`` go (None: BadNotSupported)."""
        self.acknowledged: set[str] = set()
        """The demand-response windows acknowledged since start, by id."""

    async def add_to(self, root: Node, idx: int) -> None:
        """Add every method to ``root`` (``PSWD``)."""
        string, double = ua.VariantType.String, ua.VariantType.Double
        for name, handler, args, outs in (
            ("AnnounceWorkload", self._announce, [string], [string]),
            ("CancelWorkload", self._cancel, [string, string], []),
            ("SetGridImportLimit", self._set_import_limit, [double], []),
            ("SetGridRampLimit", self._set_ramp_limit, [double], []),
            ("AcknowledgeDemandResponse", self._acknowledge_dr, [string], []),
            ("SubmitGridSignal", self._submit_signal, [string], [string]),
            ("WithdrawGridSignal", self._withdraw_signal, [string], []),
        ):
            await root.add_method(
                ua.NodeId(f"PSWD.{name}", idx),
                ua.QualifiedName(name, idx),
                _answering_status(name, handler, self.audit_refusal, len(args)),
                args,
                outs,
            )

    async def audit_refusal(self, user: str, action: str, why: str) -> None:
        """Audit a refused call or login of ``user`` (nothing to audit into without workloads)."""
        if self.workloads is None:
            return
        who = Identity(f"opcua:{user}", self.users.role(user) or "none")
        admission = guard.current_admission.get()
        if admission is not None:
            who = admission.limit(who)
        await self.workloads.audit_refusal(who, action, why)

    def _caller(self, method: str) -> Identity:
        """The session's user, if its role has what ``method`` needs; else BadUserAccessDenied."""
        user = guard.current_user.get()
        name = getattr(user, "name", None)
        role = self.users.role(name)
        if role is None:
            raise ua.uaerrors.BadUserAccessDenied
        who = Identity(f"opcua:{name}", role)
        admission = guard.current_admission.get()
        if admission is not None:
            who = admission.limit(who)
        permission = METHOD_PERMISSIONS[method]
        if not who.can(permission):
            log.warning(
                "opcua_method_refused",
                user=name,
                role=role,
                method=method,
                why=who.why_not(permission),
            )
            raise ua.uaerrors.BadUserAccessDenied
        return who

    async def _announce(
        self,
        parent: ua.NodeId,  # noqa: ARG002 - asyncua passes the object
        body: ua.Variant,
    ) -> list[ua.Variant]:
        who = self._caller("AnnounceWorkload")
        if self.workloads is None:
            raise ua.uaerrors.BadNotSupported
        if not isinstance(body.Value, str):
            raise ua.uaerrors.BadTypeMismatch
        try:
            announcement = Announcement.model_validate_json(body.Value)
        except ValidationError as exc:
            first = exc.errors()[0]
            log.info("opcua_announce_invalid", field=first["loc"], rule=first["type"])
            raise ua.uaerrors.BadInvalidArgument from None
        try:
            workload, _ = await self.workloads.announce(announcement, who)
        except ForbiddenError:
            raise ua.uaerrors.BadUserAccessDenied from None
        except PswdError as exc:
            log.info("opcua_announce_refused", error=str(exc))
            raise ua.uaerrors.BadRequestNotAllowed from None
        return [ua.Variant(workload.id, ua.VariantType.String)]

    async def _cancel(
        self,
        parent: ua.NodeId,  # noqa: ARG002 - asyncua passes the object
        wid: ua.Variant,
        reason: ua.Variant,
    ) -> list[ua.Variant]:
        who = self._caller("CancelWorkload")
        if self.workloads is None:
            raise ua.uaerrors.BadNotSupported
        if not isinstance(wid.Value, str) or not isinstance(reason.Value, str):
            raise ua.uaerrors.BadTypeMismatch
        if len(reason.Value) > MAX_REASON_CHARS:  # journalled: as bounded as over HTTP
            raise ua.uaerrors.BadOutOfRange
        try:
            await self.workloads.act(
                wid.Value, Action.CANCEL, who, reason.Value or "cancelled over OPC UA"
            )
        except NotFoundError:
            raise ua.uaerrors.BadNotFound from None
        except ForbiddenError:
            raise ua.uaerrors.BadUserAccessDenied from None
        except (IllegalTransitionError, PswdError):
            raise ua.uaerrors.BadInvalidState from None
        return []

    async def _acknowledge_dr(
        self,
        parent: ua.NodeId,  # noqa: ARG002 - asyncua passes the object
        event_id: ua.Variant,
    ) -> list[ua.Variant]:
        who = self._caller("AcknowledgeDemandResponse")
        if not isinstance(event_id.Value, str):
            raise ua.uaerrors.BadTypeMismatch
        window = {dr_event_id(w.start): w for w in self.windows}.get(event_id.Value)
        if window is None:
            raise ua.uaerrors.BadNotFound
        if self.workloads is not None:
            journal = self.workloads.journal
            entry = AuditEntry(
                actor=who.name,
                role=who.role,
                action="acknowledge demand response",
                target=event_id.Value,
                outcome="accepted",
                detail={"import_limit_mw": window.import_limit_mw, **who.via},
                at=datetime.now(UTC),
            )
            await journal.call(journal.sync.audit, entry)
        self.acknowledged.add(event_id.Value)
        log.info("demand_response_acknowledged", window=event_id.Value, by=who.name)
        return []

    async def _set_limit(self, method: str, what: str, value: ua.Variant) -> list[ua.Variant]:
        who = self._caller(method)
        v = value.Value
        low, high = LIMIT_RANGE_MW
        if not isinstance(v, float) or not low < v <= high:
            raise ua.uaerrors.BadOutOfRange
        try:
            await self.set_limit(what, v, who)
        except ValueError as exc:  # the site's own range ([site] in the configuration)
            log.info("opcua_limit_refused", limit=what, value=v, error=str(exc))
            raise ua.uaerrors.BadOutOfRange from None
        except JournalError as exc:  # not kept: not in force
            log.warning("opcua_limit_not_kept", limit=what, error=str(exc))
            raise ua.uaerrors.BadResourceUnavailable from None
        return []

    async def _set_import_limit(
        self,
        parent: ua.NodeId,  # noqa: ARG002 - asyncua passes the object
        mw: ua.Variant,
    ) -> list[ua.Variant]:
        return await self._set_limit("SetGridImportLimit", "grid_import_limit_mw", mw)

    async def _set_ramp_limit(
        self,
        parent: ua.NodeId,  # noqa: ARG002 - asyncua passes the object
        mw_per_s: ua.Variant,
    ) -> list[ua.Variant]:
        return await self._set_limit("SetGridRampLimit", "grid_ramp_limit_mw_per_s", mw_per_s)

    async def _submit_signal(
        self,
        parent: ua.NodeId,  # noqa: ARG002 - asyncua passes the object
        body: ua.Variant,
    ) -> list[ua.Variant]:
        """A grid signal of any kind, the JSON body of ``POST /v1/grid/signals``: accepted as
        source ``opcua``, issuer ``opcua:<user>``; its id is the answer."""
        who = self._caller("SubmitGridSignal")
        if self.signals is None:
            raise ua.uaerrors.BadNotSupported
        if not isinstance(body.Value, str):
            raise ua.uaerrors.BadTypeMismatch
        if len(body.Value.encode("utf-8", "surrogatepass")) > MAX_SIGNAL_JSON_BYTES:
            raise ua.uaerrors.BadOutOfRange
        try:
            request = _SIGNAL.validate_json(body.Value)
        except ValidationError as exc:
            first = exc.errors()[0]
            log.info("opcua_grid_signal_invalid", field=_pointer(first), rule=first["type"])
            raise ua.uaerrors.BadInvalidArgument from None
        try:
            signal = await self.signals.submit(request, SignalSource.OPCUA, who)
        except ForbiddenError:
            raise ua.uaerrors.BadUserAccessDenied from None
        except SignalInvalidError as exc:  # a window that has already ended
            log.info("opcua_grid_signal_invalid", field=exc.field, rule="window")
            raise ua.uaerrors.BadInvalidArgument from None
        except JournalError as exc:  # not kept: not accepted
            log.warning("opcua_grid_signal_not_kept", error=str(exc))
            raise ua.uaerrors.BadResourceUnavailable from None
        return [ua.Variant(signal.id, ua.VariantType.String)]

    async def _withdraw_signal(
        self,
        parent: ua.NodeId,  # noqa: ARG002 - asyncua passes the object
        signal_id: ua.Variant,
    ) -> list[ua.Variant]:
        """Withdraw an open grid signal, whichever door it came through."""
        who = self._caller("WithdrawGridSignal")
        if self.signals is None:
            raise ua.uaerrors.BadNotSupported
        if not isinstance(signal_id.Value, str):
            raise ua.uaerrors.BadTypeMismatch
        try:
            await self.signals.withdraw(signal_id.Value, who)
        except NotFoundError:
            raise ua.uaerrors.BadNotFound from None
        except ForbiddenError:
            raise ua.uaerrors.BadUserAccessDenied from None
        except JournalError as exc:  # not kept: still open
            log.warning("opcua_grid_signal_not_kept", error=str(exc))
            raise ua.uaerrors.BadResourceUnavailable from None
        return []

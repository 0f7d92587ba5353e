"""Who may ask: Redfish sessions (``X-Auth-Token``), HTTP Basic, and the SessionService.

Everything but ``/redfish``, ``/redfish/v1``, the OData documents and the session ``POST``
needs a session token or the BMC's Basic credential. At most :data:`MAX_SESSIONS` are open; a
new one drops the oldest.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from pswd_gateway.logging import get_logger
from pswd_gateway.simulation.redfish.documents import (
    OK,
    OPEN_PATHS,
    SESSION_CREATE_PATHS,
    SESSIONS,
    TYPES,
    V1,
    RedfishJSON,
    collection,
    iso,
    json_object,
    json_text,
    ref,
)
from pswd_gateway.simulation.redfish.registry import RedfishError

__all__ = ["MAX_SESSIONS", "Sessions"]

log = get_logger("simulation.redfish")

MAX_SESSIONS: Final = 64


@dataclass(frozen=True, slots=True)
class _Session:
    token: str
    user: str
    created: float


class Sessions:
    """The open sessions of one BMC, the check of every request, and the session resources."""

    def __init__(self, username: str, password: str) -> None:
        self._username = username
        self._password = password
        self._open: dict[str, _Session] = {}

    def ids(self) -> list[str]:
        """Ids of the open sessions."""
        return list(self._open)

    def __contains__(self, sid: object) -> bool:
        return sid in self._open

    def clear(self) -> None:
        """Forget every session."""
        self._open.clear()

    def authorise(self, scope: Scope) -> bool:
        """Whether a request may proceed; notes the session it used in ``scope["state"]``."""
        path, method = scope["path"], scope["method"]
        if path in OPEN_PATHS or (path in SESSION_CREATE_PATHS and method == "POST"):
            return True
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        token = headers.get("x-auth-token")
        if token is not None:
            for sid, session in self._open.items():
                if secrets.compare_digest(token.encode(), session.token.encode()):
                    scope.setdefault("state", {})["session"] = sid
                    return True
            return False
        auth = headers.get("authorization", "")
        if auth[:6].lower() != "basic ":
            return False
        try:
            user, _, password = base64.b64decode(auth[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return self._credentials_ok(user, password)

    def _credentials_ok(self, user: str, password: str) -> bool:
        user_ok = secrets.compare_digest(user.encode(), self._username.encode())
        password_ok = secrets.compare_digest(password.encode(), self._password.encode())
        return user_ok and password_ok

    # ---- resources -----------------------------------------------------------------------------

    async def service(self, _: Request) -> Response:
        """``GET /redfish/v1/SessionService``."""
        return RedfishJSON(
            {
                "@odata.id": V1 + "/SessionService",
                "@odata.type": TYPES["SessionService"],
                "Id": "SessionService",
                "Name": "Session Service",
                "ServiceEnabled": True,
                "SessionTimeout": 1800,
                "Sessions": ref(SESSIONS),
                "Status": OK,
            }
        )

    async def members(self, _: Request) -> Response:
        """``GET …/Sessions``."""
        paths = [f"{SESSIONS}/{sid}" for sid in self._open]
        return RedfishJSON(collection(SESSIONS, "SessionCollection", "Session Collection", paths))

    async def login(self, request: Request) -> Response:
        """``POST …/Sessions`` or ``…/Sessions/Members`` (a login): 201 with the Session,
        ``X-Auth-Token`` and ``Location``."""
        body = await json_object(request)
        for prop in ("UserName", "Password"):
            if prop not in body:
                raise RedfishError(400, "CreateFailedMissingReqProperties", prop)
            if not isinstance(body[prop], str):
                raise RedfishError(400, "PropertyValueTypeError", json_text(body[prop]), prop)
        user, password = body["UserName"], body["Password"]
        if not self._credentials_ok(user, password):
            log.warning("redfish_twin_login_refused", user=user[:64])
            raise RedfishError(
                401, "ResourceAtUriUnauthorized", SESSIONS, "Invalid username or password"
            )
        if len(self._open) >= MAX_SESSIONS:
            oldest = min(self._open, key=lambda sid: self._open[sid].created)
            del self._open[oldest]
        sid = secrets.token_hex(8)
        self._open[sid] = _Session(secrets.token_hex(24), user, time.time())
        location = f"{SESSIONS}/{sid}"
        return RedfishJSON(
            self._document(sid),
            status_code=201,
            headers={"X-Auth-Token": self._open[sid].token, "Location": location},
        )

    async def session(self, request: Request) -> Response:
        """``GET`` or ``DELETE …/Sessions/{sid}`` (a logout: 204)."""
        sid = request.path_params["sid"]
        if sid not in self._open:
            raise RedfishError(404, "ResourceNotFound", "Session", sid)
        if request.method == "DELETE":
            del self._open[sid]
            return Response(status_code=204)
        return RedfishJSON(self._document(sid))

    def _document(self, sid: str) -> dict[str, Any]:
        session = self._open[sid]
        return {
            "@odata.id": f"{SESSIONS}/{sid}",
            "@odata.type": TYPES["Session"],
            "Id": sid,
            "Name": "User Session",
            "UserName": session.user,
            "SessionType": "Redfish",
            "CreatedTime": iso(session.created),
        }

"""The AccountService: the BMC's one account and the three standard roles, read-only.

A BMC that only reports power has a single configured user; the twin shows it (``Accounts/1``,
role ``Administrator``) and the roles every Redfish service defines, so a client can see who it
is and what it may do. Accounts and roles are configured, not created over Redfish.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from pswd_gateway.simulation.redfish.documents import OK, TYPES, V1, RedfishJSON, collection, ref
from pswd_gateway.simulation.redfish.registry import RedfishError

__all__ = ["ACCOUNT_SERVICE", "ROLES", "Accounts"]

ACCOUNT_SERVICE: Final = V1 + "/AccountService"
_ACCOUNTS: Final = ACCOUNT_SERVICE + "/Accounts"
_ROLES: Final = ACCOUNT_SERVICE + "/Roles"
ACCOUNT_ID: Final = "1"

ROLES: Final[Mapping[str, tuple[str, ...]]] = {
    # the standard roles (DSP0266, "Roles") and their privileges
    "Administrator": (
        "Login",
        "ConfigureManager",
        "ConfigureUsers",
        "ConfigureComponents",
        "ConfigureSelf",
    ),
    "Operator": ("Login", "ConfigureComponents", "ConfigureSelf"),
    "ReadOnly": ("Login", "ConfigureSelf"),
}


class Accounts:
    """``/redfish/v1/AccountService`` and everything under it."""

    def __init__(self, username: str) -> None:
        self._account = {
            "@odata.id": f"{_ACCOUNTS}/{ACCOUNT_ID}",
            "@odata.type": TYPES["ManagerAccount"],
            "Id": ACCOUNT_ID,
            "Name": "User Account",
            "UserName": username,
            "RoleId": "Administrator",
            "Enabled": True,
            "Locked": False,
            "Links": {"Role": ref(f"{_ROLES}/Administrator")},
        }
        digest = hashlib.sha256(json.dumps(self._account, sort_keys=True).encode()).hexdigest()
        self._etag = f'W/"{digest[:16]}"'
        """The account never changes over Redfish, so neither does its ETag."""

    async def service(self, _: Request) -> Response:
        return RedfishJSON(
            {
                "@odata.id": ACCOUNT_SERVICE,
                "@odata.type": TYPES["AccountService"],
                "Id": "AccountService",
                "Name": "Account Service",
                "ServiceEnabled": True,
                "Accounts": ref(_ACCOUNTS),
                "Roles": ref(_ROLES),
                "Status": OK,
            }
        )

    async def accounts(self, _: Request) -> Response:
        return RedfishJSON(
            collection(
                _ACCOUNTS,
                "ManagerAccountCollection",
                "Accounts Collection",
                [f"{_ACCOUNTS}/{ACCOUNT_ID}"],
            )
        )

    async def account(self, request: Request) -> Response:
        aid = request.path_params["aid"]
        if aid != ACCOUNT_ID:
            raise RedfishError(404, "ResourceNotFound", "ManagerAccount", aid)
        return RedfishJSON(
            {"@odata.etag": self._etag, **self._account},
            headers={"ETag": self._etag},
        )

    async def roles(self, _: Request) -> Response:
        paths = [f"{_ROLES}/{role}" for role in ROLES]
        return RedfishJSON(collection(_ROLES, "RoleCollection", "Roles Collection", paths))

    async def role(self, request: Request) -> Response:
        rid = request.path_params["rid"]
        if rid not in ROLES:
            raise RedfishError(404, "ResourceNotFound", "Role", rid)
        return RedfishJSON(
            {
                "@odata.id": f"{_ROLES}/{rid}",
                "@odata.type": TYPES["Role"],
                "Id": rid,
                "Name": f"{rid} Role",
                "RoleId": rid,
                "IsPredefined": True,
                "AssignedPrivileges": list(ROLES[rid]),
            }
        )

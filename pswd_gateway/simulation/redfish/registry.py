"""Redfish errors: the Base message registry (DSP8011) and the error bodies built from it.

Every refusal of the twin is a :class:`RedfishError`, rendered as ``{"error": {"code", "message",
"@Message.ExtendedInfo": [Message]}}``; :data:`EXCEPTION_HANDLERS` turns Starlette's own 404/405
and any unexpected exception into the same shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ExceptionHandler

from pswd_gateway.logging import get_logger

__all__ = ["EXCEPTION_HANDLERS", "MESSAGE_TYPE", "REGISTRY", "RedfishError", "unauthorised"]

log = get_logger("simulation.redfish")

REGISTRY: Final = "Base.1.18"
MESSAGE_TYPE: Final = "#Message.v1_1_1.Message"

# message key -> (message with %1, %2 arguments, severity, resolution)
MESSAGES: Final[Mapping[str, tuple[str, str, str]]] = {
    "NoValidSession": (
        "There is no valid session established with the implementation.",
        "Critical",
        "Establish a session before attempting any operations.",
    ),
    "ResourceAtUriUnauthorized": (
        "While accessing the resource at '%1', the service received an authorization error '%2'.",
        "Critical",
        (
            "Ensure that the appropriate access is provided for the service in order for it to "
            "access the URI."
        ),
    ),
    "ResourceNotFound": (
        "The requested resource of type %1 named '%2' was not found.",
        "Critical",
        "Provide a valid resource identifier and resubmit the request.",
    ),
    "OperationNotAllowed": (
        "The HTTP method is not allowed on this resource.",
        "Critical",
        "None.",
    ),
    "MalformedJSON": (
        (
            "The request body submitted was malformed JSON and could not be parsed by the "
            "receiving service."
        ),
        "Critical",
        "Ensure that the request body is valid JSON and resubmit the request.",
    ),
    "CreateFailedMissingReqProperties": (
        (
            "The create operation failed because the required property %1 was missing from the "
            "request."
        ),
        "Critical",
        (
            "Correct the body to include the required property with a valid value and resubmit "
            "the request if the operation failed."
        ),
    ),
    "NoOperation": (
        (
            "The request body submitted contain no data to act upon and no changes to the "
            "resource took place."
        ),
        "Warning",
        "Add properties in the JSON object and resubmit the request.",
    ),
    "PropertyUnknown": (
        "The property %1 is not in the list of valid properties for the resource.",
        "Warning",
        (
            "Remove the unknown property from the request body and resubmit the request if the "
            "operation failed."
        ),
    ),
    "PropertyNotWritable": (
        "The property %1 is a read-only property and cannot be assigned a value.",
        "Warning",
        (
            "Remove the property from the request body and resubmit the request if the operation "
            "failed."
        ),
    ),
    "PropertyMissing": (
        "The property %1 is a required property and must be included in the request.",
        "Warning",
        (
            "Ensure that the property is in the request body and has a valid value and resubmit "
            "the request if the operation failed."
        ),
    ),
    "PropertyValueTypeError": (
        "The value '%1' for the property %2 is not a type that the property can accept.",
        "Warning",
        (
            "Correct the value for the property in the request body and resubmit the request if "
            "the operation failed."
        ),
    ),
    "PropertyValueNotInList": (
        "The value '%1' for the property %2 is not in the list of acceptable values.",
        "Warning",
        (
            "Choose a value from the enumeration list that the implementation can support and "
            "resubmit the request if the operation failed."
        ),
    ),
    "PropertyValueOutOfRange": (
        "The value '%1' for the property %2 is not in the supported range of acceptable values.",
        "Warning",
        (
            "Correct the value for the property in the request body and resubmit the request if "
            "the operation failed."
        ),
    ),
    "PropertyValueConflict": (
        (
            "The property '%1' could not be written because its value would conflict with the "
            "value of the '%2' property."
        ),
        "Warning",
        "No resolution is required.",
    ),
    "QueryNotSupported": (
        "Querying is not supported by the implementation.",
        "Warning",
        "Remove the query parameters and resubmit the request if the operation failed.",
    ),
    "GeneralError": (
        "%1",
        "Critical",
        "None.",
    ),
    "InternalError": (
        "The request failed due to an internal service error.  The service is still operational.",
        "Critical",
        "Resubmit the request.  If the problem persists, consider resetting the service.",
    ),
}


class RedfishError(Exception):
    """A refusal rendered as a Redfish error body, e.g. ``RedfishError(400, "NoOperation")``."""

    def __init__(
        self, status: int, key: str, *args: str, headers: Mapping[str, str] | None = None
    ) -> None:
        template, severity, resolution = MESSAGES[key]
        message = template
        for i, arg in enumerate(args, start=1):
            message = message.replace(f"%{i}", arg)
        super().__init__(message)
        self.status = status
        self.message_id = f"{REGISTRY}.{key}"
        self.message = message
        self.args_list = [str(a) for a in args]
        self.severity = severity
        self.resolution = resolution
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        info = {
            "@odata.type": MESSAGE_TYPE,
            "MessageId": self.message_id,
            "Message": self.message,
            "MessageArgs": self.args_list,
            "MessageSeverity": self.severity,
            "Resolution": self.resolution,
        }
        body = {
            "error": {
                "code": self.message_id,
                "message": self.message,
                "@Message.ExtendedInfo": [info],
            }
        }
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def unauthorised() -> RedfishError:
    """The 401 of a request without a valid session or Basic credential."""
    return RedfishError(401, "NoValidSession", headers={"WWW-Authenticate": 'Basic realm="BMC"'})


async def _on_redfish_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RedfishError)
    return exc.response()


async def _on_unexpected_error(_: Request, exc: Exception) -> Response:
    """A bug or a backend failure: a Redfish InternalError body (uvicorn logs the traceback)."""
    log.error("redfish_twin_internal_error", error=repr(exc))
    return RedfishError(500, "InternalError").response()


async def _on_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 as Redfish errors."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        error = RedfishError(405, "OperationNotAllowed", headers=exc.headers)
    elif exc.status_code == 404:
        error = RedfishError(404, "ResourceNotFound", "Resource", request.url.path)
    else:
        error = RedfishError(exc.status_code, "GeneralError", str(exc.detail))
    return error.response()


EXCEPTION_HANDLERS: Final[Mapping[Any, ExceptionHandler]] = {
    RedfishError: _on_redfish_error,
    HTTPException: _on_http_error,
    Exception: _on_unexpected_error,
}
"""Starlette's ``exception_handlers``: every failure answered as a Redfish error body."""

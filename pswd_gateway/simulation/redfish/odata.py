"""The OData documents every Redfish service has, readable without a session.

- ``GET /redfish/v1/$metadata``: the CSDL metadata document (``application/xml``) referencing
  DMTF's published schema file of every namespace in :data:`~documents.TYPES`, with the
  ``Service`` EntityContainer extending the ServiceRoot's;
- ``GET /redfish/v1/odata``: the OData service document (JSON) naming the service root and each
  of its direct children.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final
from xml.sax.saxutils import quoteattr

from starlette.requests import Request
from starlette.responses import Response

from pswd_gateway.simulation.redfish.documents import SCHEMAS, TYPES, V1, RedfishJSON

__all__ = ["METADATA", "OData", "metadata_document", "service_document"]

METADATA: Final = V1 + "/$metadata"
METADATA_MEDIA_TYPE: Final = "application/xml;charset=utf-8"
_EXTENSIONS: Final = ("RedfishExtensions", "RedfishExtensions.v1_0_0", "Redfish")
"""The schema of ``@Redfish.*`` annotations: (file, namespace, alias)."""


def _namespaces(odata_types: Iterable[str]) -> dict[str, list[str]]:
    """Schema file stem -> the namespaces included from it, in first-seen order.

    ``#Chassis.v1_25_0.Chassis`` -> ``Chassis``: ``Chassis``, ``Chassis.v1_25_0``;
    ``#ChassisCollection.ChassisCollection`` -> ``ChassisCollection``: ``ChassisCollection``.
    """
    out: dict[str, list[str]] = {}
    for odata_type in odata_types:
        namespace = odata_type.lstrip("#").rsplit(".", 1)[0]
        stem = namespace.split(".", 1)[0]
        included = out.setdefault(stem, [stem])
        if namespace not in included:
            included.append(namespace)
    return out


def metadata_document(types: Mapping[str, str] = TYPES) -> str:
    """The CSDL ``$metadata`` document for the resources of ``types`` (kind -> ``@odata.type``)."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="4.0">',
    ]
    for stem, namespaces in _namespaces(types.values()).items():
        lines.append(f"  <edmx:Reference Uri={quoteattr(f'{SCHEMAS}/{stem}_v1.xml')}>")
        lines += [f"    <edmx:Include Namespace={quoteattr(ns)}/>" for ns in namespaces]
        lines.append("  </edmx:Reference>")
    stem, namespace, alias = _EXTENSIONS
    root = TYPES["ServiceRoot"].lstrip("#").rsplit(".", 1)[0]
    lines += [
        f"  <edmx:Reference Uri={quoteattr(f'{SCHEMAS}/{stem}_v1.xml')}>",
        f"    <edmx:Include Namespace={quoteattr(namespace)} Alias={quoteattr(alias)}/>",
        "  </edmx:Reference>",
        "  <edmx:DataServices>",
        '    <Schema xmlns="http://docs.oasis-open.org/odata/ns/edm" Namespace="Service">',
        f'      <EntityContainer Name="Service" Extends={quoteattr(root + ".ServiceContainer")}/>',
        "    </Schema>",
        "  </edmx:DataServices>",
        "</edmx:Edmx>",
        "",
    ]
    return "\n".join(lines)


def service_document(root: Mapping[str, Any]) -> dict[str, Any]:
    """The OData service document: the service root, then each resource it links directly
    (its services, and ``Sessions`` from its ``Links``)."""
    children = [
        (name, value["@odata.id"])
        for name, value in [*root.items(), *root.get("Links", {}).items()]
        if isinstance(value, Mapping) and set(value) == {"@odata.id"}
    ]
    return {
        "@odata.context": METADATA,
        "value": [
            {"name": "Service", "kind": "Singleton", "url": V1 + "/"},
            *({"name": name, "kind": "Singleton", "url": uri} for name, uri in children),
        ],
    }


class OData:
    """The two documents of one service, built once from its service root."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self._metadata = metadata_document()
        self._service = service_document(root)

    async def metadata(self, _: Request) -> Response:
        """``GET /redfish/v1/$metadata``."""
        return Response(self._metadata, media_type=METADATA_MEDIA_TYPE)

    async def service(self, _: Request) -> Response:
        """``GET /redfish/v1/odata``."""
        return RedfishJSON(self._service)

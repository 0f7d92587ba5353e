"""The workload HTTP API."""

from pswd_gateway.northbound.http_api.app import ApiContext, create_app

__all__ = ["ApiContext", "create_app"]

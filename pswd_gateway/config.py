"""The whole configuration: one TOML file validated by pydantic models.

Precedence (highest first): environment ``PSWD__SECTION__KEY`` > the TOML file > defaults.
Unknown keys are errors. :func:`load_config` raises :class:`ConfigError` listing every problem
with its TOML path, e.g. ``devices[2].poll_interval_ms: must be ≥ 10``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import tomllib
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pswd_gateway.domain.grid_signals import (
    DeadbandHz,
    DroopPct,
    FastFrequencyResponse,
    PositiveMw,
)
from pswd_gateway.domain.points import point_key
from pswd_gateway.domain.signals import Role as SignalRole
from pswd_gateway.domain.units import from_mw
from pswd_gateway.errors import ConfigError
from pswd_gateway.security.passwords import PASSWORD_HASH_PATTERN, verify_password
from pswd_gateway.security.zones import (
    LISTENERS,
    PLANT_ZONES,
    Access,
    Conduit,
    Listener,
    Policy,
    Zone,
    ZoneKind,
)

__all__ = [
    "DEFAULT_CONFIG",
    "DEMO_TOKEN_SHA256",
    "DEVICE_MAPS_DIR",
    "MIN_RAMP_LIMIT_MW_PER_S",
    "ApiConfig",
    "ApiTokenConfig",
    "ControlConfig",
    "FfrConfig",
    "ForecastConfig",
    "GatewayConfig",
    "HeatConfig",
    "ListenerConfig",
    "ModbusDeviceConfig",
    "OpenAdr2bConfig",
    "OpenAdr3Config",
    "RedfishDeviceConfig",
    "Role",
    "SchedulingConfig",
    "format_validation_error",
    "is_loopback",
    "load_config",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_CONFIG = DATA_DIR / "demo.toml"
DEVICE_MAPS_DIR = DATA_DIR / "devices"

DeviceName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def is_loopback(host: str) -> bool:
    """True when ``host`` names only this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_credential(name: str) -> str:
    """A systemd credential's value (``LoadCredential=``/``SetCredentialEncrypted=``), one
    trailing newline removed; ``ValueError`` saying how to provide it when it is missing."""
    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name):
        raise ValueError(f"credential name {name!r} must be 1-64 of A-Z a-z 0-9 _ . @ -")
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ValueError(
            f"credential {name!r}: $CREDENTIALS_DIRECTORY is not set; the unit needs "
            f"LoadCredential={name}:/etc/credstore/{name} (to check the file by hand: "
            "CREDENTIALS_DIRECTORY=/etc/credstore pswd-gateway config check FILE)"
        )
    path = Path(directory) / name
    try:
        value = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"credential {name!r}: cannot read {path}: {exc}") from None
    return value.removesuffix("\n")


MIN_RAMP_LIMIT_MW_PER_S = 0.001
"""The slowest grid ramp limit a site may set (1 kW/s; 5e-324 MW/s put the plan's ramp past
the year 9999)."""

SiteRole = Literal["grid_meter", "bess", "thermal"]
"""The device roles a site names (``site.grid_meter`` and so on)."""


class SiteConfig(_Strict):
    """The site as the grid operator sees it, and which device plays which role."""

    name: str = "pswd-site"
    nominal_frequency_hz: Literal[50, 60] = 50
    grid_import_limit_mw: Annotated[float, Field(gt=0, le=10_000)] = 400.0
    grid_ramp_limit_mw_per_s: Annotated[float, Field(ge=MIN_RAMP_LIMIT_MW_PER_S, le=10_000)] = 20.0
    """At least 1 kW/s: a ramp that takes longer than the calendar cannot be planned."""
    demand_response_limit_mw: Annotated[float, Field(ge=0, le=10_000)] | None = None
    """The grid operator's demand-response import limit (IEC 61850 ``GAPC1.DRLimW``)."""
    demand_response_active: bool = False
    """Whether that limit is in force (IEC 61850 ``GAPC1.DRAct``)."""
    grid_signal_limit_mw: Annotated[float, Field(ge=0, le=10_000)] | None = None
    """The strictest import limit of the grid signals in force (docs/grid.md): kept by the
    grid-signal service through the site settings, not read from the file (a reload keeps it)."""
    ffr_active: bool = False
    """Whether the fast frequency response of IEC 61850 ``GAPC2.FFRAct`` is switched on. With
    the four ``ffr_*`` values below it is the IEC 61850 door's state, kept by the grid-signal
    service in line with its standing signal (docs/grid.md), not read from the file: a reload
    keeps them, a restart takes them from the signal."""
    ffr_max_mw: PositiveMw | None = None
    """``GAPC2.FFRMaxW``: that response's most power; None: not set (``FFRAct`` on is refused)."""
    ffr_deadband_hz: DeadbandHz = FastFrequencyResponse.model_fields["deadband_hz"].default
    """``GAPC2.FFRDbHz`` (the grid signal's default until operated)."""
    ffr_droop_pct: DroopPct = FastFrequencyResponse.model_fields["droop_pct"].default
    """``GAPC2.FFRDroop`` (the grid signal's default until operated)."""
    ffr_ramp_mw_per_s: PositiveMw = FastFrequencyResponse.model_fields["ramp_mw_per_s"].default
    """``GAPC2.FFRRmpW`` (the grid signal's default until operated)."""
    grid_meter: DeviceName = "grid_meter"
    bess: DeviceName | None = "bess"
    thermal: DeviceName | None = "thermal"
    it_load: tuple[DeviceName, ...] = ()
    """Redfish devices whose power readings sum to the IT load."""
    roles: dict[str, tuple[DeviceName, ...]] = {}
    """Devices of the catalogue's further roles (``pswd_gateway.domain.signals.Role``), by
    role name: a second grid meter is a role and a signal row in the catalogue, and a line here
    (``roles = { grid_meter_2 = ["meter2"] }``)."""

    @field_validator("roles")
    @classmethod
    def _known_roles(cls, roles: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        known = {r.value for r in SignalRole} - {"grid_meter", "bess", "thermal", "it_load"}
        unknown = sorted(set(roles) - known)
        if unknown:
            msg = (
                f"unknown role(s) {', '.join(unknown)}; roles of the signal catalogue beyond "
                f"grid_meter, bess, thermal and it_load: {', '.join(sorted(known)) or 'none'}"
            )
            raise ValueError(msg)
        return roles

    @model_validator(mode="after")
    def _ffr_sized(self) -> SiteConfig:
        if self.ffr_active and self.ffr_max_mw is None:
            raise ValueError("ffr_active needs ffr_max_mw (IEC 61850: operate GAPC2.FFRMaxW first)")
        return self

    def point_key(self, role: SiteRole, point: str) -> str | None:
        """The store key of ``point`` on the device playing ``role``; None without one."""
        device: str | None = getattr(self, role)
        return None if device is None else point_key(device, point)

    @property
    def import_limit_mw(self) -> float:
        """The import limit in force: the site's, or a lower demand-response or grid-signal
        limit."""
        limit = self.grid_import_limit_mw
        if self.grid_signal_limit_mw is not None:
            limit = min(limit, self.grid_signal_limit_mw)
        if not self.demand_response_active or self.demand_response_limit_mw is None:
            return limit
        return min(limit, self.demand_response_limit_mw)

    @property
    def import_limit_w(self) -> float:
        """The import limit in force, in W."""
        return from_mw(self.import_limit_mw)

    @property
    def grid_import_limit_w(self) -> float:
        """The site's own import limit, in W."""
        return from_mw(self.grid_import_limit_mw)

    @property
    def grid_ramp_limit_w_per_s(self) -> float:
        """The grid operator's ramp limit, in W/s."""
        return from_mw(self.grid_ramp_limit_mw_per_s)

    @property
    def demand_response_limit_w(self) -> float:
        """The demand-response import limit in W; 0 when none is set."""
        limit = self.demand_response_limit_mw
        return 0.0 if limit is None else from_mw(limit)

    @property
    def ffr(self) -> FastFrequencyResponse:
        """The fast frequency response of ``GAPC2`` as operated: on or off (``ffr_active``) with
        its curve (a maximum never set is 0, which only an off response may have)."""
        return FastFrequencyResponse(
            enabled=self.ffr_active,
            max_mw=self.ffr_max_mw or 0.0,
            deadband_hz=self.ffr_deadband_hz,
            droop_pct=self.ffr_droop_pct,
            ramp_mw_per_s=self.ffr_ramp_mw_per_s,
        )

    @property
    def ffr_max_w(self) -> float:
        """``ffr_max_mw`` in W; 0 when none is set."""
        return 0.0 if self.ffr_max_mw is None else from_mw(self.ffr_max_mw)

    @property
    def ffr_droop(self) -> float:
        """``ffr_droop_pct`` as a ratio (4 % is 0.04)."""
        return self.ffr_droop_pct / 100.0

    @property
    def ffr_ramp_w_per_s(self) -> float:
        """``ffr_ramp_mw_per_s`` in W/s."""
        return from_mw(self.ffr_ramp_mw_per_s)

    def devices(self, role: SignalRole) -> tuple[str, ...]:
        """The devices playing ``role`` (:class:`pswd_gateway.domain.signals.SiteMap`)."""
        if role is SignalRole.IT_LOAD:
            return self.it_load
        if role.value in self.roles:
            return self.roles[role.value]
        device: str | None = getattr(self, role.value, None)
        return () if device is None else (device,)

    def setting(self, name: str) -> float:
        """A site setting in SI units, by name (:class:`~pswd_gateway.domain.signals.SiteMap`):
        ``grid_import_limit_w``, ``grid_ramp_limit_w_per_s``, ``demand_response_limit_w``,
        ``demand_response_active`` (0 or 1), ``import_limit_w``, and the IEC 61850 door's fast
        frequency response: ``ffr_active`` (0 or 1), ``ffr_max_w``, ``ffr_deadband_hz``,
        ``ffr_droop`` (a ratio), ``ffr_ramp_w_per_s``."""
        if name not in _SI_SETTINGS:
            msg = f"unknown site setting {name!r}; known: {', '.join(sorted(_SI_SETTINGS))}"
            raise KeyError(msg)
        return float(getattr(self, name))

    @property
    def it_load_points(self) -> tuple[str, ...]:
        """The store keys whose sum is the IT load."""
        return tuple(f"{d}.total_power" for d in self.it_load)


_SI_SETTINGS = frozenset(
    {
        "grid_import_limit_w",
        "grid_ramp_limit_w_per_s",
        "demand_response_limit_w",
        "demand_response_active",
        "import_limit_w",
        "ffr_active",
        "ffr_max_w",
        "ffr_deadband_hz",
        "ffr_droop",
        "ffr_ramp_w_per_s",
    }
)


class _DeviceBase(_Strict):
    name: DeviceName
    enabled: bool = True
    poll_interval_ms: Annotated[int, Field(ge=10, le=3_600_000)] = 100
    timeout_ms: Annotated[int, Field(ge=1, le=60_000)] | None = None
    """Per-request timeout; default: 80 % of the poll interval, at most 2 s."""
    invalid_after_ms: Annotated[int, Field(ge=10, le=3_600_000)] | None = None
    """How long without a good reading before points turn ``invalid`` (default 3 intervals,
    at least 1 s)."""

    @property
    def poll_interval_s(self) -> float:
        return self.poll_interval_ms / 1000.0

    @property
    def timeout_s(self) -> float:
        if self.timeout_ms is not None:
            return self.timeout_ms / 1000.0
        return min(0.8 * self.poll_interval_s, 2.0)

    @property
    def invalid_after_s(self) -> float:
        if self.invalid_after_ms is not None:
            return self.invalid_after_ms / 1000.0
        return max(3 * self.poll_interval_s, 1.0)


class ModbusDeviceConfig(_DeviceBase):
    """A Modbus TCP device described by a register map in ``config/devices/``."""

    kind: Literal["modbus"] = "modbus"
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    unit_id: Annotated[int, Field(ge=0, le=255)] = 1
    register_map: str
    """Map name (``sunspec-bess`` → ``devices/sunspec-bess.toml`` beside the config file or
    shipped with the gateway) or a path to a TOML file."""
    measurement_refresh_ms: Annotated[float, Field(ge=0.0, le=60_000.0)] = 0.0
    """How often the device refreshes its measurements, each the mean over the window just
    ended (its datasheet's update or averaging period). Readings are time-stamped with the
    estimated measurement time, not the request's (0: the device measures when asked)."""

    write_connection: Literal["shared", "own"] = "shared"
    """``own``: setpoint writes go over a second connection of their own, so they never queue
    behind a poll (a battery written 50 times a second; the device must accept two connections).
    ``shared``: over the polls' connection, between two of their reads."""

    @property
    def measurement_refresh_s(self) -> float:
        return self.measurement_refresh_ms / 1000.0


class RedfishDeviceConfig(_DeviceBase):
    """A BMC (or an aggregator of BMCs) speaking DMTF Redfish over HTTP(S)."""

    kind: Literal["redfish"] = "redfish"
    poll_interval_ms: Annotated[int, Field(ge=10, le=3_600_000)] = 1000
    base_url: str
    username: str = ""
    password: SecretStr = SecretStr("")
    password_credential: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")] | None = None
    """The password from a systemd credential instead (``LoadCredential=NAME:/etc/credstore/…``
    in the unit): read from ``$CREDENTIALS_DIRECTORY/NAME`` when the config is loaded."""
    auth: Literal["session", "basic", "auto"] = "auto"
    """``session``: a Redfish session only; ``basic``: HTTP Basic on every request; ``auto``: a
    session, or Basic when the service has no SessionService or refuses to create a session."""
    verify_tls: bool = True
    ca_bundle: Path | None = None
    """PEM file of the CA (or the self-signed certificate) that signed the BMC's certificate."""
    tls_fingerprint_sha256: str | None = None
    """SHA-256 of the BMC's certificate (DER), hex with or without colons: that certificate
    and no other is accepted, whoever signed it."""
    use_event_service: bool = True
    """Subscribe to the BMC's EventService SSE stream when it offers one."""
    chassis: tuple[str, ...] = ()
    """Chassis ids to read; empty = every chassis in the collection."""
    power_limit_writes: bool = False
    """Whether the control cycle may set GPU power limits on this BMC."""

    @model_validator(mode="before")
    @classmethod
    def _password_from_credential(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("password_credential"):
            return data
        if data.get("password"):
            raise ValueError("password and password_credential exclude each other: give one")
        name = str(data["password_credential"])
        return {**data, "password": read_credential(name)}

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        host = urlsplit(url).hostname or ""
        if url.startswith("http://") and not is_loopback(host):
            raise ValueError(
                f"plain HTTP to {host or 'the BMC'} would carry the BMC password and session in "
                "clear text; use https:// (with ca_bundle or tls_fingerprint_sha256 for a "
                "self-signed certificate), or http:// only to 127.0.0.1 / localhost"
            )
        return url.rstrip("/")

    @field_validator("tls_fingerprint_sha256")
    @classmethod
    def _sha256_hex(cls, value: str | None) -> str | None:
        if value is None:
            return None
        digits = value.replace(":", "").strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digits):
            raise ValueError(
                "must be the certificate's SHA-256 as 64 hex digits (colons allowed), e.g. the "
                "output of: openssl x509 -noout -fingerprint -sha256 -in bmc.pem"
            )
        return digits

    @model_validator(mode="after")
    def _tls_settings_need_https(self) -> RedfishDeviceConfig:
        if self.ca_bundle is not None and self.tls_fingerprint_sha256 is not None:
            raise ValueError(
                "ca_bundle and tls_fingerprint_sha256 exclude each other: verify the BMC "
                "against a CA, or pin its certificate"
            )
        pinned = self.ca_bundle is not None or self.tls_fingerprint_sha256 is not None
        if pinned and not self.base_url.startswith("https://"):
            raise ValueError("ca_bundle and tls_fingerprint_sha256 need an https:// base_url")
        return self


DeviceConfig = Annotated[ModbusDeviceConfig | RedfishDeviceConfig, Field(discriminator="kind")]


class ListenerConfig(_Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)]
    max_new_connections_per_s: Annotated[float, Field(ge=0, le=100_000)] = 50.0
    """New connections one peer address may open per second (a burst of twice that); beyond
    it they are closed at accept and counted (``pswd_conduit_refusals_total{reason="rate"}``).
    0: no limit."""


class TlsListenerConfig(ListenerConfig):
    """A listener that must use TLS whenever it is reachable from another machine."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    """Mutual TLS: client certificates signed by this CA (``certs init``: ``ca/ca.pem``) are
    verified, and the role they carry (``certs issue``) is the caller's identity."""
    tls_client_auth: Literal["required", "optional"] = "required"
    """With ``tls_client_ca``: ``optional`` also admits clients without a certificate (they
    then need a bearer token)."""
    tls_crl: Path | None = None
    """The CA's revocation list (``ca/crl.pem``); re-read when it changes, no restart needed."""

    @model_validator(mode="after")
    def _tls_off_loopback(self) -> TlsListenerConfig:
        self._check_tls()
        if self.enabled and self.tls_cert is None and not is_loopback(self.host):
            raise ValueError(
                f"a plaintext listener on {self.host} is reachable from other machines; "
                "set tls_cert and tls_key (see certs/README.md) or bind 127.0.0.1"
            )
        return self

    def _check_tls(self) -> None:
        """The TLS settings that only make sense together."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or none")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key (mutual TLS is TLS)")
        if self.tls_crl is not None and self.tls_client_ca is None:
            raise ValueError("tls_crl revokes client certificates: set tls_client_ca too")


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_NETWORKS: tuple[Network, ...] = (
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv6Network("::1/128"),
)


MMS_TLS_PORT = 3782
"""The port of MMS over TLS (IEC 62351-3); plaintext MMS is on 102."""


class MmsListenerConfig(TlsListenerConfig):
    """The MMS listener: how many clients at once (who may connect: ``[[conduits]]``).

    With ``tls_cert``, ``tls_key`` and ``tls_client_ca`` it serves MMS over TLS (IEC 62351-3,
    the profile of IEC 62351-4 libiec61850 implements; port 3782 by convention): every client
    shows a certificate issued by ``tls_client_ca`` (libiec61850 always asks for one), which is
    its identity unless it also sends an ACSE password (docs/iec61850.md)."""

    max_connections: Annotated[int, Field(ge=1, le=100)] = 10
    tls_min_version: Literal["1.2", "1.3"] = "1.2"
    """The oldest TLS version a client may use."""

    @model_validator(mode="after")
    def _tls_off_loopback(self) -> MmsListenerConfig:
        self._check_tls()
        if self.tls_cert is not None and self.tls_client_ca is None:
            raise ValueError(
                "MMS over TLS always asks the client for a certificate (libiec61850): set "
                "tls_client_ca to the CA that issues them (`pswd-gateway certs init`: ca/ca.pem)"
            )
        if self.tls_client_auth != "required":
            raise ValueError(
                'tls_client_auth must be "required": libiec61850 serves no MMS client over TLS '
                "without a certificate"
            )
        if self.enabled and self.tls_cert is None and not is_loopback(self.host):
            raise ValueError(
                f"listeners.iec61850 binds {self.host}: MMS without TLS is plaintext and stays "
                "on loopback; set tls_cert, tls_key and tls_client_ca (MMS over TLS, port "
                f"{MMS_TLS_PORT}, see docs/iec61850.md) or bind 127.0.0.1"
            )
        return self


class ListenersConfig(_Strict):
    metrics: TlsListenerConfig = TlsListenerConfig(port=9464)
    """Prometheus ``/metrics`` plus ``/healthz`` and ``/readyz``."""
    api: TlsListenerConfig = TlsListenerConfig(port=8080)
    """The workload HTTP API (``/v1``)."""
    opcua: ListenerConfig = ListenerConfig(enabled=False, port=4840)
    """OPC UA for SCADA (``opc.tcp://host:port/pswd``); secured by ``[opcua]``."""
    iec61850: MmsListenerConfig = MmsListenerConfig(enabled=False, port=102)
    """IEC 61850 MMS for grid operators: plaintext on loopback only, or over TLS with client
    certificates (port 3782 by convention)."""


ZoneName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]


class ZoneConfig(_Strict):
    """``[zones.<name>]``: networks of one trust (see docs/security.md)."""

    kind: ZoneKind
    """``control`` or ``scada`` (inside the plant), ``enterprise``, ``monitoring``, ``utility``."""
    networks: Annotated[tuple[Network, ...], Field(min_length=1)]
    description: Annotated[str, Field(max_length=200)] = ""

    @field_validator("networks", mode="before")
    @classmethod
    def _written_networks(cls, value: Any) -> Any:
        """Networks as written (``"10.20.0.0/16"``): a number or a boolean is not one."""
        if isinstance(value, list | tuple):
            for item in value:
                if not isinstance(item, str):
                    raise ValueError(  # noqa: TRY004 - pydantic wants a ValueError
                        f"{item!r} is not a network: write it as a string, e.g. "
                        '"10.20.0.0/16" or "192.0.2.7/32"'
                    )
        return value


class ConduitConfig(_Strict):
    """``[[conduits]]``: one zone reaching one listener with one level of access."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,47}$")]
    zone: ZoneName
    listener: Listener
    access: Access = "read"
    """``read``; ``announce`` (workloads); ``operate`` (grid limits, demand response,
    controls); ``configure`` (engineering settings). Each includes the ones before it."""


LOCAL_ZONE = "local"
"""The zone a configuration without ``[[conduits]]`` gets: loopback, every listener."""


Role = Literal["viewer", "submitter", "operator", "admin"]

DEMO_TOKEN_SHA256 = {
    hashlib.sha256(f"pswd-demo-{role}".encode()).hexdigest(): role
    for role in ("submitter", "viewer", "operator", "admin")
}
"""The published demo tokens (``pswd-demo-<role>``): refused on any non-loopback listener."""


OpcUaRole = Literal["viewer", "operator", "engineer", "admin"]
OpcUaPolicy = Literal["Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
OpcUaMode = Literal["Sign", "SignAndEncrypt"]

DEMO_OPCUA_USERS = frozenset({"viewer", "operator", "engineer"})
"""Users whose demo passwords (``pswd-demo-<name>``) are published: loopback only."""
DEMO_IEC61850_USERS = frozenset({"viewer", "operator"})
"""MMS users whose demo passwords (``pswd-demo-<name>``) are published: loopback only."""


class _PasswordUser(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]
    password_hash: Annotated[str, Field(pattern=PASSWORD_HASH_PATTERN)]


class OpcUaUserConfig(_PasswordUser):
    """An OPC UA user: a name, a role and a PBKDF2 hash (``pswd-gateway opcua password``)."""

    role: OpcUaRole


Iec61850Role = Literal["viewer", "operator", "admin"]
GOOSE_MAC_PATTERN = r"^01:0[Cc]:[Cc][Dd]:01:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}$"


class Iec61850UserConfig(_PasswordUser):
    """An MMS client: ACSE password authentication carries only a password, so each user needs
    a password of their own (``pswd-gateway opcua password`` makes the hash)."""

    role: Iec61850Role


class Iec61850Config(_Strict):
    """``[iec61850]``: the MMS server (see docs/iec61850.md)."""

    users: tuple[Iec61850UserConfig, ...] = ()
    anonymous_read: bool = False
    """Let associations without a password read and subscribe (never operate)."""
    load_step_lead_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    """``GGIO1.Ind3`` (GOOSE) turns on this long before an announced job starts or stops."""
    goose_appid: Annotated[int, Field(ge=0, le=0x3FFF)] = 0x1000
    goose_dst_mac: Annotated[str, Field(pattern=GOOSE_MAC_PATTERN)] = "01:0C:CD:01:00:01"
    """GOOSE multicast destination (IEC 61850-8-1 range 01:0C:CD:01:00:00-01:FF)."""

    ied_name: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$")] = "PSWD"
    update_interval_ms: Annotated[int, Field(ge=20, le=10_000)] = 100
    goose_interface: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,15}$")] | None = None
    """Network interface for GOOSE (demo: ``lo``); none: GOOSE off."""
    goose_min_time_ms: Annotated[int, Field(ge=1, le=1000)] = 4
    goose_max_time_ms: Annotated[int, Field(ge=100, le=60_000)] = 1000


class OpcUaCertificateUserConfig(_Strict):
    """An OPC UA user who signs in with an X.509 certificate (``pswd-gateway opcua cert-user``)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]
    role: OpcUaRole
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    """SHA-256 of the certificate's DER encoding."""


class OpcUaConfig(_Strict):
    """``[opcua]``: security of the OPC UA listener (see docs/opcua.md)."""

    policies: tuple[OpcUaPolicy, ...] = (
        "Basic256Sha256",
        "Aes128_Sha256_RsaOaep",
        "Aes256_Sha256_RsaPss",
    )
    modes: tuple[OpcUaMode, ...] = ("Sign", "SignAndEncrypt")
    allow_none: bool = False
    """Also offer SecurityPolicy None (reads only; refused unless the listener is loopback)."""
    certs_dir: Path = Path("certs")
    users: tuple[OpcUaUserConfig, ...] = ()
    certificate_users: tuple[OpcUaCertificateUserConfig, ...] = ()
    max_sessions: Annotated[int, Field(ge=1, le=1000)] = 20
    max_subscriptions_per_session: Annotated[int, Field(ge=1, le=1000)] = 10
    max_monitored_items_per_subscription: Annotated[int, Field(ge=1, le=100_000)] = 5000
    publish_interval_ms: Annotated[int, Field(ge=20, le=10_000)] = 100
    """How often store values are pushed into the address space (one batch each time)."""

    @model_validator(mode="after")
    def _some_security(self) -> OpcUaConfig:
        if not self.policies or not self.modes:
            raise ValueError("policies and modes must each name at least one entry")
        names = [u.name for u in self.users] + [u.name for u in self.certificate_users]
        if len(set(names)) != len(names):
            raise ValueError("user names must be unique")
        return self


class ApiTokenConfig(_Strict):
    """A bearer token of the HTTP API, stored as its SHA-256 (``pswd-gateway token hash``)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]
    role: Role
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ApiConfig(_Strict):
    tokens: tuple[ApiTokenConfig, ...] = ()
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1_048_576
    """Larger request bodies get 413 before they are read."""
    rate_limit_per_s: Annotated[float, Field(gt=0, le=100_000)] = 500.0
    """Requests per second per token (burst: one second's worth); beyond it 429."""
    sse_heartbeat_s: Annotated[float, Field(gt=0, le=300)] = 15.0
    page_size_max: Annotated[int, Field(ge=1, le=10_000)] = 500

    @model_validator(mode="after")
    def _unique(self) -> ApiConfig:
        names = [t.name for t in self.tokens]
        if len(set(names)) != len(names):
            raise ValueError("token names must be unique")
        hashes = [t.sha256 for t in self.tokens]
        if len(set(hashes)) != len(hashes):
            raise ValueError("two tokens have the same hash")
        return self


class ForecastConfig(_Strict):
    """Where the carbon-intensity (and optionally price) forecast comes from."""

    source: Literal["simulated", "file", "carbon_aware_sdk"] = "simulated"
    path: Path | None = None
    """``file``: a CSV (``time,carbon_g_per_kwh[,price_per_mwh][,renewable_mw]``) or JSON file."""
    url: str | None = None
    """``carbon_aware_sdk``: base URL of a Green Software Foundation Carbon Aware SDK WebAPI."""
    location: str = "pswd-demo"
    refresh_s: Annotated[float, Field(ge=1, le=86_400)] = 300.0
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    max_age_s: Annotated[float, Field(ge=1, le=7 * 86_400)] | None = None
    """A forecast not replaced for this long is stale: placement falls back to a flat forecast
    (the earliest start) until a refresh succeeds. Default: four refresh periods, at least an
    hour."""

    @property
    def stale_after_s(self) -> float:
        return self.max_age_s if self.max_age_s is not None else max(4 * self.refresh_s, 3600.0)

    @model_validator(mode="after")
    def _needs(self) -> ForecastConfig:
        if self.source == "file" and self.path is None:
            raise ValueError("source 'file' needs path")
        if self.source == "carbon_aware_sdk" and not self.url:
            raise ValueError("source 'carbon_aware_sdk' needs url")
        return self


class DemandResponseWindow(_Strict):
    """A period in which the grid operator asked for a lower import limit."""

    start: AwareDatetime
    end: AwareDatetime
    import_limit_mw: Annotated[float, Field(ge=0, le=10_000)]

    @model_validator(mode="after")
    def _ordered(self) -> DemandResponseWindow:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class SchedulingConfig(_Strict):
    """Carbon-aware placement of announced workloads and the site's planning figures."""

    slot_minutes: Annotated[int, Field(ge=1, le=60)] = 5
    horizon_h: Annotated[int, Field(ge=1, le=168)] = 48
    base_load_mw: Annotated[float, Field(ge=0, le=10_000)] = 30.0
    """Site load that is not an announced workload (idle IT, cooling, auxiliaries)."""
    cooling_capacity_mw: Annotated[float, Field(gt=0, le=10_000)] = 400.0
    """Heat the chilled-water plant can reject (≈ IT power it can carry)."""
    bess_power_mw: Annotated[float, Field(ge=0, le=10_000)] = 250.0
    bess_usable_energy_mwh: Annotated[float, Field(ge=0, le=100_000)] = 96.0
    chw_supply_setpoint_c: Annotated[float, Field(ge=5, le=30)] = 18.0
    """The design chilled-water supply setpoint pre-cooling plans from: ``control``'s (one fact;
    set it there)."""
    precool_max_k: Annotated[float, Field(ge=0, le=5)] = 1.0
    """Largest pre-cooling offset, for a workload as large as the cooling capacity."""
    precool_lead_s: Annotated[float, Field(ge=0, le=7200)] = 300.0
    heat_recovery_max_fraction: Annotated[float, Field(ge=0, le=1)] = 0.6
    heat_demand_mw: Annotated[float, Field(ge=0, le=10_000)] = 40.0
    price_weight_kg_per_currency: Annotated[float, Field(ge=0)] = 0.0
    """Objective = kg CO2e + this x energy cost (0: carbon only)."""
    prepare_lead_s: Annotated[float, Field(ge=0, le=86_400)] = 900.0
    """How long before its start a workload moves to ``preparing``."""
    ready_lead_s: Annotated[float, Field(ge=0, le=3600)] = 60.0
    """How long before its start a prepared workload is ``ready``."""
    replan_interval_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    """Global re-optimisation at most this often, when something changed."""
    solver_time_limit_s: Annotated[float, Field(gt=0, le=600)] = 2.0
    forecast: ForecastConfig = ForecastConfig()
    demand_response: tuple[DemandResponseWindow, ...] = ()

    @model_validator(mode="after")
    def _leads(self) -> SchedulingConfig:
        if self.ready_lead_s > self.prepare_lead_s:
            raise ValueError("ready_lead_s must not exceed prepare_lead_s")
        return self


class GuardConfig(_Strict):
    """``[control.guard]``: what the grid loop must never do (see docs/control.md#guard)."""

    enabled: bool = True
    window_s: Annotated[float, Field(gt=0.1, le=60.0)] = 2.0
    max_flips_per_s: Annotated[float, Field(gt=0.0, le=100.0)] = 6.0
    """Battery setpoint sign reversals a second (the 2 Hz training rhythm makes 4)."""
    flip_deadband_mw: Annotated[float, Field(ge=0.0, le=10_000.0)] = 5.0
    off_plan_band_mw: Annotated[float, Field(gt=0.0, le=10_000.0)] = 30.0
    """Largest mean of (grid - plan) over ``off_plan_window_s``, either way."""
    off_plan_window_s: Annotated[float, Field(gt=0.1, le=600.0)] = 10.0
    import_margin_mw: Annotated[float, Field(ge=0.0, le=10_000.0)] = 2.0
    """The grid's 1 s mean may be this far over the import limit while the battery charges
    before the guard trips (the battery flattening the grid at the limit)."""
    import_hold_s: Annotated[float, Field(ge=0.0, le=600.0)] = 3.0
    """...at every check for this long (a rise's leak keeps the 1 s means over for up to a
    second each rhythm period)."""
    rough_window_s: Annotated[float, Field(gt=0.1, le=600.0)] = 4.0
    """The grid may not be rougher than the load behind it over this window."""
    rough_margin_mw: Annotated[float, Field(ge=0.0, le=10_000.0)] = 5.0
    rearm_s: Annotated[float, Field(gt=0.0, le=86_400.0)] = 60.0
    rearm_max_s: Annotated[float, Field(gt=0.0, le=86_400.0)] = 900.0
    hold_s: Annotated[float, Field(ge=0.0, le=600.0)] = 2.0
    """Safe mode holds the battery's last good setpoint this long, then ramps it to zero."""

    @model_validator(mode="after")
    def _rearm(self) -> GuardConfig:
        if self.rearm_max_s < self.rearm_s:
            raise ValueError("rearm_max_s must not be below rearm_s")
        return self


class FfrConfig(_Strict):
    """``[control.ffr]``: fast frequency response, a droop on the grid meter's frequency that
    shifts the grid loop's target (see docs/control.md#fast-frequency-response)."""

    enabled: bool = False
    """Off by default: a site answers the frequency only once the operator contracted it."""
    deadband_hz: Annotated[float, Field(ge=0.0, le=0.5)] = 0.015
    """No response within this of nominal (GB Dynamic Containment's ±15 mHz)."""
    droop_pct: Annotated[float, Field(gt=0.0, le=20.0)] = 1.0
    """Frequency change beyond the deadband, in % of nominal, that moves the response by
    ``p_ref_mw`` (1 %: 0.5 Hz at 50 Hz, Dynamic Containment's full delivery)."""
    p_ref_mw: Annotated[float, Field(gt=0.0, le=10_000.0)] | None = None
    """The power the droop is a fraction of; default: the battery's rating."""
    max_mw: Annotated[float, Field(gt=0.0, le=10_000.0)] | None = None
    """The response never exceeds this, either way; default: ``p_ref_mw``."""
    ramp_mw_per_s: Annotated[float, Field(gt=0.0, le=100_000.0)] | None = None
    """The response in force changes no faster than this; default: ``max_mw`` per second (the
    full response within 1 s)."""
    max_frequency_age_ms: Annotated[float, Field(ge=10.0, le=10_000.0)] = 500.0
    """A frequency measured longer ago than this is not answered: the response ramps to zero."""

    @model_validator(mode="after")
    def _consistent(self) -> FfrConfig:
        if self.max_mw is not None and self.p_ref_mw is not None and self.max_mw > self.p_ref_mw:
            raise ValueError(
                f"max_mw ({self.max_mw}) must not exceed p_ref_mw ({self.p_ref_mw}): the "
                "response is a share of p_ref_mw"
            )
        return self


class ControlConfig(_Strict):
    """``[control]``: the control cycle and its controllers (see docs/control.md)."""

    enabled: bool = False
    """Write setpoints to devices. Off by default: a gateway only observes until told to act."""
    cycle_ms: Annotated[int, Field(ge=20, le=1000)] = 100
    """The cycle also runs at once whenever the grid meter delivers a fresh reading."""
    predictive: bool = True
    """Use announcements (feed-forward); ``false`` runs the reactive limiter alone."""
    ramp_margin: Annotated[float, Field(gt=0.1, le=1.0)] = 0.8
    band_low_hz: Annotated[float, Field(gt=0.0, le=10.0)] = 0.1
    band_high_hz: Annotated[float, Field(gt=0.0, le=25.0)] = 2.0
    """The oscillation band to attenuate; the limiter's filter is set by ``band_low_hz``."""
    soc_min: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    soc_max: Annotated[float, Field(ge=0.0, le=1.0)] = 0.9
    soc_target: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    soc_restore_s: Annotated[float, Field(gt=0.0, le=86_400.0)] = 120.0
    bess_power_mw: Annotated[float, Field(gt=0.0, le=10_000.0)] | None = None
    """Inverter rating; default: the BESS's own 702 WMaxRtg reading."""
    bess_energy_mwh: Annotated[float, Field(gt=0.0, le=100_000.0)] | None = None
    """Nameplate energy; default: the BESS's own 802 energy rating reading."""
    write_timeout_ms: Annotated[int, Field(ge=5, le=5_000)] = 50
    chw_supply_setpoint_c: Annotated[float, Field(ge=5.0, le=30.0)] = 18.0
    """Chilled-water supply temperature the thermal controller holds."""
    chw_setpoint_range_c: tuple[float, float] = (10.0, 25.0)
    """What the chiller plant accepts (the thermal-plant register map: 10 to 25 °C)."""
    heat_supply_setpoint_c: Annotated[float, Field(ge=70.0, le=90.0)] = 80.0
    """Municipal heat network supply temperature the heat-recovery heat pump holds."""
    announce_lead_s: Annotated[float, Field(ge=0.0, le=86_400.0)] = 900.0
    """How far ahead an announced job starts to move the battery's SoC target."""
    payback_s: Annotated[float, Field(ge=0.0, le=60.0)] = 0.5
    """Time constant of the pay-back of what the grid drew beyond its plan (0: off)."""
    payback_max_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    """The pay-back never asks for more than this fraction of the inverter rating."""
    import_hold_margin_mw: Annotated[float, Field(ge=0.0, le=100.0)] = 1.0
    """Where the import limit binds, the plan holds the grid this far under it: what a load
    step leaks in one loop delay lands under the limit, not over it (docs/control.md)."""
    battery_skew_ms: Annotated[float, Field(ge=0.0, le=5_000.0)] = 5.0
    """How far past its newest reading the battery's power may be held to meet a meter
    measurement; a meter reading further ahead waits for the battery's next reading."""
    actuation_ms: Annotated[float, Field(ge=0.0, le=10_000.0)] = 30.0
    """From a meter reading's arrival to the battery acting on the setpoint decided from it
    (the write, the PCS's dead time and response): an announced edge goes on the battery that
    much ahead of the measurement that will show it."""
    rhythm_tolerance_ms: Annotated[float, Field(ge=0.0, le=1_000.0)] = 20.0
    """A job's training rhythm is learnt from the load and its edges put on the battery ahead
    while they come this close to where predicted (0: never; see docs/control.md)."""
    battery_hold_ms: Annotated[float, Field(ge=0.0, le=5_000.0)] = 300.0
    """A battery settled on its last command, and told nothing new since, is held at its newest
    reading for this long while its readings are late, instead of waiting for them."""
    meter_stale_ms: Annotated[float, Field(ge=50.0, le=60_000.0)] = 500.0
    """No new meter measurement for this long: the battery ramps to zero."""
    guard: GuardConfig = GuardConfig()
    ffr: FfrConfig = FfrConfig()

    @model_validator(mode="after")
    def _consistent(self) -> ControlConfig:
        if not self.soc_min < self.soc_target < self.soc_max:
            raise ValueError("need soc_min < soc_target < soc_max")
        if not self.band_low_hz < self.band_high_hz:
            raise ValueError("band_low_hz must be below band_high_hz")
        lo, hi = self.chw_setpoint_range_c
        if not lo <= self.chw_supply_setpoint_c <= hi:
            raise ValueError("chw_supply_setpoint_c must lie within chw_setpoint_range_c")
        rated, ffr = self.bess_power_mw, self.ffr
        name, most = ("ffr.max_mw", ffr.max_mw) if ffr.max_mw else ("ffr.p_ref_mw", ffr.p_ref_mw)
        if rated is not None and most is not None and most > rated:
            raise ValueError(
                f"{name} ({most}) exceeds bess_power_mw ({rated}): the battery cannot deliver "
                f"that response; lower {name}"
            )
        return self


class StorageConfig(_Strict):
    state_dir: Path = Path("var")
    """Relative paths are taken from the working directory."""
    journal_synchronous: Literal["full", "normal"] = "full"
    """SQLite ``synchronous`` in WAL mode: ``full`` survives power loss, ``normal`` a crash."""
    setpoint_full_days: Annotated[float, Field(gt=0.0, le=3650.0)] = 2.0
    """Setpoint writes are kept whole this long, then the last of each device, point and minute
    (and every failed one)."""
    setpoint_days: Annotated[float, Field(gt=0.0, le=3650.0)] = 30.0
    """Setpoint writes are deleted after this long."""
    workload_days: Annotated[float, Field(gt=0.0, le=36_500.0)] = 365.0
    """Finished workloads, their transitions and events, and the site's own events are deleted
    this long after they ended. The audit chain is never pruned."""
    prune_every_s: Annotated[float, Field(ge=10.0, le=86_400.0)] = 600.0
    """How often the retention runs (and once at start)."""

    @model_validator(mode="after")
    def _retention(self) -> StorageConfig:
        if self.setpoint_full_days > self.setpoint_days:
            raise ValueError("setpoint_full_days must not exceed setpoint_days")
        return self

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "pswd.db"


class LoggingConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class DaemonConfig(_Strict):
    watchdog_grace_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    """A loop silent for longer than this is unhealthy: the systemd watchdog is not fed."""
    shutdown_timeout_s: Annotated[float, Field(gt=0, le=30)] = 4.0


class HeatConfig(_Strict):
    """``[heat]``: the municipal heat offer (docs/grid.md, "Municipal heat").

    A heat pump lifts the data centre's warm water (``source_temp_c``) to the network's supply
    temperature; its COP is ``carnot_efficiency`` times the Carnot COP of that lift."""

    supply_temp_c: Annotated[float, Field(ge=70.0, le=90.0)] = 75.0
    """The supply temperature the heat network asks, when a request names none."""
    source_temp_c: Annotated[float, Field(ge=20.0, le=50.0)] = 35.0
    """Water temperature at the heat pump's evaporator: the data centre's warm return."""
    recovery_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.6
    """Share of the planned site load that reaches the heat pump's evaporator as heat."""
    carnot_efficiency: Annotated[float, Field(ge=0.3, le=0.7)] = 0.5
    """The heat pump's COP as a fraction of the Carnot COP ``T_supply / (T_supply - T_source)``."""
    heat_pump_power_mw: Annotated[float, Field(ge=0.0, le=10_000.0)] = 12.0
    """Electrical rating of the heat pump's compressors."""
    capacity_mw: Annotated[float, Field(ge=0.0, le=10_000.0)] = 40.0
    """Largest heat the recovery plant delivers to the network (condensers, connection)."""
    displaced_kg_per_mwh: Annotated[float, Field(ge=0.0, le=2_000.0)] = 220.0
    """CO2e (kg) of each MWh of heat the network would make itself were it not the site's: a
    gas boiler's by default (natural gas 202 kg CO2 per MWh of fuel, IPCC 2006 default, at 92 %
    efficiency). While a heat request is open, placement credits a flexible workload with this
    for the heat its load lets the site deliver against the request (docs/grid.md, "Heat
    requests"); 0 places workloads by the grid's carbon alone."""


OpenAdr3Name = Annotated[str, Field(min_length=1, max_length=128)]
"""A name in OpenADR 3 (``venName``, ``programName``): 1-128 characters."""


def _openadr3_url(url: str, what: str) -> str:
    """``url`` as given (no trailing slash): https://, or http:// only to this machine."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{what} must start with https:// (or http:// to this machine)")
    host = urlsplit(url).hostname or ""
    if url.startswith("http://") and not is_loopback(host):
        raise ValueError(
            f"{what} {url} is plain HTTP to {host or 'another machine'}: tokens and events would "
            "cross the network in clear text; use https:// (with ca_file for a private CA), or "
            "http:// only to 127.0.0.1 / localhost"
        )
    return url.rstrip("/")


class OpenAdr3Config(_Strict):
    """``[openadr3]``: the OpenADR 3 VEN (docs/grid.md, "OpenADR 3").

    The VEN reads the VTN's programs and events (a webhook subscription, and polling as the
    fallback), turns each event into grid signals of source ``openadr3`` issued by
    ``vtn:<vtn_name>``, and reports the measured and the planned grid import back."""

    enabled: bool = False
    vtn_url: str = ""
    """Base URL of the VTN's API (``https://vtn.example/openadr3/3.1.0``): ``/programs``,
    ``/events`` … are below it. Plain ``http://`` only to a VTN on this machine."""
    vtn_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")] = "vtn"
    """The VTN's name in the journal: its events are accepted and audited as ``vtn:<name>``."""
    ven_name: OpenAdr3Name = "pswd-gateway"
    """This VEN's ``venName`` at the VTN (looked up, or registered when the VTN has none)."""
    program_names: tuple[OpenAdr3Name, ...] = ()
    """The programs (``programName``) whose events the site follows."""
    client_id: Annotated[str, Field(max_length=4096)] = ""
    """OAuth2 client credentials the VTN's operator issued to this VEN."""
    client_secret: SecretStr = SecretStr("")
    client_secret_file: Path | None = None
    """The client secret from a file instead (read at start; one trailing newline removed)."""
    token_url: str | None = None
    """The token endpoint; absent: the VTN's ``GET /auth/server`` names it (else
    ``<vtn_url>/auth/token``)."""
    ca_file: Path | None = None
    """PEM file of the CA that signed the VTN's certificate (absent: the system's CAs)."""
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    """Every request to the VTN, and the reading of a notification's body, ends within this."""
    webhook: bool = True
    """Subscribe to the program's events with a callback (signal to action well under 1 s);
    polling runs in any case, as the fallback."""
    callback_host: str = "127.0.0.1"
    """The address the callback listener binds: loopback, unless ``callback_tls_cert`` is set."""
    callback_port: Annotated[int, Field(ge=0, le=65535)] = 0
    """0: a free port, which the subscription's ``callbackUrl`` then names."""
    callback_url: str | None = None
    """The URL the VTN is given; absent: ``http(s)://<callback_host>:<port>/openadr3/notify``
    (needed when the listener binds an address the VTN does not reach it by)."""
    callback_tls_cert: Path | None = None
    callback_tls_key: Path | None = None
    max_notification_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 262_144
    """A notification with a larger body is refused (413) before it is read."""
    poll_interval_s: Annotated[float, Field(ge=0.1, le=3600)] = 2.0
    """``GET /events`` of each program this often (the fallback when a notification is lost)."""
    report_interval_s: Annotated[float, Field(ge=0.1, le=86_400)] = 60.0
    """While an event is in force, its usage and forecast reports are sent this often."""
    simple_shed_mw: tuple[
        Annotated[float, Field(gt=0, le=10_000)],
        Annotated[float, Field(gt=0, le=10_000)],
        Annotated[float, Field(gt=0, le=10_000)],
    ] = (20.0, 50.0, 100.0)
    """The shed (MW below the planned import) a ``SIMPLE`` event asks at levels 1, 2 and 3
    (moderate, high, emergency); level 0 is normal operation."""

    @field_validator("vtn_url")
    @classmethod
    def _vtn_url(cls, url: str) -> str:
        return _openadr3_url(url, "vtn_url") if url else url

    @field_validator("token_url", "callback_url")
    @classmethod
    def _urls(cls, url: str | None) -> str | None:
        return None if url is None else _openadr3_url(url, "the URL")

    @model_validator(mode="after")
    def _complete(self) -> OpenAdr3Config:
        if self.client_secret_file is not None and self.client_secret.get_secret_value():
            raise ValueError("client_secret and client_secret_file exclude each other: give one")
        if (self.callback_tls_cert is None) != (self.callback_tls_key is None):
            raise ValueError("callback_tls_cert and callback_tls_key go together: both or none")
        if self.ca_file is not None and not self.vtn_url.startswith("https://"):
            raise ValueError("ca_file verifies the VTN's certificate: it needs an https:// vtn_url")
        if list(self.simple_shed_mw) != sorted(self.simple_shed_mw):
            raise ValueError("simple_shed_mw: a higher SIMPLE level must not shed less")
        if self.webhook and not is_loopback(self.callback_host):
            if self.callback_tls_cert is None:
                raise ValueError(
                    f"the callback listener on {self.callback_host} would take the VTN's events "
                    "in clear text from other machines: set callback_tls_cert and "
                    "callback_tls_key, or bind 127.0.0.1"
                )
            if self.callback_url is None:
                raise ValueError(
                    f"callback_host {self.callback_host} is not a URL the VTN can reach: set "
                    "callback_url (https://<name the certificate carries>:<port>/openadr3/notify)"
                )
        if not self.enabled:
            return self
        missing = [
            what
            for what, given in (
                ("vtn_url", bool(self.vtn_url)),
                ("program_names", bool(self.program_names)),
                ("client_id", bool(self.client_id)),
                (
                    "client_secret or client_secret_file",
                    self.client_secret_file is not None
                    or bool(self.client_secret.get_secret_value()),
                ),
            )
            if not given
        ]
        if missing:
            raise ValueError(f"an enabled VEN needs {', '.join(missing)}")
        return self


OPENADR_FINGERPRINT_PATTERN = r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){9}$"
"""An OpenADR 2.0b certificate fingerprint: the last 10 bytes of its SHA-256, colon-separated."""


class OpenAdr2bConfig(_Strict):
    """``[openadr2b]``: the OpenADR 2.0b VEN (docs/grid.md, "OpenADR 2.0b").

    The VEN polls the utility's VTN, turns each event into grid signals of source
    ``openadr2b`` issued by ``vtn:<vtn_name>`` (journalled and audited before the VTN hears the
    opt-in), and reports the measured and the planned grid import back."""

    enabled: bool = False
    vtn_url: str | None = None
    """The VTN's OpenADR 2.0b base URL (``https://vtn.example/OpenADR2/Simple/2.0b``), needed
    when enabled. Plain ``http://`` only to a VTN on this machine."""
    vtn_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")] = "utility"
    """The VTN's name in the journal: its events are accepted and audited as ``vtn:<name>``."""
    ven_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@:-]{1,64}$")] = "pswd-site"
    """This VEN's name at the VTN (``oadrCreatePartyRegistration``)."""
    ven_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@:-]{1,128}$")] | None = None
    """The venID the utility issued ahead of registration, if it did (else the VTN assigns one
    when the VEN registers)."""
    poll_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    """``oadrPoll`` this often: it bounds the time from an event issued to its signal in force.
    It is used instead of the poll frequency the VTN asks for at registration."""
    request_timeout_s: Annotated[float, Field(gt=0, le=60)] = 10.0
    """Every request to the VTN ends within this."""
    opt: Literal["in", "out", "feasible"] = "feasible"
    """``in``: every valid event is put in force and opted in. ``out``: every event is opted out
    and nothing is put in force (reports still flow). ``feasible``: an event is opted out when
    the import it asks for is below what the site can reach in some slot of its window (the
    planned import minus the battery's spare power)."""
    simple_shed_mw: tuple[
        Annotated[float, Field(gt=0, le=10_000)],
        Annotated[float, Field(gt=0, le=10_000)],
        Annotated[float, Field(gt=0, le=10_000)],
    ] = (20.0, 50.0, 100.0)
    """The shed (MW below the planned import) of ``SIMPLE`` levels 1, 2 and 3 (moderate, high,
    special), and of a ``LOAD_CONTROL`` level offset of 1-3; level 0 is normal operation."""
    telemetry_period_s: Annotated[float, Field(ge=1, le=3600)] = 10.0
    """The shortest sampling period offered for the delivered-load report (the VTN picks one
    from this to an hour)."""
    forecast_period_s: Annotated[float, Field(ge=1, le=86_400)] = 300.0
    """The shortest period offered for the planned-import (forecast) report."""
    forecast_horizon_h: Annotated[float, Field(gt=0, le=48)] = 24.0
    """Each forecast report carries the plan's slots this far ahead."""
    connection_voltage_v: Annotated[int, Field(gt=0, le=1_000_000)] = 110_000
    """The grid connection's nominal voltage (the reports' power attributes)."""
    cert: Path | None = None
    """PEM certificate of this VEN: its TLS client certificate, and the one its messages are
    signed with (XML signature). With ``key``; needs an https:// ``vtn_url``."""
    key: Path | None = None
    ca_file: Path | None = None
    """PEM file of the CA that signed the VTN's TLS certificate (absent: the system's CAs)."""
    vtn_fingerprint: Annotated[str, Field(pattern=OPENADR_FINGERPRINT_PATTERN)] | None = None
    """The OpenADR fingerprint of the VTN's signing certificate (``AB:CD:…``, ten bytes, as
    ``python -m openleadr.fingerprint CERT`` prints it): a message not signed with that
    certificate is ignored."""

    @field_validator("vtn_url")
    @classmethod
    def _vtn_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("must be an https:// URL (or http:// to this machine) with a host")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must not carry a query, a fragment or credentials")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise ValueError(
                f"plain HTTP to {parts.hostname} would carry the utility's events and the "
                "site's reports in clear text; use https:// (with ca_file, cert and key), or "
                "http:// only to a VTN on 127.0.0.1 / localhost"
            )
        return url.rstrip("/")

    @field_validator("vtn_fingerprint")
    @classmethod
    def _upper(cls, fingerprint: str | None) -> str | None:
        return None if fingerprint is None else fingerprint.upper()

    @model_validator(mode="after")
    def _complete(self) -> OpenAdr2bConfig:
        if self.enabled and self.vtn_url is None:
            raise ValueError("an enabled VEN needs vtn_url")
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together: both or none")
        https = self.vtn_url is not None and self.vtn_url.startswith("https://")
        if (self.cert is not None or self.ca_file is not None) and not https:
            raise ValueError("cert, key and ca_file are for TLS: they need an https:// vtn_url")
        if list(self.simple_shed_mw) != sorted(self.simple_shed_mw):
            raise ValueError("simple_shed_mw: a higher SIMPLE level must not shed less")
        return self


def _demo_passwords(
    path: str, users: Sequence[_PasswordUser], demo_names: Collection[str]
) -> str | None:
    """Which of ``users`` still have the demo's published password (``pswd-demo-<name>``)."""
    demo = [
        u.name
        for u in users
        if u.name in demo_names and verify_password(f"pswd-demo-{u.name}", u.password_hash)
    ]
    return f"{path} {', '.join(demo)} have the published demo passwords" if demo else None


class GatewayConfig(BaseSettings):
    """The root of the configuration file."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        env_prefix="PSWD__",
        env_nested_delimiter="__",
        case_sensitive=False,
    )

    site: SiteConfig = SiteConfig()
    devices: tuple[DeviceConfig, ...] = ()
    listeners: ListenersConfig = ListenersConfig()
    api: ApiConfig = ApiConfig()
    scheduling: SchedulingConfig = SchedulingConfig()
    control: ControlConfig = ControlConfig()
    opcua: OpcUaConfig = OpcUaConfig()
    iec61850: Iec61850Config = Iec61850Config()
    zones: dict[ZoneName, ZoneConfig] = Field(default_factory=dict)
    conduits: tuple[ConduitConfig, ...] = ()
    storage: StorageConfig = StorageConfig()
    logging: LoggingConfig = LoggingConfig()
    daemon: DaemonConfig = DaemonConfig()
    heat: HeatConfig = HeatConfig()
    openadr3: OpenAdr3Config = OpenAdr3Config()
    """The OpenADR 3 VEN (off by default)."""
    openadr2b: OpenAdr2bConfig = OpenAdr2bConfig()
    """The OpenADR 2.0b VEN (off by default)."""
    simulation: dict[str, Any] = Field(default_factory=dict)
    """Settings of the site's digital twin (``pswd-gateway simulate``), validated by it."""

    config_dir: Path = Field(default=Path(), exclude=True)
    """Directory of the file this was loaded from (register maps are looked up beside it)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        del settings_cls, dotenv_settings, file_secret_settings
        return env_settings, init_settings

    @model_validator(mode="before")
    @classmethod
    def _one_chilled_water_setpoint(cls, data: Any) -> Any:
        """The design chilled-water supply setpoint is one fact: ``[control]`` holds it and
        the scheduler's pre-cooling plans from the same value (``[scheduling]`` may repeat it,
        but only with the same value)."""
        if not isinstance(data, dict):
            return data
        control = data.get("control")
        scheduling = data.get("scheduling")
        key = "chw_supply_setpoint_c"
        if isinstance(control, dict) and key in control:
            if isinstance(scheduling, dict) and key in scheduling:
                if scheduling[key] != control[key]:
                    msg = (
                        f"scheduling.{key} ({scheduling[key]}) differs from control.{key} "
                        f"({control[key]}): set it once, in [control]"
                    )
                    raise ValueError(msg)
            elif isinstance(scheduling, dict) or scheduling is None:
                data = {**data, "scheduling": {**(scheduling or {}), key: control[key]}}
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> GatewayConfig:
        names = [d.name for d in self.devices]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"device names must be unique; repeated: {', '.join(dupes)}")
        demo = [t.name for t in self.api.tokens if t.sha256 in DEMO_TOKEN_SHA256]
        api = self.listeners.api
        if demo and api.enabled and not is_loopback(api.host):
            raise ValueError(
                f"api.tokens {', '.join(demo)} are the published demo tokens and listeners.api "
                f"binds {api.host}: demo credentials are for loopback only; "
                "create your own with `pswd-gateway token new`"
            )
        opc = self.listeners.opcua
        if opc.enabled and not is_loopback(opc.host):
            if self.opcua.allow_none:
                raise ValueError(
                    f"opcua.allow_none offers an unsecured endpoint and listeners.opcua binds "
                    f"{opc.host}: SecurityPolicy None is for loopback only"
                )
            published = [
                u.name
                for u in self.opcua.users
                if u.name in DEMO_OPCUA_USERS
                and verify_password(f"pswd-demo-{u.name}", u.password_hash)
            ]
            if published:
                raise ValueError(
                    f"opcua.users {', '.join(published)} have the published demo passwords and "
                    f"listeners.opcua binds {opc.host}: demo credentials are for loopback only; "
                    "set your own with `pswd-gateway opcua password`"
                )
        problems = self.policy_problems()
        if problems:
            raise ConfigProblemsError(problems)
        return self

    # ---- zones and conduits (docs/security.md) ----

    def _listener(self, name: Listener) -> ListenerConfig:
        listener: ListenerConfig = getattr(self.listeners, name)
        return listener

    def _plaintext(self, name: Listener) -> str | None:
        """Why ``name`` carries clear text, or None when it is encrypted."""
        listener = self._listener(name)
        if isinstance(listener, MmsListenerConfig) and listener.tls_cert is None:
            return "MMS is served without TLS (set tls_cert, tls_key and tls_client_ca)"
        if isinstance(listener, TlsListenerConfig) and listener.tls_cert is None:
            return f"listeners.{name} has no TLS (set tls_cert and tls_key)"
        return None

    def _anonymous(self, name: Listener) -> str | None:
        if name == "iec61850" and self.iec61850.anonymous_read:
            return "iec61850.anonymous_read lets an association without a password read"
        if name == "opcua" and self.opcua.allow_none:
            return "opcua.allow_none offers an unsecured endpoint"
        return None

    def _demo_credentials(self, name: Listener) -> str | None:
        if name == "api":
            demo = [t.name for t in self.api.tokens if t.sha256 in DEMO_TOKEN_SHA256]
            if demo:
                return f"api.tokens {', '.join(demo)} are the published demo tokens"
        if name == "opcua":
            return _demo_passwords("opcua.users", self.opcua.users, DEMO_OPCUA_USERS)
        if name == "iec61850":
            return _demo_passwords("iec61850.users", self.iec61850.users, DEMO_IEC61850_USERS)
        return None

    def policy_problems(self) -> list[tuple[str, str]]:
        """Every conduit that breaks a rule of docs/security.md, with its TOML path."""
        problems: list[tuple[str, str]] = []
        names = [c.name for c in self.conduits]
        for i, conduit in enumerate(self.conduits):
            at = f"conduits[{i}]"
            if names.count(conduit.name) > 1 and names.index(conduit.name) != i:
                problems.append((f"{at}.name", f"conduit {conduit.name!r} is named twice"))
            zone = self.zones.get(conduit.zone)
            if zone is None:
                known = ", ".join(sorted(self.zones)) or "none defined"
                problems.append((f"{at}.zone", f"no zone named {conduit.zone!r} (zones: {known})"))
                continue
            problems.extend(self._conduit_problems(at, conduit, zone))
        enabled = [n for n in LISTENERS if self._listener(n).enabled]
        for name in enabled:
            listener = self._listener(name)
            if not self.conduits and not is_loopback(listener.host):
                problems.append(
                    (
                        f"listeners.{name}.host",
                        (
                            f"binds {listener.host} but no [[conduits]] say who may reach it: "
                            "declare the zones and conduits (docs/security.md) or bind 127.0.0.1"
                        ),
                    )
                )
            elif self.conduits and not any(c.listener == name for c in self.conduits):
                problems.append(
                    (
                        f"listeners.{name}",
                        (
                            "no conduit reaches this listener: add a [[conduits]] entry with "
                            f'listener = "{name}" or set enabled = false'
                        ),
                    )
                )
        return problems

    def _conduit_problems(
        self, at: str, conduit: ConduitConfig, zone: ZoneConfig
    ) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        name = conduit.listener
        if name == "metrics" and conduit.access != "read":
            problems.append((f"{at}.access", 'the metrics listener is read-only: access = "read"'))
        if conduit.access in {"operate", "configure"} and zone.kind not in PLANT_ZONES:
            problems.append(
                (
                    f"{at}.access",
                    (
                        f"zone {conduit.zone!r} is {zone.kind}, outside the plant: only control "
                        f"and scada zones may {conduit.access} (grid limits, battery, "
                        'controls); give it access = "announce" or "read"'
                    ),
                )
            )
        remote = [str(n) for n in zone.networks if not n.is_loopback]
        if not remote:
            return problems
        where = f"zone {conduit.zone!r} reaches listeners.{name} from {', '.join(remote)}"
        for why, fix in (
            (self._plaintext(name), "off loopback every conduit must be encrypted"),
            (self._anonymous(name), "anonymous access is for loopback only"),
            (
                self._demo_credentials(name),
                "demo credentials are for loopback only; create your own",
            ),
        ):
            if why is not None:
                problems.append((at, f"{where}, but {why}: {fix}"))
        host = self._listener(name).host
        if is_loopback(host):
            problems.append(
                (
                    at,
                    (
                        f"{where}, but listeners.{name} binds {host}, which they cannot "
                        "reach: bind an address of this machine on that network"
                    ),
                )
            )
        return problems

    def connection_rates(self) -> dict[Listener, float]:
        """Each listener's ``max_new_connections_per_s`` (for the gatekeeper)."""
        return {n: self._listener(n).max_new_connections_per_s for n in LISTENERS}

    def policy(self) -> Policy:
        """The zones and conduits in force (without ``[[conduits]]``: loopback, every listener)."""
        if not self.conduits:
            local = Zone(LOCAL_ZONE, "control", LOOPBACK_NETWORKS, "this machine")
            conduits = tuple(
                Conduit(f"local-{n}", LOCAL_ZONE, n, "read" if n == "metrics" else "configure")
                for n in LISTENERS
            )
            return Policy({LOCAL_ZONE: local}, conduits)
        zones = {
            name: Zone(name, z.kind, z.networks, z.description) for name, z in self.zones.items()
        }
        conduits = tuple(
            Conduit(c.name, c.zone, c.listener, c.access) for c in self.conduits if c.zone in zones
        )
        return Policy(zones, conduits)

    def device(self, name: str) -> ModbusDeviceConfig | RedfishDeviceConfig:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(name)

    def register_map_path(self, ref: str) -> Path:
        """Resolve a ``register_map`` reference (a map name or a ``.toml`` path) to a file."""
        if ref.endswith(".toml"):
            path = Path(ref)
            candidates = [path if path.is_absolute() else self.config_dir / path]
        else:
            candidates = [
                self.config_dir / "devices" / f"{ref}.toml",
                DEVICE_MAPS_DIR / f"{ref}.toml",
            ]
        for candidate in candidates:
            try:
                if candidate.is_file():
                    return candidate
            except OSError:  # a name longer than the file system takes: no such map
                continue
        places = dict.fromkeys(str(c.parent.resolve()) for c in candidates)
        raise FileNotFoundError(f"register map {ref!r} not found in {' or '.join(places)}")


# pydantic error type -> message template (ctx keys substituted)
_MESSAGES = {
    "greater_than_equal": "must be ≥ {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be ≤ {le}",
    "less_than": "must be < {lt}",
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
    "string_pattern_mismatch": "must match {pattern}",
    "literal_error": "must be one of {expected}",
    "union_tag_invalid": "kind must be one of {expected_tags}, not {tag}",
    "union_tag_not_found": "missing key 'kind' (one of: modbus, redfish)",
}
_UNION_TAGS = {"modbus", "redfish"}


def _toml_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    parts = list(loc)
    for i, part in enumerate(parts):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i > 0 and isinstance(parts[i - 1], int) and part in _UNION_TAGS:
            continue  # the discriminated union's branch name is not part of the TOML path
        else:
            out += ("." if out else "") + part
    return out


class ConfigProblemsError(ValueError):
    """Problems found across the configuration, each with its own TOML path."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{path}: {message}" for path, message in problems))
        self.problems = problems


def format_validation_error(err: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """Turn a pydantic error into ``(toml.path, message)`` pairs."""
    problems: list[tuple[str, str]] = []
    for e in err.errors(include_url=False):
        located = e.get("ctx", {}).get("error")
        if isinstance(located, ConfigProblemsError):
            problems.extend((f"{prefix}.{p}" if prefix else p, m) for p, m in located.problems)
            continue
        template = _MESSAGES.get(e["type"])
        ctx = {k: _plain(v) for k, v in e.get("ctx", {}).items()}
        try:
            msg = template.format(**ctx) if template else None
        except KeyError:
            msg = None
        if msg is None:
            msg = str(e["msg"]).removeprefix("Value error, ")
            msg = msg[:1].lower() + msg[1:]
        path = _toml_path(tuple(e["loc"]))
        problems.append((f"{prefix}.{path}" if prefix and path else prefix or path, msg))
    return problems


def _plain(value: object) -> object:
    """1.0 → 1 so that messages read ``must be > 0``, not ``must be > 0.0``."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file, turning syntax errors into a :class:`ConfigError`: also a file that
    cannot be read, is not UTF-8 (TOML is) or nests deeper than the parser goes."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), [("", "file not found")]) from None
    except OSError as exc:  # a directory, no permission, a name too long
        raise ConfigError(str(path), [("", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        why = f"not UTF-8: byte 0x{data[exc.start]:02x} at line {line}"
        raise ConfigError(str(path), [("", why)]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [("", f"not valid TOML: {exc}")]) from None
    except RecursionError:
        why = f"not valid TOML: arrays or tables nested too deeply (line {_deepest_line(text)})"
        raise ConfigError(str(path), [("", why)]) from None


def _deepest_line(text: str) -> int:
    """The line where brackets and braces nest deepest (strings are not told apart: this only
    points at the place)."""
    depth = deepest = 0
    line = at = 1
    for char in text:
        if char == "\n":
            line += 1
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest, at = depth, line
        elif char in "]}":
            depth -= 1
    return at


def load_config(path: Path | None = None) -> GatewayConfig:
    """Load and validate a configuration file (default: the embedded demo config)."""
    path = path or DEFAULT_CONFIG
    data = read_toml(path)
    if "config_dir" in data:  # where the file was found, never what it says
        raise ConfigError(str(path), [("config_dir", "unknown key")])
    try:
        cfg = GatewayConfig(**data, config_dir=path.resolve().parent)
    except ValidationError as exc:
        raise ConfigError(str(path), format_validation_error(exc)) from None
    problems = [
        (f"devices[{i}].register_map", str(exc))
        for i, d in enumerate(cfg.devices)
        if isinstance(d, ModbusDeviceConfig)
        for exc in _missing_map(cfg, d.register_map)
    ]
    if problems:
        raise ConfigError(str(path), problems)
    return cfg


def _missing_map(cfg: GatewayConfig, ref: str) -> list[FileNotFoundError]:
    try:
        cfg.register_map_path(ref)
    except FileNotFoundError as exc:
        return [exc]
    return []

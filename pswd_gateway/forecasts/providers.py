"""Carbon-intensity (and price) forecasts behind one interface.

- ``simulated``: a deterministic curve for the demo and tests (evening peak, midday solar dip,
  seeded day-to-day variation);
- ``file``: a CSV (``time,carbon_g_per_kwh[,price_per_mwh][,renewable_mw]``) or JSON file;
- ``carbon_aware_sdk``: the Green Software Foundation Carbon Aware SDK WebAPI,
  ``GET /emissions/forecasts/current?location=…&dataStartAt=…&dataEndAt=…``.

Every provider answers a :class:`CarbonForecast` on its own slot grid; the scheduler resamples.
Every problem is a :class:`ForecastError` saying where (file and line, or URL) and what.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol

import httpx
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from pswd_gateway.config import ForecastConfig
from pswd_gateway.errors import ForecastError
from pswd_gateway.scheduling.model import CarbonForecast
from pswd_gateway.security.tls import default_client_context

__all__ = [
    "CarbonAwareSdkForecast",
    "FileForecast",
    "ForecastProvider",
    "SimulatedForecast",
    "build_forecast_provider",
    "parse_forecast_text",
    "simulated_intensity",
]


class ForecastProvider(Protocol):
    name: str

    async def fetch(self, start: datetime, horizon: timedelta) -> CarbonForecast: ...


# ---- simulated -------------------------------------------------------------------------------


def simulated_intensity(t: datetime, seed: int = 0) -> float:
    """g CO2e/kWh at ``t``: ~380 in the evening peak, ~90 at the solar noon, 50 to 450 overall."""
    t = t.astimezone(UTC)
    hour = t.hour + t.minute / 60 + t.second / 3600
    day = t.toordinal()
    rng = random.Random(f"{seed}:{day}")  # noqa: S311 - a reproducible curve, not secrecy
    wind = rng.uniform(-40.0, 40.0)
    evening = 90.0 * math.exp(-(((hour - 19.0) / 2.5) ** 2))
    solar = -140.0 * math.exp(-(((hour - 13.0) / 2.8) ** 2))
    night = -30.0 * math.exp(-(((hour - 3.0) / 3.0) ** 2))
    return max(50.0, min(450.0, 250.0 + evening + solar + night + wind))


class SimulatedForecast:
    """The default forecast: :func:`simulated_intensity` on ``slot_s`` slots."""

    def __init__(self, location: str = "pswd-demo", slot_s: int = 300, seed: int = 0) -> None:
        self.name = f"simulated:{location}"
        self.slot_s = slot_s
        self.seed = seed

    async def fetch(self, start: datetime, horizon: timedelta) -> CarbonForecast:
        first = start - timedelta(seconds=start.timestamp() % self.slot_s)
        n = math.ceil(horizon.total_seconds() / self.slot_s) + 1
        values = tuple(
            round(
                simulated_intensity(first + timedelta(seconds=(i + 0.5) * self.slot_s), self.seed),
                2,
            )
            for i in range(n)
        )
        return CarbonForecast(first, self.slot_s, values, None, self.name, start)


# ---- file ------------------------------------------------------------------------------------

MAX_SLOTS = 200_000
"""The most slots a forecast's grid may have (a year of 3-minute slots; 48 h of 1-second
ones): two points a second apart and one a century later would otherwise fill the memory."""


class _Point(BaseModel):
    model_config = ConfigDict(extra="forbid")

    time: AwareDatetime
    carbon_g_per_kwh: float = Field(ge=0.0, le=5000.0)
    price_per_mwh: float | None = Field(default=None, ge=-10_000.0, le=100_000.0)
    renewable_mw: float | None = Field(default=None, ge=0.0, le=100_000.0)


class _SdkPoint(BaseModel):
    model_config = ConfigDict(extra="ignore")

    location: str | None = None
    timestamp: AwareDatetime
    duration: float = Field(gt=0.0, description="minutes")
    value: float = Field(ge=0.0, le=5000.0)


class _SdkForecast(BaseModel):
    model_config = ConfigDict(extra="ignore")

    generatedAt: AwareDatetime | None = None  # noqa: N815 - the SDK's JSON names
    location: str | None = None
    forecastData: list[_SdkPoint] = Field(min_length=1)  # noqa: N815


def _from_points(
    times: list[datetime],
    carbon: list[float],
    price: list[float | None],
    source: str,
    renewable: list[float | None] | None = None,
) -> CarbonForecast:
    """Irregular points → a regular grid at the smallest spacing (each value holds until next)."""
    try:
        times = [t.astimezone(UTC) for t in times]
    except OverflowError:  # 9999-12-31T23:00-05:00 is in the year 10000 in UTC
        raise ForecastError(source, "times must lie between the years 1 and 9999 in UTC") from None
    green = renewable if renewable is not None and all(r is not None for r in renewable) else None
    if len(times) == 1:
        once = None if green is None else (float(green[0] or 0.0),)
        return CarbonForecast(times[0], 3600, (carbon[0],), None, source, times[0], once)
    steps = [(b - a).total_seconds() for a, b in pairwise(times)]
    slot_s = int(min(steps))
    if slot_s < 1:
        at = steps.index(min(steps)) + 1
        raise ForecastError(
            source, f"point {at}: times must be at least 1 s apart ({times[at].isoformat()})"
        )
    n = int((times[-1] - times[0]).total_seconds() // slot_s) + 1
    if n > MAX_SLOTS:
        raise ForecastError(
            source,
            f"from {times[0].isoformat()} to {times[-1].isoformat()} in steps of {slot_s} s is "
            f"{n} slots, more than {MAX_SLOTS}: give fewer points, or further apart",
        )
    values: list[float] = []
    prices: list[float] = []
    renewables: list[float] = []
    j = 0
    for i in range(n):
        t = times[0] + timedelta(seconds=i * slot_s)
        while j + 1 < len(times) and times[j + 1] <= t:
            j += 1
        values.append(carbon[j])
        p = price[j]
        prices.append(p if p is not None else math.nan)
        if green is not None:
            renewables.append(float(green[j] or 0.0))
    has_price = all(p is not None for p in price)
    return CarbonForecast(
        times[0],
        slot_s,
        tuple(values),
        tuple(prices) if has_price else None,
        source,
        times[0],
        tuple(renewables) if green is not None else None,
    )


def parse_forecast_text(text: str, source: str, *, kind: str) -> CarbonForecast:
    """Parse a forecast file's text (``kind`` ``csv`` or ``json``); errors name the line."""
    if kind == "csv":
        points = _csv_points(text, source)
    else:
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ForecastError(source, f"line {exc.lineno}: not JSON: {exc.msg}") from None
        except RecursionError:
            raise ForecastError(source, "not JSON this reader takes: nested too deeply") from None
        if (
            isinstance(data, list)
            and data
            and isinstance(data[0], dict)
            and "forecastData" in data[0]
        ):
            return _from_sdk(data, source)
        points = _json_points(data, source)
    if not points:
        raise ForecastError(source, "no forecast points")
    times = [p.time for p in points]
    for i, (a, b) in enumerate(pairwise(times)):
        if b <= a:
            where = f"line {i + 3}" if kind == "csv" else f"item {i + 1}"
            raise ForecastError(source, f"{where}: times must increase ({b.isoformat()})")
    renewable = [p.renewable_mw for p in points]
    if any(r is not None for r in renewable) and not all(r is not None for r in renewable):
        at = next(i for i, r in enumerate(renewable) if r is None)
        where = f"line {at + 2}" if kind == "csv" else f"item {at}"
        raise ForecastError(
            source, f"{where}: renewable_mw is given for some points: give it for all"
        )
    return _from_points(
        times,
        [p.carbon_g_per_kwh for p in points],
        [p.price_per_mwh for p in points],
        source,
        renewable,
    )


def _csv_points(text: str, source: str) -> list[_Point]:
    reader = csv.DictReader(io.StringIO(text))
    try:
        header = set(reader.fieldnames or ())
    except csv.Error as exc:
        raise ForecastError(source, f"line 1: not CSV: {exc}") from None
    if not {"time", "carbon_g_per_kwh"} <= header:
        raise ForecastError(source, "line 1: header must have time,carbon_g_per_kwh")
    points = []
    try:
        for row in reader:
            clean = {k: v for k, v in row.items() if k and v not in (None, "")}
            try:
                points.append(_Point.model_validate(clean))
            except ValidationError as exc:
                raise ForecastError(source, f"line {reader.line_num}: {_first(exc)}") from None
    except csv.Error as exc:  # a field of more than 128 KiB, a NUL byte
        raise ForecastError(source, f"line {reader.line_num + 1}: not CSV: {exc}") from None
    return points


def _json_points(data: Any, source: str) -> list[_Point]:
    if not isinstance(data, list):
        raise ForecastError(source, "JSON must be a list of {time, carbon_g_per_kwh} objects")
    points = []
    for i, item in enumerate(data):
        try:
            points.append(_Point.model_validate(item))
        except ValidationError as exc:
            raise ForecastError(source, f"item {i}: {_first(exc)}") from None
    return points


def _from_sdk(data: Any, source: str) -> CarbonForecast:
    try:
        forecasts = [_SdkForecast.model_validate(item) for item in data]
    except ValidationError as exc:
        raise ForecastError(source, f"not a Carbon Aware SDK forecast: {_first(exc)}") from None
    points = sorted(forecasts[0].forecastData, key=lambda p: p.timestamp)
    times = [p.timestamp for p in points]
    if len(set(times)) != len(times):
        raise ForecastError(source, "forecastData repeats a timestamp")
    forecast = _from_points(times, [p.value for p in points], [None] * len(points), source)
    generated = forecasts[0].generatedAt or times[0]
    return CarbonForecast(
        forecast.start, forecast.slot_s, forecast.carbon_g_per_kwh, None, source, generated
    )


def _first(exc: ValidationError) -> str:
    e = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in e["loc"])
    return f"{where}: {e['msg']}" if where else str(e["msg"])


class FileForecast:
    """A forecast file, re-read at every refresh (so it can be replaced while running)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"file:{path}"

    async def fetch(self, start: datetime, horizon: timedelta) -> CarbonForecast:
        del start, horizon
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise ForecastError(self.name, f"cannot read: {exc.strerror}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            why = f"line {line}: not UTF-8 (byte 0x{data[exc.start]:02x})"
            raise ForecastError(self.name, why) from None
        kind = "json" if self.path.suffix.lower() == ".json" else "csv"
        return parse_forecast_text(text, self.name, kind=kind)


# ---- Carbon Aware SDK ------------------------------------------------------------------------


class CarbonAwareSdkForecast:
    """``GET {url}/emissions/forecasts/current`` of a Carbon Aware SDK WebAPI."""

    def __init__(
        self,
        url: str,
        location: str,
        timeout_s: float = 5.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.location = location
        self.timeout_s = timeout_s
        self.name = f"carbon_aware_sdk:{self.url}?location={location}"
        self._client = client

    async def fetch(self, start: datetime, horizon: timedelta) -> CarbonForecast:
        params = {
            "location": self.location,
            "dataStartAt": start.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "dataEndAt": (start + horizon).astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }
        endpoint = f"{self.url}/emissions/forecasts/current"
        try:
            if self._client is not None:
                response = await self._client.get(endpoint, params=params, timeout=self.timeout_s)
            else:
                async with httpx.AsyncClient(
                    timeout=self.timeout_s, verify=default_client_context()
                ) as client:
                    response = await client.get(endpoint, params=params)
        except httpx.TimeoutException:
            raise ForecastError(self.name, f"no answer within {self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise ForecastError(self.name, f"request failed: {exc}") from None
        if response.status_code != 200:
            raise ForecastError(self.name, f"HTTP {response.status_code}: {response.text[:200]}")
        try:
            data = response.json()
        except (ValueError, RecursionError):  # RecursionError: nested deeper than json goes
            raise ForecastError(self.name, "the answer is not JSON") from None
        if not isinstance(data, list) or not data:
            raise ForecastError(self.name, "expected a non-empty JSON list of forecasts")
        return _from_sdk(data, self.name)


def build_forecast_provider(cfg: ForecastConfig, config_dir: Path, slot_s: int) -> ForecastProvider:
    if cfg.source == "file":
        assert cfg.path is not None  # checked by ForecastConfig
        path = cfg.path if cfg.path.is_absolute() else config_dir / cfg.path
        return FileForecast(path)
    if cfg.source == "carbon_aware_sdk":
        assert cfg.url is not None
        return CarbonAwareSdkForecast(cfg.url, cfg.location, cfg.timeout_s)
    return SimulatedForecast(cfg.location, slot_s)

"""Hostile configuration files and forecast payloads.

Configuration: the demo file (config/demo.toml) with values of the wrong type, numbers out of
range and not numbers at all, unknown keys, keys removed, deep nesting and huge strings; and its
bytes changed, cut, or made invalid UTF-8. ``load_config`` answers a configuration or a
:class:`ConfigError` whose every problem says where (a TOML path, or the line of a syntax
error) — never any other exception.

Forecasts: files and Carbon Aware SDK answers with NaN, infinities, negative and absurd
intensities, times that do not increase or are a microsecond apart, spans of centuries, fields
of megabytes, nesting and bytes that are not UTF-8. Each is a :class:`ForecastError` saying
what and where, or a forecast whose every intensity is finite and not negative; placed into the
plan, it gives finite carbon figures.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w
from hypothesis import example, given
from hypothesis import strategies as st

from fuzzing import bounded, long_run_marks
from pswd_gateway.config import SchedulingConfig, SiteConfig, load_config
from pswd_gateway.domain.workloads import Announcement
from pswd_gateway.errors import ConfigError, ForecastError
from pswd_gateway.forecasts.providers import (
    CarbonAwareSdkForecast,
    FileForecast,
    parse_forecast_text,
)
from pswd_gateway.scheduling.model import CarbonForecast
from pswd_gateway.scheduling.scheduler import Scheduler

pytestmark = [pytest.mark.fuzz, *long_run_marks()]

DEMO_TEXT = (Path(__file__).resolve().parents[2] / "config" / "demo.toml").read_text()
DEMO: dict[str, Any] = tomllib.loads(DEMO_TEXT)
WHERE = re.compile(r"line \d+|end of document|[a-z_0-9\]]+\.[a-z_]+|[a-z_]+\[\d+\]")
"""How a message names its place when the problem has no path of its own: a line (or the end
of the document), or a dotted key (``listeners.api``) or an item (``devices[2]``) in its
text."""


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


PATHS = _paths(DEMO)
"""Every table, array, item and value of the demo file, as a path of keys and indexes."""

big_ints = st.sampled_from([0, -1, 2**31, 2**63 - 1, -(2**63), 10**18])
hostile = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1) | big_ints,
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, -1e308, 5e-324]) | st.floats(),
    st.booleans(),
    st.text(max_size=30),
    st.integers(min_value=1_000, max_value=100_000).map(lambda n: "x" * n),
    st.datetimes(timezones=st.none() | st.just(UTC)),
    st.dates(),
    st.lists(st.integers() | st.text(max_size=5), max_size=4),
    st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=5), max_size=3),
)
"""A value of any TOML type, at its edges."""


def nested(depth: int, kind: str) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value} if kind == "table" else [value]
    return value


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _delete(doc: dict[str, Any], path: tuple[Any, ...]) -> None:
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]


@st.composite
def mutated_documents(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """The demo document with one thing changed, and where."""
    doc = json.loads(json.dumps(DEMO, default=str))  # a deep copy (the demo has no datetimes)
    path = draw(st.sampled_from(PATHS))
    how = draw(st.sampled_from(["replace", "delete", "unknown_key", "nest"]))
    if how == "replace":
        _set(doc, path, draw(hostile))
    elif how == "delete":
        _delete(doc, path)
    elif how == "unknown_key":
        parent = path[:-1]
        node: Any = doc
        for key in parent:
            node = node[key]
        target = node if isinstance(node, dict) else doc
        target[draw(st.text(min_size=1, max_size=20))] = draw(hostile)
    else:
        depth = draw(st.integers(min_value=1, max_value=400))
        _set(doc, path, nested(depth, draw(st.sampled_from(["table", "array"]))))
    return doc, path


def assert_says_where(problem: ConfigError) -> None:
    assert problem.problems, problem
    for where, message in problem.problems:
        assert message, problem
        assert where or WHERE.search(message), problem


def load_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "gateway.toml"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError as problem:
        assert_says_where(problem)


@given(mutation=mutated_documents())
@example(mutation=({**DEMO, "config_dir": "/"}, ("config_dir",)))
@example(mutation=({**DEMO, "site": {**DEMO["site"], "grid_ramp_limit_mw_per_s": 5e-324}}, ()))
@bounded(120)
def test_a_mutated_configuration_is_loaded_or_refused_saying_where(
    tmp_path_factory: pytest.TempPathFactory, mutation: tuple[dict[str, Any], tuple[Any, ...]]
) -> None:
    doc, _ = mutation
    try:
        text = tomli_w.dumps(doc)
    except (TypeError, ValueError, RecursionError):
        return  # not a TOML document (a key TOML cannot hold): nothing to load
    load_bytes(tmp_path_factory.mktemp("config"), text.encode())


@st.composite
def mutated_bytes(draw: st.DrawFn) -> bytes:
    """The demo file's bytes changed, cut short, or with bytes that are not UTF-8."""
    data = bytearray(DEMO_TEXT.encode())
    how = draw(st.sampled_from(["flip", "cut", "invalid_utf8", "nesting"]))
    if how == "flip":
        for _ in range(draw(st.integers(min_value=1, max_value=8))):
            data[draw(st.integers(min_value=0, max_value=len(data) - 1))] = draw(
                st.integers(min_value=0, max_value=255)
            )
    elif how == "cut":
        del data[draw(st.integers(min_value=0, max_value=len(data))) :]
    elif how == "invalid_utf8":
        at = draw(st.integers(min_value=0, max_value=len(data)))
        data[at:at] = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"]))
    else:
        depth = draw(st.integers(min_value=100, max_value=5000))
        data += f"\n[nested]\na = {'[' * depth}{']' * depth}\n".encode()
    return bytes(data)


@given(data=mutated_bytes())
@example(data=DEMO_TEXT.encode() + b"\n# caf\xe9\n")
@example(data=DEMO_TEXT.encode() + b"\n[nested]\na = " + b"[" * 5000 + b"]" * 5000 + b"\n")
@bounded(120)
def test_configuration_bytes_are_loaded_or_refused_saying_where(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    load_bytes(tmp_path_factory.mktemp("config"), data)


def test_a_directory_or_an_unreadable_path_is_a_config_error(tmp_path: Path) -> None:
    for path in (tmp_path, tmp_path / ("x" * 5000) / "gateway.toml"):
        with pytest.raises(ConfigError) as refused:
            load_config(path)
        assert refused.value.problems[0][1], refused.value


def test_a_register_map_name_too_long_for_a_path_is_a_config_error(tmp_path: Path) -> None:
    doc = json.loads(json.dumps(DEMO))
    doc["devices"][0]["register_map"] = "m" * 5000
    path = tmp_path / "gateway.toml"
    path.write_text(tomli_w.dumps(doc))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert refused.value.problems[0][0] == "devices[0].register_map", refused.value


# ---- forecasts ----------------------------------------------------------------------------

T0 = datetime(2030, 1, 15, tzinfo=UTC)

intensities = st.one_of(
    st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "-1", "-0", "1e308", "5000.1"]),
    st.floats().map(repr),
    st.floats(min_value=0, max_value=5000).map(repr),
    st.text(max_size=10),
    st.integers(min_value=100_000, max_value=300_000).map(lambda n: "9" * n),
)
"""What a file may say in the intensity column (numbers as text, as a CSV carries them)."""
times = st.one_of(
    st.integers(min_value=0, max_value=48 * 3600).map(
        lambda s: (T0 + timedelta(seconds=s)).isoformat()
    ),
    st.floats(min_value=0, max_value=3.0).map(lambda s: (T0 + timedelta(seconds=s)).isoformat()),
    st.sampled_from(
        ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2030-01-15T00:00:00", "x"]
    ),
    st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
)


@st.composite
def forecast_files(draw: st.DrawFn) -> tuple[str, str]:
    """(kind, text): CSV or JSON, the file's own format or the Carbon Aware SDK's."""
    rows = draw(st.lists(st.tuples(times, intensities), min_size=0, max_size=6))
    kind = draw(st.sampled_from(["csv", "json", "sdk", "nested"]))
    if kind == "csv":
        body = "".join(f"{t},{v}\n" for t, v in rows)
        return "csv", "time,carbon_g_per_kwh\n" + body
    if kind == "nested":
        depth = draw(st.integers(min_value=10, max_value=100_000))
        return "json", "[" * depth + "]" * depth

    def number(v: str) -> Any:
        try:
            return json.loads(v) if v.lower() not in {"nan", "inf", "-inf"} else float(v)
        except ValueError:
            return v

    if kind == "json":
        return "json", json.dumps([{"time": t, "carbon_g_per_kwh": number(v)} for t, v in rows])
    points = [{"timestamp": t, "duration": 5, "value": number(v)} for t, v in rows]
    return "json", json.dumps([{"location": "x", "forecastData": points}])


def assert_usable(forecast: CarbonForecast) -> None:
    """Every intensity finite and not negative, on slots of a second or more; and what the
    plan makes of it is finite too."""
    assert forecast.slot_s >= 1, forecast.slot_s
    assert forecast.carbon_g_per_kwh, forecast
    assert all(math.isfinite(v) and 0 <= v <= 5000 for v in forecast.carbon_g_per_kwh)
    if forecast.price_per_mwh is not None:
        assert all(math.isfinite(v) for v in forecast.price_per_mwh)
    scheduling = SchedulingConfig(replan_interval_s=3600)
    scheduler = Scheduler(scheduling, SiteConfig())
    start = T0 + timedelta(hours=1)  # the forecast is resampled onto the plan's own slots
    announcement = Announcement.model_validate(
        {
            "workload_type": "ai_training",
            "power_profile": {
                "peak_power_mw": 50,
                "ramp_rate_mw_per_sec": 10,
                "duration_estimate_sec": 1800,
            },
            "timing_constraints": {
                "earliest_start_time": start.isoformat(),
                "deadline": (start + timedelta(hours=6)).isoformat(),
            },
        }
    )
    allocation = scheduler.place("wl_f", announcement, [], forecast, T0)
    for figure in (allocation.expected_carbon_kg, allocation.run_now_carbon_kg):
        assert math.isfinite(figure), allocation
        assert figure >= 0, allocation


def parse_or_refuse(text: str, kind: str) -> None:
    try:
        forecast = parse_forecast_text(text, "f", kind=kind)
    except ForecastError as refused:
        message = str(refused)
    else:
        assert_usable(forecast)
        return
    assert message.startswith("forecast f: "), message
    assert len(message) > len("forecast f: "), message


@given(file=forecast_files())
@example(file=("csv", "time,carbon_g_per_kwh\n2030-01-15T00:00:00Z,nan\n"))
@example(
    file=(
        "csv",
        "time,carbon_g_per_kwh\n2030-01-15T00:00:00Z,1\n2030-01-15T00:00:00.5Z,2\n",
    )
)
@example(
    file=(
        "csv",
        (
            "time,carbon_g_per_kwh\n0001-01-01T00:00:00Z,1\n0001-01-01T00:00:01Z,1\n"
            "9999-12-31T00:00:00Z,2\n"
        ),
    )
)
@example(file=("csv", "time,carbon_g_per_kwh\n2030-01-15T00:00:00Z," + "9" * 200_000 + "\n"))
@example(file=("json", "[" * 100_000 + "]" * 100_000))
@example(file=("csv", "time,carbon_g_per_kwh\n9999-12-31T23:00:00-14:00,1\n"))
@example(
    file=(
        "csv",
        "time,carbon_g_per_kwh\n9999-12-31T23:00:00Z,1\n9999-12-31T23:30:00-01:00,1\n",
    )
)
@bounded(150)
def test_a_hostile_forecast_file_is_refused_or_gives_finite_intensities(
    file: tuple[str, str],
) -> None:
    kind, text = file
    parse_or_refuse(text, kind)


@given(data=st.binary(max_size=200), suffix=st.sampled_from([".csv", ".json"]))
@example(data=b"time,carbon_g_per_kwh\n2030-01-15T00:00:00Z,1\xff\n", suffix=".csv")
@bounded(40)
def test_forecast_file_bytes_that_are_not_utf8_are_a_forecast_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, suffix: str
) -> None:
    path = tmp_path_factory.mktemp("forecast") / f"f{suffix}"
    path.write_bytes(data)
    try:
        forecast = asyncio.run(FileForecast(path).fetch(T0, timedelta(hours=48)))
    except ForecastError as refused:
        message = str(refused)
    else:
        assert_usable(forecast)
        return
    assert str(path) in message, message


sdk_answers = st.one_of(
    forecast_files().filter(lambda f: f[0] == "json").map(lambda f: (200, f[1].encode())),
    st.tuples(st.sampled_from([200, 204, 404, 500]), st.binary(max_size=100)),
    st.tuples(st.just(200), st.sampled_from([b"null", b"[]", b"[null]", b"{}", b"[{}]"])),
)


@given(answer=sdk_answers)
@example(answer=(200, b'[{"forecastData": [{"timestamp": "2030-01-15T00:00:00Z", "value": NaN}]}]'))
@bounded(60)
def test_a_hostile_carbon_aware_sdk_answer_is_refused_or_gives_finite_intensities(
    answer: tuple[int, bytes],
) -> None:
    status, content = answer

    async def fetch() -> CarbonForecast:
        transport = httpx.MockTransport(lambda _: httpx.Response(status, content=content))
        async with httpx.AsyncClient(transport=transport) as client:
            provider = CarbonAwareSdkForecast("http://127.0.0.1:9", "x", client=client)
            return await provider.fetch(T0, timedelta(hours=48))

    try:
        forecast = asyncio.run(fetch())
    except ForecastError as refused:
        message = str(refused)
    else:
        assert_usable(forecast)
        return
    assert "carbon_aware_sdk:http://127.0.0.1:9" in message, message

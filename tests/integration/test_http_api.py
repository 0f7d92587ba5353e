"""The workload HTTP API on a real uvicorn listener, journal and scheduler (free loopback port)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pswd_gateway.config import DEMO_TOKEN_SHA256, GatewayConfig
from pswd_gateway.forecasts.providers import SimulatedForecast
from pswd_gateway.grid_signals import GridSignalService
from pswd_gateway.journal import AsyncJournal
from pswd_gateway.northbound.asgi import AsgiListener
from pswd_gateway.northbound.http_api import ApiContext, create_app
from pswd_gateway.northbound.http_api.schemas import SiteOut
from pswd_gateway.northbound.http_api.spec import openapi_yaml
from pswd_gateway.scheduling.scheduler import Scheduler
from pswd_gateway.scheduling.service import WorkloadService
from pswd_gateway.site_settings import SiteSettings

DOCS = Path(__file__).resolve().parents[2] / "docs"


def config(**api: Any) -> GatewayConfig:
    tokens = [
        {"name": f"demo-{role}", "role": role, "sha256": digest}
        for digest, role in DEMO_TOKEN_SHA256.items()
    ]
    return GatewayConfig.model_validate(
        {
            "site": {"grid_import_limit_mw": 320.0},
            "api": {"tokens": tokens, "max_body_bytes": 4096, **api},
            "scheduling": {"base_load_mw": 30.0, "replan_interval_s": 3600},
        }
    )


@dataclass
class Api:
    url: str
    service: WorkloadService

    def client(self, role: str | None = "submitter") -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer pswd-demo-{role}"} if role else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10.0)


async def start_api(tmp_path: Path, cfg: GatewayConfig) -> tuple[Api, Callable[[], Any]]:
    journal = AsyncJournal.open(tmp_path / "pswd.db")
    forecast = await SimulatedForecast().fetch(datetime.now(UTC), timedelta(hours=49))
    service = WorkloadService(cfg, journal, Scheduler(cfg.scheduling, cfg.site), lambda: forecast)
    await service.load()

    def site() -> SiteOut:
        return SiteOut(
            at=datetime.now(UTC),
            site="test",
            grid_import_mw=None,
            grid_frequency_hz=None,
            it_load_mw=None,
            bess_power_mw=None,
            bess_soc=None,
            chw_supply_temp_c=None,
            heat_export_mw=None,
            heat_supply_temp_c=None,
            grid_import_limit_mw=320.0,
            grid_ramp_limit_mw_per_s=20.0,
            devices={},
            workloads={},
        )

    app = create_app(cfg.api, ApiContext(service, site, lambda: True))
    signals = GridSignalService(journal, SiteSettings(cfg.site), publish=service.hub.publish)
    await signals.start()
    app.state.grid_signals = signals
    listener = AsgiListener(app, "127.0.0.1", 0)
    await listener.start()

    async def stop() -> None:
        service.hub.close()
        await listener.stop()
        await signals.stop()
        await service.stop()
        await journal.close()

    return Api(f"http://127.0.0.1:{listener.port}", service), stop


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    running, stop = await start_api(tmp_path, config())
    try:
        yield running
    finally:
        await stop()


def body(start_in_h: float = 1.0, window_h: float = 12.0, **power: Any) -> dict[str, Any]:
    start = datetime.now(UTC) + timedelta(hours=start_in_h)
    return {
        "workload_type": "ai_training",
        "power_profile": {
            "peak_power_mw": 200,
            "ramp_rate_mw_per_sec": 50,
            "duration_estimate_sec": 3600,
            **power,
        },
        "timing_constraints": {
            "earliest_start_time": start.isoformat(),
            "deadline": (start + timedelta(hours=window_h)).isoformat(),
        },
    }


async def test_the_seed_example_gets_201_with_an_allocation(api: Api) -> None:
    async with api.client() as http:
        r = await http.post("/v1/workloads", json=body())
    assert r.status_code == 201, r.text
    w = r.json()
    assert r.headers["location"] == f"/v1/workloads/{w['id']}"
    assert r.headers["server-timing"].startswith("app;dur=")
    assert float(r.headers["server-timing"].removeprefix("app;dur=")) >= 0.0
    assert w["state"] == "scheduled"
    alloc = w["allocation"]
    for key in (
        "scheduled_start",
        "grid_ramp_plan",
        "battery_reservation",
        "cooling_preposition",
        "expected_carbon_kg",
        "run_now_carbon_kg",
        "carbon_saved_kg",
        "explanation",
    ):
        assert key in alloc
    assert alloc["expected_carbon_kg"] <= alloc["run_now_carbon_kg"]


@pytest.mark.parametrize(
    ("change", "pointer", "rule"),
    [
        ({"power_profile": {"peak_power_mw": 0}}, "#/power_profile/peak_power_mw", "greater_than"),
        ({"power_profile": {"peak_power_mw": -3}}, "#/power_profile/peak_power_mw", "greater_than"),
        (
            {"timing_constraints": {"deadline": "2000-01-01T00:00:00Z"}},
            "#/timing_constraints/deadline",
            "deadline_before_start",
        ),
        (
            {"power_profile": {"duration_estimate_sec": 13 * 3600}},
            "#/power_profile/duration_estimate_sec",
            "longer_than_window",
        ),
        (
            {"timing_constraints": {"earliest_start_time": "2030-01-01T00:00:00"}},
            "#/timing_constraints/earliest_start_time",
            "timezone_aware",
        ),
        ({"colour": "green"}, "#/colour", "extra_forbidden"),
    ],
)
async def test_each_invalid_body_gets_422_naming_field_and_rule(
    api: Api, change: dict[str, Any], pointer: str, rule: str
) -> None:
    b = body()
    for key, value in change.items():
        if isinstance(value, dict):
            b[key] = {**b[key], **value}
        else:
            b[key] = value
    async with api.client() as http:
        r = await http.post("/v1/workloads", json=b)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert {"pointer": pointer, "rule": rule} in [
        {"pointer": e["pointer"], "rule": e["rule"]} for e in problem["errors"]
    ], problem
    assert await api.service.journal.call(api.service.journal.sync.count_workloads) == 0


async def test_bad_json_and_oversized_bodies_are_refused(api: Api) -> None:
    async with api.client() as http:
        r = await http.post(
            "/v1/workloads", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code == 422
        assert r.json()["errors"][0]["rule"] == "json_invalid"
        big = body(name="x" * 100)
        big["padding"] = "y" * 5000
        r = await http.post("/v1/workloads", json=big)
        assert r.status_code == 413
        assert r.json()["max_body_bytes"] == 4096


async def test_a_retry_with_the_same_idempotency_key_returns_the_first_answer(api: Api) -> None:
    b = body()
    async with api.client() as http:
        first = await http.post("/v1/workloads", json=b, headers={"Idempotency-Key": "job-7"})
        again = await http.post("/v1/workloads", json=b, headers={"Idempotency-Key": "job-7"})
        other = await http.post(
            "/v1/workloads", json=body(start_in_h=2), headers={"Idempotency-Key": "job-7"}
        )
        listed = await http.get("/v1/workloads")
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert other.status_code == 422
    assert other.json()["type"].endswith("idempotency-mismatch")
    assert len(listed.json()["items"]) == 1


async def test_lifecycle_through_the_api_and_an_illegal_transition_is_409(api: Api) -> None:
    async with api.client() as http:
        wid = (await http.post("/v1/workloads", json=body())).json()["id"]
        r = await http.post(f"/v1/workloads/{wid}/complete")
        assert r.status_code == 409
        assert "cannot complete a workload that is scheduled" in r.json()["detail"]
        assert (await http.post(f"/v1/workloads/{wid}/start")).json()["state"] == "running"
        r = await http.post(f"/v1/workloads/{wid}/complete", json={"reason": "converged"})
        assert r.json()["state"] == "completed"
        assert (await http.post(f"/v1/workloads/{wid}/cancel")).status_code == 409
        history = (await http.get(f"/v1/workloads/{wid}")).json()["history"]
        assert [h["state"] for h in history] == ["announced", "scheduled", "running", "completed"]
        assert history[-1]["reason"] == "converged"
        assert (await http.get("/v1/workloads/wl_nope")).status_code == 404


async def test_roles_decide_who_may_do_what(api: Api) -> None:
    async with api.client("submitter") as mine, api.client("viewer") as viewer:
        wid = (await mine.post("/v1/workloads", json=body())).json()["id"]
        assert (await viewer.get(f"/v1/workloads/{wid}")).status_code == 200
        assert (await viewer.post("/v1/workloads", json=body())).status_code == 403
        assert (await viewer.post(f"/v1/workloads/{wid}/cancel")).status_code == 403
        b = body()
        b["owner"] = "someone-else"
        r = await mine.post("/v1/workloads", json=b)
        assert r.status_code == 403
        assert "on behalf of" in r.json()["detail"]
    async with api.client("operator") as operator:
        r = await operator.post(f"/v1/workloads/{wid}/cancel", json={"reason": "grid event"})
        assert r.json()["state"] == "cancelled"
    async with api.client(None) as anonymous, api.client("nobody") as unknown:
        r = await anonymous.get("/v1/workloads")
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert (await unknown.post("/v1/workloads", json=body())).status_code == 401
    journal = api.service.journal
    entries = await journal.call(journal.sync.audit_entries, 0, 100)
    refused = [e for e in entries if e["outcome"] == "refused"]
    assert len(refused) >= 4  # viewer announce, viewer cancel, owner spoof, unknown token
    assert await journal.call(journal.sync.verify_audit) == (len(entries), None)


async def test_a_job_that_cannot_fit_says_why_and_when_it_could(api: Api) -> None:
    async with api.client() as http:
        r = await http.post("/v1/workloads", json=body(start_in_h=1, window_h=1.5))
        assert r.status_code == 201  # 30 MW base + 200 MW: the 400 MW chillers have 170 left
        r = await http.post("/v1/workloads", json=body(start_in_h=1, window_h=1.5))
    assert r.status_code == 409
    problem = r.json()
    assert problem["type"].endswith("does-not-fit")
    assert problem["binding_constraint"] in {"cooling_capacity", "bess_energy", "grid_import_limit"}
    assert problem["earliest_feasible_start"] is not None


async def read_events(
    http: httpx.AsyncClient, n: int, last_event_id: int | None = None
) -> list[dict[str, Any]]:
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    out: list[dict[str, Any]] = []
    async with http.stream("GET", "/v1/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                out.append(json.loads(line[5:]))
                if len(out) == n:
                    return out
    return out


async def test_the_event_stream_resumes_after_last_event_id(api: Api) -> None:
    async with api.client() as http:
        wid = (await http.post("/v1/workloads", json=body())).json()["id"]
        first = await asyncio.wait_for(read_events(http, 2), 10)
        assert [e["type"] for e in first] == ["workload.announced", "workload.state_changed"]
        live = asyncio.create_task(read_events(http, 1, last_event_id=first[-1]["id"]))
        await asyncio.sleep(0.2)
        await http.post(f"/v1/workloads/{wid}/start")
        (started,) = await asyncio.wait_for(live, 10)
        assert started["data"]["to"] == "running"
        assert started["id"] == first[-1]["id"] + 1
        resumed = await asyncio.wait_for(read_events(http, 1, last_event_id=first[0]["id"]), 10)
        assert resumed[0]["id"] == first[1]["id"]


async def test_lists_page_with_cursors_and_filter_by_state(api: Api) -> None:
    async with api.client() as http:
        ids = [
            (await http.post("/v1/workloads", json=body(peak_power_mw=1))).json()["id"]
            for _ in range(5)
        ]
        await http.post(f"/v1/workloads/{ids[0]}/start")
        page = (await http.get("/v1/workloads", params={"limit": 2})).json()
        seen = [w["id"] for w in page["items"]]
        while page["next_cursor"]:
            page = (
                await http.get("/v1/workloads", params={"limit": 2, "cursor": page["next_cursor"]})
            ).json()
            seen += [w["id"] for w in page["items"]]
        assert seen == ids
        running = (await http.get("/v1/workloads", params={"state": "running"})).json()
        assert [w["id"] for w in running["items"]] == ids[:1]
        bad = await http.get("/v1/workloads", params={"cursor": "garbage"})
        assert bad.status_code == 422
        assert bad.json()["errors"][0]["pointer"] == "query:cursor"


async def test_site_forecast_and_health(api: Api) -> None:
    async with api.client("viewer") as http:
        forecast = (await http.get("/v1/forecast")).json()
        assert forecast["slot_s"] == 300
        assert len(forecast["slots"]) == 48 * 12
        assert (await http.get("/v1/site")).json()["site"] == "test"
    async with api.client(None) as anonymous:
        assert (await anonymous.get("/healthz")).json() == {"status": "ok"}
        assert (await anonymous.get("/readyz")).status_code == 200


def test_the_served_openapi_document_is_the_checked_in_one() -> None:
    """docs/api.yaml is regenerated with `pswd-gateway api spec -o docs/api.yaml`."""
    assert yaml.safe_load(openapi_yaml()) == yaml.safe_load((DOCS / "api.yaml").read_text()), (
        "docs/api.yaml is out of date: run `pswd-gateway api spec -o docs/api.yaml`"
    )


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def mutated_bodies() -> st.SearchStrategy[Any]:
    """Seed-shaped bodies with fields replaced, dropped or added, and arbitrary JSON."""
    paths = [
        ("workload_type",),
        ("power_profile", "peak_power_mw"),
        ("power_profile", "ramp_rate_mw_per_sec"),
        ("power_profile", "duration_estimate_sec"),
        ("power_profile", "time_series"),
        ("power_profile", "oscillation_period_sec"),
        ("timing_constraints", "earliest_start_time"),
        ("timing_constraints", "deadline"),
        ("priority",),
        ("extra",),
    ]

    def mutate(path: tuple[str, ...], value: Any) -> Any:
        b = body()
        node = b
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return b

    return st.one_of(
        json_values,
        st.builds(mutate, st.sampled_from(paths), json_values),
        st.builds(
            mutate,
            st.just(("timing_constraints", "deadline")),
            st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
        ),
    )


@pytest.fixture(scope="module")
def api_in_thread(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One API on its own event loop in a thread, for many synchronous fuzz requests."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    tmp = tmp_path_factory.mktemp("fuzz")
    running, stop = asyncio.run_coroutine_threadsafe(start_api(tmp, config()), loop).result(30)
    try:
        yield running.url
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=mutated_bodies())
def test_no_body_ever_gets_a_5xx(payload: Any, api_in_thread: str) -> None:
    """Whatever JSON arrives, the answer is 201 or a 4xx problem, never a server error."""
    headers = {"Authorization": "Bearer pswd-demo-submitter"}
    r = httpx.post(f"{api_in_thread}/v1/workloads", json=payload, headers=headers, timeout=10)
    assert r.status_code < 500, r.text
    if r.status_code != 201:
        assert r.headers["content-type"] == "application/problem+json"


async def test_unknown_routes_and_methods_are_problems(api: Api) -> None:
    async with api.client() as http:
        r = await http.get("/v1/nothing")
        assert r.status_code == 404
        assert r.headers["content-type"] == "application/problem+json"
        r = await http.delete("/v1/workloads")
        assert r.status_code == 405


async def test_a_guard_trip_and_rearm_are_streamed_and_audited(tmp_path: Path) -> None:
    """The whole gateway: each control-guard trip and re-arm is a `control_guard` event on the
    stream (tripped, reason, detail, time) and a line of the audit chain, which still verifies."""
    from guard_events import REARM_DETAIL, TRIP_DETAIL, rearm, trip  # noqa: PLC0415

    from pswd_gateway.daemon import Gateway  # noqa: PLC0415
    from pswd_gateway.journal import format_ts  # noqa: PLC0415

    settings = config().model_dump(mode="json", exclude={"config_dir"})
    settings["listeners"] = {
        "metrics": {"enabled": False, "port": 0},
        "api": {"host": "127.0.0.1", "port": 0},
    }
    settings["storage"] = {"state_dir": str(tmp_path), "journal_synchronous": "normal"}
    gw = Gateway(GatewayConfig.model_validate(settings))
    await gw.start()
    try:
        assert gw.api_listener is not None
        assert gw.workloads is not None
        api = Api(f"http://127.0.0.1:{gw.api_listener.port}", gw.workloads)
        async with api.client("viewer") as http:
            live = asyncio.create_task(read_events(http, 2))
            await asyncio.sleep(0.3)
            tripped = trip(gw)
            rearmed = rearm(gw)
            on, off = await asyncio.wait_for(live, 10)
        assert gw.journal is not None
        audit = await gw.journal.call(gw.journal.sync.audit_entries, 0, 100)
        verified = await gw.journal.call(gw.journal.sync.verify_audit)
    finally:
        await gw.stop()
    assert (on["type"], off["type"]) == ("control_guard", "control_guard")
    assert on["workload_id"] is None
    assert on["data"] == {
        "tripped": True,
        "reason": "grid_off_plan",
        "detail": TRIP_DETAIL,
        "at": format_ts(datetime.fromtimestamp(tripped.at, UTC)),
    }
    assert off["data"] == {
        "tripped": False,
        "reason": None,
        "detail": REARM_DETAIL,
        "at": format_ts(datetime.fromtimestamp(rearmed.at, UTC)),
    }
    guard = [a for a in audit if a["actor"] == "control:guard"]
    assert [a["action"] for a in guard] == ["guard_trip", "guard_rearm"]
    assert guard[0]["detail"] == {"reason": "grid_off_plan", "detail": TRIP_DETAIL}
    assert guard[0]["at"] == format_ts(datetime.fromtimestamp(tripped.at, UTC))
    assert guard[1]["detail"] == {"reason": None, "detail": REARM_DETAIL}
    assert verified == (len(audit), None)


async def test_the_role_table_every_route_for_every_role(api: Api) -> None:
    """Per role, each action passes or gets 403 exactly as the one role model
    (domain.identity.ROLE_PERMISSIONS) says: the same table as OPC UA and IEC 61850."""
    from pswd_gateway.config import DEMO_TOKEN_SHA256  # noqa: PLC0415
    from pswd_gateway.domain.identity import Identity, Permission  # noqa: PLC0415

    async with api.client("admin") as admin:
        others = (await admin.post("/v1/workloads", json=body())).json()["id"]
    roles = sorted(set(DEMO_TOKEN_SHA256.values()))
    for role in roles:
        who = Identity(f"demo-{role}", role)
        async with api.client(role) as client:
            own = None
            for path in ("/v1/workloads", f"/v1/workloads/{others}", "/v1/site", "/v1/forecast"):
                r = await client.get(path)
                assert (r.status_code != 403) == who.can(Permission.READ), (role, path)
            r = await client.post("/v1/workloads", json=body())
            assert (r.status_code != 403) == who.can(Permission.ANNOUNCE), (role, r.text)
            if r.status_code == 201:
                own = r.json()["id"]
            if own is not None:
                r = await client.post(f"/v1/workloads/{own}/cancel", json={"reason": "t"})
                assert (r.status_code != 403) == who.can(Permission.ACT_OWN), (role, r.text)
            r = await client.post(f"/v1/workloads/{others}/start", json={"reason": "t"})
            assert (r.status_code != 403) == who.can(Permission.ACT_ANY), (role, r.text)


async def test_a_full_journal_refuses_announcements_with_507_and_keeps_what_it_accepted(
    api: Api,
) -> None:
    """The journal's disk fills (SQLite's page limit stands in for a small file system: the
    same SQLITE_FULL a full disk gives): an announcement is answered 507 with what to do and
    nothing of it is kept; every announcement acknowledged before is still there, and reads
    still work."""
    journal = api.service.journal
    accepted: list[str] = []
    async with api.client() as http:
        for _ in range(3):
            r = await http.post("/v1/workloads", json=body())
            assert r.status_code == 201, r.text
            accepted.append(r.json()["id"])
        pages = journal.sync._db.execute("PRAGMA page_count").fetchone()[0]
        journal.sync._db.execute(f"PRAGMA max_page_count = {pages}")
        refused = None
        for _ in range(200):  # until the pages left are used up
            r = await http.post("/v1/workloads", json=body())
            if r.status_code == 201:
                accepted.append(r.json()["id"])
                continue
            refused = r
            break
        assert refused is not None
        assert refused.status_code == 507, refused.text
        problem = refused.json()
        assert problem["status"] == 507
        assert problem["type"].endswith("journal-full")
        assert "Nothing of this request was kept" in problem["detail"]
        assert "[storage]" in problem["detail"]
        assert refused.headers["retry-after"] == "60"
        listed = await http.get("/v1/workloads", params={"limit": 500})
    assert listed.status_code == 200, listed.text
    ids = [w["id"] for w in listed.json()["items"]]
    assert sorted(ids) == sorted(accepted)
    assert journal.errors_total >= 1


@pytest.mark.needs_root
async def test_a_full_file_system_refuses_announcements_with_507(tmp_path: Path) -> None:
    """The journal on a 256 KiB file system (tmpfs, mounted for the test): announcements are
    accepted until it is full, then answered 507; every one acknowledged is listed, none of the
    refused ones is."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], check=True, timeout=10
    )
    try:
        running, stop = await start_api(disk, config())
        try:
            accepted: list[str] = []
            async with running.client() as http:
                for _ in range(2000):
                    r = await http.post("/v1/workloads", json=body())
                    if r.status_code != 201:
                        break
                    accepted.append(r.json()["id"])
                assert r.status_code == 507, r.text
                assert "Nothing of this request was kept" in r.json()["detail"]
                listed = await http.get("/v1/workloads", params={"limit": 500})
            assert accepted
            assert listed.status_code == 200, listed.text
            page = listed.json()["items"]
            assert {w["id"] for w in page} <= set(accepted)
            assert len(page) == min(len(accepted), 500)
        finally:
            await stop()
    finally:
        subprocess.run(["umount", str(disk)], check=True, timeout=10)


async def test_a_token_over_its_rate_gets_429_with_retry_after(tmp_path: Path) -> None:
    running, stop = await start_api(tmp_path, config(rate_limit_per_s=2.0))
    try:
        async with running.client("viewer") as http:
            codes = [(await http.get("/v1/workloads")).status_code for _ in range(3)]
            limited = await http.get("/v1/workloads")
    finally:
        await stop()
    assert codes[:2] == [200, 200]
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["content-type"] == "application/problem+json"
    assert "api.rate_limit_per_s" in limited.json()["detail"]


async def test_a_flood_of_unknown_tokens_gets_429_and_the_connection_closed(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url, timeout=10.0) as http:
        headers = {"Authorization": "Bearer not-a-token"}
        answers = [await http.get("/v1/workloads", headers=headers) for _ in range(40)]
    codes = [a.status_code for a in answers]
    assert codes[0] == 401
    assert 429 in codes
    limited = answers[codes.index(429)]
    assert limited.headers["connection"] == "close"
    assert int(limited.headers["retry-after"]) >= 1
    assert "without a known bearer token" in limited.json()["detail"]

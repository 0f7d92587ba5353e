"""``POST /v1/workloads/{id}/rhythm``: a running job tells the next edges of its training rhythm
over the real API; the edges reach the grid loop, and every refusal says what was wrong and
where (RFC 9457), changes nothing and is audited."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_http_api import Api, body, config, start_api

pytestmark = pytest.mark.integration


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[Api, list[list[tuple[float, bool]]]]]:
    running, stop = await start_api(tmp_path, config())
    told: list[list[tuple[float, bool]]] = []
    running.service.on_rhythm = lambda edges: told.append(list(edges))
    try:
        yield running, told
    finally:
        await stop()


def hint(*offsets_s: float, rise: bool = False) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "edges": [
            {
                "at": (now + timedelta(seconds=s)).isoformat(),
                "direction": "rise" if rise else "fall",
            }
            for s in offsets_s
        ]
    }


async def test_a_running_job_tells_its_edges_and_the_loop_gets_them(
    api: tuple[Api, list[list[tuple[float, bool]]]],
) -> None:
    running, told = api
    async with running.client() as http:
        rhythmic = body(oscillation_period_sec=2.5, oscillation_depth_mw=180)
        wid = (await http.post("/v1/workloads", json=rhythmic)).json()["id"]
        before = await http.post(f"/v1/workloads/{wid}/rhythm", json=hint(0.3))
        assert before.status_code == 409, before.text
        assert before.json()["type"] == "urn:pswd:problem:not-running"
        assert "report its start first" in before.json()["detail"]
        assert (await http.post(f"/v1/workloads/{wid}/start")).status_code == 200
        sent = hint(0.3, 2.2)
        r = await http.post(f"/v1/workloads/{wid}/rhythm", json=sent)
        assert r.status_code == 202, r.text
        assert r.json() == {"edges": 2}
        r = await http.post(f"/v1/workloads/{wid}/rhythm", json=hint(0.4, rise=True))
        assert r.status_code == 202, r.text
    assert len(told) == 2
    at = [datetime.fromisoformat(e["at"]).timestamp() for e in sent["edges"]]
    assert told[0] == [(at[0], False), (at[1], False)]
    assert told[1][0][1] is True
    journal = running.service.journal
    audited = [
        e for e in await journal.call(journal.sync.audit_entries, 0, 100)
        if e["action"] == "workload.rhythm"
    ]  # fmt: skip
    # the refusal before the start, then only the first accepted hint of the stream
    assert [e["outcome"] for e in audited] == ["refused", "accepted"]
    assert await journal.call(journal.sync.verify_audit) == (
        len(await journal.call(journal.sync.audit_entries, 0, 1000)),
        None,
    )


async def test_bad_hints_are_refused_naming_what_and_where(
    api: tuple[Api, list[list[tuple[float, bool]]]],
) -> None:
    running, told = api
    async with running.client() as http, running.client("viewer") as viewer:
        flat = (await http.post("/v1/workloads", json=body())).json()["id"]
        await http.post(f"/v1/workloads/{flat}/start")
        rhythmic = body(oscillation_period_sec=2.5, oscillation_depth_mw=180)
        wid = (await http.post("/v1/workloads", json=rhythmic)).json()["id"]
        await http.post(f"/v1/workloads/{wid}/start")
        r = await http.post(f"/v1/workloads/{flat}/rhythm", json=hint(0.3))
        assert r.status_code == 409
        assert "oscillation_period_sec" in r.json()["detail"]
        r = await http.post(f"/v1/workloads/{wid}/rhythm", json=hint(0.3, 60.0))
        assert r.status_code == 422
        problem = r.json()
        assert problem["errors"][0]["pointer"] == "#/edges/1/at"
        assert "10 s ahead" in problem["detail"]
        r = await http.post(f"/v1/workloads/{wid}/rhythm", json=hint(-5.0))
        assert r.json()["errors"][0]["pointer"] == "#/edges/0/at"
        r = await http.post(
            f"/v1/workloads/{wid}/rhythm", json={"edges": [{"at": "soon", "direction": "up"}]}
        )
        assert r.status_code == 422
        pointers = {e["pointer"] for e in r.json()["errors"]}
        assert pointers == {"#/edges/0/at", "#/edges/0/direction"}
        assert (
            await http.post(f"/v1/workloads/{wid}/rhythm", json={"edges": []})
        ).status_code == 422
        many = hint(*[0.1 * i for i in range(1, 18)])
        assert (await http.post(f"/v1/workloads/{wid}/rhythm", json=many)).status_code == 422
        naive = {"edges": [{"at": "2026-12-03T10:00:00", "direction": "fall"}]}
        assert (await http.post(f"/v1/workloads/{wid}/rhythm", json=naive)).status_code == 422
        r = await viewer.post(f"/v1/workloads/{wid}/rhythm", json=hint(0.3))
        assert r.status_code == 403
        assert (await http.post("/v1/workloads/wl_nope/rhythm", json=hint(0.3))).status_code == 404
    assert told == []  # nothing reached the loop
    journal = running.service.journal
    refused = [
        e for e in await journal.call(journal.sync.audit_entries, 0, 100)
        if e["action"] == "workload.rhythm" and e["outcome"] == "refused"
    ]  # fmt: skip
    assert len(refused) == 4  # no rhythm, two out of the window, the viewer
    assert refused[1]["detail"]["field"] == "#/edges/1/at"

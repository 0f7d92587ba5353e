"""``pswd-gateway workload …``: announce, list, show, start, complete, cancel and watch."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.table import Table

from pswd_gateway.client import DEFAULT_URL, ApiError, Event, PswdClient
from pswd_gateway.domain.workloads import Workload, WorkloadState

__all__ = ["workload_app"]

workload_app = typer.Typer(
    no_args_is_help=True,
    help="Talk to the workload API (token from --token or PSWD_API_TOKEN).",
)

UrlOption = Annotated[
    str, typer.Option("--url", envvar="PSWD_API_URL", help="Base URL of the workload API.")
]
TokenOption = Annotated[
    str,
    typer.Option(
        "--token", envvar="PSWD_API_TOKEN", help="Bearer token (demo: pswd-demo-submitter)."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON.")]

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _fail(exc: Exception) -> NoReturn:
    if isinstance(exc, ApiError):
        err.print(f"[red]error[/red] {exc}")
        for problem in exc.problem.get("errors") or []:
            err.print(f"  {problem.get('pointer')}: {problem.get('detail')}")
        for key in ("binding_constraint", "earliest_feasible_start"):
            if exc.problem.get(key):
                err.print(f"  {key}: {exc.problem[key]}")
        raise typer.Exit(1)
    err.print(f"[red]error[/red] cannot reach the API: {exc}")
    raise typer.Exit(3)


def _client(url: str, token: str) -> PswdClient:
    if not token:
        err.print("[red]error[/red] no token: pass --token or set PSWD_API_TOKEN")
        raise typer.Exit(2)
    return PswdClient(url, token)


def _print_workload(workload: Workload) -> None:
    a = workload.announcement
    out.print(f"[bold]{workload.id}[/bold]  {workload.state.value}  owner={workload.owner}")
    out.print(
        f"  {a.workload_type}: peak {a.power_profile.peak_power_mw:g} MW, "
        f"ramp {a.power_profile.ramp_rate_mw_per_sec:g} MW/s, "
        f"{a.power_profile.duration_estimate_sec:g} s, window "
        f"{_t(a.earliest_start)} → {_t(a.timing_constraints.deadline)}"
    )
    alloc = workload.allocation
    if alloc is not None:
        res = alloc.battery_reservation
        out.print(f"  scheduled  {_t(alloc.scheduled_start)} → {_t(alloc.scheduled_end)}")
        out.print(
            f"  carbon     {alloc.expected_carbon_kg:,.0f} kg CO2e "
            f"(run now: {alloc.run_now_carbon_kg:,.0f}; saved {alloc.carbon_saved_kg:,.0f})"
        )
        out.print(f"  battery    {res.power_mw:.1f} MW / {res.energy_mwh:.3f} MWh reserved")
        cool = alloc.cooling_preposition
        out.print(f"  cooling    {cool.chw_supply_setpoint_c:.2f} °C from {_t(cool.start_at)}")
        out.print(
            f"  why        {alloc.explanation.reason} "
            f"[dim](binding: {alloc.explanation.binding_constraint})[/dim]"
        )
    for change in workload.history:
        out.print(f"  [dim]{_t(change.at)}  → {change.state.value}  {change.reason or ''}[/dim]")


def _t(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@workload_app.command("announce")
def announce(
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="JSON body ('-' reads stdin).")
    ] = None,
    workload_type: Annotated[str, typer.Option("--type")] = "ai_training",
    peak_mw: Annotated[float, typer.Option(help="peak_power_mw")] = 200.0,
    ramp_mw_per_s: Annotated[float, typer.Option(help="ramp_rate_mw_per_sec")] = 50.0,
    duration_s: Annotated[float, typer.Option(help="duration_estimate_sec")] = 3600.0,
    start_in_s: Annotated[float, typer.Option(help="earliest_start_time = now + this")] = 60.0,
    window_h: Annotated[float, typer.Option(help="deadline = earliest start + this")] = 12.0,
    name: Annotated[str | None, typer.Option()] = None,
    idempotency_key: Annotated[str | None, typer.Option()] = None,
    as_json: JsonOption = False,
) -> None:
    """Announce a workload (from --file, or from the options) and print its allocation."""
    if file is not None:
        text = sys.stdin.read() if str(file) == "-" else file.read_text()
        try:
            body: dict[str, Any] = json.loads(text)
        except json.JSONDecodeError as exc:
            err.print(f"[red]error[/red] {file}: not JSON: {exc}")
            raise typer.Exit(2) from None
    else:
        start = datetime.now(UTC) + timedelta(seconds=start_in_s)
        body = {
            "workload_type": workload_type,
            "power_profile": {
                "peak_power_mw": peak_mw,
                "ramp_rate_mw_per_sec": ramp_mw_per_s,
                "duration_estimate_sec": duration_s,
            },
            "timing_constraints": {
                "earliest_start_time": start.isoformat(),
                "deadline": (start + timedelta(hours=window_h)).isoformat(),
            },
        }
        if name:
            body["name"] = name
    with _client(url, token) as pswd:
        try:
            workload = pswd.workload.announce(body, idempotency_key=idempotency_key)
        except (ApiError, httpx.HTTPError) as exc:
            _fail(exc)
    if as_json:
        out.print_json(workload.model_dump_json())
    else:
        _print_workload(workload)


@workload_app.command("list")
def list_(
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
    state: Annotated[list[WorkloadState] | None, typer.Option(help="Repeatable.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    as_json: JsonOption = False,
) -> None:
    """List workloads (oldest first)."""
    with _client(url, token) as pswd:
        try:
            page = pswd.workload.list(state, limit=limit)
        except (ApiError, httpx.HTTPError) as exc:
            _fail(exc)
    if as_json:
        out.print_json(json.dumps([w.model_dump(mode="json") for w in page.items]))
        return
    table = Table("id", "state", "owner", "type", "peak MW", "scheduled start", "CO2e kg")
    for w in page.items:
        alloc = w.allocation
        table.add_row(
            w.id,
            w.state.value,
            w.owner,
            w.announcement.workload_type,
            f"{w.announcement.power_profile.peak_power_mw:g}",
            _t(alloc.scheduled_start) if alloc else "-",
            f"{alloc.expected_carbon_kg:,.0f}" if alloc else "-",
        )
    out.print(table)
    if page.next_cursor:
        out.print(f"[dim]more: --limit or cursor {page.next_cursor}[/dim]")


@workload_app.command("show")
def show(
    workload_id: str,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
    as_json: JsonOption = False,
) -> None:
    """One workload with its allocation and history."""
    with _client(url, token) as pswd:
        try:
            workload = pswd.workload.get(workload_id)
        except (ApiError, httpx.HTTPError) as exc:
            _fail(exc)
    if as_json:
        out.print_json(workload.model_dump_json())
    else:
        _print_workload(workload)


def _action(action: str, workload_id: str, url: str, token: str, reason: str | None) -> None:
    with _client(url, token) as pswd:
        try:
            workload = getattr(pswd.workload, action)(workload_id, reason)
        except (ApiError, httpx.HTTPError) as exc:
            _fail(exc)
    out.print(f"{workload.id}  {workload.state.value}")


ReasonOption = Annotated[str | None, typer.Option(help="Why (kept in the history).")]


@workload_app.command("start")
def start(
    workload_id: str,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
    reason: ReasonOption = None,
) -> None:
    """Report that the workload has started."""
    _action("start", workload_id, url, token, reason)


@workload_app.command("complete")
def complete(
    workload_id: str,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
    reason: ReasonOption = None,
) -> None:
    """Report that the workload has finished."""
    _action("complete", workload_id, url, token, reason)


@workload_app.command("cancel")
def cancel(
    workload_id: str,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
    reason: ReasonOption = None,
) -> None:
    """Cancel the workload."""
    _action("cancel", workload_id, url, token, reason)


@workload_app.command("watch")
def watch(
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
    workload: Annotated[str | None, typer.Option(help="Only this workload.")] = None,
    since: Annotated[
        int | None, typer.Option(help="Replay events after this id (0: everything).")
    ] = None,
    count: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
) -> None:
    """Follow state and allocation changes as they happen (Ctrl-C stops)."""
    seen = 0
    with _client(url, token) as pswd:
        try:
            for event in pswd.events(since, workload=workload):
                out.print(_event_line(event))
                seen += 1
                if count is not None and seen >= count:
                    return
        except KeyboardInterrupt:
            return
        except (ApiError, httpx.HTTPError) as exc:
            _fail(exc)


def _event_line(event: Event) -> str:
    at = event.at.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]
    data = event.data
    if event.type == "workload.state_changed":
        old = data.get("from") or "·"
        what = f"[bold]{old} → {data.get('to')}[/bold]"
        if data.get("reason"):
            what += f"  [dim]{data['reason']}[/dim]"
    elif event.type == "workload.announced":
        pp = data.get("announcement", {}).get("power_profile", {})
        what = f"announced  peak {pp.get('peak_power_mw')} MW by {data.get('owner')}"
    elif event.type == "workload.allocation_changed":
        alloc = data.get("allocation", {})
        what = f"re-planned  start {alloc.get('scheduled_start')}"
    else:
        what = json.dumps(data)[:120]
    return f"{event.id:>6}  {at}  {event.workload_id or '-':<20}  {what}"

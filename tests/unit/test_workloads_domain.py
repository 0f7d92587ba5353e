"""The announcement rules and the lifecycle state machine, as tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from pswd_gateway.domain.workloads import (
    TERMINAL_STATES,
    Action,
    Announcement,
    IllegalTransitionError,
    WorkloadState,
    allowed_actions,
    next_state,
)

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def seed_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "workload_type": "ai_training",
        "power_profile": {
            "peak_power_mw": 200,
            "ramp_rate_mw_per_sec": 50,
            "duration_estimate_sec": 3600,
        },
        "timing_constraints": {
            "earliest_start_time": "2026-11-25T14:00:00Z",
            "deadline": "2026-11-25T20:00:00Z",
        },
    }
    for path, value in changes.items():
        node = body
        *parents, leaf = path.split("__")
        for p in parents:
            node = node[p]
        if value is ...:
            del node[leaf]
        else:
            node[leaf] = value
    return body


def test_the_seed_example_is_a_valid_announcement() -> None:
    a = Announcement.model_validate(seed_body())
    assert a.power_profile.mean_power_mw() == 200
    assert a.latest_start == datetime(2026, 11, 25, 19, 0, tzinfo=UTC)


S, A = WorkloadState, Action
LEGAL = [
    (S.ANNOUNCED, A.SCHEDULE, S.SCHEDULED),
    (S.ANNOUNCED, A.CANCEL, S.CANCELLED),
    (S.ANNOUNCED, A.FAIL, S.FAILED),
    (S.SCHEDULED, A.SCHEDULE, S.SCHEDULED),
    (S.SCHEDULED, A.PREPARE, S.PREPARING),
    (S.SCHEDULED, A.START, S.RUNNING),
    (S.SCHEDULED, A.CANCEL, S.CANCELLED),
    (S.SCHEDULED, A.EXPIRE, S.EXPIRED),
    (S.PREPARING, A.MAKE_READY, S.READY),
    (S.PREPARING, A.START, S.RUNNING),
    (S.PREPARING, A.CANCEL, S.CANCELLED),
    (S.PREPARING, A.EXPIRE, S.EXPIRED),
    (S.READY, A.START, S.RUNNING),
    (S.READY, A.CANCEL, S.CANCELLED),
    (S.READY, A.EXPIRE, S.EXPIRED),
    (S.RUNNING, A.COMPLETE, S.COMPLETED),
    (S.RUNNING, A.FAIL, S.FAILED),
    (S.RUNNING, A.CANCEL, S.CANCELLED),
]


@pytest.mark.parametrize(("state", "action", "after"), LEGAL)
def test_every_legal_transition_lands_where_the_table_says(
    state: WorkloadState, action: Action, after: WorkloadState
) -> None:
    assert next_state(state, action) is after


ILLEGAL = [
    (state, action)
    for state in WorkloadState
    for action in Action
    if (state, action) not in {(s, a) for s, a, _ in LEGAL}
]


@pytest.mark.parametrize(("state", "action"), ILLEGAL)
def test_every_other_transition_is_refused_with_the_allowed_ones_named(
    state: WorkloadState, action: Action
) -> None:
    with pytest.raises(IllegalTransitionError) as info:
        next_state(state, action)
    assert f"cannot {action.value} a workload that is {state.value}" in str(info.value)


def test_final_states_allow_nothing() -> None:
    assert {S.COMPLETED, S.CANCELLED, S.FAILED, S.EXPIRED} == TERMINAL_STATES
    for state in TERMINAL_STATES:
        assert allowed_actions(state) == ()


INVALID = [
    ("power_profile__peak_power_mw", 0, "power_profile.peak_power_mw", "greater_than"),
    ("power_profile__peak_power_mw", -5, "power_profile.peak_power_mw", "greater_than"),
    (
        "power_profile__ramp_rate_mw_per_sec",
        0,
        "power_profile.ramp_rate_mw_per_sec",
        "greater_than",
    ),
    (
        "power_profile__duration_estimate_sec",
        -1,
        "power_profile.duration_estimate_sec",
        "greater_than",
    ),
    (
        "timing_constraints__deadline",
        "2026-11-25T13:00:00Z",
        "timing_constraints",
        "deadline_before_start",
    ),
    ("timing_constraints__deadline", "2026-11-25T14:30:00Z", "", "longer_than_window"),
    (
        "timing_constraints__earliest_start_time",
        "2026-11-25T14:00:00",
        "timing_constraints.earliest_start_time",
        "timezone_aware",
    ),
    ("surprise", 1, "surprise", "extra_forbidden"),
    ("power_profile__watts", 1, "power_profile.watts", "extra_forbidden"),
    ("workload_type", "AI Training!", "workload_type", "string_pattern_mismatch"),
    ("power_profile__idle_power_mw", 250, "power_profile", "above_peak"),
    ("power_profile__oscillation_period_sec", 2.5, "power_profile", "incomplete_oscillation"),
    ("power_profile__oscillation_duty", 0.75, "power_profile", "incomplete_oscillation"),
    ("power_profile__ramp_rate_mw_per_sec", 1e-9, "power_profile", "ramp_longer_than_run"),
    ("power_profile", ..., "power_profile", "missing"),
]


@pytest.mark.parametrize(("change", "value", "loc", "rule"), INVALID)
def test_each_validation_rule_names_its_field_and_rule(
    change: str, value: Any, loc: str, rule: str
) -> None:
    with pytest.raises(ValidationError) as info:
        Announcement.model_validate(seed_body(**{change: value}))
    errors = info.value.errors()
    assert [e["type"] for e in errors] == [rule]
    assert ".".join(str(p) for p in errors[0]["loc"]) == loc


def test_time_series_profiles_give_an_energy_mean_and_must_be_ordered() -> None:
    body = seed_body(
        power_profile__time_series=[
            {"offset_sec": 0, "power_mw": 100},
            {"offset_sec": 1800, "power_mw": 200},
        ]
    )
    assert Announcement.model_validate(body).power_profile.mean_power_mw() == 150
    body["power_profile"]["time_series"].append({"offset_sec": 900, "power_mw": 50})
    with pytest.raises(ValidationError, match="strictly increasing"):
        Announcement.model_validate(body)


def test_oscillation_lowers_the_mean_by_half_the_depth() -> None:
    body = seed_body(
        power_profile__oscillation_period_sec=2.5, power_profile__oscillation_depth_mw=160
    )
    assert Announcement.model_validate(body).power_profile.mean_power_mw() == 120


@pytest.mark.parametrize(("duty", "mean"), [(0.75, 160.0), (0.5, 120.0), (0.25, 80.0)])
def test_a_duty_places_the_mean_within_the_rhythm(duty: float, mean: float) -> None:
    """Computing for three quarters of each period at 200 MW and communicating at 40 MW for
    the rest averages 160 MW, not the midpoint."""
    body = seed_body(
        power_profile__oscillation_period_sec=2.5,
        power_profile__oscillation_depth_mw=160,
        power_profile__oscillation_duty=duty,
    )
    profile = Announcement.model_validate(body).power_profile
    assert profile.mean_power_mw() == pytest.approx(mean)
    assert profile.level_mw() == pytest.approx(mean)


@pytest.mark.parametrize("duty", [0.0, 1.0, -0.1, 1.5])
def test_a_duty_is_a_share_strictly_between_nothing_and_all(duty: float) -> None:
    body = seed_body(
        power_profile__oscillation_period_sec=2.5,
        power_profile__oscillation_depth_mw=160,
        power_profile__oscillation_duty=duty,
    )
    with pytest.raises(ValidationError) as info:
        Announcement.model_validate(body)
    assert info.value.errors()[0]["loc"] == ("power_profile", "oscillation_duty")


def test_the_demo_announces_the_twins_job_as_it_runs() -> None:
    """The ML platform's announcement and the twin's job agree: peak, ramp, period, depth and
    duty (a mean promised below the real one left the plan climbing after the job's start; a
    ramp of 50 MW/s promised for a 40 ms edge spread the start's feed-forward over 4 s)."""
    from pswd_gateway.config import DEFAULT_CONFIG, load_config  # noqa: PLC0415
    from pswd_gateway.ml_platform import DEMO_JOB, demo_job_level_mw, trace_job  # noqa: PLC0415

    job = trace_job(load_config(DEFAULT_CONFIG).simulation)
    assert job is not None
    profile = DEMO_JOB["power_profile"]
    assert profile["peak_power_mw"] == job.peak_mw
    edge_s = max(job.ramp_up_s, job.edge_ms / 1000.0)
    assert profile["ramp_rate_mw_per_sec"] == pytest.approx(job.peak_mw / edge_s)
    assert profile["oscillation_period_sec"] == job.period_s
    assert profile["oscillation_depth_mw"] == pytest.approx(job.peak_mw * job.depth)
    assert profile["oscillation_duty"] == job.duty
    assert demo_job_level_mw() == pytest.approx(job.peak_mw * (1 - job.depth * (1 - job.duty)))


def test_window_helpers() -> None:
    a = Announcement.model_validate(seed_body())
    assert a.earliest_start == T0 + timedelta(hours=2)
    assert a.duration == timedelta(hours=1)

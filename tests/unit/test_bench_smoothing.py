"""``bench smoothing``: its inputs are validated, and its three runs report every figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pswd_gateway.bench.smoothing import load_announcements, load_trace_csv, run_smoothing
from pswd_gateway.errors import ConfigError

KEYS = {
    "max_grid_ramp_mw_per_s",
    "ramp_limit_violations",
    "band_energy_ratio",
    "bess_throughput_mwh",
    "bess_capacity_needed_mwh",
    "soc_min",
    "soc_max",
}


def step_trace(path: Path) -> Path:
    lines = ["t_s,it_power_mw"]
    for i in range(9000):  # 90 s at 10 ms: 20 MW, then 200 MW with 40 ms edges from 60 s
        t = i * 0.01
        mw = 20.0 if t < 60.0 else (200.0 if int((t - 60.0) / 1.25) % 2 == 0 else 60.0)
        lines.append(f"{t:.2f},{mw}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_step_trace_with_its_announcement_gives_every_figure(tmp_path: Path) -> None:
    trace = step_trace(tmp_path / "trace.csv")
    ann = tmp_path / "ann.json"
    ann.write_text(
        json.dumps(
            [
                {
                    "announced_at_s": 0,
                    "start_s": 60,
                    "peak_power_mw": 200,
                    "ramp_rate_mw_per_sec": 5000,
                    "duration_estimate_sec": 600,
                }
            ]
        )
    )
    result = run_smoothing(trace, ann, ideal=True)
    for run in ("predictive", "reactive", "optimum"):
        assert set(result[run]) >= KEYS
    assert result["predictive"]["ramp_limit_violations"] == 0
    assert result["optimum"]["ramp_limit_violations"] == 0
    pred, reac = result["predictive"], result["reactive"]
    # announced, the grid is at the job's level when it starts; unannounced, the step breaks
    # the limit until the limiter catches up
    assert reac["ramp_limit_violations"] > 0
    assert pred["max_grid_ramp_mw_per_s"] < reac["max_grid_ramp_mw_per_s"]
    assert result["setup"]["announcements"] == 1


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("time,power\n0,1\n1,2\n", "line 1"),
        ("t_s,it_power_mw\n0,1\n0,2\n", "line 3"),
        ("t_s,it_power_mw\n0,1\n1,x\n", "line 3"),
        ("t_s,it_power_mw\n0,-1\n1,2\n", "line 2"),
    ],
)
def test_a_bad_trace_names_the_line(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_trace_csv(path)
    assert err.value.problems[0][0] == where


def test_bad_announcements_name_the_entry_and_field(tmp_path: Path) -> None:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps([{"announced_at_s": 0, "start_s": 1, "peak_power_mw": -5}]))
    with pytest.raises(ConfigError) as err:
        load_announcements(path)
    where = {p for p, _ in err.value.problems}
    assert "/0/peak_power_mw" in where
    assert "/0/ramp_rate_mw_per_sec" in where


def test_the_realistic_runs_go_through_the_twins_imperfections_and_the_guard(
    tmp_path: Path,
) -> None:
    """The default: the whole loop against the twin's physics, meters and faults."""
    lines = ["t_s,it_power_mw"]
    for i in range(3000):  # 30 s: 20 MW, then a 1.2 s rhythm of 20 to 80 MW from 15 s
        t = i * 0.01
        lines.append(f"{t:.2f},{20.0 if t < 15.0 or int((t - 15.0) / 0.6) % 2 else 80.0}")
    trace = tmp_path / "trace.csv"
    trace.write_text("\n".join(lines) + "\n")
    result = run_smoothing(trace, None, with_optimum=False)
    assert result["setup"]["measurements"].startswith("realistic")
    for run in ("predictive", "reactive"):
        assert set(result[run]) >= KEYS
        assert result[run]["guard_trips"] == 0
    # the battery took the rhythm: far less of it reaches the grid
    assert result["reactive"]["band_energy_ratio"] < 0.2

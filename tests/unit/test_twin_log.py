"""Reading a twin's start from its log: a log appended to by several runs."""

from __future__ import annotations

import json
from pathlib import Path

from pswd_gateway.simulation.twin import started_at


def test_only_a_twin_that_started_since_counts(tmp_path: Path) -> None:
    """The demo appends every run to one log: an earlier run's start must not pass for this
    run's when this twin failed to bind its ports (another process held them)."""
    log = tmp_path / "twin.log"
    lines = [
        {"event": "redfish_twin_started", "port": 8000},
        {"event": "twin_started", "posix_start": 1000.0},
        {"event": "Failed to start server [Errno 98] address already in use"},
    ]
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert started_at(log) == 1000.0
    assert started_at(log, since=999.0) == 1000.0
    assert started_at(log, since=2000.0) is None
    assert started_at(tmp_path / "missing.log") is None

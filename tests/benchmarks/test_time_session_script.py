"""scripts/gpu/time_session.sh: the script parses, and a bad phase gets one line naming the valid ones (its phases run
at tiny size on a CPU with TIME_SESSION_SMOKE=1; that takes minutes, so it is checked by hand, not here)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu" / "time_session.sh"


def test_the_script_parses_and_names_its_phases(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    done = subprocess.run(["bash", str(SCRIPT), "timings"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "OUT": str(tmp_path / "out")})
    assert done.returncode == 2
    assert "unknown phase timings (valid: prepare, check, bench, time, profiles, time7b)" in done.stderr
    assert not (tmp_path / "runs").exists()  # nothing written for a bad phase

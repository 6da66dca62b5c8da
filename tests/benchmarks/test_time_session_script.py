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
    assert "unknown phase timings (valid: prepare, check, bench, time, profiles, time7b, backward)" in done.stderr
    assert not (tmp_path / "runs").exists()  # nothing written for a bad phase


def test_a_phase_runs_the_machines_python3_when_python_is_not_named(tmp_path):
    """On the GPU machine PYTHON is unset and the phases call the machine's python3; the script's python3 wrapper
    called itself instead until bash crashed (exit 139 on an H200, 2026-11-26)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("python3", 'echo "machine python3 $1"'), ("nvidia-smi", "echo 'name, memory.total'")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env.update(OUT=str(tmp_path / "out"), PATH=f"{bin_dir}:{os.environ['PATH']}")
    done = subprocess.run(["bash", str(SCRIPT), "check"], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-500:]
    assert "machine python3 -c" in done.stdout

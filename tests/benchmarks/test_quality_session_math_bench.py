"""quality_session.sh math-bench / math-bench-wait: issue 15's generation benchmark on a lent machine, run for real
at tiny size (a random tiny Llama on the CPU)."""
from __future__ import annotations

import json
import subprocess

from tests.benchmarks.test_quality_session_scripts import REPO, _session_env


def test_math_bench_phase_runs_the_generation_benchmark_alone_and_packs_it_without_samples(tmp_path):
    """math-bench (issue 15's benchmark on a lent machine): after the join and conversion (stood in for here: tested
    above for the math pieces) it starts benchmarks/math_generation.py in the background and follows it;
    math-bench-wait packs its JSON, summary and log into $OUT/math-bench.tgz, leaving the samples out; a second
    math-bench on the same folder is refused by the benchmark (a resumed run would not be timed)."""
    import tarfile

    env = {**_session_env(tmp_path), "BENCH_BATCH": "2", "FOLLOW_POLL_S": "1",
           "BENCH_ARGS": "--limit 1 --device cpu --max-new-tokens 4 --threads 1"}
    (tmp_path / ".gpu" / "shared" / "data").mkdir(parents=True)
    (tmp_path / ".gpu" / "shared" / "data" / "math_eval").symlink_to(REPO.parent / "shared" / "data" / "math_eval")
    script = REPO / "scripts" / "gpu" / "quality_session.sh"
    phase = (f"source '{script}' math-bench\n"
             "join_packaged() { echo \"stand-in: $1 joined\"; }\nconvert_model() { :; }\n"
             "math_alias=random:tiny-llama\n"
             "math_bench_phase 120\n").replace("{script}", str(script))
    done = subprocess.run(["bash", "-c", phase], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    done = subprocess.run(["bash", str(script), "math-bench-wait", "60"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "math bench done, exit code 0" in done.stdout
    with tarfile.open(tmp_path / "out" / "math-bench.tgz") as packed:
        names = set(packed.getnames())
    assert {"math_generation_h100/math_generation.json", "math_generation_h100/summary.md", "math_bench.log"} <= names
    assert not [name for name in names if name.endswith(".jsonl")]
    bench = json.loads((tmp_path / "runs" / "quality-gpu" / "math_generation_h100" / "math_generation.json")
                       .read_text())
    assert bench["items"] == 6 and bench["settings"]["batch_size"] == 2

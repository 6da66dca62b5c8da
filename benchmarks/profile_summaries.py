"""Write the profile summaries again from the committed profile records, with the current reading of them
(benchmarks/profiling.py): kernel totals without the ranges' device spans, each phase's device time with its source.

    python benchmarks/profile_summaries.py results/bench/badam_vs_official_v3 results/bench/profiles_issue17/*

A folder is either
  * a badam_vs_official.py output (summary.md and profiles/profile_<name>_K*.json): the diffs
    profiles/profile_diff_*.md and summary.md's profile section are written again (the rest of summary.md is kept);
  * a profile_step.py output (profile_<method>.json and where_time_goes_<method>.json): where_time_goes_<method>.md
    and .json are written again. A where_time_goes json of an older profile lacks the run's name, model and
    parameter count; they are read once from its where_time_goes_<method>.md (profile_step wrote them there) and kept
    in the json from then on.
In both, each profile_*.json keeps its records and gets its derived fields (phases, kernel_ms_per_step,
kernels_per_step) recomputed. Nothing is measured: the records are what the GPU run wrote.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):  # run as a script from a bare checkout
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import profiling  # noqa: E402


def refresh_profile(path: Path) -> dict:
    """The profile document at path with its derived fields recomputed from its records (rewritten when they change)."""
    doc = json.loads(path.read_text())
    fresh = {**doc, **profiling.summarise(doc)}
    if fresh != doc:
        path.write_text(json.dumps(fresh, indent=1))
    return fresh


RUN_LINE = re.compile(r"^- run: (?P<run>[^,\n]+)(?:, model (?P<model>[^,\n]+))?, device (?P<device>.+)$", re.M)
PARAMETERS = re.compile(r"every one of the (\d+) parameters")


def facts_from_markdown(facts: dict, text: str) -> dict:
    """facts completed with the run name, model, device and parameter count of an older where_time_goes md."""
    out = dict(facts)
    match = RUN_LINE.search(text)
    if match:
        out.setdefault("run_name", match["run"])
        out.setdefault("model", match["model"])
        out.setdefault("device_name", match["device"].strip())
    params = PARAMETERS.search(text)
    if params:
        out.setdefault("parameters", int(params[1]))
    return out


def bench_folder(folder: Path) -> list[Path]:
    """badam_vs_official output: refreshed profiles, diffs and summary.md's profile section; the files written."""
    import badam_vs_official

    profiles = folder / "profiles"
    for path in sorted(profiles.glob("profile_*_K*.json")):
        refresh_profile(path)
    diffs = badam_vs_official.profile_diffs(profiles)
    summary = folder / "summary.md"
    summary.write_text(badam_vs_official.with_profile_section(summary.read_text(), diffs))
    return [summary, *sorted(profiles.glob("profile_diff_*.md"))]


def profile_step_folder(folder: Path) -> list[Path]:
    """profile_step output: refreshed profile and where_time_goes md / json; the files written."""
    import profile_step

    written = []
    for facts_path in sorted(folder.glob("where_time_goes_*.json")):
        method = facts_path.stem[len("where_time_goes_"):]
        doc = refresh_profile(folder / f"profile_{method}.json")
        facts = {k: v for k, v in json.loads(facts_path.read_text()).items() if k not in ("phases", "steps")}
        markdown = folder / f"where_time_goes_{method}.md"
        if markdown.is_file():
            facts = facts_from_markdown(facts, markdown.read_text())
        profile_step.write_where_time_goes(folder, method, doc, facts)
        written += [markdown, facts_path]
    return written


def kind_of(folder: Path) -> str | None:
    if (folder / "summary.md").is_file() and any((folder / "profiles").glob("profile_*_K*.json")):
        return "bench"
    methods = [p.stem[len("where_time_goes_"):] for p in folder.glob("where_time_goes_*.json")]
    if methods and all((folder / f"profile_{m}.json").is_file() for m in methods):
        return "profile_step"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="badam_vs_official or profile_step output folders")
    args = parser.parse_args(argv)
    kinds = {folder: kind_of(folder) for folder in args.folders}
    unknown = [str(folder) for folder, kind in kinds.items() if kind is None]
    if unknown:  # checked before anything is written
        print(f"error: {', '.join(unknown)}: not a badam_vs_official output (summary.md and "
              "profiles/profile_<name>_K*.json) nor a profile_step output (where_time_goes_<method>.json with its "
              "profile_<method>.json); nothing written", file=sys.stderr)
        return 2
    for folder, kind in kinds.items():
        written = bench_folder(folder) if kind == "bench" else profile_step_folder(folder)
        print(f"{folder}: wrote {', '.join(p.name for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

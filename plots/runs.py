"""Reading run directories: summary.json, metrics.jsonl and the evaluators' JSON files (no torch here).

Layout (docs/DESIGN.md): results/<group>/<run>/summary.json, metrics.jsonl (or metrics.jsonl.gz), config.yaml,
eval/*.json. Every field used by the tables is read through this module, so a schema change is fixed in one place.

Bad files never stop the tables: a summary.json that is not valid JSON, lacks status / method / model or has an unknown
status skips its run; an evaluator file (eval/*.json) of the wrong shape, or a torn line inside metrics.jsonl, leaves
that part of the run out. Each is named with the reason (discover_runs' `skipped`, Run.problems); `python -m plots`
prints them and lists them in index.md.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd

from experiments.results import STATUSES, finite_number, read_metrics  # plain file reading; imports no torch
from experiments.rundir import RUN_SUBDIRS, SUMMARY_FILE, SUPERSEDED_DIR, RunDir
from plots.result_types import check_metric_types, summary_type_problem
from plots.timing import SoloTiming, attach_solo_timings


# The paper's six math datasets (Table 6) as math_scores() names them: eval.math.PAPER_DATASETS with "sat" shown as
# "sat_math" (not imported: importing eval.math loads torch, and plots/ never does).
PAPER_MATH_DATASETS = ("gsm8k", "math", "aqua", "numglue", "sat_math", "mmlu_math")


@dataclass(frozen=True)
class JudgedScore:
    """A run's overall MT-bench score from one judge: the mean over `n_scored` rated judgments of `n_judged`
    (the rest gave no rating), with the standard error of that mean (eval.mtbench.aggregate); None where unknown."""
    judge: str
    overall: float
    se: float | None
    n_scored: int | None
    n_judged: int | None


def _judgment_file(scores_path: Path, doc: dict, judge: str) -> Path | None:
    """The judgment file a scores file was computed from: its `judgment_file`, relative to the scores file (or an
    absolute path that exists here); else where eval.mtbench puts it, <scores dir>/model_judgment/<judge>_single.jsonl
    (older scores files hold the absolute path of the machine that judged)."""
    named = doc.get("judgment_file")
    candidates = [scores_path.parent / named] if isinstance(named, str) and named else []
    candidates.append(scores_path.parent / "model_judgment" / f"{judge}_single.jsonl")
    return next((path for path in candidates if path.is_file()), None)


class ResultsError(ValueError):
    """A results directory or file that cannot be read (the message names the file and the problem)."""


def load_json_object(path: Path) -> tuple[dict | None, str | None]:
    """(the JSON object in `path`, None) or (None, what is wrong with the file)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot be read ({exc})"
    except json.JSONDecodeError as exc:
        return None, f"is not valid JSON ({exc}; a half-written file?)"
    if not isinstance(data, dict):
        return None, f"holds a JSON {type(data).__name__}, not an object"
    return data, None


def _is_mapping_of(value, item_type) -> bool:
    return isinstance(value, dict) and all(isinstance(v, item_type) for v in value.values())


# Shape checks of the evaluator files the tables read (relative path under <run>/eval/ -> (check, what is expected)).
EVAL_SHAPES = {
    "math.json": (lambda d: _is_mapping_of(d.get("datasets"), dict), "a 'datasets' mapping of per-dataset objects"),
    "superglue.json": (lambda d: _is_mapping_of(d.get("tasks"), dict), "a 'tasks' mapping of per-task objects"),
    "rank.json": (lambda d: isinstance(d.get("matrices"), list) and isinstance(d.get("by_type"), dict),
                  "'matrices' (a list) and 'by_type' (a mapping)"),
}
MTBENCH_SHAPE = (lambda d: _is_mapping_of(d.get("models"), dict) and len(d["models"]) == 1,
                 "a 'models' mapping with this run's one model")


def summary_problem(summary: dict) -> str | None:
    """Why a summary.json cannot stand for a run (None when it can)."""
    status = summary.get("status")
    if status is None:
        return "has no 'status'"
    if status not in STATUSES:
        return f"has an unknown status {status!r} (valid: {', '.join(STATUSES)})"
    config = summary.get("config") if isinstance(summary.get("config"), dict) else {}
    sections = {k: (config.get(k) if isinstance(config.get(k), dict) else {}) for k in ("method", "model")}
    if not (summary.get("method") or sections["method"].get("name")):
        return "names no method ('method' or config.method.name)"
    if not (summary.get("model") or sections["model"].get("source")):
        return "names no model ('model' or config.model.source)"
    return summary_type_problem(summary)


@dataclass
class Run:
    path: Path
    group: str
    summary: dict = field(repr=False)
    problems: list[str] = field(default_factory=list, repr=False)  # parts of the run left out, with the reason
    # a run that shared its device: the median step time of a solo timing run of its setting (plots.timing)
    solo_timing: SoloTiming | None = field(default=None, repr=False)
    # every solo timing of the run's step key, its own included when it ran alone (plots.timing.attach_solo_timings)
    step_timings: list = field(default_factory=list, repr=False)

    def _left_out(self, what: str, why: str) -> None:
        message = f"{self.path}: {what} left out: {why}"
        if message not in self.problems:
            self.problems.append(message)

    # --- summary fields ------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.summary.get("run_name") or self.path.name

    @property
    def status(self) -> str:
        return self.summary.get("status", "error")

    @property
    def shared_device_runs(self) -> int:
        """The most runs that shared this run's device (run_all --jobs): above 1 its step times are not measured."""
        return int((self.summary.get("environment") or {}).get("shared_device_runs") or 1)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def config(self) -> dict:
        return self.summary.get("config") or {}

    @property
    def method(self) -> str:
        return str(self.summary.get("method") or self.config.get("method", {}).get("name", "?"))

    @property
    def method_options(self) -> dict:
        """Options of the run's method: from method_info (what ran), else the resolved config's method section."""
        info = (self.summary.get("method_info") or {}).get("options")
        if info:
            return info
        return {k: v for k, v in self.config.get("method", {}).items() if k not in ("name", "lr", "weight_decay")}

    @property
    def model(self) -> str:
        return str(self.summary.get("model") or self.config.get("model", {}).get("source", "?"))

    @property
    def lr(self) -> float | None:
        value = (self.summary.get("method_info") or {}).get("lr", self.config.get("method", {}).get("lr"))
        return None if value is None else float(value)

    @property
    def train(self) -> dict:
        return self.config.get("train") or {}

    @property
    def seed(self) -> int | None:
        """config.seed: what tells apart runs that are otherwise the same (plots.seeds)."""
        value = self.config.get("seed")
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def nonfinite(self, key: str) -> str | None:
        """"inf" / "-inf" / "nan" when summary.json recorded `key` as a non-finite number (null with a "nonfinite"
        entry: docs/DESIGN.md, strict JSON); None otherwise."""
        recorded = self.summary.get("nonfinite") if isinstance(self.summary.get("nonfinite"), dict) else {}
        kind = recorded.get(key)
        return kind if self.summary.get(key) is None and isinstance(kind, str) else None

    @property
    def final_eval_loss(self) -> float | None:
        """Held-out loss at the end of training (summary.json's final_eval_loss); None when not measured."""
        return finite_number(self.summary.get("final_eval_loss"))

    @property
    def epochs_trained(self) -> float | None:
        """Epochs of data the run saw: steps x planned epochs / planned steps (None for step-limited runs)."""
        steps, planned, epochs = self.summary.get("steps"), self.summary.get("planned_steps"), self.train.get("epochs")
        if not steps or not planned or not epochs or self.train.get("max_steps"):
            return None
        return steps * float(epochs) / planned

    @property
    def device_name(self) -> str:
        return str((self.summary.get("environment") or {}).get("device_name", "unknown device"))

    @property
    def date(self) -> str:
        return str((self.summary.get("environment") or {}).get("date", ""))

    @property
    def tags(self) -> dict:
        """summary["tags"] as a dict; a list of "key=value" strings (or bare words, read as key=True) is accepted."""
        tags = self.summary.get("tags") or {}
        if isinstance(tags, dict):
            return tags
        out = {}
        for item in tags:
            key, _, value = str(item).partition("=")
            out[key.strip()] = value.strip() if value else True
        return out

    def timing_ms(self, phase: str) -> float | None:
        value = (self.summary.get("timing_ms") or {}).get(phase)
        return None if value is None else float(value)

    def memory_bytes(self, part: str) -> int | None:
        """'peak_allocated' / 'peak_reserved', or a split part (parameters, gradients, optimizer_states, ...)."""
        memory = self.summary.get("memory") or {}
        if part in ("peak_allocated", "peak_reserved"):
            value = memory.get(f"{part}_bytes")
        else:
            value = (memory.get("split_bytes") or {}).get(part)
        return None if value is None else int(value)

    @property
    def epoch(self) -> int | None:
        """Which epoch's checkpoint this run is: steps taken x planned epochs / planned steps, rounded.

        A per-epoch checkpoint of a 3-epoch schedule is a run with train.epochs = 3 that stopped after k epochs'
        worth of steps (train.stop_after_steps), so its learning-rate schedule is the full run's."""
        if "epoch" in self.tags:
            return int(self.tags["epoch"])
        steps, planned = self.summary.get("steps"), self.summary.get("planned_steps")
        epochs = self.train.get("epochs")
        if not steps or not planned or not epochs or self.train.get("max_steps"):
            return None
        return max(1, round(steps * float(epochs) / planned))

    # --- files -----------------------------------------------------------------------------------------------
    @cached_property
    def metrics(self) -> pd.DataFrame:
        """metrics.jsonl (or metrics.jsonl.gz when only that is there: RunDir.metrics_to_read) as a frame (empty if
        absent); a torn last line is skipped (the harness's own reader); a torn line before the last means the file is
        corrupt: the run's curves are left out (Run.problems says so)."""
        path = RunDir(self.path).metrics_to_read()
        try:
            records = read_metrics(self.path)
            check_metric_types(records)
            if not records and self.summary.get("steps") and path.is_file():
                raise ValueError(f"it holds no step record, though summary.json says {self.summary['steps']} steps")
            return pd.DataFrame(records)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            self._left_out(f"{path.name} (its curves)", str(exc).replace(f"{path}: ", ""))
            return pd.DataFrame()

    def curve(self) -> pd.DataFrame:
        """Per optimizer step: step, loss (online training loss), hours (cumulative sum of step times: training
        time without evaluation) and eval_loss (held-out loss, NaN between evaluations). One row per step: the
        last record of a step wins (an evaluation is appended to its step's record). A run that shared its device
        has no measured time: hours = step x its solo timing run's median step time (plots.timing), NaN without
        one."""
        frame = self.metrics
        if frame.empty or "step" not in frame or "loss" not in frame:
            return pd.DataFrame(columns=["step", "loss", "hours", "eval_loss"])
        frame = frame.drop_duplicates("step", keep="last").sort_values("step")
        hours = frame["t_step_ms"].fillna(0).cumsum() / 3.6e6 if "t_step_ms" in frame else float("nan")
        if self.shared_device_runs > 1:  # time-sliced with other runs: its own step times are not measurements
            solo = self.solo_timing
            hours = frame["step"].astype(float) * solo.step_ms / 3.6e6 if solo is not None else float("nan")
        eval_loss = frame["eval_loss"] if "eval_loss" in frame else float("nan")
        return pd.DataFrame({"step": frame["step"].astype(int), "loss": frame["loss"].astype(float),
                             "hours": hours, "eval_loss": eval_loss}).reset_index(drop=True)

    def eval_json(self, relative: str) -> dict | None:
        """<run>/eval/<relative> as a dict; None when absent, unreadable or of the wrong shape (then the problem is
        recorded in Run.problems and this evaluator's numbers are left out of the tables)."""
        path = RunDir(self.path).eval_dir / relative
        if not path.is_file():
            return None
        doc, problem = load_json_object(path)
        if problem is not None:
            self._left_out(f"eval/{relative}", f"the file {problem}")
            return None
        check = EVAL_SHAPES.get(relative)
        if check is not None and not check[0](doc):
            self._left_out(f"eval/{relative}", f"expected {check[1]}")
            return None
        return doc

    # --- evaluator outputs -----------------------------------------------------------------------------------
    def _math_datasets(self) -> dict[str, dict] | None:
        """eval/math.json's per-dataset entries under the names the tables use (eval.math's 'sat' is 'sat_math')."""
        doc = self.eval_json("math.json")
        if doc is None:
            return None
        rename = {"sat": "sat_math"}
        return {rename.get(name, name): entry for name, entry in (doc.get("datasets") or {}).items()}

    def math_scores(self) -> dict[str, float] | None:
        """eval/math.json → {gsm8k, aqua, mmlu_math, sat_math, math, numglue, average} in percent. `average` is the
        paper's: the mean over its six datasets by name, present only when all six were evaluated; other datasets in
        the file (task files of one's own) are listed under their names and never enter it."""
        datasets = self._math_datasets()
        if datasets is None:
            return None
        out = {name: float(entry["accuracy_pct"])
               for name, entry in datasets.items() if entry.get("accuracy_pct") is not None}
        six = [out.get(name) for name in PAPER_MATH_DATASETS]
        if all(value is not None for value in six):
            out["average"] = statistics.fmean(six)
        return out

    def math_subsets(self) -> dict[str, int]:
        """{dataset (as math_scores names it): items scored} for the datasets eval/math.json evaluated on a subset
        (its `limit`: one number for all, or {dataset: number}, eval.math spreading the items evenly over the file)."""
        doc = self.eval_json("math.json")
        limit = (doc or {}).get("limit")
        if not limit:
            return {}
        rename = {"sat": "sat_math"}
        return {rename.get(name, name): int(entry["total"]) for name, entry in doc["datasets"].items()
                if (limit.get(name) if isinstance(limit, dict) else limit) is not None and "total" in entry}

    def math_totals(self) -> dict[str, int]:
        """{dataset: items scored} for every dataset of eval/math.json that says how many (its `total`)."""
        return {name: int(entry["total"]) for name, entry in (self._math_datasets() or {}).items()
                if isinstance(entry.get("total"), int) and entry["total"] > 0}

    @cached_property
    def mtbench_judged(self) -> dict[str, JudgedScore]:
        """{judge: its JudgedScore} from every eval/mtbench/scores_<judge>.json, GPT-4 judges first."""
        folder = RunDir(self.path).eval_dir / "mtbench"
        files = sorted(folder.glob("scores_*.json")) if folder.is_dir() else []
        files.sort(key=lambda p: (not p.stem.startswith("scores_gpt-4"), p.name))
        out: dict[str, JudgedScore] = {}
        for path in files:
            doc = self.eval_json(str(path.relative_to(RunDir(self.path).eval_dir)))
            if doc is None:
                continue
            if not MTBENCH_SHAPE[0](doc):
                self._left_out(f"eval/mtbench/{path.name}", f"expected {MTBENCH_SHAPE[1]}")
                continue
            model, entry = next(iter(doc["models"].items()))
            overall = entry.get("overall")
            if overall is not None and (isinstance(overall, bool) or not isinstance(overall, (int, float))):
                self._left_out(f"eval/mtbench/{path.name}", f"overall score {overall!r} is not a number")
                continue
            judge = str(doc.get("judge", path.stem[len("scores_"):]))
            if overall is not None and judge not in out:
                out[judge] = self._judged_score(path, doc, judge, model, entry)
        return out

    def _judged_score(self, path: Path, doc: dict, judge: str, model: str, entry: dict) -> JudgedScore:
        """The score with its standard error and counts; a scores file written before eval.mtbench recorded them
        gets them from its judgment file (eval.mtbench.aggregate, the same arithmetic)."""
        if "overall_se" not in entry or "n_scored" not in entry:
            judgments = _judgment_file(path, doc, judge)
            if judgments is None and doc.get("judgment_file"):
                self._left_out(f"the standard error of eval/mtbench/{path.name}",
                               f"its judgment file {doc['judgment_file']} is not there (nor model_judgment/"
                               f"{judge}_single.jsonl beside it)")
            elif judgments is not None:
                from eval.mtbench.aggregate import summarize_single  # pandas only; no torch
                from eval.mtbench.data import MTBenchError
                try:
                    entry = {**summarize_single(judgments, judge_model=judge, models=[model])["models"][model],
                             "overall": entry["overall"]}
                except (MTBenchError, OSError, ValueError, KeyError) as exc:
                    self._left_out(f"the standard error of eval/mtbench/{path.name}", str(exc))
        scored = entry.get("n_scored")
        unparseable = entry.get("n_unparseable")
        return JudgedScore(judge, float(entry["overall"]), finite_number(entry.get("overall_se")),
                           scored if isinstance(scored, int) else None,
                           scored + unparseable if isinstance(scored, int) and isinstance(unparseable, int) else None)

    def mtbench_scores(self) -> dict[str, float]:
        """{judge: overall MT-bench score} (mtbench_judged without the uncertainty), GPT-4 judges first."""
        return {judge: score.overall for judge, score in self.mtbench_judged.items()}

    def mtbench_score(self) -> tuple[float, str] | None:
        """(overall MT-bench score, judge) of the preferred judge (GPT-4 first); None when nothing is judged."""
        scores = self.mtbench_scores()
        return next(((score, judge) for judge, score in scores.items()), None)

    def mtbench_preferred(self) -> float | None:
        """The overall MT-bench score of the preferred judge (mtbench_score), None when nothing is judged."""
        score = self.mtbench_score()
        return None if score is None else score[0]

    def superglue_scores(self) -> dict[str, float | str] | None:
        """eval/superglue.json (eval.superglue's file) → {task: test score in percent, or the task's status when
        it did not finish ("oom", "error")}. A task's number is metrics.score: accuracy, or the mean of the two
        metrics for CB / MultiRC."""
        doc = self.eval_json("superglue.json")  # shape checked there (EVAL_SHAPES)
        if doc is None:
            return None
        out: dict[str, float | str] = {}
        for task, entry in doc["tasks"].items():
            status = entry.get("status", "ok")
            score = (entry.get("metrics") or {}).get("score")
            if status != "ok":
                out[str(task).lower()] = str(status)
            elif score is not None and math.isfinite(float(score)):
                out[str(task).lower()] = float(score)
        return out

    def superglue_majority(self) -> dict[str, float]:
        """{task: test score in percent of always predicting the training set's majority class} from
        eval/superglue.json (eval.superglue records it per task as majority_class_test); tasks without it are left
        out."""
        doc = self.eval_json("superglue.json")
        out: dict[str, float] = {}
        for task, entry in (doc or {}).get("tasks", {}).items():
            score = (entry.get("majority_class_test") or {}).get("score")
            if isinstance(score, (int, float)) and math.isfinite(float(score)):
                out[str(task).lower()] = float(score)
        return out

    def rank_result(self) -> dict | None:
        return self.eval_json("rank.json")


def is_superglue_task(run_dir: Path) -> bool:
    """A harness run of one task inside a SuperGLUE run directory (<out>/tasks/<task>/, beside
    <out>/eval/superglue.json): a part of that run, never a run (a table row, a count) of its own."""
    return run_dir.parent.name == "tasks" and (run_dir.parent.parent / "eval" / "superglue.json").is_file()


def discover_runs(results: Path, *, exclude: Path | None = None,
                  skipped: list[str] | None = None) -> list[Run]:
    """Every run (a directory with summary.json) under `results`; group = summary["group"] or the first
    directory level below `results` ("ungrouped" for runs directly inside it).

    A summary.json that cannot stand for a run (not JSON, missing status / method / model, unknown status) raises
    ResultsError, or, when a `skipped` list is given, is skipped and named there with the reason. Runs that shared
    their device get the median step time of a matching solo timing run among these (plots.timing)."""
    results = Path(results)
    if not results.is_dir():
        raise ResultsError(f"results directory {results} does not exist")

    def bad(path: Path, reason: str) -> None:
        if skipped is None:
            raise ResultsError(f"{path}: {reason}")
        skipped.append(f"{path.parent} skipped: {path.name} {reason}")

    runs = []
    for summary_path in sorted(results.rglob(SUMMARY_FILE)):
        run_dir = summary_path.parent
        if exclude is not None and exclude.resolve() in run_dir.resolve().parents:
            continue
        if set(RUN_SUBDIRS) & set(run_dir.relative_to(results).parts):
            continue  # a file inside a run's evaluator outputs or saved model, not a run of its own
        if SUPERSEDED_DIR in run_dir.relative_to(results).parts:
            continue  # a run trained at an lr its sweep no longer chooses, kept aside by run_all
        if is_superglue_task(run_dir):
            continue  # a part of its SuperGLUE run directory, which eval/superglue.json describes (below)
        summary, problem = load_json_object(summary_path)
        problem = problem or summary_problem(summary)
        if problem is not None:
            bad(summary_path, problem)
            continue
        runs.append(_make_run(results, run_dir, summary))
    # eval.superglue writes <out>/eval/superglue.json beside per-task harness runs (<out>/tasks/<task>/); the
    # <out> folder has no summary.json of its own, so it becomes a run described by the JSON's model and method.
    for scores_path in sorted(results.rglob("eval/superglue.json")):
        out_dir = scores_path.parent.parent
        if SUPERSEDED_DIR in out_dir.relative_to(results).parts:
            continue
        if (out_dir / SUMMARY_FILE).is_file() or (exclude is not None and
                                                    exclude.resolve() in out_dir.resolve().parents):
            continue
        doc, problem = load_json_object(scores_path)
        if problem is None and not EVAL_SHAPES["superglue.json"][0](doc):
            problem = f"is not eval.superglue's file (expected {EVAL_SHAPES['superglue.json'][1]})"
        if problem is not None:
            bad(scores_path, problem)
            continue
        # eval.superglue records its resolved run config as "settings": seed, lr and method options come from it
        settings = doc.get("settings") if isinstance(doc.get("settings"), dict) else {}
        summary = {"status": "ok", "run_name": out_dir.name, "model": doc.get("model", "?"),
                   "method": doc.get("method", "?"), "environment": {"date": doc.get("date", "")},
                   "config": settings, "described_by": "eval/superglue.json"}
        runs.append(_make_run(results, out_dir, summary))
    attach_solo_timings(runs)
    return runs


def _make_run(results: Path, run_dir: Path, summary: dict) -> Run:
    relative = run_dir.relative_to(results).parts
    group = summary.get("group") or (relative[0] if len(relative) > 1 else "ungrouped")
    return Run(run_dir, str(group), summary)

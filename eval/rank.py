"""Rank analysis of a fine-tuning update: how many directions does each weight matrix move in?

For a base and a fine-tuned checkpoint, every weight matrix W of a transformer layer gives an update
ΔW = W_tuned - W_base. From its singular values σ_1 >= σ_2 >= ... the cumulative explained variance is

    cvar(r) = Σ_{i<=r} σ_i² / Σ_j σ_j²

and the effective rank is the smallest r with cvar(r) >= 0.9 (the definition of the BAdam paper, Section 3.2,
arXiv 2404.02827). A LoRA update of rank r has effective rank <= r; the paper reports full-rank-like updates for
Adam and BAdam.

Checkpoints may be: a folder saved with `save_pretrained` (safetensors read lazily, one tensor at a time, so two
8B checkpoints need not fit in memory at once), a `.safetensors` file, a peft adapter folder (merged into the
base with `merge_and_unload` first), or any source `experiments.models.load_model` accepts.

Output, next to the run: `<run_dir>/eval/rank.json` (table + downsampled explained-variance curves for the
figures) and `<run_dir>/eval/rank.csv` (the table). CLI: `python -m eval.rank --help`.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import re
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from experiments.rundir import RunDir

log = logging.getLogger("eval.rank")

SCHEMA = "badam-bench/rank/v1"
DEFAULT_THRESHOLD = 0.9
# Exact SVD in float64 up to this many elements (a 2048 x 2048 matrix); larger matrices use float32, whose
# relative error in σ² (~1e-7) is far below the 0.9 threshold's sensitivity.
FP64_MAX_ELEMENTS = 2048 * 2048
DEFAULT_CURVE_POINTS = 256

# Leaf module name -> the paper's matrix type. Llama/Mistral/Qwen names first, then BERT/RoBERTa names
# (keyed by the last two path components because "output.dense" occurs twice in a BERT layer).
_MATRIX_TYPES = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
    "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
    "self.query": "q", "self.key": "k", "self.value": "v", "attention.output.dense": "o",
    "intermediate.dense": "up", "output.dense": "down",
}
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")
# Wrappers that prefix parameter names (peft, DDP) are stripped so base and tuned names line up.
_NAME_PREFIXES = ("base_model.model.", "module.")


class RankError(ValueError):
    """Bad input to the rank analysis (one clear message naming the problem)."""


# --- reading weights ---------------------------------------------------------------------------------------

def _normalise(name: str) -> str:
    for prefix in _NAME_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


class _TensorFiles:
    """Tensors of safetensors / .bin files, read one tensor at a time (the files stay on disk)."""

    def __init__(self, files: list[Path]):
        from safetensors import safe_open

        self._where: dict[str, tuple[Path, str]] = {}
        self._bins: dict[Path, dict] = {}
        for path in files:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    for key in handle.keys():
                        self._where[_normalise(key)] = (path, key)
            else:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                self._bins[path] = state
                for key in state:
                    self._where[_normalise(key)] = (path, key)

    def keys(self) -> list[str]:
        return list(self._where)

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        path, key = self._where[name]
        if path in self._bins:
            return self._bins[path][key]
        with safe_open(str(path), framework="pt") as handle:
            return handle.get_tensor(key)

    def ndim(self, name: str) -> int:
        from safetensors import safe_open

        path, key = self._where[name]
        if path in self._bins:
            return self._bins[path][key].dim()
        with safe_open(str(path), framework="pt") as handle:
            return len(handle.get_slice(key).get_shape())


class _ModuleTensors:
    """Tensors of an in-memory model."""

    def __init__(self, module: torch.nn.Module):
        self._state = {_normalise(k): v for k, v in module.state_dict().items()}

    def keys(self) -> list[str]:
        return list(self._state)

    def get(self, name: str) -> torch.Tensor:
        return self._state[name]

    def ndim(self, name: str) -> int:
        return self._state[name].dim()


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        files = [p for p in sorted(folder.glob("*.bin")) if p.name.startswith("pytorch_model")]
    return files


def _load_module(source: str, dtype: str, device: str = "cpu", task: str = "causal_lm") -> torch.nn.Module:
    """A model object for `source`: local HF folders through transformers, anything else through the harness.

    A random-init source ("random:<name>") is rebuilt the way the harness built it (load_model's fixed seed); the
    dtype and the device type must be the run's, since initial values differ between bf16/fp32 and CPU/CUDA."""
    path = Path(source)
    if path.is_dir() and (path / "config.json").is_file():
        import transformers

        config = transformers.AutoConfig.from_pretrained(path)
        arch = (getattr(config, "architectures", None) or ["AutoModel"])[0]
        cls = getattr(transformers, arch, None) or transformers.AutoModel
        torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        return cls.from_pretrained(path, dtype=torch_dtype)
    try:
        from experiments.models import load_model
    except ImportError as exc:  # the harness is optional for folder checkpoints only
        raise RankError(f"cannot load {source!r}: it is not a local model folder and experiments.models "
                        f"is unavailable ({exc})") from exc
    model, _tokenizer = load_model(source, dtype=dtype, device=device, task=task, tokenizer=False)
    return model.to("cpu")


def open_weights(source: str, *, base_source: str | None = None, dtype: str = "fp32", build_device: str = "cpu",
                 task: str = "causal_lm"):
    """Tensors of a checkpoint (see the module docstring for what `source` may be)."""
    path = Path(source)
    if path.is_dir() and (path / "adapter_config.json").is_file():
        if base_source is None:
            raise RankError(f"{source} is a peft adapter folder: the base model is needed to merge it")
        from peft import PeftModel

        merged = PeftModel.from_pretrained(_load_module(base_source, dtype, build_device, task),
                                           str(path)).merge_and_unload()
        return _ModuleTensors(merged)
    if path.is_file() and path.suffix in (".safetensors", ".bin"):
        return _TensorFiles([path])
    if path.is_dir() and _weight_files(path):
        return _TensorFiles(_weight_files(path))
    if path.exists() and not (path.is_dir() and (path / "config.json").is_file()):
        raise RankError(f"{source} holds no checkpoint: expected a model folder (config.json + *.safetensors), "
                        f"a .safetensors/.bin file, or a peft adapter folder (adapter_config.json)")
    return _ModuleTensors(_load_module(source, dtype, build_device, task))


def classify(name: str) -> tuple[int, str] | None:
    """(layer index, matrix type) of a parameter name inside a numbered layer, else None."""
    match = _LAYER_RE.search(name)
    if match is None or not name.endswith(".weight"):
        return None
    parts = name[: -len(".weight")].split(".")
    for width in (3, 2, 1):
        kind = _MATRIX_TYPES.get(".".join(parts[-width:]))
        if kind is not None:
            return int(match.group(1)), kind
    return int(match.group(1)), parts[-1]


# --- the analysis ------------------------------------------------------------------------------------------

def explained_variance(singular_values: torch.Tensor) -> torch.Tensor:
    """cvar(r) for r = 1..len(σ) (float64). All zeros for a zero matrix (no direction explains anything)."""
    energy = singular_values.double() ** 2
    total = energy.sum()
    if total <= 0:
        return torch.zeros_like(energy)
    return torch.cumsum(energy, 0) / total


def effective_rank(cvar: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> int:
    """Smallest r with cvar(r) >= threshold; 0 when the update is zero."""
    if not 0.0 < threshold <= 1.0:
        raise RankError(f"threshold must be in (0, 1], got {threshold}")
    if cvar.numel() == 0 or float(cvar[-1]) <= 0:
        return 0
    # The tolerance keeps threshold = 1.0 usable despite rounding in the cumulative sum.
    hits = torch.nonzero(cvar >= threshold - 1e-12)
    return int(hits[0, 0]) + 1


def singular_values(delta: torch.Tensor, device: str = "cpu", precision: str = "auto") -> torch.Tensor:
    """All singular values of `delta` (exact SVD), descending, on `device`, returned on the CPU."""
    if precision not in ("auto", "fp32", "fp64"):
        raise RankError(f"precision must be one of auto, fp32, fp64; got {precision!r}")
    use64 = precision == "fp64" or (precision == "auto" and delta.numel() <= FP64_MAX_ELEMENTS)
    dtype = torch.float64 if use64 else torch.float32
    return torch.linalg.svdvals(delta.to(device=device, dtype=dtype)).cpu()


def _curve_points(n: int, keep: int, max_points: int) -> list[int]:
    """1-based ranks at which the curve is stored: evenly spaced, always with 1, n and the effective rank."""
    if n <= max_points:
        return list(range(1, n + 1))
    step = (n - 1) / (max_points - 1)
    points = {1 + round(i * step) for i in range(max_points)}
    if keep:
        points.add(keep)
    return sorted(points)


def analyse_matrix(name: str, w_base: torch.Tensor, w_tuned: torch.Tensor, *, threshold: float,
                   device: str, precision: str, curve_points: int) -> dict:
    if w_base.shape != w_tuned.shape:
        raise RankError(f"{name}: shapes differ between base {tuple(w_base.shape)} and tuned "
                        f"{tuple(w_tuned.shape)}; are these checkpoints of the same architecture?")
    # The difference is taken in float64 so bf16 weights lose nothing.
    delta = w_tuned.double() - w_base.double()
    sv = singular_values(delta, device, precision)
    cvar = explained_variance(sv)
    rank = effective_rank(cvar, threshold)
    layer, kind = classify(name)
    points = _curve_points(len(cvar), rank, curve_points)
    return {
        "name": name, "layer": layer, "matrix": kind, "shape": list(w_base.shape),
        "effective_rank": rank, "rank_ratio": rank / min(w_base.shape),
        "delta_fro_norm": float(torch.linalg.vector_norm(delta)), "unchanged": bool(rank == 0),
        "svd_dtype": str(sv.dtype).replace("torch.", ""),
        "curve": {"r": points, "cvar": [round(float(cvar[r - 1]), 6) for r in points]},
    }


def rank_analysis(base: str, tuned: str, *, threshold: float = DEFAULT_THRESHOLD, device: str = "auto",
                  precision: str = "auto", curve_points: int = DEFAULT_CURVE_POINTS, load_dtype: str = "fp32",
                  build_device: str = "cpu", task: str = "causal_lm", matrices: list[str] | None = None) -> dict:
    """Effective rank of ΔW for every layer matrix; returns the rank.json document (not written)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if curve_points < 2:
        raise RankError(f"curve_points must be >= 2, got {curve_points}")
    base_w = open_weights(base, dtype=load_dtype, build_device=build_device, task=task)
    tuned_w = open_weights(tuned, base_source=base, dtype=load_dtype, build_device=build_device, task=task)
    tuned_keys = set(tuned_w.keys())
    names = []
    for name in base_w.keys():
        where = classify(name)
        if where is None or name not in tuned_keys:
            continue
        if matrices is not None and where[1] not in matrices:
            continue
        names.append(name)
    names = [n for n in names if base_w.ndim(n) == 2]
    if not names:
        raise RankError(f"no layer weight matrices in common between {base!r} and {tuned!r} (matrix filter "
                        f"{matrices}); layer names must look like '...layers.<i>.<module>.weight'")
    names.sort(key=lambda n: (classify(n)[0], n))
    rows = [analyse_matrix(n, base_w.get(n), tuned_w.get(n), threshold=threshold, device=device,
                           precision=precision, curve_points=curve_points)
            for n in tqdm(names, desc="rank: SVD of ΔW", unit="matrix")]
    return {
        "schema": SCHEMA, "base": base, "tuned": tuned, "threshold": threshold, "device": device,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "definition": "effective_rank = min r with sum_{i<=r} s_i^2 / sum_j s_j^2 >= threshold "
                      "(BAdam paper, Section 3.2); rank_ratio = effective_rank / min(shape)",
        "matrix_filter": _matrix_filter(matrices), "matrices": rows, "by_type": _summarise(rows),
    }


def _summarise(rows: list[dict]) -> dict:
    """Per matrix type: means over the matrices the method changed (a block method leaves most of them untouched,
    and averaging their zero ranks in would make its updates look low-rank), with how many it changed of how many;
    the means over every matrix are kept under *_all."""
    out: dict[str, dict] = {}
    for kind in sorted({r["matrix"] for r in rows}):
        sel = [r for r in rows if r["matrix"] == kind]
        changed = [r for r in sel if r["delta_fro_norm"] > 0]
        over = changed or sel
        out[kind] = {"count": len(sel), "changed": len(changed),
                     "mean_effective_rank": sum(r["effective_rank"] for r in over) / len(over) if changed else 0.0,
                     "mean_rank_ratio": sum(r["rank_ratio"] for r in over) / len(over) if changed else 0.0,
                     "mean_effective_rank_all": sum(r["effective_rank"] for r in sel) / len(sel),
                     "mean_rank_ratio_all": sum(r["rank_ratio"] for r in sel) / len(sel)}
    return out


# --- files -------------------------------------------------------------------------------------------------

TABLE_COLUMNS = ("layer", "matrix", "name", "shape", "effective_rank", "rank_ratio", "delta_fro_norm")


def table_csv(result: dict) -> str:
    lines = [",".join(TABLE_COLUMNS)]
    for row in result["matrices"]:
        shape = "x".join(str(s) for s in row["shape"])
        lines.append(f'{row["layer"]},{row["matrix"]},{row["name"]},{shape},{row["effective_rank"]},'
                     f'{row["rank_ratio"]:.6f},{row["delta_fro_norm"]:.6g}')
    return "\n".join(lines) + "\n"


def write_result(result: dict, out: Path) -> None:
    """rank.csv, then rank.json (strict JSON: a non-finite figure is null + a "nonfinite" flag), each written
    atomically with an fsync of the file and the directory (experiments.results). rank.json last: it is what marks
    the analysis done (run() reuses it), so a kill between the two never leaves a reused result without its table."""
    from experiments.results import atomic_write_text, dumps_strict

    atomic_write_text(out.with_suffix(".csv"), table_csv(result))
    atomic_write_text(out, dumps_strict(result, indent=1) + "\n")


def _reusable(done: dict, base: str, tuned: str, kwargs: dict) -> bool:
    """Whether an existing rank.json answers this call: same base, tuned model, threshold and matrix types. A file
    without matrix_filter (written before it was recorded) counts when its matrix types are the ones asked for."""
    if (done.get("base"), done.get("tuned"), done.get("threshold")) != \
            (base, tuned, kwargs.get("threshold", DEFAULT_THRESHOLD)):
        return False
    wanted = _matrix_filter(kwargs.get("matrices"))
    if "matrix_filter" in done:
        return done["matrix_filter"] == wanted
    return wanted is not None and sorted(done.get("by_type") or {}) == wanted


def _matrix_filter(matrices) -> list[str] | None:
    return None if matrices is None else sorted(set(matrices))


def run(base: str, tuned: str, out: Path, *, force: bool = False, **kwargs) -> dict:
    """Analyse and write `out` (+ .csv); an existing result for the same inputs is reused unless `force`. An existing
    file that holds no result (cut short, emptied) is named in one line and analysed again: it is this evaluator's
    own output, and nothing else can be in it."""
    if out.is_file() and not force:
        try:
            done = json.loads(out.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("rank: %s is not valid JSON (%s; a half-written file?): analysed again", out, exc)
            done = None
        if isinstance(done, dict) and _reusable(done, base, tuned, kwargs):
            log.info("rank: %s already done for these inputs, skipped (use --force to redo)", out)
            return done
    result = rank_analysis(base, tuned, **kwargs)
    write_result(result, out)
    return result


def evaluate_runs(run_dirs, *, force: bool = False, **options) -> str:
    """The evaluator protocol (experiments.run_all calls it through `python -m eval rank`): the rank analysis of each
    run's update into <run_dir>/eval/rank.json, the base being the model the run started from (summary.json "model")
    built in the dtype the run loaded it in (else bf16 rounding of the base would show up as ΔW). Runs without a
    saved model (e.g. seeds after the first) and runs of a random-init base (the evaluator could not rebuild the run's
    random weights) are skipped and named. Options are rank_analysis's (matrices, threshold, device, ...).
    Returns a short note."""
    import inspect

    valid = sorted(set(inspect.signature(rank_analysis).parameters) - {"base", "tuned"})
    unknown = sorted(set(options) - set(valid))
    if unknown:  # checked before anything runs (a finished result would otherwise be reused without them)
        raise TypeError(f"evaluate_runs() got an unexpected keyword argument {unknown[0]!r}; valid options: "
                        f"{', '.join(valid)}, force")
    skipped, unsaved, done = [], [], []
    for run_dir in map(RunDir, run_dirs):
        if not run_dir.has_saved_model():
            unsaved.append(run_dir.path.name)
            continue
        summary = run_dir.read_summary() or {}
        base = summary.get("model") or ""
        if base.startswith("random:"):
            skipped.append(run_dir.path.name)
            continue
        dtype = ((summary.get("config") or {}).get("model") or {}).get("dtype", "fp32")
        result = run(base, str(run_dir.model), run_dir.eval_file("rank.json"), force=force,
                     **{"load_dtype": dtype, **options})
        means = [s["mean_effective_rank"] for s in result["by_type"].values() if s["changed"]]
        done.append(f"{run_dir.path.name} {sum(means) / len(means):.0f}" if means else f"{run_dir.path.name} -")
    notes = [f"mean effective rank over changed matrices: {', '.join(done)}"] * bool(done) + \
        [f"random-init base, skipped: {', '.join(skipped)}"] * bool(skipped) + \
        [f"weights not saved (output.save_model=false), not analysed: {', '.join(unsaved)}"] * bool(unsaved)
    return "".join(f"; {n}" for n in notes)


def _run_summary(run_dir: Path | None) -> dict:
    if run_dir is None:
        return {}
    if not run_dir.is_dir():
        raise RankError(f"--run-dir {run_dir} is not a directory")
    path = RunDir(run_dir).summary
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RankError(f"{path} cannot be read ({exc}); give --base explicitly") from None
    if not isinstance(summary, dict):
        raise RankError(f"{path} is not a JSON object; give --base explicitly")
    return summary


def _tuned_source(tuned: str) -> str:
    """A training run directory stands for its saved model (<run>/model); anything else is used as given."""
    path = Path(tuned)
    run_dir = RunDir(path)
    if path.is_dir() and run_dir.summary.is_file() and not (path / "config.json").is_file():
        if not run_dir.model.is_dir():
            raise RankError(f"--tuned {tuned} is a run directory without a saved model ({run_dir.model} is "
                            "missing); train with output.save_model=true, or give the checkpoint folder")
        return str(run_dir.model)
    return tuned


def _check_source(source: str, flag: str) -> None:
    """A source that names a local path must exist (a hub id or random:/llama2c: source is checked when loaded)."""
    looks_like_path = source.startswith((".", "/", "~")) or Path(source).suffix in (".safetensors", ".bin", ".gguf")
    if looks_like_path and not Path(source).expanduser().exists():
        raise RankError(f"{flag} {source} does not exist; give a model folder, a .safetensors / .bin file, a peft "
                        "adapter folder, a run directory with model/, or a load_model source such as random:<name>")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.rank", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tuned", required=True, help="fine-tuned checkpoint: folder, .safetensors, peft adapter")
    parser.add_argument("--base", help="base checkpoint (default: 'model' in <run-dir>/summary.json)")
    parser.add_argument("--run-dir", type=Path, help="run directory; writes <run-dir>/eval/rank.json")
    parser.add_argument("--out", type=Path, help="output JSON path (overrides --run-dir)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp64"))
    parser.add_argument("--load-dtype", choices=("fp32", "bf16", "fp16"),
                        help="dtype for checkpoints built as models (adapter bases, hub ids, random:<name>); "
                             "default: the run's model.dtype, else fp32")
    parser.add_argument("--build-device", help="device to rebuild a random:<name> base on (its initial values "
                                               "depend on it); default: the run's device, else cpu")
    parser.add_argument("--curve-points", type=int, default=DEFAULT_CURVE_POINTS)
    parser.add_argument("--matrices", help="comma-separated matrix types to keep, e.g. q,k,v,gate,up,down")
    parser.add_argument("--force", action="store_true", help="recompute even if the output exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.out is None and args.run_dir is None:
        parser.error("give --run-dir (writes <run-dir>/eval/rank.json) or --out")
    try:
        out = args.out or RunDir(args.run_dir).eval_file("rank.json")
        summary = _run_summary(args.run_dir)
        base = args.base or summary.get("model")
        if base is None:
            where = f"{args.run_dir}/summary.json names no model" if args.run_dir else "no --run-dir was given"
            raise RankError(f"the base checkpoint is unknown ({where}); give --base")
        tuned = _tuned_source(args.tuned)
        _check_source(tuned, "--tuned")
        _check_source(base, "--base")
        model_cfg = (summary.get("config") or {}).get("model") or {}
        load_dtype = args.load_dtype or model_cfg.get("dtype") or "fp32"
        build_device = args.build_device or (summary.get("memory") or {}).get("device") or "cpu"
        matrices = [m.strip() for m in args.matrices.split(",")] if args.matrices else None
        result = run(base, tuned, out, force=args.force, threshold=args.threshold, device=args.device,
                     precision=args.precision, curve_points=args.curve_points, load_dtype=load_dtype,
                     build_device=build_device, task=model_cfg.get("task", "causal_lm"), matrices=matrices)
    except (RankError, FileNotFoundError, ValueError, ImportError) as exc:  # bad input: what to give instead
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # the analysis itself failed (out of memory, a broken file): one line, not a traceback
        print(f"error: rank analysis failed: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1
    for kind, stats in result["by_type"].items():
        print(f"{kind:>6}: {stats['changed']:3d} of {stats['count']:3d} matrices changed; over those: mean effective "
              f"rank {stats['mean_effective_rank']:.1f}, mean rank ratio {stats['mean_rank_ratio']:.3f}")
    print(f"wrote {out} and {out.with_suffix('.csv')}")
    return 0


def _one_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return (lines[0] + (" (...)" if len(lines) > 1 else "")) if lines else type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())

"""--check of benchmarks/ddp_scaling_plan.py: runs measured at another GPU count, set against the plan's prediction
for that count. Which input setting predicts a check setting (match_key), the two side by side (compare) and the
markdown section (checks_markdown).

The figures come from ddp_scaling_plan (measure, plan_rows, expected_max_excess), which imports this module; this
module imports nothing from it, so the plan run as a script (__main__) and this module share one copy of its classes."""
from __future__ import annotations


def match_key(key: tuple) -> tuple:
    """A ddp_scaling_plan.setting_key (model, method, gpus, batch, seq, dtype, backend, split, in_flight, folder)
    without the GPU count and the folder. The GPU count is what a check varies. The folder (--by-folder: one lent
    machine each) is left out because a check run never comes from an input's machine (a 4-GPU lease is another
    host): with --by-folder every input folder's plan of the setting is checked, one row each; without it the inputs
    are pooled over the folders and there is at most one."""
    return key[:2] + key[3:-1]


def compare(measured: dict, plan: dict | None, predicted: dict | None, own_straggler: float) -> dict:
    """Predicted and measured figures of one check setting. `measured`: ddp_scaling_plan.measure of the check runs;
    `plan`, `predicted`: measure of the matching input runs and their plan_rows row at the check's N (None: nothing
    predicted); `own_straggler`: the straggler cost at N from the check runs' own single-GPU noise."""
    out = {"n": measured["gpus"], "runs": measured["runs"], "single_ms": measured["single_ms"],
           "ddp_ms": measured["ddp_ms"], "efficiency": measured["single_ms"] / measured["ddp_ms"],
           "round_ratios": measured["round_ratios"], "exposed_ms": measured["exposed_ms"],
           "excess_ms": measured["ddp_ms"] - measured["single_ms"], "noise_ms": measured["noise_ms"],
           "own_straggler_ms": own_straggler}
    # what the measured step holds beyond the single step and the measured exposed all-reduce: the model's straggler
    out["straggler_ms"] = out["excess_ms"] - measured["exposed_ms"]
    if predicted is None:
        return out
    est, low, high = predicted["straggler"]
    rest = predicted["step_ms"] - est  # single + exposed: the straggler interval moves only the straggler term
    out["predicted"] = {
        "efficiency": predicted["efficiency"], "step_ms": predicted["step_ms"], "single_ms": plan["single_ms"],
        "exposed_ms": predicted["exposed_ms"], "straggler": predicted["straggler"],
        # a larger straggler cost means a lower efficiency: the interval's ends swap
        "interval": (plan["single_ms"] / (rest + high), plan["single_ms"] / (rest + low))}
    out["difference"] = out["efficiency"] - predicted["efficiency"]
    return out


def _row(label: str, c: dict, why: str) -> str:
    n, p = c["n"], c.get("predicted")
    measured = (f"{c['efficiency']:.3f} ({n * c['efficiency']:.2f}x) (rounds {c['round_ratios'][0]:.3f}-"
                f"{c['round_ratios'][1]:.3f})")
    noise = f"{c['noise_ms']:.1f} ({c['own_straggler_ms']:.1f})"
    if p is None:
        return (f"| {label} | {n} | {c['runs']} | not predicted: {why} | {measured} | - | - / "
                f"{c['exposed_ms']:.2f} | - / {c['straggler_ms']:.1f} | {c['single_ms']:.1f} / {c['ddp_ms']:.1f} "
                f"(-) | {noise} |")
    est, low, high = p["straggler"]
    return (f"| {label} | {n} | {c['runs']} | {p['efficiency']:.3f} ({n * p['efficiency']:.2f}x) "
            f"[{p['interval'][0]:.3f}-{p['interval'][1]:.3f}] | {measured} | {c['difference']:+.3f} | "
            f"{p['exposed_ms']:.2f} / {c['exposed_ms']:.2f} | {est:.1f} [{low:.1f}-{high:.1f}] / "
            f"{c['straggler_ms']:.1f} | {c['single_ms']:.1f} / {c['ddp_ms']:.1f} ({p['single_ms']:.1f} / "
            f"{p['step_ms']:.1f}) | {noise} |")


def checks_markdown(entries: list[dict]) -> list[str]:
    """The section: one table row per (check setting, matching input setting) and where each row's runs come from.
    An entry: label, files (the check runs), compare's figures as `check`, and for a predicted row plan_label,
    plan_runs and plan_gpus (the input setting's table), else `why` (why nothing is predicted)."""
    lines = ["## Checks at other GPU counts", "",
             "Runs given with --check, not used for anything above: each check setting is predicted from the input "
             "runs of the same setting at their own GPU count (its table above, carried to the check's N as the "
             "tables' rows are: same bandwidth, exposed time and straggler model) and measured as the tables' check "
             "rows measure the inputs (mean single step / mean ddp step, slower rank per step, pooled over the "
             "setting's rounds; rounds: the range of single / ddp of each round's mean step). Exposed measured: the "
             "paired backward excess of the rank that arrived last. Straggler measured: ddp - single - exposed "
             "measured. The interval of the predicted efficiency is the straggler's 5-95 % alone. Step ms: the "
             "check runs' mean single / ddp step (in brackets the input runs' single step and the predicted step). "
             "Noise cost: the check runs' own (in brackets the straggler cost at N from their own single-GPU noise, "
             "what the prediction would hold with this machine's noise).", "",
             "| setting | N | runs | predicted efficiency (speed-up) [5-95 %] | measured efficiency (speed-up) | "
             "measured - predicted | exposed ms predicted / measured | straggler ms predicted [5-95 %] / measured | "
             "step ms single / ddp (inputs: single / predicted) | noise cost ms (own straggler at N) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for e in entries:
        lines.append(_row(e["label"], e["check"], e.get("why", "")))
        source = (f"predicted from the {e['plan_runs']} run(s) on {e['plan_gpus']} GPUs of \"{e['plan_label']}\""
                  if "plan_label" in e else f"not predicted: {e['why']}")
        notes.append(f"- {e['label']}, {e['check']['n']} GPUs: {', '.join(e['files'])}; {source}.")
    return lines + [""] + notes + [""]

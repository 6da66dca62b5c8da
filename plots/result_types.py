"""Types of the result fields plots reads: a hand-edited or foreign summary.json or metrics.jsonl whose field has the
wrong JSON type (e.g. "memory": "lots", "loss": "abc") is named with the field, instead of failing a whole table or
figure later with a bare conversion error."""
from __future__ import annotations


# Fields of summary.json the tables and report read, with the JSON type each must have when present (null allowed):
# a hand-edited or foreign file with e.g. "memory": "lots" is skipped with the field named, not a traceback later.
_SUMMARY_MAPPINGS = ("config", "memory", "memory.split_bytes", "timing_ms", "environment", "method_info", "compute")
_SUMMARY_NUMBERS = ("steps", "planned_steps", "final_loss", "mean_loss_last_10", "final_eval_loss", "tokens_per_s",
                    "memory.peak_allocated_bytes", "memory.peak_reserved_bytes", "memory.split_bytes.*",
                    "timing_ms.forward", "timing_ms.backward", "timing_ms.update", "timing_ms.step")


def _at(summary: dict, dotted: str):
    value = summary
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def summary_type_problem(summary: dict) -> str | None:
    """The first field of `summary` whose JSON type the tables cannot read (None when every field is fine)."""
    for dotted in _SUMMARY_MAPPINGS:
        value = _at(summary, dotted)
        if value is not None and not isinstance(value, dict):
            return f"has {dotted} = {value!r:.40}, expected an object or null"
    for dotted in _SUMMARY_NUMBERS:
        parent, _, last = dotted.rpartition(".")
        holder = _at(summary, parent) if parent else summary
        items = holder.items() if last == "*" and isinstance(holder, dict) else [(last, _at(summary, dotted))]
        for key, value in items:
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                name = f"{parent}.{key}" if last == "*" else dotted
                return f"has {name} = {value!r:.40}, expected a number or null"
    return None


_METRIC_NUMBERS = ("step", "loss", "eval_loss", "lr", "grad_norm", "t_step_ms", "tokens_per_s")


def check_metric_types(records: list[dict]) -> None:
    """The step records' fields the curves read are numbers or null (ValueError naming the line otherwise)."""
    for line, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise ValueError(f"line {line} is a JSON {type(record).__name__}, not an object")
        for key in _METRIC_NUMBERS:
            value = record.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"line {line} has {key} = {value!r:.40}, expected a number or null")

"""The paper's numbers (plots/paper_values.json): loading, a schema check, and look-ups.

Each table is a list of records: key fields (e.g. model, lr, method, epoch) plus value fields. A value is a
number, or {"value": number | null, "display": str, "note": str} when the paper prints a marker ("OOM", "—",
"144.8+"). Text-typed fields (Table 1's formulas) hold strings.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

PAPER_FILE = Path(__file__).with_name("paper_values.json")
SCHEMA = "badam-bench/paper-values/v1"
_SOURCE_RE = re.compile(r"^(Table|Figure) \d+$")
_CELL_FIELDS = {"value", "display", "note"}


class PaperValuesError(ValueError):
    """paper_values.json does not match its schema."""


@dataclass(frozen=True)
class PaperCell:
    value: float | None
    display: str
    note: str | None = None


def _check_value(where: str, cell, kind: str) -> list[str]:
    if kind == "text":
        return [] if isinstance(cell, str) else [f"{where}: text field must be a string, got {cell!r}"]
    if isinstance(cell, bool) or not isinstance(cell, (int, float, dict)):
        return [f"{where}: number field must be a number or a cell object, got {cell!r}"]
    if isinstance(cell, dict):
        problems = []
        unknown = set(cell) - _CELL_FIELDS
        if unknown:
            problems.append(f"{where}: unknown cell keys {sorted(unknown)} (allowed: {sorted(_CELL_FIELDS)})")
        value = cell.get("value")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            problems.append(f"{where}: 'value' must be a number or null")
        if not isinstance(cell.get("display"), str):
            problems.append(f"{where}: a cell object needs a 'display' string")
        return problems
    return [] if math.isfinite(cell) else [f"{where}: number is not finite"]


def validate(doc: dict) -> list[str]:
    """Every way `doc` breaks the schema (empty list: valid)."""
    problems: list[str] = []
    if doc.get("schema") != SCHEMA:
        problems.append(f"schema must be {SCHEMA!r}, got {doc.get('schema')!r}")
    paper = doc.get("paper")
    if not isinstance(paper, dict) or not all(isinstance(paper.get(k), str) for k in ("title", "arxiv")):
        problems.append("'paper' must hold 'title' and 'arxiv' strings")
    if not isinstance(doc.get("label"), str) or "paper" not in doc.get("label", ""):
        problems.append("'label' must say these are the paper's values")
    tables = doc.get("tables")
    if not isinstance(tables, dict) or not tables:
        return problems + ["'tables' must be a non-empty object"]
    for table_id, table in tables.items():
        where = f"tables.{table_id}"
        if not _SOURCE_RE.match(str(table.get("source", ""))):
            problems.append(f"{where}.source must be 'Table N' or 'Figure N', got {table.get('source')!r}")
        if not isinstance(table.get("description"), str):
            problems.append(f"{where}.description must be a string")
        keys, values = table.get("keys"), table.get("values")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            problems.append(f"{where}.keys must be a list of field names")
            continue
        if not isinstance(values, dict) or not values:
            problems.append(f"{where}.values must map field names to {{unit, type}}")
            continue
        for field, spec in values.items():
            if not isinstance(spec, dict) or spec.get("type") not in ("number", "text") \
                    or not isinstance(spec.get("unit"), str):
                problems.append(f"{where}.values.{field} must be {{'unit': str, 'type': 'number'|'text'}}")
        records = table.get("records")
        if not isinstance(records, list) or not records:
            problems.append(f"{where}.records must be a non-empty list")
            continue
        seen = set()
        for i, record in enumerate(records):
            rwhere = f"{where}.records[{i}]"
            missing = [k for k in keys if k not in record]
            unknown = [f for f in record if f not in keys and f not in values]
            if missing:
                problems.append(f"{rwhere}: missing key fields {missing}")
            if unknown:
                problems.append(f"{rwhere}: unknown fields {unknown}")
            ident = tuple(json.dumps(record.get(k)) for k in keys)
            if ident in seen:
                problems.append(f"{rwhere}: duplicate record for keys {dict(zip(keys, ident))}")
            seen.add(ident)
            if not any(f in values for f in record):
                problems.append(f"{rwhere}: no value fields")
            for field, spec in values.items():
                if field in record and isinstance(spec, dict):
                    problems.extend(_check_value(f"{rwhere}.{field}", record[field], spec.get("type")))
    missing_list = doc.get("missing")
    if not isinstance(missing_list, list) or not all(
            isinstance(m, dict) and isinstance(m.get("item"), str) and isinstance(m.get("why"), str)
            for m in missing_list):
        problems.append("'missing' must be a list of {item, why} strings")
    return problems


def load_paper_values(path: Path = PAPER_FILE) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PaperValuesError(f"cannot read {path}: {exc}") from exc
    problems = validate(doc)
    if problems:
        raise PaperValuesError(f"{path} breaks its schema:\n  " + "\n  ".join(problems))
    return doc


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


def paper_cell(doc: dict, table_id: str, field: str, **keys) -> PaperCell | None:
    """The paper's value of `field` in the record of `table_id` matching `keys`; None when the paper has none."""
    table = doc["tables"].get(table_id)
    if table is None:
        raise KeyError(f"no paper table {table_id!r}; have {sorted(doc['tables'])}")
    if field not in table["values"]:
        raise KeyError(f"paper table {table_id} has no field {field!r}; fields: {sorted(table['values'])}")
    for record in table["records"]:
        if all(_same(record.get(k), v) for k, v in keys.items()) and field in record:
            cell = record[field]
            if isinstance(cell, dict):
                return PaperCell(cell.get("value"), cell["display"], cell.get("note"))
            if isinstance(cell, str):
                return PaperCell(None, cell)
            return PaperCell(float(cell), f"{cell:g}")
    return None


def records(doc: dict, table_id: str) -> list[dict]:
    return list(doc["tables"][table_id]["records"])

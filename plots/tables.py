"""A table = title, caption and sections (one per model scale); written as CSV, Markdown and LaTeX.

Cells hold numbers or the markers below; the writers format numbers, so the CSV keeps them machine-readable.
Paper values always sit in their own columns named "<quantity> (paper)", next to "<quantity> ratio" = ours / paper.
A value over seeds (plots.seeds.MeanStd) shows as "mean ± std (n=k)" in Markdown and LaTeX; in the CSV its column X
becomes X (the mean), "X std" and "X n". A mean over one run's scored items with its standard error (plots.seeds.MeanSE,
an MT-bench score of one seed) shows as "mean ± SE (SE; k of m scored)"; in the CSV: X, "X SE", "X scored" and
"X judged". A table's `claim` (plots.claims) follows the caption in Markdown and LaTeX.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from experiments.results import atomic_write_text  # plain file writing; imports no torch
from plots.paper import PaperCell
from plots.seeds import MeanSE, MeanStd, SeedGroup, mean_of

NO_RUN = "no run"            # no run was made for this cell
NOT_IN_PAPER = "not in paper"  # the paper has no number for this cell
NOT_APPLICABLE = "—"


@dataclass
class Section:
    heading: str
    frame: pd.DataFrame


@dataclass
class Table:
    key: str          # "T2"
    slug: str         # "memory_split_llama3_8b"
    title: str
    caption: str
    sections: list[Section] = field(default_factory=list)
    digits: int = 2
    claim: str | None = None  # which of the paper's claims hold at the scale of the runs (plots.claims)
    claim_label: str = "The paper's claims at this scale"

    @property
    def stem(self) -> str:
        return f"{self.key}_{self.slug}"


def status_marker(status: str) -> str:
    """What a failed run shows instead of a number (never zero, never blank)."""
    return {"oom": "OOM", "diverged": "diverged", "error": "run failed"}.get(status, status)


def seed_cell(group: SeedGroup | None, value=None, *, missing=NO_RUN, stat=None):
    """The cell of a setting's seeds: NO_RUN without runs, the status marker when no seed finished, `missing` when
    no finished seed has the value, else the value (one seed) or its MeanStd over the seeds. `stat(group)` replaces
    group.stat(value) where the group computes its own (SeedGroup.mtbench: a MeanSE for one judged seed stays one)."""
    if group is None:
        return NO_RUN
    if not group.ok_runs:
        return status_marker(group.status())
    result = stat(group) if stat is not None else group.stat(value)
    if result is None:
        return missing
    return result.mean if isinstance(result, MeanStd) and result.n == 1 else result


def nonfinite_or(group: SeedGroup | None, key: str, missing: str) -> str:
    """`missing`, or the non-finite value ("inf", "nan") the finished seeds of `group` recorded for summary.json's
    `key` (its nonfinite map, docs/DESIGN.md): a loss that came out infinite was measured, not "not measured"."""
    kinds = {kind for run in (group.ok_runs if group is not None else []) if (kind := run.nonfinite(key))}
    return "/".join(sorted(kinds)) or missing


def paper_display(paper: PaperCell | None):
    """The paper's cell: its number, or the marker it prints ("OOM", "—", "144.8+"), or NOT_IN_PAPER."""
    if paper is None:
        return NOT_IN_PAPER
    if paper.value is not None and paper.display == f"{paper.value:g}":
        return paper.value
    return paper.display


def compare(ours, paper: PaperCell | None) -> tuple:
    """(ours, paper, ratio) cells: ratio only when both are numbers."""
    paper_cell = paper_display(paper)
    ratio = NOT_APPLICABLE
    if mean_of(ours) is not None and paper is not None and paper.value not in (None, 0):
        ratio = mean_of(ours) / paper.value
    return ours, paper_cell, ratio


def add_compared(row: dict, name: str, ours, paper: PaperCell | None) -> None:
    row[name], row[f"{name} (paper)"], row[f"{name} ratio"] = compare(ours, paper)


# --- rendering -----------------------------------------------------------------------------------------------

def _fmt(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_APPLICABLE
    if isinstance(value, (MeanStd, MeanSE)):
        return value.text(digits)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != 0 and abs(value) < 10 ** -digits:
            return f"{value:.3g}"  # small-scale runs: keep significant digits instead of printing 0.00
        return f"{value:.{digits}f}"
    return str(value)


def _cells(frame: pd.DataFrame, digits: int) -> list[list[str]]:
    rows = []
    for record in frame.itertuples(index=False):
        rows.append([_fmt(v, 2 if str(c).endswith("ratio") else digits)
                     for c, v in zip(frame.columns, record)])
    return rows


def _expand_seed_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """A column holding MeanStd cells gets "<column> std" and "<column> n" beside its mean (markers kept); one holding
    MeanSE cells gets "<column> SE", "<column> scored" and "<column> judged"."""
    parts = {MeanStd: (("std", lambda v: v.std), ("n", lambda v: v.n)),
             MeanSE: (("SE", lambda v: v.se), ("scored", lambda v: v.n),
                      ("judged", lambda v: NOT_APPLICABLE if v.of is None else v.of))}
    out = pd.DataFrame(index=frame.index)
    for column in frame.columns:
        values = frame[column]
        kinds = [kind for kind in parts if any(isinstance(v, kind) for v in values)]
        if not kinds:
            out[column] = values
            continue
        # object columns: an n stays an integer when sections with other columns are concatenated
        out[column] = pd.Series([mean_of(v) if isinstance(v, (MeanStd, MeanSE)) else v for v in values],
                                frame.index, object)
        for kind in kinds:
            for suffix, part in parts[kind]:
                out[f"{column} {suffix}"] = pd.Series([part(v) if isinstance(v, kind) else NOT_APPLICABLE
                                                       for v in values], frame.index, object)
    return out


def to_csv(table: Table) -> str:
    frames = []
    for section in table.sections:
        frame = _expand_seed_columns(section.frame)
        frame.insert(0, "section", section.heading)
        frames.append(frame)
    if not frames:
        return "section\n"
    # Sections may have different columns (other scales have no paper columns): those cells are "—", not blank.
    merged = pd.concat(frames, ignore_index=True).astype(object)
    return merged.where(merged.notna(), NOT_APPLICABLE).to_csv(index=False, float_format="%.6g")


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(table: Table) -> str:
    lines = [f"## {table.key}: {table.title}", "", table.caption, ""]
    if table.claim:
        lines += [f"**{table.claim_label}:** {table.claim}", ""]
    for section in table.sections:
        header = [_md_escape(str(c)) for c in section.frame.columns]
        lines += [f"### {section.heading}", "", "| " + " | ".join(header) + " |",
                  "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |"
                  for row in _cells(section.frame, table.digits)]
        lines.append("")
    return "\n".join(lines)


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "—": "---",
                  "–": "--", "×": r"$\times$", "≥": r"$\geq$", "±": r"$\pm$", "·": r"$\cdot$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(table: Table) -> str:
    out = [f"% {table.key}: {table.title} (generated by python -m plots; needs \\usepackage{{booktabs,graphicx}})"]
    for i, section in enumerate(table.sections):
        cols = list(section.frame.columns)
        out += [r"\begin{table}[t]", r"\centering", r"\small",
                r"\caption{" + latex_escape(f"{table.title}. {section.heading}.") +
                (" " + latex_escape(table.caption) if i == 0 else "") +
                (" " + latex_escape(f"{table.claim_label}: {table.claim}") if i == 0 and table.claim
                 else "") + "}",
                r"\label{tab:" + f"{table.stem}-{i}" + "}",
                r"\resizebox{\linewidth}{!}{%",  # the comparison tables are wide: scale to the text width
                r"\begin{tabular}{l" + "r" * (len(cols) - 1) + "}", r"\toprule",
                " & ".join(latex_escape(c) for c in cols) + r" \\", r"\midrule"]
        out += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in _cells(section.frame, table.digits)]
        out += [r"\bottomrule", r"\end{tabular}}", r"\end{table}", ""]
    return "\n".join(out)


def write_table(table: Table, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, render in ((".csv", to_csv), (".md", to_markdown), (".tex", to_latex)):
        path = out_dir / f"{table.stem}{suffix}"
        atomic_write_text(path, render(table))
        paths.append(path)
    return paths

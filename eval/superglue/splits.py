"""The split protocol: which rows train, which select the checkpoint (validation), which are reported (test).

The BAdam paper (RoBERTa-large on SuperGLUE) trains on the official train set and splits the labelled official dev set
into a validation part, used to pick the best checkpoint, and a test part, used for the reported number; the official
test sets carry no labels. Its code (Ledzy/BAdam, roberta-superglue/jiant/proj/main/metarunner.py, `task2validsize`)
takes the FIRST n dev examples as validation and the rest as test, with n = BoolQ 1270, COPA 30, MultiRC 453 (answer
options), RTE 128, WiC 238, WSC 44. We do the same, in file order, with these deviations:

- MultiRC: the cut is moved to the nearest paragraph boundary (453 answer options fall inside a paragraph, and
  questions from one paragraph on both sides would leak), see `multirc_validation_rows`.
- CB is not in the paper; its 56 dev examples are cut at 20 (36%, inside the 30-46% range of the paper's cuts).
- BoolQ's official train set is missing from the shared data. The test part is kept exactly as in the paper (dev rows
  1270..3269); the paper's validation part (rows 0..1269) is divided into validation (rows 0..269) and training data
  (rows 270..1269), to which FewGLUE's 64 BoolQ examples (train.jsonl + dev32.jsonl, drawn from the official train
  set) are added: 1,064 training examples instead of the official 9,427.

Every split is a pure function of the files: no randomness, so every method and every rerun sees the same rows.
"""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from eval.superglue.tasks import Example, SuperGlueDataError, get_task, read_rows

# First-n cut of the official dev set (in rows; MultiRC's is in answer options, see multirc_validation_rows).
PAPER_VALIDATION_SIZE = {"boolq": 1270, "copa": 30, "multirc": 453, "rte": 128, "wic": 238, "wsc": 44}
CB_VALIDATION_SIZE = 20
BOOLQ_VALIDATION_SIZE = 270  # rows 270..1269 of the paper's BoolQ validation part become training data


@dataclasses.dataclass
class TaskSplits:
    task: str
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    protocol: str  # one sentence saying where each split comes from, written into the results

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def multirc_validation_rows(rows: list[dict], target_options: int = PAPER_VALIDATION_SIZE["multirc"]) -> int:
    """How many leading paragraphs hold closest to `target_options` answer options (ties: the smaller cut)."""
    best_rows, best_gap, count = 0, target_options, 0
    for n_rows, row in enumerate(rows, start=1):
        count += sum(len(q["answers"]) for q in row["passage"]["questions"])
        gap = abs(count - target_options)
        if gap < best_gap:
            best_rows, best_gap = n_rows, gap
        if count > target_options:
            break
    return best_rows


def _subsample(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """A seeded random subset of `limit` examples, kept in file order (for short CPU runs); all when limit is None."""
    if limit is None or limit >= len(examples):
        return examples
    if limit <= 0:
        raise ValueError(f"a split limit must be positive, got {limit}")
    keep = sorted(random.Random(f"superglue-subsample-{seed}").sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


def _prefix_groups(examples: list[Example], limit: int | None) -> list[Example]:
    """The first `limit` examples for evaluation; for MultiRC extended to finish the last question (EM needs all
    options of a question)."""
    if limit is None or limit >= len(examples):
        return examples
    if limit <= 0:
        raise ValueError(f"a split limit must be positive, got {limit}")
    end = limit
    while end < len(examples) and examples[end].group is not None and examples[end].group == examples[end - 1].group:
        end += 1
    return examples[:end]


def _examples(spec, rows: list[dict], part: str) -> list[Example]:
    """spec.to_examples(rows), with a row that lacks a field or holds an unknown label named (a KeyError traceback
    otherwise)."""
    try:
        return spec.to_examples(rows)
    except (KeyError, ValueError, TypeError):
        pass
    for number, row in enumerate(rows, start=1):  # find the row (conversions may look at neighbours: MultiRC groups)
        try:
            spec.to_examples([row])
        except KeyError as exc:
            raise SuperGlueDataError(f"SuperGLUE {spec.folder}: row {number} of the {part} part lacks the field {exc}; "
                                     "the files must hold the official SuperGLUE fields") from None
        except (ValueError, TypeError) as exc:
            raise SuperGlueDataError(f"SuperGLUE {spec.folder}: row {number} of the {part} part: {exc}") from None
    return spec.to_examples(rows)  # fails only across rows: its own error


def paper_splits(task: str, *, base: Path | None = None, max_train: int | None = None,
                 max_eval: int | None = None, seed: int = 0) -> TaskSplits:
    """Train / validation / test examples of `task` under the paper's protocol (module docstring).

    max_train: keep a seeded random subset of the training examples; max_eval: keep the first examples of the
    validation and of the test part. Both only shorten runs (CPU smoke tests); the full protocol uses neither.
    """
    spec = get_task(task)
    dev = read_rows(spec.folder, "val", base=base)
    if spec.name == "boolq":
        fewglue = (read_rows("FewGLUE_32dev/BoolQ", "train", base=base)
                   + read_rows("FewGLUE_32dev/BoolQ", "dev32", base=base))
        paper_cut = PAPER_VALIDATION_SIZE["boolq"]
        train_rows = dev[BOOLQ_VALIDATION_SIZE:paper_cut] + fewglue
        val_rows, test_rows = dev[:BOOLQ_VALIDATION_SIZE], dev[paper_cut:]
        protocol = (f"official train missing: train = dev[{BOOLQ_VALIDATION_SIZE}:{paper_cut}] + FewGLUE train+dev32 "
                    f"({len(fewglue)}); validation = dev[:{BOOLQ_VALIDATION_SIZE}]; test = dev[{paper_cut}:] "
                    "(the paper's test part)")
    else:
        train_rows = read_rows(spec.folder, "train", base=base)
        if spec.name == "multirc":
            cut = multirc_validation_rows(dev)
            unit = "paragraphs (closest paragraph boundary to the paper's 453 answer options)"
        elif spec.name == "cb":
            cut, unit = CB_VALIDATION_SIZE, "rows (CB is not in the paper; our cut)"
        else:
            cut, unit = PAPER_VALIDATION_SIZE[spec.name], "rows (the paper's cut)"
        val_rows, test_rows = dev[:cut], dev[cut:]
        protocol = f"train = official train; validation = dev[:{cut}] {unit}; test = dev[{cut}:]"
    train = _subsample(_examples(spec, train_rows, "training"), max_train, seed)
    validation = _prefix_groups(_examples(spec, val_rows, "validation"), max_eval)
    test = _prefix_groups(_examples(spec, test_rows, "test"), max_eval)
    if max_train is not None or max_eval is not None:
        protocol += f"; shortened run: max_train={max_train}, max_eval={max_eval} (not the full protocol)"
    return TaskSplits(spec.name, train, validation, test, protocol)

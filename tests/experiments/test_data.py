"""Data: reading files, response-only labels for every format, truncation, packing, deterministic batches."""
from __future__ import annotations

import gzip
import json

import pytest
import torch

from experiments.data import (IGNORE_INDEX, load_records, make_batches, split_train_eval, tokenize_records)
from experiments.templates import build_prompt

RECORD = {"instruction": "Name the capital of France.", "input": "Answer in one word.", "output": "Paris"}
GSM8K = {"question": "Natalia sold clips to 48 friends in April and half as many in May. How many in total?",
         "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nIn total 48+24 = <<48+24=72>>72 clips.\n#### 72"}


def _runs(example):
    """Contiguous runs of (trainable, ids) along an example."""
    runs = []
    for tok_id, label in zip(example["input_ids"], example["labels"]):
        trainable = label != IGNORE_INDEX
        if trainable:
            assert label == tok_id  # a trained position predicts exactly its own token
        if runs and runs[-1][0] == trainable:
            runs[-1][1].append(tok_id)
        else:
            runs.append((trainable, [tok_id]))
    return runs


# --- tokenizing -------------------------------------------------------------------------------------------------
def test_alpaca_with_chat_template_masks_exactly_the_prompt(smollm2_tokenizer):
    tok = smollm2_tokenizer
    example = tokenize_records([RECORD], tok, fmt="alpaca", max_length=256)[0]
    (p_train, prompt), (a_train, answer) = _runs(example)
    assert (p_train, a_train) == (False, True)
    user = f"{RECORD['instruction']}\n\n{RECORD['input']}"
    expected_prompt = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                              add_generation_prompt=True)
    assert tok.decode(prompt) == expected_prompt
    assert tok.decode(answer) == "Paris<|im_end|>\n"
    assert build_prompt(tok, user) == prompt  # inference prompts match training prompts token for token


def test_alpaca_plain_template_without_chat_template(tok512):
    example = tokenize_records([RECORD], tok512, fmt="alpaca", max_length=256)[0]
    (_, prompt), (_, answer) = _runs(example)
    assert prompt[0] == tok512.bos_token_id
    assert tok512.decode(prompt, skip_special_tokens=True) == (
        "### Instruction:\nName the capital of France.\n\nAnswer in one word.\n\n### Response:\n")
    assert answer == tok512("Paris", add_special_tokens=False)["input_ids"] + [tok512.eos_token_id]


def test_every_assistant_turn_of_a_history_is_trained(smollm2_tokenizer):
    record = {"instruction": "third question", "input": "", "output": "third answer",
              "history": [["first question", "first answer"], ["second question", "second answer"]]}
    runs = _runs(tokenize_records([record], smollm2_tokenizer, fmt="alpaca", max_length=512)[0])
    assert [t for t, _ in runs] == [False, True] * 3
    trained = [smollm2_tokenizer.decode(ids) for t, ids in runs if t]
    assert trained == [f"{n} answer<|im_end|>\n" for n in ("first", "second", "third")]
    prompts = [smollm2_tokenizer.decode(ids) for t, ids in runs if not t]
    assert all(f"{n} question" in p for n, p in zip(("first", "second", "third"), prompts))


def test_math_format(smollm2_tokenizer):
    example = tokenize_records([GSM8K], smollm2_tokenizer, fmt="math", max_length=256)[0]
    (_, prompt), (_, answer) = _runs(example)
    assert GSM8K["question"] in smollm2_tokenizer.decode(prompt)
    assert smollm2_tokenizer.decode(answer) == (
        "In May she sold 48/2 = 24 clips.\nIn total 48+24 = 72 clips.\nThe answer is 72.<|im_end|>\n")
    raw = tokenize_records([GSM8K], smollm2_tokenizer, fmt="math", max_length=256, math_style="raw")[0]
    assert smollm2_tokenizer.decode(_runs(raw)[1][1]).startswith(GSM8K["answer"])


def test_text_format_trains_every_token_and_chunks(smollm2_tokenizer):
    tok = smollm2_tokenizer
    docs = [{"text": "The quick brown fox jumps over the lazy dog. " * 8}, {"text": "A second, shorter document."}]
    separate = tokenize_records(docs, tok, fmt="text", max_length=16)
    packed = tokenize_records(docs, tok, fmt="text", max_length=16, packing=True)
    for examples in (separate, packed):
        assert all(e["labels"] == e["input_ids"] and len(e["input_ids"]) <= 16 for e in examples)
    stream = [t for d in docs for t in tok(d["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    assert [t for e in packed for t in e["input_ids"]] == stream
    assert all(len(e["input_ids"]) == 16 for e in packed[:-1])
    assert len(separate) == len(packed) + 1  # each document's last chunk stands alone


def test_truncation_cuts_the_answer_and_keeps_the_prompt(smollm2_tokenizer):
    long_answer = dict(RECORD, output="word " * 300)
    examples = tokenize_records([RECORD, long_answer], smollm2_tokenizer, fmt="alpaca", max_length=64)
    assert examples.stats["truncated"] == 1 and examples.stats["prompt_truncated"] == 0
    assert len(examples) == 2 and len(examples[1]["input_ids"]) == 64
    full_prompt = _runs(examples[0])[0][1]
    assert _runs(examples[1])[0][1] == full_prompt


def test_truncation_of_an_overlong_prompt_still_trains_part_of_the_answer(smollm2_tokenizer):
    record = dict(RECORD, input="context " * 300, output="answer " * 40)
    examples = tokenize_records([record], smollm2_tokenizer, fmt="alpaca", max_length=64)
    assert examples.stats["truncated"] == 1 and examples.stats["prompt_truncated"] == 1
    labels = examples[0]["labels"]
    assert len(labels) == 64 and sum(label != IGNORE_INDEX for label in labels) == 64 // 4


def test_packing_concatenates_whole_examples_with_masks_intact(smollm2_tokenizer):
    records = load_records("alpaca-gpt4-sample", max_samples=30)
    single = tokenize_records(records, smollm2_tokenizer, fmt="alpaca", max_length=384)
    packed = tokenize_records(records, smollm2_tokenizer, fmt="alpaca", max_length=384, packing=True)
    assert len(packed) < len(single) and all(len(e["input_ids"]) <= 384 for e in packed)
    for key in ("input_ids", "labels"):
        assert [t for e in packed for t in e[key]] == [t for e in single for t in e[key]]
    assert packed.stats["trainable_tokens"] == single.stats["trainable_tokens"]


def test_bad_format_and_missing_fields(tok512):
    with pytest.raises(ValueError, match="alpaca, math, text"):
        tokenize_records([RECORD], tok512, fmt="sharegpt", max_length=64)
    with pytest.raises(ValueError, match="record 1 has no 'output'"):
        tokenize_records([RECORD, {"instruction": "x"}], tok512, fmt="alpaca", max_length=64)
    with pytest.raises(ValueError, match="'question'"):
        tokenize_records([RECORD], tok512, fmt="math", max_length=64)


# --- batching ---------------------------------------------------------------------------------------------------
def _toy_examples(n=23):
    return [{"input_ids": [i + 1] * (1 + i % 7), "labels": [IGNORE_INDEX] + [i + 1] * (i % 7)} for i in range(n)]


def test_make_batches_is_deterministic_and_pads_right():
    examples = _toy_examples()
    first = list(make_batches(examples, batch_size=4, seed=7, epoch=1, pad_token_id=0))
    second = list(make_batches(examples, batch_size=4, seed=7, epoch=1, pad_token_id=0))
    assert len(first) == 6
    for a, b in zip(first, second):
        assert a.keys() == {"input_ids", "attention_mask", "labels"}
        assert all(torch.equal(a[k], b[k]) and a[k].dtype == torch.long for k in a)
    other_epoch = list(make_batches(examples, batch_size=4, seed=7, epoch=2))
    assert any(not torch.equal(a["input_ids"][:, 0], b["input_ids"][:, 0]) for a, b in zip(first, other_epoch))
    seen = sorted(int(row[0]) for batch in first for row in batch["input_ids"])
    assert seen == list(range(1, 24))  # every example exactly once
    for batch in first:
        pad = batch["attention_mask"] == 0
        assert torch.all(batch["labels"][pad] == IGNORE_INDEX) and torch.all(batch["input_ids"][pad] == 0)
        lengths = batch["attention_mask"].sum(1)
        assert torch.all(batch["attention_mask"].cumsum(1).max(1).values == lengths)  # right padding only


def test_group_by_length_and_options():
    examples = _toy_examples(40)
    batches = list(make_batches(examples, batch_size=4, seed=0, group_by_length=True))
    lengths = [int(n) for b in batches for n in b["attention_mask"].sum(1)]
    assert lengths == sorted(lengths, reverse=True)  # one mega-batch (4 x 50 > 40): sorted longest first
    unshuffled = list(make_batches(examples, batch_size=8, seed=0, shuffle=False, drop_last=True, pad_to_length=10))
    assert len(unshuffled) == 5 and all(b["input_ids"].shape == (8, 10) for b in unshuffled)
    assert unshuffled[0]["input_ids"][0, 0] == 1
    with pytest.raises(ValueError, match="pad_to_length"):
        next(make_batches(examples, batch_size=8, seed=0, pad_to_length=3))
    scalar = [{"input_ids": [5, 6, 7][: 1 + i % 3], "labels": i % 2} for i in range(6)]
    batch = next(make_batches(scalar, batch_size=6, seed=0, shuffle=False))
    assert batch["labels"].tolist() == [0, 1, 0, 1, 0, 1] and batch["input_ids"].shape == (6, 3)


def test_split_train_eval():
    items = list(range(100))
    train, evaluation = split_train_eval(items, 0.1, seed=3)
    assert len(evaluation) == 10 and sorted(train + evaluation) == items
    assert split_train_eval(items, 0.1, seed=3) == (train, evaluation)
    assert split_train_eval(items, 10, seed=4)[1] != evaluation
    with pytest.raises(ValueError, match="eval_size"):
        split_train_eval(items, 100, seed=0)


# --- reading ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [False, True])
def test_load_records_json_jsonl_and_jsonl_named_json(tmp_path, compress):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(5)]
    contents = {"array.json": json.dumps(rows, indent=2), "lines.jsonl": "\n".join(map(json.dumps, rows)) + "\n",
                "aqua_style.json": "\n".join(map(json.dumps, rows))}
    for name, text in contents.items():
        path = tmp_path / (name + (".gz" if compress else ""))
        path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
        assert load_records(str(path)) == rows
        assert load_records(str(path), max_samples=2) == rows[:2]


def test_load_records_text_files_and_errors(tmp_path):
    path = tmp_path / "corpus.txt.gz"
    path.write_bytes(gzip.compress("line one\nline two\nline three\n".encode()))
    assert load_records(str(path)) == [{"text": "line one\nline two\nline three\n"}]
    assert load_records(str(path), max_samples=2) == [{"text": "line one\nline two\n"}]
    with pytest.raises(FileNotFoundError, match="alpaca-gpt4-sample"):
        load_records(str(tmp_path / "missing.jsonl"))
    (tmp_path / "table.xlsx").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"unsupported file type '.xlsx'; valid: .json, .jsonl, .csv, .tsv, .txt"):
        load_records(str(tmp_path / "table.xlsx"))
    (tmp_path / "broken.jsonl").write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match="line 2"):
        load_records(str(tmp_path / "broken.jsonl"))


def test_load_records_csv_and_tsv_with_a_header_row(tmp_path):
    rows = [{"instruction": "Add 2 and 3.", "input": "", "output": "5"},
            {"instruction": 'Quote "this", please', "input": "a, b", "output": "line one\nline two"}]
    import csv

    for name, delimiter in (("mine.csv", ","), ("mine.tsv", "\t")):
        with open(tmp_path / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["instruction", "input", "output"], delimiter=delimiter)
            writer.writeheader()
            writer.writerows(rows)
        assert load_records(str(tmp_path / name)) == rows
        assert load_records(str(tmp_path / name), max_samples=1) == rows[:1]
    (tmp_path / "ragged.csv").write_text("instruction,output\nq1,a1\nq2\n")
    with pytest.raises(ValueError, match=r"ragged.csv: line 3 has fewer cells than the header's 2"):
        load_records(str(tmp_path / "ragged.csv"))


@pytest.mark.parametrize("name, content", [("empty.jsonl", b""), ("blank.jsonl", b"\n\n \n"), ("empty.json", b"[]"),
                                           ("header_only.csv", b"instruction,input,output\n"),
                                           ("empty.txt", b"\n")])
def test_a_file_without_records_is_named_not_blamed_on_eval_samples(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=rf"{name}: holds no (records|text) \(the file is empty"):
        load_records(str(tmp_path / name))


@pytest.mark.parametrize("compress", [False, True])
def test_non_utf8_bytes_name_the_file_line_and_the_fix(tmp_path, compress):
    text = '{"instruction": "q", "output": "a"}\n{"instruction": "caf\u00e9", "output": "b"}\n'.encode("latin-1")
    path = tmp_path / ("latin1.jsonl" + (".gz" if compress else ""))
    path.write_bytes(gzip.compress(text) if compress else text)
    with pytest.raises(ValueError, match=r"latin1.jsonl(.gz)?: not UTF-8 text \(byte 0xe9 on line 2\); valid: UTF-8"):
        load_records(str(path))


def test_a_record_without_the_formats_fields_names_the_formats(tok512):
    with pytest.raises(ValueError, match=r"no 'output' field.*data.format: alpaca: instruction, output.*text: text"):
        tokenize_records([{"instruction": "q"}], tok512, fmt="alpaca", max_length=64)
    with pytest.raises(ValueError, match=r"no 'text' field.*data.format: alpaca: instruction, output"):
        tokenize_records([{"instruction": "q"}], tok512, fmt="text", max_length=64)


def test_shared_aliases():
    assert len(load_records("alpaca-gpt4-sample")) == 999
    gsm = load_records("gsm8k-train", max_samples=5)
    assert len(gsm) == 5 and gsm[0]["answer"].endswith("#### 72")
    lima = load_records("lima")
    assert len(lima) == 1029 and any(r.get("history") for r in lima)
    assert load_records("tinyshakespeare", max_samples=1)[0]["text"].startswith("First Citizen")


def test_local_dataset_folder_goes_through_datasets(tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    rows = [{"text": f"document {i}"} for i in range(6)]
    (folder / "train.jsonl").write_text("\n".join(map(json.dumps, rows)))
    assert load_records(str(folder), split="train", max_samples=4) == rows[:4]
    with pytest.raises(ValueError, match="valid sources"):
        load_records(str(folder), split="no_such_split")


def test_eval_samples_larger_than_the_file_names_the_file_and_the_valid_range(tmp_path):
    from experiments.config import ConfigError, load_config
    from experiments.run import build_data

    (tmp_path / "notes.txt").write_text("my own corpus\n" * 50)
    cfg = load_config("small/smollm2_alpaca.yaml", [f"data.source={tmp_path / 'notes.txt'}", "data.format=text"])
    with pytest.raises(ConfigError, match=r"out of the 1 records of .*notes.txt \(a text file is one record\); "
                                          r"valid: data.eval_samples in \[0, 0\]"):
        build_data(cfg, tokenizer=object())


def test_excel_csv_with_a_byte_order_mark_reads_its_first_field(tmp_path):
    (tmp_path / "excel.csv").write_text("instruction,output\nSay hi,hi\n", encoding="utf-8-sig")
    (tmp_path / "bom.json").write_text('[{"instruction": "Say hi", "output": "hi"}]', encoding="utf-8-sig")
    for name in ("excel.csv", "bom.json"):
        assert load_records(str(tmp_path / name)) == [{"instruction": "Say hi", "output": "hi"}]


def test_another_separator_or_a_wrapped_list_is_named_with_the_fix(tmp_path):
    (tmp_path / "semi.csv").write_text("instruction;output\nSay hi;hi\n")
    with pytest.raises(ValueError, match=r"header 'instruction;output' is one field: its cells are separated by ';'"):
        load_records(str(tmp_path / "semi.csv"))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": [RECORD, RECORD]}))
    with pytest.raises(ValueError, match=r"one JSON object whose 'data' holds 2 records; valid: a JSON list"):
        load_records(str(tmp_path / "wrapped.json"))
    (tmp_path / "one.json").write_text(json.dumps(RECORD))  # a single record is still one record
    assert load_records(str(tmp_path / "one.json")) == [RECORD]

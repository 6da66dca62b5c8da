"""Training data for the harness: read records, tokenize them with response-only labels, and batch them reproducibly.

    records  = load_records("alpaca-gpt4-sample")                     # list of dicts
    examples = tokenize_records(records, tok, fmt="alpaca", max_length=512)
    for batch in make_batches(examples, batch_size=8, seed=0, epoch=0, pad_token_id=tok.pad_token_id): ...

Formats (DATA_FORMATS): "alpaca" (instruction / input / output, optional history and system; see templates.py),
"math" (GSM8K question / answer), "text" (records with a "text" field, e.g. a .txt file or c4-style JSONL).
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import random
from pathlib import Path
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from experiments.paths import shared_data
from experiments.templates import (FORMAT_FIELDS, MATH_STYLES, alpaca_conversation, conversation_segments_batch,
                                   math_conversation)

_log = logging.getLogger(__name__)
DATA_FORMATS = ("alpaca", "math", "text")
IGNORE_INDEX = -100  # label value that torch's cross-entropy (and transformers' loss) skips

# Shared datasets by name: (path under experiments.paths.shared_data(), the format to tokenize them with).
DATASET_ALIASES: dict[str, tuple[str, str]] = {
    "alpaca-gpt4-sample": ("alpaca_gpt4/alpaca_en_demo.json.gz", "alpaca"),
    "alpaca-cleaned": ("alpaca_cleaned/alpaca_data_cleaned_merged.json.gz", "alpaca"),
    "lima": ("lima/lima.json.gz", "alpaca"),
    "gsm8k-train": ("gsm8k/train.jsonl.gz", "math"),
    "gsm8k-test": ("math_eval/gsm8k/gsm8k.jsonl.gz", "math"),
    "tinyshakespeare": ("text_corpus/tinyshakespeare/input.txt.gz", "text"),
    "wikitext2-test": ("text_corpus/wikitext-2-raw/wiki.test.raw.gz", "text"),
    "c4-demo": ("text_corpus/c4_demo/c4_demo.jsonl.gz", "text"),
    "wiki-demo": ("text_corpus/wiki_demo/wiki_demo.txt.gz", "text"),
}
_JSON_SUFFIXES = (".json", ".jsonl")
_TABLE_SUFFIXES = (".csv", ".tsv")  # a header row names the fields
_TOKENIZE_CHUNK = 256
_TEXT_SUFFIXES = (".txt", ".raw", ".text")
# the local files load_records reads itself (no `datasets` needed), as the error messages name them
_LOCAL_FILE_KINDS = f"{'/'.join(_JSON_SUFFIXES + _TABLE_SUFFIXES + _TEXT_SUFFIXES)} file (optionally .gz)"


def default_format(source: str) -> str | None:
    """The format a shared dataset alias is meant for (None for anything else)."""
    return DATASET_ALIASES[source][1] if source in DATASET_ALIASES else None


# --- reading ----------------------------------------------------------------------------------------------------
def _read_text(path: Path) -> str:
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"  # by content, not by name
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")  # a byte-order mark (Excel's CSV export writes one) is not part of the text
    except UnicodeDecodeError as exc:  # name the file and the line: the codec's message names neither
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); valid: UTF-8 encoded "
                         "files (convert it first, e.g. iconv -f latin1 -t utf-8)") from None


def _parse_json_records(text: str, path: Path) -> list[dict]:
    """A JSON array, a single object, or JSON Lines (whatever the file is called: AQuA.json is JSON Lines)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}: neither a JSON document nor JSON Lines (line {line_no}, column "
                                     f"{exc.colno}: {exc.msg})") from None
    if isinstance(data, dict):
        wrapped = [k for k, v in data.items() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
        if wrapped:  # {"data": [...]}: read as one record, it would train on nothing the user meant
            raise ValueError(f"{path}: one JSON object whose {wrapped[0]!r} holds {len(data[wrapped[0]])} records; "
                             "valid: a JSON list of records or JSON Lines (one record per line), so save that list "
                             f"on its own (e.g. jq '.{wrapped[0]}' {path.name})")
        data = [data]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ValueError(f"{path}: expected a list of JSON objects (records)")
    return data


def _parse_table_records(text: str, path: Path, delimiter: str) -> list[dict]:
    """CSV / TSV with a header row naming the fields (e.g. instruction,input,output); every cell is a string."""
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = reader.fieldnames or []
    other = next((d for d in ";\t|," if d != delimiter and len(header) == 1 and d in header[0]), None)
    if other is not None:  # one field named 'instruction;input;output': another separator than the suffix says
        raise ValueError(f"{path}: the header {header[0]!r} is one field: its cells are separated by {other!r}; valid: "
                         "',' in a .csv file, a tab in a .tsv file")
    records = []
    for row in reader:
        if None in row or None in row.values():  # more / fewer cells than the header names
            raise ValueError(f"{path}: line {reader.line_num} has {'more' if None in row else 'fewer'} cells than "
                             f"the header's {len(reader.fieldnames)} ({', '.join(reader.fieldnames)})")
        records.append(row)
    return records


def _looks_like_path(source: str) -> bool:
    suffixes = {s.lower() for s in Path(source).suffixes}
    return (source.startswith((".", "/", "~"))
            or bool(suffixes & {*_JSON_SUFFIXES, *_TABLE_SUFFIXES, *_TEXT_SUFFIXES, ".gz"}))


def load_records(source: str, *, split: str = "train", max_samples: int | None = None) -> list[dict]:
    """Records from a shared alias (DATASET_ALIASES), a local .json/.jsonl/.csv/.tsv/.txt file (optionally .gz; CSV and
    TSV with a header row naming the fields), a local dataset folder or a hub dataset ("name" or "name:config", via
    datasets.load_dataset).

    A local file is a single split, so `split` applies only to folders and hub datasets. A text file becomes one
    record {"text": ...}; there max_samples keeps its first max_samples lines.
    """
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be a positive number of records, got {max_samples}")
    path = shared_data(DATASET_ALIASES[source][0]) if source in DATASET_ALIASES else Path(source).expanduser()
    if path.is_file():
        return _load_file(path, max_samples)
    if source in DATASET_ALIASES:
        raise FileNotFoundError(f"shared dataset {source!r} is missing: {path} (is $BADAM_SHARED set right?)")
    if _looks_like_path(source) and not path.is_dir():
        raise FileNotFoundError(f"data file not found: {path}; valid sources: a {_LOCAL_FILE_KINDS}, a dataset "
                                f"folder, a hub dataset name, or one of {', '.join(DATASET_ALIASES)}")
    return _load_with_datasets(str(path) if path.is_dir() else source, split, max_samples)


def _load_file(path: Path, max_samples: int | None) -> list[dict]:
    name = path.name.lower().removesuffix(".gz")
    suffix = Path(name).suffix
    if suffix in _TEXT_SUFFIXES:
        text = _read_text(path)
        if not text.strip():
            raise ValueError(f"{path}: holds no text (the file is empty)")
        if max_samples is not None:
            text = "".join(text.splitlines(keepends=True)[:max_samples])
        return [{"text": text}]
    if suffix not in _JSON_SUFFIXES + _TABLE_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; valid: "
                         f"{', '.join(_JSON_SUFFIXES + _TABLE_SUFFIXES + _TEXT_SUFFIXES)} (each optionally .gz)")
    text = _read_text(path)
    if suffix in _TABLE_SUFFIXES:
        records = _parse_table_records(text, path, delimiter="\t" if suffix == ".tsv" else ",")
    else:
        records = _parse_json_records(text, path)
    if not records:  # else the first complaint would be a misleading one about eval_samples or batch counts
        what = "the file is empty or has only a header" if suffix in _TABLE_SUFFIXES else "the file is empty"
        raise ValueError(f"{path}: holds no records ({what})")
    return records[:max_samples] if max_samples is not None else records


def _load_with_datasets(source: str, split: str, max_samples: int | None) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise ImportError(f"reading {source!r} needs the `datasets` package (pip install datasets); a local "
                          f"{_LOCAL_FILE_KINDS} does not") from None
    name, _, config = source.partition(":") if not Path(source).is_dir() else (source, "", "")
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as exc:  # offline hub misses and typos surface as many exception types; name the choices once
        raise ValueError(f"could not load dataset {source!r} (split {split!r}) with datasets.load_dataset: {exc}; "
                         f"valid sources: a hub dataset ('name' or 'name:config'), a dataset folder, a "
                         f"{_LOCAL_FILE_KINDS}, or one of {', '.join(DATASET_ALIASES)}") from exc
    if max_samples is not None:
        ds = ds.select(range(min(max_samples, len(ds))))
    return ds.to_list()


def check_records(records: Sequence[dict], fmt: str) -> None:
    """Every record has what data.format `fmt` reads (checked before anything is tokenized or written, so a bad
    record is named by its place in the file: record 1 is the first)."""
    if fmt not in DATA_FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; valid: {', '.join(DATA_FORMATS)}")
    for number, record in enumerate(records, start=1):
        if fmt == "text":
            if "text" not in record:
                raise ValueError(f"record {number} has no 'text' field, which format 'text' needs (its fields: "
                                 f"{sorted(record)}; data.format: {FORMAT_FIELDS})")
        elif fmt == "alpaca":
            alpaca_conversation(record, number)
        else:
            math_conversation(record, number)


# --- tokenizing -------------------------------------------------------------------------------------------------
class TokenizedExamples(list):
    """A list of {"input_ids", "labels"} dicts, plus `stats` about what tokenization did (truncations etc.)."""

    def __init__(self, examples=(), stats: dict | None = None):
        super().__init__(examples)
        self.stats = stats or {}


def _truncate(segments: list[tuple[list[int], bool]], max_length: int) -> tuple[list[int], list[int], str | None]:
    """Concatenate segments; cut to max_length keeping at least some answer tokens.

    Returns (ids, labels, how): how is None (fits), "answer" (the tail was cut) or "prompt" (the prompt alone was too
    long: its beginning is dropped so that a quarter of max_length, or the whole first answer, is still trained).
    """
    ids = [t for seg, _ in segments for t in seg]
    labels = [t if trainable else IGNORE_INDEX for seg, trainable in segments for t in seg]
    if len(ids) <= max_length:
        return ids, labels, None
    first_answer = next((i for i, (_, trainable) in enumerate(segments) if trainable and segments[i][0]), None)
    if first_answer is None:
        return ids[:max_length], labels[:max_length], "answer"
    prompt_len = sum(len(seg) for seg, _ in segments[:first_answer])
    reserve = min(len(segments[first_answer][0]), max(1, max_length // 4))
    if prompt_len + reserve <= max_length:
        return ids[:max_length], labels[:max_length], "answer"
    drop = prompt_len + reserve - max_length
    ids, labels = ids[drop:], labels[drop:]
    return ids[:max_length], labels[:max_length], "prompt"


def _pack(examples: Sequence[dict], max_length: int) -> list[dict]:
    """Concatenate whole examples (in order) into sequences of at most max_length tokens.

    No example is split, so every label keeps its mask. Packed examples attend to each other (standard packing,
    positions continue across examples); the first token of each example is a prompt token, never trained.
    """
    packed: list[dict] = []
    ids: list[int] = []
    labels: list[int] = []
    for ex in examples:
        if ids and len(ids) + len(ex["input_ids"]) > max_length:
            packed.append({"input_ids": ids, "labels": labels})
            ids, labels = [], []
        ids.extend(ex["input_ids"])
        labels.extend(ex["labels"])
    if ids:
        packed.append({"input_ids": ids, "labels": labels})
    return packed


def _tokenize_text(records: Sequence[dict], tokenizer, max_length: int, packing: bool) -> TokenizedExamples:
    """Plain language modelling: every token is trained; documents are separated by EOS and cut into chunks."""
    texts = []
    for i, record in enumerate(records):
        if "text" not in record:
            raise ValueError(f"record {i} has no 'text' field, which format 'text' needs (its fields: "
                             f"{sorted(record)}; data.format: {FORMAT_FIELDS})")
        texts.append(str(record["text"]))
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    docs = [tokenizer(t, add_special_tokens=False)["input_ids"] + eos
            for t in tqdm(texts, desc="tokenizing text", disable=len(texts) < 100)]
    streams = [[t for d in docs for t in d]] if packing else docs
    examples = [{"input_ids": s[i:i + max_length], "labels": list(s[i:i + max_length])}
                for s in streams for i in range(0, len(s), max_length)]
    stats = {"records": len(records), "examples": len(examples), "truncated": 0, "prompt_truncated": 0,
             "tokens": sum(len(e["input_ids"]) for e in examples)}
    stats["trainable_tokens"] = stats["tokens"]
    return TokenizedExamples(examples, stats)


def tokenize_records(records: Sequence[dict], tokenizer, *, fmt: str, max_length: int, packing: bool = False,
                     template: str = "auto", math_style: str = "mammoth") -> TokenizedExamples:
    """Tokenize records into {"input_ids", "labels"} examples, labels IGNORE_INDEX (-100) on non-trained tokens.

    fmt: alpaca | math | text (DATA_FORMATS). max_length: longer examples are truncated, never dropped (counted in
    .stats["truncated"]). packing: concatenate whole examples into sequences of up to max_length tokens.
    template: auto | chat | plain (templates.py). math_style: mammoth | raw (templates.gsm8k_answer).
    """
    if fmt not in DATA_FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; valid: {', '.join(DATA_FORMATS)}")
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 tokens, got {max_length}")
    if math_style not in MATH_STYLES:
        raise ValueError(f"unknown math style {math_style!r}; valid: {', '.join(MATH_STYLES)}")
    if fmt == "text":
        return _tokenize_text(records, tokenizer, max_length, packing)

    examples, truncated, prompt_truncated = [], 0, 0
    with tqdm(total=len(records), desc=f"tokenizing {fmt}", disable=len(records) < 100) as bar:
        for start in range(0, len(records), _TOKENIZE_CHUNK):  # batched: fast tokenizers encode lists in parallel
            chunk = records[start:start + _TOKENIZE_CHUNK]
            conversations = [alpaca_conversation(r, start + i) if fmt == "alpaca"
                             else math_conversation(r, start + i, math_style) for i, r in enumerate(chunk)]
            for segments in conversation_segments_batch(tokenizer, conversations, template):
                ids, labels, how = _truncate(segments, max_length)
                truncated += how is not None
                prompt_truncated += how == "prompt"
                examples.append({"input_ids": ids, "labels": labels})
            bar.update(len(chunk))
    stats = {"records": len(records), "truncated": truncated, "prompt_truncated": prompt_truncated,
             "tokens": sum(len(e["input_ids"]) for e in examples),
             "trainable_tokens": sum(sum(t != IGNORE_INDEX for t in e["labels"]) for e in examples)}
    if truncated:
        _log.warning(f"tokenize_records: {truncated} of {len(records)} examples were longer than max_length={max_length} "
              f"and were truncated ({prompt_truncated} of them in the prompt)")
    if packing:
        examples = _pack(examples, max_length)
    stats["examples"] = len(examples)
    return TokenizedExamples(examples, stats)


# --- batching ---------------------------------------------------------------------------------------------------
def _length(example: dict) -> int:
    ids = example["input_ids"]
    return max((len(x) for x in ids), default=0) if ids and isinstance(ids[0], list) else len(ids)


def _pad_value(key: str, pad_token_id: int) -> int:
    return {"input_ids": pad_token_id, "labels": IGNORE_INDEX}.get(key, 0)


def _collate(batch: Sequence[dict], pad_token_id: int, pad_to_length: int | None) -> dict[str, torch.Tensor]:
    """Right-pad list-valued fields (1-D per example, or 2-D for multiple choice); stack scalar fields."""
    batch = [dict(ex) for ex in batch]
    for ex in batch:
        if "attention_mask" not in ex:
            ids = ex["input_ids"]
            ex["attention_mask"] = [[1] * len(x) for x in ids] if ids and isinstance(ids[0], list) else [1] * len(ids)
    width = max(_length(ex) for ex in batch)
    if pad_to_length is not None:
        if width > pad_to_length:
            raise ValueError(f"an example has {width} tokens, more than pad_to_length={pad_to_length}")
        width = pad_to_length
    out = {}
    for key in batch[0]:
        values = [ex[key] for ex in batch]
        if not isinstance(values[0], list):
            out[key] = torch.tensor(values, dtype=torch.long)
            continue
        fill = _pad_value(key, pad_token_id)
        if values[0] and isinstance(values[0][0], list):
            out[key] = torch.tensor([[row + [fill] * (width - len(row)) for row in v] for v in values],
                                    dtype=torch.long)
        else:
            out[key] = torch.tensor([v + [fill] * (width - len(v)) for v in values], dtype=torch.long)
    return out


def batch_order(n: int, *, batch_size: int, seed: int, epoch: int = 0, shuffle: bool = True,
                lengths: Sequence[int] | None = None, megabatch_mult: int = 50) -> list[list[int]]:
    """Example indices of each batch. With lengths (group_by_length), batches of similar length are formed inside
    shuffled mega-batches of batch_size * megabatch_mult examples (sorted longest first within each)."""
    order = list(range(n))
    if shuffle:
        # a string seed makes random.Random hash it with SHA-512: the same order on every machine and Python run
        random.Random(f"make_batches:{seed}:{epoch}").shuffle(order)
    if lengths is not None:
        mega = batch_size * megabatch_mult
        order = [i for start in range(0, n, mega)
                 for i in sorted(order[start:start + mega], key=lambda j: -lengths[j])]
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def make_batches(examples: Sequence[dict], *, batch_size: int, seed: int, epoch: int = 0, shuffle: bool = True,
                 group_by_length: bool = False, pad_token_id: int = 0, drop_last: bool = False,
                 pad_to_length: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Yield {input_ids, attention_mask, labels, ...} LongTensor batches, right-padded (labels IGNORE_INDEX on pad).

    The order depends only on (seed, epoch, len(examples)), so every method sees identical batches.
    drop_last: skip a final smaller batch. pad_to_length: pad every batch to this width (fixed shapes for timing).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = [_length(ex) for ex in examples] if group_by_length else None
    for indices in batch_order(len(examples), batch_size=batch_size, seed=seed, epoch=epoch, shuffle=shuffle,
                               lengths=lengths):
        if drop_last and len(indices) < batch_size:
            continue
        yield _collate([examples[i] for i in indices], pad_token_id, pad_to_length)


def split_train_eval(examples: Sequence, eval_size: int | float, seed: int) -> tuple[list, list]:
    """Deterministic split: eval_size is a count (int >= 1) or a fraction (0 < float < 1) of the examples."""
    n = len(examples)
    if isinstance(eval_size, float) and 0 < eval_size < 1:
        n_eval = max(1, round(n * eval_size))
    elif isinstance(eval_size, int) and not isinstance(eval_size, bool) and 0 <= eval_size < n:
        n_eval = eval_size
    else:
        raise ValueError(f"eval_size must be a count in [0, {n}) or a fraction in (0, 1), got {eval_size!r}")
    order = list(range(n))
    random.Random(f"split_train_eval:{seed}").shuffle(order)
    eval_idx = set(order[:n_eval])
    return [ex for i, ex in enumerate(examples) if i not in eval_idx], [examples[i] for i in sorted(eval_idx)]

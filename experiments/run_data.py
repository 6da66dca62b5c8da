"""The data of one run: the records of data.source, checked before anything is written, and the batches built from
them (experiments.run)."""
from __future__ import annotations

from pathlib import Path

from experiments.config import ConfigError, RunConfig


def load_run_records(cfg: RunConfig) -> list[dict]:
    """The records of data.source, checked for what data.format reads and for data.eval_samples; a bad file or record
    is a ConfigError (one line, exit 2), raised before the run directory is made."""
    from experiments import data as data_mod

    wanted = None if cfg.data.max_samples is None else cfg.data.max_samples + cfg.data.eval_samples
    try:
        records = data_mod.load_records(cfg.data.source, split=cfg.data.split, max_samples=wanted)
        if cfg.data.format != "superglue":
            data_mod.check_records(records, cfg.data.format)
    except (ValueError, OSError, ImportError) as exc:
        named = cfg.data.source in str(exc) or str(Path(cfg.data.source).expanduser()) in str(exc)
        raise ConfigError(str(exc) if named else f"data.source={cfg.data.source}: {exc}") from exc
    n_eval = cfg.data.eval_samples
    if n_eval and len(records) <= n_eval:
        one_text = " (a text file is one record)" if len(records) == 1 and "text" in records[0] else ""
        raise ConfigError(f"data.eval_samples={n_eval} leaves no training examples out of the {len(records)} records "
                          f"of {cfg.data.source}{one_text}; valid: data.eval_samples in [0, {len(records) - 1}]")
    return records


def build_data(cfg: RunConfig, tokenizer, stats: dict | None = None, records: list[dict] | None = None):
    """(batches_fn(epoch), eval_batches_fn or None): the same tokenized examples and order for every method.
    `stats` (if given) receives the tokenization statistics (examples, tokens, truncated, ...); `records`: those
    load_run_records gave (read here when None)."""
    stats = {} if stats is None else stats
    from experiments import data as data_mod

    if cfg.data.format == "superglue":
        raise ConfigError("data.format=superglue is trained by the SuperGLUE evaluator (python -m eval.superglue "
                          "--config ...), which builds classification batches; experiments.run trains causal LMs")
    if tokenizer is None:
        raise ConfigError(f"model.source={cfg.model.source!r} comes without a tokenizer; text data needs one")
    records = load_run_records(cfg) if records is None else records
    n_eval = cfg.data.eval_samples
    # a seeded split: the held-out records are the same for every method
    split_seed = cfg.seed if cfg.data.split_seed is None else cfg.data.split_seed
    train_records, eval_records = (data_mod.split_train_eval(records, n_eval, split_seed) if n_eval
                                   else (records, []))
    pad_to = cfg.data.max_length if cfg.data.pad_to_max_length else None

    def tokenize(recs):
        return data_mod.tokenize_records(recs, tokenizer, fmt=cfg.data.format, max_length=cfg.data.max_length,
                                         packing=cfg.data.packing)

    train_examples = tokenize(train_records)
    stats.update(getattr(train_examples, "stats", {}) or {})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    def batches_fn(epoch: int):
        return data_mod.make_batches(train_examples, batch_size=cfg.train.batch_size, seed=cfg.seed, epoch=epoch,
                                     shuffle=cfg.data.shuffle, group_by_length=cfg.data.group_by_length,
                                     pad_token_id=pad, pad_to_length=pad_to)

    eval_fn = None
    if eval_records:
        eval_examples = tokenize(eval_records)
        stats["eval_examples"] = len(eval_examples)

        def eval_fn():
            return data_mod.make_batches(eval_examples, batch_size=cfg.train.eval_batch_size or cfg.train.batch_size,
                                         seed=cfg.seed, epoch=0, shuffle=False, pad_token_id=pad,
                                         pad_to_length=pad_to)

    return batches_fn, eval_fn

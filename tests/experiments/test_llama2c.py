"""The llama2.c converter: exact reproduction of llama2.c's own greedy output, format checks, tokenizer fidelity."""
from __future__ import annotations

import shutil
import struct

import pytest
import torch

from experiments import llama2c
from experiments.models import load_model


def _greedy_text(model, tokenizer, steps: int = 200) -> str:
    bos = torch.tensor([[tokenizer.bos_token_id]])
    with torch.no_grad():
        out = model.generate(bos, max_new_tokens=steps, do_sample=False, eos_token_id=None, pad_token_id=0)
    return tokenizer.decode(out[0], skip_special_tokens=True)


def test_stories260k_greedy_decoding_reproduces_llama2c_exactly(stories_dir, tmp_cache, stories_expected, one_thread):
    model, tokenizer = load_model(f"llama2c:{stories_dir / 'stories260K.bin'}", dtype="fp32")
    assert model.config.num_hidden_layers == 5 and model.config.num_key_value_heads == 4
    assert model.config.tie_word_embeddings  # positive vocab_size in the header = shared classifier
    assert _greedy_text(model, tokenizer) == stories_expected


def test_conversion_is_cached_and_reused(stories_dir, tmp_cache, monkeypatch):
    folder = llama2c.llama2c_model_folder(stories_dir / "stories260K.bin")
    assert folder.is_relative_to(tmp_cache) and (folder / "model.safetensors").is_file()

    def must_not_run(*args):
        raise AssertionError("converted again although the cache holds this checkpoint")

    monkeypatch.setattr(llama2c, "_build_llama2c_folder", must_not_run)
    assert llama2c.llama2c_model_folder(stories_dir / "stories260K.bin") == folder


def test_without_rotary_permutation_the_output_differs(stories_dir, tmp_cache, monkeypatch, stories_expected, one_thread):
    # Guards the test above: the q/k permutation really matters, so an exact match is evidence it is right.
    monkeypatch.setattr(llama2c, "_permute_for_hf", lambda w, n_heads: w)
    model, tokenizer = load_model(f"llama2c:{stories_dir / 'stories260K.bin'}", dtype="fp32")
    assert not stories_expected.startswith(_greedy_text(model, tokenizer, steps=40))


def test_tokenizer_matches_sentencepiece(stories_dir, tok512):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(stories_dir / "tok512.model"))
    for text in ["Once upon a time, Lily said: \"Hi!\"\nThe end.", "ünïcode 日本 – bytes", "x"]:
        ids = tok512(text, add_special_tokens=False)["input_ids"]
        assert ids == sp.encode(text)
        assert tok512.decode(ids) == sp.decode(ids)
    assert tok512("Hi")["input_ids"][0] == 1  # BOS is prepended by default, as in llama2.c
    assert (tok512.bos_token_id, tok512.eos_token_id, len(tok512)) == (1, 2, 512)


def test_header_and_size_errors(stories_dir, tmp_path):
    raw = (stories_dir / "stories260K.bin").read_bytes()
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(raw[:-400])
    with pytest.raises(ValueError, match="fp32 values"):
        llama2c.read_llama2c(truncated)
    versioned = tmp_path / "v1.bin"
    versioned.write_bytes(struct.pack("<I", 0x616B3432) + raw[4:])
    with pytest.raises(ValueError, match="legacy"):
        llama2c.read_llama2c(versioned)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(struct.pack("<7i", 64, 0, 5, 8, 4, 512, 512))
    with pytest.raises(ValueError, match="does not look like"):
        llama2c.read_llama2c(garbage)


def test_missing_tokenizer_and_missing_checkpoint(stories_dir, tmp_path, tmp_cache):
    lonely = tmp_path / "stories260K.bin"
    shutil.copyfile(stories_dir / "stories260K.bin", lonely)
    with pytest.raises(FileNotFoundError, match="tok512.model"):
        load_model(f"llama2c:{lonely}")
    model, tokenizer = load_model(f"llama2c:{lonely}", tokenizer=str(stories_dir / "tok512.model"), dtype="fp32")
    assert len(tokenizer) == 512
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(f"llama2c:{tmp_path / 'nope.bin'}")
    with pytest.raises(ValueError, match="SentencePiece .model"):
        load_model(f"llama2c:{lonely}", tokenizer="smollm2")

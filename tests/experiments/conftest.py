"""Fixtures for the model-loading and data tests (experiments/models.py, llama2c.py, data.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from experiments.paths import shared_dir

# karpathy/llama2.c test_all.py, expected_stdout: greedy decoding of stories260K from BOS for 200 steps
# (quoted in ../shared/models/SOURCES.md).
STORIES260K_GREEDY_200 = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a "
    "big, red ball. She wanted to play with it, but it was too high.\nLily's mom said, \"Lily, let's go to the park.\" "
    "Lily was sad and didn't know what to do. She said, \"I want to play with your ball, but I can't find it.\"\n"
    "Lily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know what to do.\"\n"
    "Lily didn't want to help her mom, so she")


@pytest.fixture(scope="session")
def stories_expected() -> str:
    return STORIES260K_GREEDY_200


@pytest.fixture(scope="session")
def stories_dir() -> Path:
    folder = shared_dir() / "models" / "stories260K"
    if not (folder / "stories260K.bin").is_file():
        pytest.fail(f"shared model stories260K missing at {folder} (set $BADAM_SHARED)")
    return folder


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    """A fresh, empty conversion cache for one test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("BADAM_BENCH_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def tok512(stories_dir):
    """The stories260K SentencePiece tokenizer as a HF tokenizer (no chat template)."""
    from experiments.llama2c import sentencepiece_tokenizer

    return sentencepiece_tokenizer(stories_dir / "tok512.model")


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The real SmolLM2 tokenizer (with its chat template), from the persistent conversion cache."""
    from experiments.models import load_tokenizer

    return load_tokenizer("smollm2")


def write_llama_gguf(checkpoint: Path, sp_model: Path, out: Path) -> Path:
    """Write a llama2.c checkpoint as an fp32 llama GGUF file, in llama.cpp's conventions: tensor names
    token_embd / blk.N.attn_q ... / output_norm, q and k in the interleaved rotary layout, and the SentencePiece
    vocabulary as a "llama" tokenizer (tokens, scores, token types)."""
    import gguf
    import sentencepiece as spm

    from experiments.llama2c import read_llama2c

    header, state = read_llama2c(checkpoint)

    def interleave(w, n_heads):  # inverse of llama2c._permute_for_hf
        rows, cols = w.shape
        return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)

    writer = gguf.GGUFWriter(str(out), arch="llama")
    writer.add_context_length(header.seq_len)
    writer.add_embedding_length(header.dim)
    writer.add_block_count(header.n_layers)
    writer.add_feed_forward_length(header.hidden_dim)
    writer.add_rope_dimension_count(header.head_size)
    writer.add_head_count(header.n_heads)
    writer.add_head_count_kv(header.n_kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(header.vocab_size)
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    ids = range(sp.vocab_size())
    # llama.cpp token types: 1 normal, 2 unknown, 3 control, 6 byte
    types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1 for i in ids]
    writer.add_tokenizer_model("llama")
    writer.add_token_list([sp.id_to_piece(i) for i in ids])
    writer.add_token_scores([sp.get_score(i) for i in ids])
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"].numpy())
    for layer in range(header.n_layers):
        for hf_name, gguf_name in names.items():
            w = state[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name in ("attn_q", "attn_k"):
                w = interleave(w, header.n_heads if gguf_name == "attn_q" else header.n_kv_heads)
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", w.contiguous().numpy())
    writer.add_tensor("output_norm.weight", state["model.norm.weight"].numpy())  # no output.weight: tied
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.fixture(scope="session")
def stories_gguf(stories_dir, tmp_path_factory) -> Path:
    return write_llama_gguf(stories_dir / "stories260K.bin", stories_dir / "tok512.model",
                            tmp_path_factory.mktemp("gguf") / "stories260K-f32.gguf")

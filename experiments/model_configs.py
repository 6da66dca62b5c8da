"""Named architectures for random-init models ("random:<name>"), used for memory and time work and for tests.

Sizes are the published configs of the original models (fields of their Hugging Face config.json files:
meta-llama/Meta-Llama-3-8B, meta-llama/Llama-2-7b-hf, meta-llama/Meta-Llama-3-70B, FacebookAI/roberta-large).
No weights are involved: `load_model("random:<name>")` builds the architecture and initialises it.

Random models still need a tokenizer to turn text into ids. None of the original tokenizers can be had offline, so
each config names a stand-in whose ids all fit its vocabulary:
  * "smollm2" (49,152 tokens, the SmolLM2 byte-level BPE, with a chat template) for decoders whose vocabulary is at
    least that large (Llama-3's 128,256; the tiny test decoders use exactly 49,152);
  * "tok512" (stories260K's 512-token SentencePiece, same BOS=1/EOS=2 ids as Llama-2) for Llama-2-7B, whose 32,000-token
    vocabulary is smaller than SmolLM2's (its ids would overflow the embedding);
  * "minilm" (bert-base-uncased WordPiece, 30,522 tokens, [CLS]/[SEP] pair handling) for encoders.
Sequences tokenized by a stand-in have a different length than with the original tokenizer; time and memory work
fixes sequence lengths explicitly (max_length, packing, pad_to_length), so this does not change what is measured.
"""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class RandomModelSpec:
    model_type: str              # transformers model_type, e.g. "llama"
    config: dict[str, Any]       # keyword arguments for the transformers config class
    tokenizer: str               # stand-in tokenizer name, see the module docstring
    kind: str                    # "decoder" or "encoder": which tasks the architecture supports
    note: str = ""


_LLAMA3_COMMON = dict(vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192, rms_norm_eps=1e-5,
                      hidden_act="silu", tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001)

RANDOM_MODELS: dict[str, RandomModelSpec] = {
    "llama3-8b": RandomModelSpec(
        "llama", dict(_LLAMA3_COMMON, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8),
        tokenizer="smollm2", kind="decoder", note="Llama-3-8B: 8.03B parameters"),
    "llama3-70b": RandomModelSpec(
        "llama", dict(_LLAMA3_COMMON, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                      num_attention_heads=64, num_key_value_heads=8),
        tokenizer="smollm2", kind="decoder", note="Llama-3-70B: 70.6B parameters"),
    "llama2-7b": RandomModelSpec(
        "llama", dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, rope_theta=10000.0,
                      max_position_embeddings=4096, rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2),
        tokenizer="tok512", kind="decoder", note="Llama-2-7B: 6.74B parameters"),
    "roberta-large": RandomModelSpec(
        "roberta", dict(vocab_size=50265, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                        intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1,
                        layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2),
        tokenizer="minilm", kind="encoder", note="RoBERTa-large: 355M parameters"),
    # Tiny configs for tests: small enough to run a CPU forward/backward in milliseconds.
    "tiny-llama": RandomModelSpec(
        "llama", dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
        tokenizer="smollm2", kind="decoder"),
    "tiny-gpt2": RandomModelSpec(
        "gpt2", dict(vocab_size=49152, n_embd=64, n_layer=2, n_head=4, n_positions=2048, bos_token_id=1,
                     eos_token_id=2),
        tokenizer="smollm2", kind="decoder"),
    "tiny-bert": RandomModelSpec(
        "bert", dict(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=512),
        tokenizer="minilm", kind="encoder"),
}


def random_model_names() -> list[str]:
    return sorted(RANDOM_MODELS)


def get_random_spec(name: str) -> RandomModelSpec:
    try:
        return RANDOM_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown random model {name!r}; valid names: {', '.join(random_model_names())}") from None


def build_random_config(name: str, **overrides: Any):
    """The transformers config of a named random architecture (overrides replace single fields)."""
    from transformers import AutoConfig

    spec = get_random_spec(name)
    return AutoConfig.for_model(spec.model_type, **{**spec.config, **overrides})

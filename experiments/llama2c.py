"""Read llama2.c "legacy" checkpoints (e.g. stories260K) and express them as Hugging Face LlamaForCausalLM folders.

Format facts (karpathy/llama2.c, legacy export; see ../shared/models/SOURCES.md):
  header: 7 int32 = dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
          (a negative vocab_size means the classifier is stored separately instead of shared with the embedding);
  then fp32 tensors, each stacked over all layers where per-layer: token embedding (vocab, dim); attention rms
  weights; wq; wk; wv; wo; ffn rms weights; w1; w2; w3; final rms weight; the rotary tables freq_cis_real and
  freq_cis_imag (seq_len, head_size/2 each); then the classifier (vocab, dim) if not shared.
  Linear weights are stored as nn.Linear weights, (out_features, in_features).
Mapping to transformers' Llama: w1/w3/w2 = gate/up/down projections; rms_norm_eps = 1e-5; rope theta 10000; and
wq/wk are permuted from the interleaved rotary layout of the original Llama code to the half-split layout that
transformers uses (the same permutation as transformers' convert_llama_weights_to_hf).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import struct
import tempfile
from pathlib import Path

import torch

from experiments.gguf_cache import cached_folder, file_sha256, files_identity

_HEADER = struct.Struct("<7i")
# The newer llama2.c export formats (version >= 1) start with this magic number instead of a legacy header.
_VERSIONED_MAGIC = 0x616B3432  # "ak42"
ROPE_THETA = 10000.0
RMS_NORM_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class Llama2cHeader:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads


def read_header(raw: bytes, path: Path) -> Llama2cHeader:
    if len(raw) < _HEADER.size:
        raise ValueError(f"{path} is too short to be a llama2.c checkpoint ({len(raw)} bytes)")
    if struct.unpack_from("<I", raw)[0] == _VERSIONED_MAGIC:
        raise ValueError(f"{path} is a versioned llama2.c export (magic 'ak42'); only the legacy format is supported "
                         "(export with llama2.c's legacy_export / --version 0)")
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = _HEADER.unpack_from(raw)
    header = Llama2cHeader(dim, hidden, layers, heads, kv_heads, abs(vocab), seq_len, shared_classifier=vocab > 0)
    if min(dim, hidden, layers, heads, kv_heads, abs(vocab), seq_len) <= 0 or dim % heads or heads % kv_heads:
        raise ValueError(f"{path} does not look like a legacy llama2.c checkpoint: header {header}")
    return header


def _permute_for_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Interleaved (x0, y0, x1, y1, ...) rotary pairs per head -> transformers' (x0, x1, ..., y0, y1, ...) layout."""
    out_dim, in_dim = w.shape
    return w.view(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def read_llama2c(path: str | os.PathLike) -> tuple[Llama2cHeader, dict[str, torch.Tensor]]:
    """Parse a legacy llama2.c checkpoint into (header, state dict with transformers Llama parameter names)."""
    path = Path(path)
    raw = path.read_bytes()
    h = read_header(raw, path)
    kv_dim = h.n_kv_heads * h.head_size
    L = h.n_layers
    shapes = [
        ("embed", (h.vocab_size, h.dim)),
        ("rms_att", (L, h.dim)),
        ("wq", (L, h.dim, h.dim)),
        ("wk", (L, kv_dim, h.dim)),
        ("wv", (L, kv_dim, h.dim)),
        ("wo", (L, h.dim, h.dim)),
        ("rms_ffn", (L, h.dim)),
        ("w1", (L, h.hidden_dim, h.dim)),
        ("w2", (L, h.dim, h.hidden_dim)),
        ("w3", (L, h.hidden_dim, h.dim)),
        ("rms_final", (h.dim,)),
        ("freq_cis_real", (h.seq_len, h.head_size // 2)),
        ("freq_cis_imag", (h.seq_len, h.head_size // 2)),
    ]
    if not h.shared_classifier:
        shapes.append(("wcls", (h.vocab_size, h.dim)))
    expected = sum(torch.Size(s).numel() for _, s in shapes)
    floats = torch.frombuffer(bytearray(raw[_HEADER.size:]), dtype=torch.float32)
    if floats.numel() != expected:
        raise ValueError(f"{path}: header {h} implies {expected} fp32 values after the header, "
                         f"the file holds {floats.numel()}; not a legacy llama2.c checkpoint or truncated")
    tensors: dict[str, torch.Tensor] = {}
    offset = 0
    for name, shape in shapes:
        n = torch.Size(shape).numel()
        tensors[name] = floats[offset:offset + n].view(shape).clone()
        offset += n
    _check_rotary_tables(tensors, h, path)

    state = {"model.embed_tokens.weight": tensors["embed"], "model.norm.weight": tensors["rms_final"],
             "lm_head.weight": tensors["embed"] if h.shared_classifier else tensors["wcls"]}
    for i in range(L):
        p = f"model.layers.{i}."
        state[p + "input_layernorm.weight"] = tensors["rms_att"][i]
        state[p + "self_attn.q_proj.weight"] = _permute_for_hf(tensors["wq"][i], h.n_heads)
        state[p + "self_attn.k_proj.weight"] = _permute_for_hf(tensors["wk"][i], h.n_kv_heads)
        state[p + "self_attn.v_proj.weight"] = tensors["wv"][i]
        state[p + "self_attn.o_proj.weight"] = tensors["wo"][i]
        state[p + "post_attention_layernorm.weight"] = tensors["rms_ffn"][i]
        state[p + "mlp.gate_proj.weight"] = tensors["w1"][i]
        state[p + "mlp.down_proj.weight"] = tensors["w2"][i]
        state[p + "mlp.up_proj.weight"] = tensors["w3"][i]
    return h, state


def _check_rotary_tables(tensors: dict[str, torch.Tensor], h: Llama2cHeader, path: Path) -> None:
    """The stored rotary tables must be cos/sin of t * theta^(-2i/d) with theta 10000; otherwise we misparsed."""
    inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, h.head_size, 2, dtype=torch.float64) / h.head_size))
    angles = torch.outer(torch.arange(h.seq_len, dtype=torch.float64), inv_freq)
    ok = (torch.allclose(tensors["freq_cis_real"].double(), angles.cos(), atol=1e-3)
          and torch.allclose(tensors["freq_cis_imag"].double(), angles.sin(), atol=1e-3))
    if not ok:
        raise ValueError(f"{path}: the stored rotary tables do not match rope theta {ROPE_THETA}; "
                         "the file is not a legacy llama2.c checkpoint this converter understands")


def llama2c_config(h: Llama2cHeader):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=h.vocab_size, hidden_size=h.dim, intermediate_size=h.hidden_dim,
                       num_hidden_layers=h.n_layers, num_attention_heads=h.n_heads, num_key_value_heads=h.n_kv_heads,
                       max_position_embeddings=h.seq_len, rms_norm_eps=RMS_NORM_EPS, rope_theta=ROPE_THETA,
                       hidden_act="silu", tie_word_embeddings=h.shared_classifier, bos_token_id=1, eos_token_id=2,
                       attention_bias=False, mlp_bias=False)


def sentencepiece_tokenizer(model_file: str | os.PathLike):
    """A Hugging Face LlamaTokenizer built from a SentencePiece .model file (BOS 1, EOS 2, prepended BOS).

    transformers converts the SentencePiece model into a `tokenizers` BPE. One known difference from SentencePiece:
    SentencePiece collapses runs of spaces before encoding, the converted tokenizer keeps them.
    """
    from transformers import LlamaTokenizer

    model_file = Path(model_file)
    if not model_file.is_file():
        raise FileNotFoundError(f"SentencePiece tokenizer model not found: {model_file}")
    with tempfile.TemporaryDirectory() as tmp:
        # from_pretrained looks for the conventional file name tokenizer.model
        shutil.copyfile(model_file, Path(tmp) / "tokenizer.model")
        # llama2.c prepends BOS to every prompt; transformers 5 does not do so unless asked
        tokenizer = LlamaTokenizer.from_pretrained(tmp, add_bos_token=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token  # llama2.c tokenizers have no pad piece; unk (id 0) is never trained on
    return tokenizer


def sentencepiece_tokenizer_folder(model_file: str | os.PathLike) -> Path:
    """Cached HF tokenizer folder for a SentencePiece model (reloads without sentencepiece installed)."""
    model_file = Path(model_file).resolve()
    if not model_file.is_file():
        raise FileNotFoundError(f"SentencePiece tokenizer model not found: {model_file}")
    return cached_folder("sentencepiece", model_file.stem, files_identity([model_file]),
                         lambda out: sentencepiece_tokenizer(model_file).save_pretrained(out),
                         provenance={"source": str(model_file), "sha256": file_sha256(model_file)})


def find_llama2c_tokenizer(checkpoint: Path, vocab_size: int) -> Path:
    """llama2.c names tokenizers tok<vocab>.model; also accept tokenizer.model beside the checkpoint."""
    for candidate in (checkpoint.parent / f"tok{vocab_size}.model", checkpoint.parent / "tokenizer.model"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no tokenizer for {checkpoint}: expected tok{vocab_size}.model or tokenizer.model "
                            "beside it, or pass tokenizer=<path to a SentencePiece .model>")


def _build_llama2c_folder(checkpoint: Path, tokenizer_file: Path, out: Path) -> None:
    from transformers import LlamaForCausalLM

    header, state = read_llama2c(checkpoint)
    config = llama2c_config(header)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.save_pretrained(out)
    sentencepiece_tokenizer(tokenizer_file).save_pretrained(out)


def llama2c_model_folder(checkpoint: str | os.PathLike, tokenizer: str | os.PathLike | None = None) -> Path:
    """Cached Hugging Face folder (LlamaForCausalLM + tokenizer) for a llama2.c legacy checkpoint."""
    checkpoint = Path(checkpoint).expanduser().resolve()
    if not checkpoint.is_file():
        raise FileNotFoundError(f"llama2c checkpoint not found: {checkpoint}")
    with open(checkpoint, "rb") as f:
        header = read_header(f.read(_HEADER.size), checkpoint)
    tokenizer_file = Path(tokenizer).expanduser().resolve() if tokenizer else \
        find_llama2c_tokenizer(checkpoint, header.vocab_size)
    if not tokenizer_file.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {tokenizer_file}")
    return cached_folder("llama2c", checkpoint.stem, files_identity([checkpoint, tokenizer_file]),
                         lambda out: _build_llama2c_folder(checkpoint, tokenizer_file, out),
                         provenance={"source": str(checkpoint), "tokenizer": str(tokenizer_file),
                                     "sha256": file_sha256(checkpoint)})

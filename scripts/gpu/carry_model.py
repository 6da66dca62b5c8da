"""Bring a model folder to a machine that cannot install it (no package registry there) in pieces small enough for one
device call each (a call carries <= 64 MiB, the checkout included), as a copy its alias finds there.

    python scripts/gpu/carry_model.py pack --alias mpnet --dtype bf16 --out .gpu/mpnet --prefix m
    python scripts/gpu/carry_model.py pack --source FOLDER --name NAME --out DIR --piece-mib 45
    python scripts/gpu/carry_model.py unpack --archive JOINED.tar.gz --name all-mpnet-base-v2   # on the machine

pack: a copy of the folder's config and tokenizer files and of its weights (model.safetensors) with every
floating-point tensor stored in --dtype, plus carried.json (source, dtype, sha256 of the source weights, the token ids
of a check sentence), as one tar.gz with fixed names, order and times (the same bytes on every run), cut into
<out>/<prefix>01/<name>.part01, <prefix>02/..., each at most --piece-mib MiB; <prefix>01 also holds manifest.txt
("<prefix>NN/<name>.partNN <bytes> <sha256>" per piece) and sha256.txt (of the whole archive).
Why bf16 is enough: the runs load the model with bf16 weights (model.dtype bf16), and transformers makes those by
rounding each fp32 weight to the nearest bf16, as this copy does, so the loaded weights are bitwise the same (a test
checks it) while the transfer is half as large; experiments.models refuses to load the copy in another dtype.
unpack: the joined archive (scripts/gpu/quality_session.sh checks the pieces and the sha256 first) into
experiments.paths.carried_folder(name), through a temporary folder renamed into place, after checking that its
tokenizer gives the recorded ids on this machine's transformers (a conversion that differs would change every input)
and that transformers loads it.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from experiments.paths import CARRIED_FILE, carried_folder  # noqa: E402  (no torch: unpack starts fast)
from scripts.gpu.carry_gguf import write_pieces  # noqa: E402  (the pieces as the GGUFs are cut)

WEIGHTS_FILE = "model.safetensors"
# config and tokenizer files a model folder may hold; everything else (README, sentence-transformers pooling
# configs, other weight formats) stays behind
KEPT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
              "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json", "sentencepiece.bpe.model")
CHECK_TEXT = "Is the premise consistent with the hypothesis? Paris is the capital of France, 2 + 2 = 4."


def _tokenizer_ids(folder: Path) -> list[int] | None:
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    return list(AutoTokenizer.from_pretrained(folder)(CHECK_TEXT, "A second segment.")["input_ids"])


def make_copy(source: Path, dest: Path, *, dtype: str, name: str) -> dict:
    """The carried copy of `source` in `dest` (created); returns its carried.json record."""
    import torch
    from safetensors.torch import load_file, save_file

    from experiments.models import DTYPES

    weights = source / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{source} holds no {WEIGHTS_FILE}; only safetensors weights can be carried")
    dest.mkdir(parents=True)
    for file in KEPT_FILES:
        if (source / file).is_file():
            shutil.copyfile(source / file, dest / file)
    target = DTYPES[dtype]
    tensors = {key: (value.to(target) if value.is_floating_point() else value).contiguous()
               for key, value in load_file(weights).items()}
    save_file(tensors, dest / WEIGHTS_FILE, metadata={"format": "pt"})
    digest = hashlib.sha256()
    with open(weights, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    record = {"name": name, "source": str(source), "dtype": dtype, "source_weights_sha256": digest.hexdigest(),
              "files": sorted(p.name for p in dest.iterdir()), "check_text": CHECK_TEXT,
              "check_ids": _tokenizer_ids(dest), "made_with": f"torch {torch.__version__}"}
    (dest / CARRIED_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def archive_bytes(folder: Path) -> bytes:
    """A gzipped tar of `folder` (as <folder name>/...) whose bytes depend only on the files' names and contents."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        files = sorted(p for p in folder.iterdir() if p.name != CARRIED_FILE) + [folder / CARRIED_FILE]
        for path in files:   # carried.json last: an archive cut short has none
            info = tarfile.TarInfo(f"{folder.name}/{path.name}")
            info.size, info.mtime, info.mode = path.stat().st_size, 0, 0o644
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", compresslevel=6, mtime=0) as gz:
        gz.write(raw.getvalue())
    return packed.getvalue()


def cut(data: bytes, out: Path, *, name: str, prefix: str, piece_bytes: int) -> list[str]:
    """Write the pieces and the manifest (scripts/gpu/carry_gguf.py's write_pieces, each piece with its sha256) and
    the whole archive's sha256.txt; returns the manifest lines."""
    manifest = write_pieces(io.BytesIO(data), out, name=name, prefix=prefix, first=piece_bytes, rest=piece_bytes)
    (out / f"{prefix}01" / "sha256.txt").write_text(f"{hashlib.sha256(data).hexdigest()}  {name}.tar.gz\n",
                                                    encoding="utf-8")
    return manifest


def pack(args) -> int:
    from experiments.models import resolve_alias

    source = resolve_alias(args.alias) if args.alias else Path(args.source)
    name = args.name or source.name
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; remove it first (nothing was written)")
    with tempfile.TemporaryDirectory() as tmp:
        record = make_copy(source, Path(tmp) / name, dtype=args.dtype, name=name)
        data = archive_bytes(Path(tmp) / name)
    out.mkdir(parents=True, exist_ok=True)
    manifest = cut(data, out, name=name, prefix=args.prefix, piece_bytes=int(args.piece_mib * (1 << 20)))
    print(f"{name} ({record['dtype']} copy of {source}): {len(data)} bytes in {len(manifest)} pieces under {out}, "
          f"sha256 {hashlib.sha256(data).hexdigest()}")
    for line in manifest:
        print(f"  {line}")
    return 0


def unpack(args) -> int:
    target = carried_folder(args.name)
    if (target / CARRIED_FILE).is_file():
        print(f"{target} is already there")
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{args.name}-", dir=target.parent) as tmp:
        with tarfile.open(args.archive, "r:gz") as tar:
            members = tar.getmembers()
            if any(not m.isfile() or Path(m.name).parts[0] != args.name or ".." in Path(m.name).parts
                   for m in members):
                raise ValueError(f"{args.archive} holds more than the files of {args.name}/; not unpacked")
            tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        unpacked = Path(tmp) / args.name
        record = json.loads((unpacked / CARRIED_FILE).read_text(encoding="utf-8"))
        ids = _tokenizer_ids(unpacked)
        if ids != record.get("check_ids"):
            raise ValueError(f"the tokenizer of {args.name} encodes differently on this machine ({ids} instead of "
                             f"{record.get('check_ids')}); not unpacked")
        parameters = _loaded_parameters(unpacked, record["dtype"])
        if target.exists():
            shutil.rmtree(target)   # an earlier copy without carried.json: incomplete
        unpacked.rename(target)
    print(f"{args.name}: {record['dtype']} copy in {target}: tokenizer check passed, loads with "
          f"{parameters / 1e6:.1f}M parameters")
    return 0


def _loaded_parameters(folder: Path, dtype: str) -> int:
    """The copy's parameter count as transformers loads it (its base model, in the dtype it was made for)."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder, dtype={"bf16": torch.bfloat16, "fp16": torch.float16,
                                                     "fp32": torch.float32}[dtype])
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack", help="cut a copy of a model folder into pieces")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--alias", help="a model alias of experiments.models (e.g. mpnet)")
    source.add_argument("--source", help="a model folder")
    p.add_argument("--name", help="name of the copy (default: the folder's name)")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    p.add_argument("--out", required=True)
    p.add_argument("--prefix", default="m", help="piece folder prefix (<prefix>01, <prefix>02, ...)")
    p.add_argument("--piece-mib", type=float, default=45.0)
    u = commands.add_parser("unpack", help="put a joined archive where the alias finds it")
    u.add_argument("--archive", required=True)
    u.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    try:
        return pack(args) if args.command == "pack" else unpack(args)
    except (OSError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

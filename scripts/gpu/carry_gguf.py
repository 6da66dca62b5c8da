"""Cut a model file into pieces that each fit one call to a lent GPU machine (a call carries at most 64 MiB with the
checkout), with a manifest, and save the model's tokenizer converted here (scripts/gpu/prepare_carry.sh).

    python3 scripts/gpu/carry_gguf.py FILE --out .gpu/math --prefix m --first-mib 37 --rest-mib 48 \
        [--name math] [--tokenizer-out .gpu/tok/qwen2.5-coder-0.5b-instruct]

writes .gpu/math/m01/math.part01, .gpu/math/m02/math.part02, ... (the piece's folder is what a call carries; --name
names the pieces, by default after --out) and .gpu/math/m01/manifest.txt, one line per piece:
"m01/math.part01 <bytes> <sha256>". The first piece is smaller: the first call also carries the wheels, data and
tokenizer. scripts/gpu/quality_session.sh counts the pieces against the manifest, checks each piece's sha256 and joins
them in manifest order (the whole file is then checked against experiments.models). Every model that travels in
pieces is cut here: the Gemma, math and judge GGUFs (prepare_carry.sh) and carry_model.py's archives.

The tokenizer: the GPU machine's transformers (5.17) converts some GGUF tokenizers wrongly (Gemma-3's into one token
per character), so the one converted here is carried, checked by experiments.models.load_tokenizer, with its
tokenizer.json gzipped (11 MB of JSON for Qwen -> ~2 MB).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
from pathlib import Path
from typing import BinaryIO

MIB = 1 << 20


def write_pieces(stream: BinaryIO, out: Path, *, name: str, prefix: str, first: int, rest: int) -> list[str]:
    """Cut what `stream` holds into out/<prefix>NN/<name>.partNN (the first piece `first` bytes, the others `rest`)
    and write out/<prefix>01/manifest.txt, one line per piece: "<prefix>NN/<name>.partNN <bytes> <sha256>"; returns
    those lines. Also used by scripts/gpu/carry_model.py for its archives."""
    lines = []
    size = first
    while chunk := stream.read(size):
        index = len(lines) + 1
        folder = out / f"{prefix}{index:02d}"
        folder.mkdir(parents=True)
        (folder / f"{name}.part{index:02d}").write_bytes(chunk)
        lines.append(f"{folder.name}/{name}.part{index:02d} {len(chunk)} {hashlib.sha256(chunk).hexdigest()}")
        size = rest
    if not lines:
        raise ValueError(f"nothing to cut into {out}")
    (out / f"{prefix}01" / "manifest.txt").write_text("\n".join(lines) + "\n")
    return lines


def cut(source: Path, out: Path, prefix: str, first: int, rest: int, name: str | None = None) -> list[str]:
    """The pieces of the file `source`, named `name` (default: after `out`); refuses to write into an existing
    folder."""
    if out.exists():
        raise FileExistsError(f"{out} exists: remove it first (pieces of another cut must not mix with these)")
    if source.stat().st_size == 0:
        raise ValueError(f"{source} is empty")
    with open(source, "rb") as src:
        return write_pieces(src, out, name=name or out.name, prefix=prefix, first=first, rest=rest)


def save_tokenizer(source: Path, folder: Path) -> None:
    from experiments.models import load_tokenizer

    load_tokenizer(str(source)).save_pretrained(folder)   # refused here if the conversion is broken
    json_file = folder / "tokenizer.json"
    Path(str(json_file) + ".gz").write_bytes(gzip.compress(json_file.read_bytes()))
    json_file.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder of the pieces; its name names the pieces")
    parser.add_argument("--prefix", required=True, help="letter(s) of the piece folders: <prefix>01, <prefix>02, ...")
    parser.add_argument("--first-mib", type=int, required=True)
    parser.add_argument("--rest-mib", type=int, required=True)
    parser.add_argument("--name", help="the pieces' name: <prefix>NN/<name>.partNN (default: the name of --out)")
    parser.add_argument("--tokenizer-out", type=Path, help="also save the file's tokenizer, converted here")
    args = parser.parse_args(argv)
    if args.first_mib < 1 or args.rest_mib < 1:
        parser.error("--first-mib and --rest-mib must be >= 1")
    try:
        lines = cut(args.source, args.out, args.prefix, args.first_mib * MIB, args.rest_mib * MIB, args.name)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.tokenizer_out is not None:
        save_tokenizer(args.source, args.tokenizer_out)
    sizes = ", ".join(f"{int(line.split()[1]) / MIB:.1f}" for line in lines)
    print(f"{args.source.name}: {len(lines)} pieces in {args.out} (MiB: {sizes})"
          + (f", tokenizer in {args.tokenizer_out}" if args.tokenizer_out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

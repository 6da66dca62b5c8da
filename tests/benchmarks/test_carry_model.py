"""scripts/gpu/carry_model.py and the mpnet phase of scripts/gpu/quality_session.sh: a model folder cut into pieces
comes back, joined and checked (sha256), as a bf16 copy whose weights are bitwise the original's loaded in bf16, in
the place where experiments.models finds it; a damaged or missing piece is refused before anything is unpacked."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
NAME = "all-mpnet-base-v2"   # the name the mpnet phase joins


def _carry_model():
    spec = importlib.util.spec_from_file_location("carry_model", REPO / "scripts" / "gpu" / "carry_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A small fp32 encoder folder with its tokenizer, standing in for all-mpnet-base-v2 (440 MB)."""
    from experiments.models import load_model

    folder = tmp_path_factory.mktemp("tiny") / "model"
    model, tokenizer = load_model("random:tiny-bert", dtype="fp32", task="sequence_classification", num_labels=2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _session(tmp_path: Path, phase: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "BADAM_BENCH_CACHE": str(tmp_path / "cache"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OUT": str(tmp_path / "out")}
    return subprocess.run(["bash", str(REPO / "scripts" / "gpu" / "quality_session.sh"), phase], capture_output=True,
                          text=True, cwd=tmp_path, env=env)


def test_pieces_rejoin_to_the_recorded_sha256_and_a_bf16_copy_the_alias_can_find(tmp_path, tiny_folder, monkeypatch):
    carry_model = _carry_model()
    out = tmp_path / ".gpu" / "mpnet"
    assert carry_model.main(["pack", "--source", str(tiny_folder), "--name", NAME, "--out", str(out),
                             "--piece-mib", "1.5"]) == 0
    manifest = [line.split() for line in (out / "m01" / "manifest.txt").read_text().splitlines()]
    assert len(manifest) >= 2 and all(int(size) <= 1.5 * 2**20 for _, size, _sha in manifest)
    joined = b"".join((out / piece).read_bytes() for piece, _, _sha in manifest)
    assert hashlib.sha256(joined).hexdigest() == (out / "m01" / "sha256.txt").read_text().split()[0]
    assert carry_model.main(["pack", "--source", str(tiny_folder), "--out", str(out)]) == 1   # not empty: refused

    done = _session(tmp_path, "mpnet")
    assert done.returncode == 0, done.stderr
    assert "tokenizer check passed, loads with" in done.stdout
    monkeypatch.setenv("BADAM_BENCH_CACHE", str(tmp_path / "cache"))
    from experiments.models import load_model
    from experiments.paths import CARRIED_FILE, carried_folder

    copy = carried_folder(NAME)
    assert json.loads((copy / CARRIED_FILE).read_text())["dtype"] == "bf16"
    assert not list(copy.parent.glob("*.tar.gz"))   # the joined archive is not kept
    # the same bytes every time (a piece made again can be mixed with the first ones): file times do not enter
    other = tmp_path / "other" / NAME
    shutil.copytree(copy, other)
    for file in other.iterdir():
        os.utime(file, (1e9, 1e9))
    assert carry_model.archive_bytes(other) == carry_model.archive_bytes(copy)
    carried, _ = load_model(str(copy), dtype="bf16", task="sequence_classification", num_labels=2)
    original, _ = load_model(str(tiny_folder), dtype="bf16", task="sequence_classification", num_labels=2)
    theirs = original.state_dict()
    for key, value in carried.state_dict().items():
        assert value.dtype == theirs[key].dtype and torch.equal(value, theirs[key]), key
    with pytest.raises(ValueError, match="carried with bf16 weights; load it with dtype bf16"):
        load_model(str(copy), dtype="fp32", task="sequence_classification", num_labels=2)
    assert _session(tmp_path, "mpnet").stdout.startswith(f"{NAME}: {copy} is there")   # once only

    # on the GPU machine the five part packages are missing: the mpnet alias takes the carried copy
    import importlib.metadata

    from experiments.models import resolve_alias

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    assert resolve_alias("mpnet") == copy
    shutil.rmtree(copy)
    with pytest.raises(ImportError, match="or a copy carried into .*prepare_carry.sh --with-mpnet"):
        resolve_alias("mpnet")


def test_a_damaged_or_missing_piece_is_refused_before_anything_is_unpacked(tmp_path, tiny_folder):
    out = tmp_path / ".gpu" / "mpnet"
    _carry_model().main(["pack", "--source", str(tiny_folder), "--name", NAME, "--out", str(out), "--piece-mib", "1.5"])
    second = out / "m02" / f"{NAME}.part02"
    data = bytearray(second.read_bytes())
    second.unlink()
    done = _session(tmp_path, "mpnet")
    assert done.returncode == 1 and "mpnet pieces missing: m02" in done.stderr and "incomplete" in done.stderr
    data[100] ^= 0xFF                               # same size, one byte changed on the way
    second.write_bytes(bytes(data))
    done = _session(tmp_path, "mpnet")
    assert done.returncode == 1 and f"{NAME}.tar.gz: sha256 mismatch" in done.stderr
    assert not any((tmp_path / "cache" / "carried").iterdir())

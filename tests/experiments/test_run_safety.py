"""experiments.run never harms a finished run: resume continues in the checkpoint's own directory and is refused on a
changed config; a refused or failed resume and a failed --overwrite change no byte on disk; run_name stays inside
output.dir; config and flag mistakes are one line with exit code 2. Real CLI runs of a tiny random Llama (CPU)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from experiments import run as run_cli
from experiments.results import read_metrics, read_summary

TINY = ["--config", "small/smollm2_alpaca.yaml", "model.source=random:tiny-llama", "method.name=adam",
        "train.grad_accum=1", "train.batch_size=2", "data.max_samples=4", "data.eval_samples=0",
        "data.max_length=32", "--no-progress"]


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under root with its bytes and modification time: 'nothing changed' is checked against this."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


def cli(tmp_path, *extra) -> int:
    return run_cli.main([*TINY, f"output.dir={tmp_path}", *extra])


def error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "tokeniz" not in line]
    assert len(err) == 1, err
    return err[0]


def test_resume_of_a_suffixed_run_writes_into_its_own_directory_and_refuses_changes(tmp_path, capsys, monkeypatch):
    # a finished run, then a second run of the same name (-> "-2") cut at step 2 with a checkpoint
    assert cli(tmp_path, "train.max_steps=2") == 0
    finished = tmp_path / "smollm2_alpaca-adam"
    assert cli(tmp_path, "train.max_steps=4", "train.save_every=2", "train.stop_after_steps=2") == 0
    cut = tmp_path / "smollm2_alpaca-adam-2"
    assert (cut / "checkpoint.pt").is_file() and read_summary(cut)["steps"] == 2
    capsys.readouterr()
    before = snapshot(tmp_path)

    # refused: another method, seed, batch size or learning rate (one line naming every differing key, exit 2)
    for change, named in [("method.name=sgd", "method.name: 'adam' -> 'sgd'"), ("seed=7", "seed: 42 -> 7"),
                          ("train.batch_size=3", "train.batch_size: 2 -> 3"), ("method.lr=0.5", "method.lr")]:
        assert cli(tmp_path, "train.max_steps=4", "train.save_every=2", f"train.resume_from={cut}", change) == 2
        line = error_line(capsys)
        assert line.startswith("error: resume refused") and named in line, line
    # refused: the checkpoint already reached the end
    assert cli(tmp_path, "train.max_steps=2", "train.save_every=2", f"train.resume_from={cut}") == 2
    assert "nothing is left to train" in error_line(capsys)
    assert cli(tmp_path, "train.max_steps=4", f"train.resume_from={cut}") == 2  # save_every differs: refused too
    assert "train.save_every: 2 -> 0" in error_line(capsys)
    # refused: no checkpoint there / not a checkpoint file
    assert cli(tmp_path, "train.max_steps=4", "train.save_every=2", f"train.resume_from={finished}") == 2
    assert "holds no checkpoint.pt" in error_line(capsys)
    (tmp_path / "torn.pt").write_bytes(b"PK\x03\x04 not a whole checkpoint")
    assert cli(tmp_path, "train.max_steps=4", "train.save_every=2", f"train.resume_from={tmp_path / 'torn.pt'}") == 2
    assert "has no config.yaml" in error_line(capsys)
    (tmp_path / "torn.pt").unlink()
    # failed: the checkpoint cannot be restored into the model (after the config check passed)
    import experiments.loop as loop_mod

    def broken_load(*args, **kwargs):
        raise RuntimeError("Error(s) in loading state_dict: size mismatch")

    monkeypatch.setattr(loop_mod, "load_checkpoint", broken_load)
    assert cli(tmp_path, "train.max_steps=4", "train.save_every=2", f"train.resume_from={cut}") == 1
    line = error_line(capsys)
    assert "the resumed run did not start" in line and "size mismatch" in line and "left as it was" in line
    monkeypatch.undo()
    assert snapshot(tmp_path) == before, "a refused or failed resume changed files"

    # accepted: a longer run (max_steps) continues in the -2 directory, the finished run is untouched
    assert cli(tmp_path, "train.max_steps=4", f"train.resume_from={cut}", "train.save_every=2") == 0
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k.startswith(finished.name + "/")} == \
        {k: v for k, v in before.items() if k.startswith(finished.name + "/")}
    assert [r["step"] for r in read_metrics(cut)] == [1, 2, 3, 4] and read_summary(cut)["steps"] == 4
    saved = yaml.safe_load((cut / "config.yaml").read_text())
    assert saved["run_name"] == "smollm2_alpaca-adam" and saved["train"]["stop_after_steps"] is None
    assert read_summary(cut)["status"] == "ok"


def test_overwrite_validates_the_new_run_before_touching_the_old_one(tmp_path, capsys):
    assert cli(tmp_path, "train.max_steps=1") == 0
    run_dir = tmp_path / "smollm2_alpaca-adam"
    capsys.readouterr()
    before = snapshot(tmp_path)
    # a typo in the model source: the new run does not start, the old one stays byte for byte
    assert cli(tmp_path, "train.max_steps=2", "model.source=random:no-such-config", "--overwrite") == 1
    line = error_line(capsys)
    assert "the new run (--overwrite) did not start" in line and str(run_dir) in line
    assert snapshot(tmp_path) == before
    # in the data path: a usage error found before anything is planned or loaded
    assert cli(tmp_path, "train.max_steps=2", "data.source=/no/such/alpaca.json", "--overwrite") == 2
    assert "data file not found: /no/such/alpaca.json" in error_line(capsys)
    assert snapshot(tmp_path) == before
    # a flag after an override is a flag, not a bad override
    assert cli(tmp_path, "train.max_steps=2", "--overwrite", "seed=3") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2_alpaca-adam"]
    summary = read_summary(run_dir)
    assert summary["steps"] == 2 and summary["config"]["seed"] == 3
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]

    # --overwrite replaces run directories only, never a folder holding other files
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    assert cli(tmp_path, "train.max_steps=1", "run_name=notes", "--overwrite") == 2
    assert "thesis.tex" in error_line(capsys) and (folder / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize("name", ["{tmp}/elsewhere", "../escaped", "a/b", "..", "sub\\dir"])
def test_run_name_may_not_escape_output_dir(tmp_path, capsys, name):
    out = tmp_path / "out"
    name = name.format(tmp=tmp_path)
    assert run_cli.main([*TINY, f"output.dir={out}", f"run_name={name}", "train.max_steps=1"]) == 2
    assert "must be a single directory name inside output.dir" in error_line(capsys)
    assert list(tmp_path.iterdir()) == [], "nothing may be written, inside output.dir or outside"


def test_config_mistakes_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  source: x\n  dtype: [bf16\ntrain: {}\n")
    assert run_cli.main(["--config", str(bad)]) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: {bad}: invalid YAML at line") and "column" in line
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00model")
    assert run_cli.main(["--config", str(binary)]) == 2
    assert "not a UTF-8 text file" in error_line(capsys)
    tabs = tmp_path / "tabs.yaml"
    tabs.write_text("model:\n\tsource: x\n")
    assert run_cli.main(["--config", str(tabs)]) == 2
    assert "invalid YAML at line 2" in error_line(capsys)
    assert run_cli.main([*TINY, "train.resume_from=/x", "--overwrite"]) == 2
    assert "exclude each other" in error_line(capsys)
    with pytest.raises(SystemExit) as usage:  # an abbreviated flag is not taken for --overwrite
        run_cli.main([*TINY, "--overwrit"])
    assert usage.value.code == 2 and "unrecognized arguments: --overwrit" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")  # output.dir below a file: the run directory cannot be created
    assert run_cli.main([*TINY, f"output.dir={tmp_path / 'a-file' / 'x'}"]) == 1
    assert "cannot write the run" in error_line(capsys)


@pytest.mark.parametrize("name, content, expected", [
    ("qa.jsonl", '{"question": "q", "response": "r"}\n' * 6,
     r"data.source=.*qa.jsonl: record 1 has no 'instruction' field.*its fields: \['question', 'response'\]"),
    ("gap.jsonl", '{"instruction": "i", "output": "o"}\n' * 2 + '{"instruction": "i"}\n' * 4,
     r"record 3 has no 'output' field"),  # counted in the file from 1, not in the shuffled training split
    ("null.jsonl", '{"instruction": "i", "output": null}\n' * 6, r"record 1: its 'output' is null"),
    ("chat.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n' * 6,
     r"chat 'messages' lists are not read: give the last user turn as instruction"),
    ("cut.jsonl", '{"instruction": "i", "output": "o"}\n{"instruction": "i", "out\n', r"cut.jsonl: neither a JSON.*"
     r"\(line 2, column"),
    ("latin1.jsonl", b'{"instruction": "caf\xe9", "output": "o"}\n', r"latin1.jsonl: not UTF-8 text"),
    ("empty.jsonl", "", r"empty.jsonl: holds no records"),
])
def test_a_bad_data_file_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, name, content, expected):
    data = tmp_path / "data"
    data.mkdir()
    (data / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "runs"
    assert run_cli.main([*TINY, f"output.dir={out}", f"data.source={data / name}", "train.max_steps=1"]) == 2
    assert re.search(expected, error_line(capsys))
    assert not out.exists()

"""Rank analysis: known-rank updates, LoRA rank bound, and a tiny base/fine-tuned pair end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eval import rank


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))
    return q


def test_explained_variance_and_effective_rank_by_hand():
    cvar = rank.explained_variance(torch.tensor([3.0, 2.0, 1.0]))
    # σ² = 9, 4, 1 of 14
    assert torch.allclose(cvar, torch.tensor([9 / 14, 13 / 14, 1.0], dtype=torch.float64))
    assert rank.effective_rank(cvar, 0.9) == 2
    assert rank.effective_rank(cvar, 0.6) == 1
    assert rank.effective_rank(cvar, 1.0) == 3
    assert rank.effective_rank(rank.explained_variance(torch.zeros(4)), 0.9) == 0
    with pytest.raises(rank.RankError, match="threshold"):
        rank.effective_rank(cvar, 1.5)


@pytest.mark.parametrize("k", [1, 5, 17])
def test_constructed_update_of_known_rank(k):
    gen = torch.Generator().manual_seed(k)
    m, n = 48, 40
    # k equal singular values: cvar(k-1) = (k-1)/k < 0.9 for k <= 9 ... and the rank must be exactly k there;
    # for larger k the 90% point is ceil(0.9 k).
    delta = _orthonormal(m, k, gen) @ _orthonormal(n, k, gen).T
    base = torch.randn(m, n, generator=gen)
    row = rank.analyse_matrix("model.layers.3.mlp.up_proj.weight", base, base + delta.float(), threshold=0.9,
                              device="cpu", precision="auto", curve_points=256)
    expected = k if k <= 9 else -(-9 * k // 10)
    assert row["effective_rank"] == expected
    assert (row["layer"], row["matrix"], row["shape"]) == (3, "up", [48, 40])
    assert row["rank_ratio"] == pytest.approx(expected / 40)
    # Beyond rank k nothing is left to explain.
    assert row["curve"]["cvar"][k - 1] == pytest.approx(1.0, abs=1e-5)


def test_heavy_tailed_spectrum_and_curve_downsampling():
    gen = torch.Generator().manual_seed(0)
    n = 400
    sv = torch.arange(n, 0, -1, dtype=torch.float64)  # σ_i = n+1-i: far from low rank
    delta = _orthonormal(n, n, gen) @ torch.diag(sv) @ _orthonormal(n, n, gen).T
    energy = sv ** 2
    expected = int(torch.nonzero(torch.cumsum(energy, 0) / energy.sum() >= 0.9)[0, 0]) + 1
    row = rank.analyse_matrix("layers.0.self_attn.q_proj.weight", torch.zeros(n, n), delta, threshold=0.9,
                              device="cpu", precision="fp32", curve_points=50)
    assert row["effective_rank"] == expected
    assert row["svd_dtype"] == "float32"
    curve = row["curve"]
    assert curve["r"][0] == 1 and curve["r"][-1] == n and expected in curve["r"]
    assert len(curve["r"]) <= 51 and curve["cvar"] == sorted(curve["cvar"])


def test_classify_names():
    assert rank.classify("model.layers.12.self_attn.k_proj.weight") == (12, "k")
    assert rank.classify("model.layers.0.mlp.down_proj.weight") == (0, "down")
    assert rank.classify("roberta.encoder.layer.5.attention.output.dense.weight") == (5, "o")
    assert rank.classify("roberta.encoder.layer.5.output.dense.weight") == (5, "down")
    assert rank.classify("roberta.encoder.layer.5.attention.self.value.weight") == (5, "v")
    assert rank.classify("model.embed_tokens.weight") is None
    assert rank.classify("model.layers.1.self_attn.q_proj.bias") is None


# --- tiny real checkpoints ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("base")
    model.save_pretrained(folder)
    return folder, model


def test_lora_update_has_rank_at_most_r(tiny_base, tmp_path):
    peft = pytest.importorskip("peft")
    folder, model = tiny_base
    r = 2
    config = peft.LoraConfig(r=r, lora_alpha=8, init_lora_weights=False,  # random B: a nonzero update
                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"])
    lora = peft.get_peft_model(type(model)(model.config), config)
    lora.base_model.model.load_state_dict(model.state_dict(), strict=False)
    lora.save_pretrained(tmp_path / "adapter")
    result = rank.rank_analysis(str(folder), str(tmp_path / "adapter"), device="cpu")
    kinds = {row["matrix"] for row in result["matrices"]}
    assert kinds == {"q", "k", "v", "o", "gate", "up", "down"}
    assert len(result["matrices"]) == 14
    assert all(1 <= row["effective_rank"] <= r for row in result["matrices"])


def _fine_tune(model, steps: int = 6):
    """A few full-parameter Adam steps on random tokens: a genuinely fine-tuned copy."""
    tuned = type(model)(model.config)
    tuned.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(tuned.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(0, model.config.vocab_size, (4, 16), generator=gen)
        loss = tuned(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return tuned


def test_end_to_end_cli_writes_table_and_skips_done(tiny_base, tmp_path):
    folder, model = tiny_base
    tuned_dir = tmp_path / "tuned"
    _fine_tune(model).save_pretrained(tuned_dir)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"model": str(folder)}))  # --base defaults to it

    assert rank.main(["--tuned", str(tuned_dir), "--run-dir", str(run_dir), "--device", "cpu"]) == 0
    out = run_dir / "eval" / "rank.json"
    result = json.loads(out.read_text())
    assert result["schema"] == rank.SCHEMA and result["base"] == str(folder)
    assert len(result["matrices"]) == 14
    # Six Adam steps with batch 4 move each matrix in many directions: well above LoRA's rank 2.
    assert all(row["effective_rank"] > 2 for row in result["matrices"])
    assert all(0 < row["rank_ratio"] <= 1 for row in result["matrices"])
    csv_lines = (run_dir / "eval" / "rank.csv").read_text().splitlines()
    assert csv_lines[0].startswith("layer,matrix,name,shape,effective_rank,rank_ratio")
    assert len(csv_lines) == 15

    stamp = out.stat().st_mtime_ns
    assert rank.main(["--tuned", str(tuned_dir), "--run-dir", str(run_dir)]) == 0
    assert out.stat().st_mtime_ns == stamp  # done: skipped
    assert rank.main(["--tuned", str(tuned_dir), "--run-dir", str(run_dir), "--force", "--device", "cpu"]) == 0
    assert out.stat().st_mtime_ns != stamp


def test_identical_checkpoints_are_unchanged(tiny_base):
    folder, _ = tiny_base
    result = rank.rank_analysis(str(folder), str(folder), device="cpu", matrices=["q", "up"])
    assert {row["matrix"] for row in result["matrices"]} == {"q", "up"}
    assert all(row["unchanged"] and row["effective_rank"] == 0 for row in result["matrices"])


def test_random_init_base_is_rebuilt_identically():
    """A 'random:<name>' base is rebuilt with the harness's fixed seed: the same source twice gives ΔW = 0."""
    pytest.importorskip("experiments.models")
    result = rank.rank_analysis("random:tiny-llama", "random:tiny-llama", device="cpu", load_dtype="bf16",
                                matrices=["q", "down"])
    assert len(result["matrices"]) == 4
    assert all(row["unchanged"] for row in result["matrices"])


def test_bad_inputs_give_one_clear_error(tiny_base, tmp_path):
    folder, model = tiny_base
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(rank.RankError, match="holds no checkpoint"):
        rank.rank_analysis(str(folder), str(empty))
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(rank.RankError, match="base model is needed"):
        rank.open_weights(str(tmp_path / "adapter"))
    with pytest.raises(rank.RankError, match="shapes differ"):
        rank.analyse_matrix("layers.0.mlp.up_proj.weight", torch.zeros(3, 4), torch.zeros(4, 3), threshold=0.9,
                            device="cpu", precision="auto", curve_points=8)
    with pytest.raises(SystemExit):
        rank.main(["--tuned", str(folder)])  # neither --run-dir nor --out


def test_summary_averages_over_the_matrices_a_method_changed():
    """BAdam leaves most layers untouched: their zero ranks must not pull its mean down (issue 14's finding: q 13.6
    over all matrices vs ~200 over the changed ones)."""
    from eval.rank import _summarise

    rows = [{"matrix": "q", "effective_rank": 200, "rank_ratio": 0.5, "delta_fro_norm": 1.0},
            {"matrix": "q", "effective_rank": 100, "rank_ratio": 0.25, "delta_fro_norm": 2.0},
            *({"matrix": "q", "effective_rank": 0, "rank_ratio": 0.0, "delta_fro_norm": 0.0} for _ in range(8)),
            {"matrix": "v", "effective_rank": 0, "rank_ratio": 0.0, "delta_fro_norm": 0.0}]
    summary = _summarise(rows)
    assert summary["q"]["count"] == 10 and summary["q"]["changed"] == 2
    assert summary["q"]["mean_effective_rank"] == 150 and summary["q"]["mean_rank_ratio"] == 0.375
    assert summary["q"]["mean_effective_rank_all"] == 30
    assert summary["v"] == {"count": 1, "changed": 0, "mean_effective_rank": 0.0, "mean_rank_ratio": 0.0,
                            "mean_effective_rank_all": 0.0, "mean_rank_ratio_all": 0.0}


def test_cli_input_mistakes_are_one_line_with_exit_code_2(tiny_base, tmp_path, capsys):
    folder, _ = tiny_base
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"status": "ok", "model": str(folder)}))
    cases = [
        (["--tuned", str(tmp_path / "missing"), "--run-dir", str(run_dir)], "--tuned"),            # missing model
        (["--tuned", str(run_dir), "--run-dir", str(run_dir)], "without a saved model"),            # run without model/
        (["--tuned", str(folder), "--out", str(tmp_path / "o.json")], "give --base"),               # no --base at all
        (["--tuned", str(folder), "--base", str(tmp_path / "nope"), "--out", str(tmp_path / "o.json")], "--base"),
        (["--tuned", str(folder), "--run-dir", str(tmp_path / "no-dir")], "is not a directory"),
        (["--tuned", "random:no-such", "--base", str(folder), "--out", str(tmp_path / "o.json")], "valid names"),
    ]
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "summary.json").write_text('{"status": "ok", "mod')
    cases.append((["--tuned", str(folder), "--run-dir", str(tmp_path / "torn")], "cannot be read"))
    for argv, expected in cases:
        assert rank.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], (argv, err)
    assert not (tmp_path / "o.json").exists()


def test_a_result_is_reused_only_for_the_same_matrices_and_a_cut_short_one_is_redone(tiny_base, tmp_path, caplog):
    """rank.json of matrices q, v was reused for a call asking for every matrix (the filter was not compared), and an
    emptied rank.json failed the evaluator with 'JSONDecodeError: Expecting value' naming no file."""
    folder, model = tiny_base
    _fine_tune(model, steps=2).save_pretrained(tmp_path / "tuned")
    out = tmp_path / "rank.json"
    assert sorted(rank.run(str(folder), str(tmp_path / "tuned"), out, device="cpu", matrices=["v", "q"])["by_type"]) \
        == ["q", "v"]
    stamp = out.stat().st_mtime_ns
    assert sorted(rank.run(str(folder), str(tmp_path / "tuned"), out, device="cpu", matrices=["q", "v"])["by_type"]) \
        == ["q", "v"] and out.stat().st_mtime_ns == stamp                        # the same question: reused
    every = rank.run(str(folder), str(tmp_path / "tuned"), out, device="cpu")
    assert sorted(every["by_type"]) == ["down", "gate", "k", "o", "q", "up", "v"]   # was: the q, v result again
    out.write_text("")
    with caplog.at_level("WARNING", logger="eval.rank"):
        again = rank.run(str(folder), str(tmp_path / "tuned"), out, device="cpu")
    assert f"rank: {out} is not valid JSON" in caplog.text and "analysed again" in caplog.text
    assert again["by_type"] == every["by_type"] and json.loads(out.read_text())["matrix_filter"] is None


def test_rank_json_is_written_last_so_a_kill_between_the_files_is_redone(tmp_path, monkeypatch):
    """rank.json was written before rank.csv: a kill between them left a result the next call reuses, without its
    table (or with the table of an earlier analysis)."""
    import experiments.results as results

    written = []
    real = results.atomic_write_text

    def killed_after_the_first(path, text):
        if written:
            raise KeyboardInterrupt  # the process dies here
        written.append(Path(path).name)
        real(path, text)

    monkeypatch.setattr(results, "atomic_write_text", killed_after_the_first)
    result = {"schema": rank.SCHEMA, "matrices": [], "by_type": {}}
    with pytest.raises(KeyboardInterrupt):
        rank.write_result(result, tmp_path / "rank.json")
    assert written == ["rank.csv"] and not (tmp_path / "rank.json").exists()

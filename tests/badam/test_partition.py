"""Partitions: automatic layer stacks for Llama / GPT-2 / BERT-family names, finer partitions, prefix matching."""
import pytest

from badam.partition import (assign_to_blocks, attention_mlp_blocks, find_layer_stack, infer_block_prefixes,
                             matrix_blocks, prefix_matches)

from .tiny import tiny_bert, tiny_gpt2, tiny_llama


def test_prefix_matches_on_component_boundaries_only():
    assert prefix_matches("model.layers.1.", "model.layers.1.mlp.up_proj.weight")
    assert prefix_matches("model.layers.1", "model.layers.1.mlp.up_proj.weight")
    assert prefix_matches("layers.1", "model.layers.1.mlp.up_proj.weight")
    assert not prefix_matches("model.layers.1.", "model.layers.10.mlp.up_proj.weight")
    assert not prefix_matches("model.layers.1", "model.layers.10.mlp.up_proj.weight")
    assert not prefix_matches("norm", "model.layers.0.input_layernorm.weight")
    assert prefix_matches("lm_head.weight", "lm_head.weight")


def test_layer_1_and_layer_10_are_different_blocks():
    names = [f"model.layers.{i}.{w}" for i in range(12) for w in ("attn.weight", "mlp.weight")]
    blocks = infer_block_prefixes(names)
    assert [b[0] for b in blocks] == [f"model.layers.{i}." for i in range(12)]  # numeric, not lexicographic order
    members = assign_to_blocks(names, blocks)
    assert [names[i] for i in members[1]] == ["model.layers.1.attn.weight", "model.layers.1.mlp.weight"]
    assert all(len(m) == 2 for m in members)


def test_llama_blocks_with_embedding_and_head_in_official_order():
    model = tiny_llama(layers=3)
    blocks = infer_block_prefixes(model, include_embedding=True, include_lm_head=True)
    assert blocks == [["model.embed_tokens.weight"], ["model.layers.0."], ["model.layers.1."], ["model.layers.2."],
                      ["model.norm.weight", "lm_head.weight"]]
    assert infer_block_prefixes(model) == blocks[1:-1]


def test_tied_embedding_is_one_tensor_in_one_block():
    model = tiny_llama(layers=2, tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    blocks = infer_block_prefixes(model, include_embedding=True, include_lm_head=True)
    assert blocks[0] == ["model.embed_tokens.weight"] and blocks[-1] == ["model.norm.weight"]
    names = [n for n, _ in model.named_parameters()]
    assert sum(len(m) for m in assign_to_blocks(names, blocks)) == len(names)


def test_gpt2_stack_is_transformer_h():
    model = tiny_gpt2(layers=3)
    blocks = infer_block_prefixes(model, include_embedding=True, include_lm_head=True)
    assert blocks[0] == ["transformer.wte.weight", "transformer.wpe.weight"]
    assert blocks[1:4] == [["transformer.h.0."], ["transformer.h.1."], ["transformer.h.2."]]
    assert blocks[4] == ["transformer.ln_f.weight", "transformer.ln_f.bias"]


@pytest.mark.parametrize("arch", ["bert", "roberta", "mpnet"])
def test_encoder_layer_stacks_with_model_prefix(arch):
    names = [f"{arch}.embeddings.word_embeddings.weight"]
    names += [f"{arch}.encoder.layer.{i}.{w}" for i in range(3)
              for w in ("attention.self.query.weight", "attention.output.LayerNorm.weight", "output.dense.bias")]
    names += ["classifier.weight"]
    stack = find_layer_stack(names)
    assert stack.path == f"{arch}.encoder.layer" and stack.indices == [0, 1, 2]
    blocks = infer_block_prefixes(names, include_lm_head=True)
    assert blocks == [[f"{arch}.encoder.layer.{i}."] for i in range(3)] + [["classifier.weight"]]


def test_real_bert_classifier_partition():
    model = tiny_bert(layers=2)
    blocks = infer_block_prefixes(model, include_embedding=True, include_lm_head=True)
    assert blocks[1:3] == [["bert.encoder.layer.0."], ["bert.encoder.layer.1."]]
    assert "classifier.weight" in blocks[-1] and "bert.pooler.dense.weight" in blocks[-1]
    assert "bert.embeddings.LayerNorm.weight" in blocks[0]


def test_attention_mlp_partition_covers_each_layer_in_two_blocks():
    model = tiny_llama(layers=2)
    names = [n for n, _ in model.named_parameters()]
    blocks = attention_mlp_blocks(names)
    assert len(blocks) == 4
    assert blocks[0] == ["model.layers.0.self_attn"]
    assert "model.layers.0.mlp.up_proj.weight" in blocks[1] and "model.layers.0.input_layernorm.weight" in blocks[1]
    members = assign_to_blocks(names, blocks)
    stack_names = [n for n in names if n.startswith("model.layers.")]
    assert sorted(names[i] for m in members for i in m) == sorted(stack_names)


def test_matrix_partition_one_block_per_weight_matrix_with_its_bias():
    model = tiny_gpt2(layers=2)
    blocks = matrix_blocks(model)
    assert blocks[0] == ["transformer.h.0.attn.c_attn"]
    assert len(blocks) == 2 * 5  # 4 matrices + 1 block of norm parameters per layer
    names = [n for n, _ in model.named_parameters()]
    members = assign_to_blocks(names, blocks)
    assert [names[i] for i in members[0]] == ["transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias"]
    with pytest.raises(ValueError, match="needs parameter shapes"):
        matrix_blocks(names)


def test_bad_partitions_raise_one_clear_error():
    names = ["model.layers.0.w", "model.layers.1.w", "lm_head.weight"]
    with pytest.raises(ValueError, match="partition is empty"):
        assign_to_blocks(names, [])
    with pytest.raises(ValueError, match=r"prefix 'model.layers.7.' matches no parameter"):
        assign_to_blocks(names, [["model.layers.0."], ["model.layers.7."]])
    with pytest.raises(ValueError, match="is in block 0 and block 1"):
        assign_to_blocks(names, [["model.layers"], ["model.layers.1."]])
    with pytest.raises(ValueError, match="not a non-empty list"):
        assign_to_blocks(names, [[]])
    with pytest.raises(ValueError, match="no repeated layer stack"):
        infer_block_prefixes(["encoder.weight", "decoder.weight"])
    with pytest.raises(ValueError, match="include_embedding=True but no parameter precedes"):
        infer_block_prefixes(names, include_embedding=True)

"""Tiny random-init models (transformers config classes) and deterministic batches for the badam tests."""
import io

import torch

VOCAB = 64


def tiny_llama(dtype=torch.bfloat16, layers=4, seed=0, tie=False, hidden=32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tie)
    return LlamaForCausalLM(config).to(dtype)


def tiny_gpt2(dtype=torch.float32, layers=3, seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=layers, n_head=2, n_positions=32,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).to(dtype)


def tiny_bert(dtype=torch.float32, layers=3, seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(config).to(dtype)


def lm_batch(step, batch=2, length=8):
    """The same batch for a given step in every run (runs compared step by step must see identical data)."""
    g = torch.Generator().manual_seed(1000 + step)
    ids = torch.randint(0, VOCAB, (batch, length), generator=g)
    return {"input_ids": ids, "labels": ids}


def train_steps(model, optimizer, steps, first_step=0, scheduler=None):
    """forward / backward / step / zero_grad for `steps` steps; returns the losses."""
    losses = []
    for s in range(first_step, first_step + steps):
        loss = model(**lm_batch(s)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses


def clone_model(model):
    twin = type(model)(model.config).to(next(model.parameters()).dtype)
    twin.load_state_dict(model.state_dict())
    return twin


def params_equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))




def record_backward_reach(layers) -> tuple[set, list]:
    """Forward hooks on `layers` that add a layer's index to the returned set when its output receives a gradient in
    backward; also returns the hook handles (remove them when done)."""
    reached: set[int] = set()

    def record(index):
        def forward_hook(module, inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if hidden.requires_grad:
                hidden.register_hook(lambda grad: reached.add(index))
        return forward_hook

    return reached, [layer.register_forward_hook(record(i)) for i, layer in enumerate(layers)]


def roundtrip(obj):
    """obj through torch.save and torch.load(weights_only=True), as a checkpoint file would take it."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)

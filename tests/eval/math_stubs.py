"""Stand-ins for eval.math tests where generation is replaced by an oracle (no model runs)."""
from __future__ import annotations


class NoModel:
    """Stands in for a model where generation is replaced (only train/eval mode is touched)."""
    training = False

    def eval(self):
        return self

    def train(self, mode=True):
        return self


def tokenizer_stub():
    class Stub:
        """Encodes a text as [its number] * its word count (prompt lengths differ, texts are recoverable)."""
        pad_token, eos_token, padding_side = "<pad>", "<pad>", "right"

        def __init__(self):
            self.texts: list[str] = []

        def __call__(self, texts, **kwargs):
            ids = []
            for text in texts:
                self.texts.append(text)
                ids.append([len(self.texts) - 1] * len(text.split()))
            return {"input_ids": ids}

    return Stub()

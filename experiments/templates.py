"""Turn instruction records into conversations, and conversations into token segments that know which tokens train.

A conversation is (system or None, [(user, assistant), ...]). It is rendered with the tokenizer's own chat template
when the tokenizer has one (SmolLM2 does), else with the plain template below. Rendering produces segments
(token ids, trainable): everything the template emits for a user turn (headers, the user text, the generation prompt)
is not trained; everything it emits after the generation prompt up to the next user turn (the answer and its end
marker, e.g. "<|im_end|>\n") is trained. Every assistant turn of a multi-turn conversation is trained.

Each segment is tokenized on its own (without the tokenizer's automatic special tokens), so a prompt is tokenized
exactly as build_prompt() tokenizes it at inference time.

Plain template (used when the tokenizer has no chat template; the section headers follow the Alpaca prompt format,
Stanford Alpaca, 2023), with turns separated by a blank line:

    {system}\\n\\n                                   (only when the record has a system prompt)
    ### Instruction:\\n{user}\\n\\n### Response:\\n    (not trained)
    {assistant}<eos>                                (trained; <eos> only when the tokenizer has one)
The tokenizer's BOS token is prepended when its default encoding adds one (Llama-style tokenizers).
"""
from __future__ import annotations

import re
from typing import Sequence

TEMPLATES = ("auto", "chat", "plain")
MATH_STYLES = ("mammoth", "raw")
# the fields each data.format reads, named in errors about a record that lacks one
FORMAT_FIELDS = "alpaca: instruction, output (input, history, system optional); math: question, answer; text: text"
Conversation = tuple[str | None, list[tuple[str, str]]]


# --- records -> conversations ------------------------------------------------------------------------------------
def _field(record: dict, key: str, index: int, fmt: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None:
        if required and key in record:
            raise ValueError(f"record {index}: its {key!r} is null, and format {fmt!r} needs text there")
        if required:
            chat = (" (chat 'messages' lists are not read: give the last user turn as instruction, the answer as "
                    "output, earlier turns as history [[user, assistant], ...] and a system message as system)"
                    if "messages" in record or "conversations" in record else "")
            raise ValueError(f"record {index} has no {key!r} field, which format {fmt!r} needs "
                             f"(its fields: {sorted(record)}; data.format: {FORMAT_FIELDS}){chat}")
        return ""
    return str(value)


def alpaca_conversation(record: dict, index: int = 0) -> Conversation:
    """instruction (+ input) / output, with optional history [[user, assistant], ...] and system."""
    instruction = _field(record, "instruction", index, "alpaca")
    extra = _field(record, "input", index, "alpaca", required=False)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    turns = []
    for turn in record.get("history") or []:
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2):
            raise ValueError(f"record {index}: history entries must be [user, assistant] pairs, got {turn!r}")
        turns.append((str(turn[0]), str(turn[1])))
    turns.append((user, _field(record, "output", index, "alpaca")))
    system = record.get("system") or None
    return system, turns


_CALCULATOR_ANNOTATION = re.compile(r"<<[^<>]*>>")
_FINAL_ANSWER = re.compile(r"\n?####\s*(.+?)\s*$")


def gsm8k_answer(answer: str, style: str = "mammoth") -> str:
    """GSM8K answers end with a '#### <number>' line and carry calculator annotations '<<48/2=24>>'.

    style "mammoth": drop the annotations and end with "The answer is <number>." (the answer convention of MAmmoTH's
    math evaluation, which the BAdam paper uses); "raw": keep the answer text as in the file.
    """
    if style == "raw":
        return answer
    if style != "mammoth":
        raise ValueError(f"unknown math style {style!r}; valid: {', '.join(MATH_STYLES)}")
    text = _CALCULATOR_ANNOTATION.sub("", answer)
    match = _FINAL_ANSWER.search(text)
    if match is None:
        return text
    return f"{text[:match.start()].rstrip()}\nThe answer is {match.group(1)}."


def math_conversation(record: dict, index: int = 0, style: str = "mammoth") -> Conversation:
    question = _field(record, "question", index, "math")
    return None, [(question, gsm8k_answer(_field(record, "answer", index, "math"), style))]


# --- conversations -> segments -----------------------------------------------------------------------------------
def uses_chat_template(tokenizer, template: str = "auto") -> bool:
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; valid: {', '.join(TEMPLATES)}")
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has_chat:
        raise ValueError(f"template='chat' but the tokenizer {type(tokenizer).__name__} has no chat template; "
                         "use template='auto' or 'plain'")
    return has_chat if template == "auto" else template == "chat"


def _messages(system: str | None, turns: Sequence[tuple[str, str]], upto_user: int, with_answer: bool) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    for i, (user, assistant) in enumerate(turns[:upto_user + 1]):
        messages.append({"role": "user", "content": user})
        if i < upto_user or with_answer:
            messages.append({"role": "assistant", "content": assistant})
    return messages


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def chat_text_segments(tokenizer, conversation: Conversation) -> list[tuple[str, bool]]:
    """Split the chat-template rendering into (text, trainable) pieces, checking that each prefix renders stably."""
    system, turns = conversation
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i in range(len(turns)):
        prompt = _render(tokenizer, _messages(system, turns, i, with_answer=False), generation_prompt=True)
        full = _render(tokenizer, _messages(system, turns, i, with_answer=True), generation_prompt=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise ValueError("the tokenizer's chat template does not render conversations prefix-by-prefix (an "
                             "earlier turn changes when a later one is added), so prompt and answer tokens cannot be "
                             "separated; use template='plain'")
        pieces += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    return pieces


def special_prefix_ids(tokenizer) -> list[int]:
    """Ids the tokenizer adds in front by default (e.g. Llama's BOS); [] for tokenizers that add none."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    n_extra = len(full) - len(plain)
    return full[:n_extra] if n_extra > 0 and full[n_extra:n_extra + len(plain)] == plain else []


def plain_text_segments(conversation: Conversation) -> list[tuple[str, bool]]:
    system, turns = conversation
    pieces: list[tuple[str, bool]] = []
    for i, (user, assistant) in enumerate(turns):
        lead = (f"{system}\n\n" if system else "") if i == 0 else "\n\n"
        pieces += [(f"{lead}### Instruction:\n{user}\n\n### Response:\n", False), (assistant, True)]
    return pieces


def conversation_segments_batch(tokenizer, conversations: Sequence[Conversation],
                                template: str = "auto") -> list[list[tuple[list[int], bool]]]:
    """Token segments (ids, trainable) of each conversation; the texts are tokenized in one batched call."""
    chat = uses_chat_template(tokenizer, template)
    per_conv = [chat_text_segments(tokenizer, c) if chat else plain_text_segments(c) for c in conversations]
    flat = [text for pieces in per_conv for text, _ in pieces]
    encoded = iter(tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else [])
    prefix = [] if chat else special_prefix_ids(tokenizer)
    # the plain template has no end marker of its own: the model learns to stop by predicting EOS
    eos = [tokenizer.eos_token_id] if not chat and tokenizer.eos_token_id is not None else []
    result = []
    for pieces in per_conv:
        segments = [(prefix, False)] if prefix else []
        for _, trainable in pieces:
            ids = list(next(encoded))
            segments.append((ids + eos, True) if trainable else (ids, False))
        result.append(segments)
    return result


def conversation_segments(tokenizer, conversation: Conversation, template: str = "auto") -> list[tuple[list[int], bool]]:
    """Token segments (ids, trainable) of a whole conversation."""
    return conversation_segments_batch(tokenizer, [conversation], template)[0]


def build_prompt(tokenizer, user: str, *, history: Sequence[tuple[str, str]] = (), system: str | None = None,
                 template: str = "auto") -> list[int]:
    """Token ids of a prompt for generation, rendered exactly as tokenize_records renders the untrained part."""
    conversation = (system, [*history, (user, "")])
    segments = conversation_segments(tokenizer, conversation, template)
    if segments and segments[-1][1]:
        segments = segments[:-1]  # drop the (empty) answer and, for the plain template, its EOS
    return [t for ids, _ in segments for t in ids]

"""Zero-shot prompts for the math benchmarks.

Two styles:
- "alpaca" (default): MAmmoTH's zero-shot Alpaca prompt (math_eval/prompt_utils.py), with its chain-of-thought
  trigger written at the start of the response: "Let's think step by step." for open-ended problems (MAmmoTH form
  `alpaca:step`) and "Let's solve the multi-choice question step by step." for multiple choice (form `alpaca_mc`,
  whose question already lists "Answer Choices: (A) ..."). It is the default because the BAdam paper fine-tunes
  on MathInstruct in this very template and scores with MAmmoTH's evaluation, so it is the prompt the paper's
  numbers were measured with.
- "chat": the model's own chat template (tokenizer.apply_chat_template) with the question and the same trigger as a
  request, plus how to state the final answer. Use it for instruction-tuned models that never saw the Alpaca format
  (e.g. the SmolLM2-Instruct baseline before fine-tuning).
- "chat_question": the model's chat template with the question alone as the user turn; multiple-choice items keep
  "chat"'s request to name one option letter. This is the form the suite's math fine-tuning trains on (a GSM8K
  question as the user turn, experiments/templates.py math_conversation, whose answers end "The answer is N."), and
  the one in which an instruct model works the problem out in its own way: "chat"'s open-answer request (write "The
  answer is: " at the end) made Qwen2.5-Coder-0.5B-Instruct state an answer at once without working (0 of 8 GSM8K
  items right, 3 of 8 with the question alone; CPU check in /work/notes/issue-11-math.md).
"""
from __future__ import annotations

from .readers import MathItem

PROMPT_STYLES = ("alpaca", "chat", "chat_question")
DEFAULT_PROMPT_STYLE = "alpaca"

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{query}\n\n### Response:{trigger}"
)
OPEN_TRIGGER = " Let's think step by step."
CHOICE_TRIGGER = " Let's solve the multi-choice question step by step.\n"

CHAT_OPEN_REQUEST = "Let's think step by step. At the end, write \"The answer is: \" followed by the final answer."
CHAT_CHOICE_REQUEST = ("Let's solve the multi-choice question step by step. Pick exactly one of the options and end "
                       "with \"The answer is (X)\", where X is the letter of that option.")

# Generation stops at these (MAmmoTH's vLLM stop list, trimmed to what a continuation of our prompts can produce):
# a model that starts a new Alpaca turn or a new problem has finished answering this one.
STOP_STRINGS = ("### Instruction", "### Response", "\n\nProblem:", "USER:", "ASSISTANT:")


def check_prompt_style(style: str) -> str:
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; valid choices: {', '.join(PROMPT_STYLES)}")
    return style


def build_prompt(item: MathItem, style: str, tokenizer=None) -> str:
    """The text fed to the model for one item (tokenizer needed for the chat styles only)."""
    check_prompt_style(style)
    is_choice = item.kind == "choice"
    if style == "alpaca":
        return ALPACA_TEMPLATE.format(query=item.question, trigger=CHOICE_TRIGGER if is_choice else OPEN_TRIGGER)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"prompt style {style!r} needs a tokenizer with a chat template; this model has none "
                         "(use prompt style 'alpaca')")
    request = CHAT_CHOICE_REQUEST if is_choice else CHAT_OPEN_REQUEST if style == "chat" else None
    messages = [{"role": "user", "content": f"{item.question}\n\n{request}" if request else item.question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def adds_special_tokens(style: str) -> bool:
    """Whether tokenizing the prompt should add BOS etc.: a chat template already writes its own special tokens."""
    return check_prompt_style(style) == "alpaca"


def cut_at_stop_strings(text: str) -> str:
    """Generation up to the first stop string (the stopping criterion ends a sequence only after the string appears,
    and sequences in a batch that finished early are padded, not cut)."""
    cut = min((pos for pos in (text.find(s) for s in STOP_STRINGS) if pos >= 0), default=len(text))
    return text[:cut]

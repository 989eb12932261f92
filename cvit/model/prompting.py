"""Chat formats of the supported MLLM families (written here: the tiny models ship no chat template).

`prompt` holds the image placeholder the family's processor expands into image tokens; the answer
is tokenised separately (`answer_prefix + answer`) and followed by the end-of-turn token, as the
LLaVA training code does, so the prompt/answer boundary for label masking is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ChatFormat:
    prompt: str  # with {instruction}
    answer_prefix: str
    end_token: str | None  # None: the tokenizer's eos token


# Qwen2-VL-Instruct's own template also opens with a system turn ("You are a helpful assistant."); it is
# left out here, as in the continual-tuning papers' LLaVA-style prompts, which may lower zero-shot scores.
FORMATS = {
    "llava": ChatFormat("USER: <image>\n{instruction} ASSISTANT:", " ", None),
    "qwen2_vl": ChatFormat(
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{instruction}<|im_end|>\n"
        "<|im_start|>assistant\n",
        "",
        "<|im_end|>",
    ),
}
# LLaVA-1.5's training conversation ("v1"): the system sentence, then the same turns. The continual-tuning papers'
# forks of the LLaVA code train and evaluate with it.
LLAVA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the human's questions.")
CHAT_FORMATS = {"minimal": ("llava", "qwen2_vl"), "llava_v1": ("llava",)}  # name -> families it applies to


def chat_format(family: str, name: str = "minimal") -> ChatFormat:
    """The family's chat format `name` (one of CHAT_FORMATS; `llava_v1` for the llava family only)."""
    if family not in CHAT_FORMATS.get(name, ()):
        raise ValueError(f"chat format {name!r} does not apply to the {family!r} family")
    base = FORMATS[family]
    return replace(base, prompt=f"{LLAVA_SYSTEM} {base.prompt}") if name == "llava_v1" else base


def instruction_text(question: str, template: str | None) -> str:
    """The user's instruction: a template holding "{question}" with the question put in its place;
    any other template after the question on a new line (alone when the question is empty)."""
    if not template:
        return question
    if "{question}" in template:
        return template.replace("{question}", question)
    return f"{question}\n{template}" if question else template

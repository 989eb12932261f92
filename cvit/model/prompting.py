"""Chat formats of the supported MLLM families (written here: the tiny models ship no chat template).

`prompt` holds the image placeholder the family's processor expands into image tokens; the answer
is tokenised separately (`answer_prefix + answer`) and followed by the end-of-turn token, as the
LLaVA training code does, so the prompt/answer boundary for label masking is exact.
"""

from __future__ import annotations

from dataclasses import dataclass


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


def instruction_text(question: str, template: str | None) -> str:
    """The user's instruction: a template holding "{question}" with the question put in its place;
    any other template after the question on a new line (alone when the question is empty)."""
    if not template:
        return question
    if "{question}" in template:
        return template.replace("{question}", question)
    return f"{question}\n{template}" if question else template

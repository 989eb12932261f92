"""Batch collation with the model's processor: right-padded training batches with labels on answer
tokens only, left-padded generation batches."""

from __future__ import annotations

from typing import Any

import torch

from cvit.data.images import square_images
from cvit.model.prompting import chat_format

IGNORE_INDEX = -100
TEXT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


def text_fields(items: list[dict[str, Any]]) -> dict[str, list]:
    """Per-row texts and images that routing methods read (never given to the model): `instructions`,
    `templates` (the format instruction alone), `tasks` (task names) and `images` (PIL)."""
    return {"instructions": [item["instruction"] for item in items],
            "templates": [item["template"] for item in items], "tasks": [item["task"] for item in items],
            "images": [item["image"] for item in items]}


class Collator:
    def __init__(self, processor: Any, family: str, max_length: int, format_name: str = "minimal",
                 image_aspect: str = "crop") -> None:
        """`image_aspect`: how images become square before the processor (`cvit.data.images`)."""
        self.processor = processor
        self.square = square_images(image_aspect, processor)
        self.tokenizer = processor.tokenizer
        self.format = chat_format(family, format_name)
        self.max_length = max_length
        end = self.format.end_token or self.tokenizer.eos_token
        self.end_id = self.tokenizer.convert_tokens_to_ids(end)
        self.pad_id = self.tokenizer.pad_token_id

    def encode_prompts(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Processor output for the prompts, left-padded: input_ids, attention_mask, image tensors."""
        prompts = [self.format.prompt.format(instruction=item["instruction"]) for item in items]
        self.tokenizer.padding_side = "left"
        return dict(self.processor(
            text=prompts, images=self.square([item["image"] for item in items]), return_tensors="pt", padding=True
        ))

    def eval_batch(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.encode_prompts(items)
        batch["uids"] = [item["uid"] for item in items]
        batch.update(text_fields(items))
        batch["answers"] = [item["answers"] for item in items]
        return batch

    def train_batch(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Prompt ids (unpadded) + answer ids + end token, right-padded; labels mask the prompt."""
        encoded = self.encode_prompts(items)
        answers = self.tokenizer(
            [self.format.answer_prefix + item["answer"] for item in items], add_special_tokens=False
        )["input_ids"]
        sequences, labels = [], []
        for row, answer_ids in enumerate(answers):
            prompt = encoded["input_ids"][row][encoded["attention_mask"][row].bool()].tolist()
            answer = (answer_ids + [self.end_id])[: max(1, self.max_length - len(prompt))]
            sequences.append(prompt + answer)
            labels.append([IGNORE_INDEX] * len(prompt) + answer)
        width = max(len(s) for s in sequences)
        batch = {k: v for k, v in encoded.items() if k not in TEXT_KEYS}
        batch["input_ids"] = torch.tensor([s + [self.pad_id] * (width - len(s)) for s in sequences])
        batch["attention_mask"] = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
        if "mm_token_type_ids" in encoded:  # Qwen2-VL M-RoPE: 1 on image tokens, 0 elsewhere
            batch["mm_token_type_ids"] = (batch["input_ids"] == self.processor.image_token_id).long()
        batch["labels"] = torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for lab in labels])
        batch["loss_weight"] = torch.tensor([float(item["loss_weight"]) for item in items])
        batch.update(text_fields(items))
        return batch

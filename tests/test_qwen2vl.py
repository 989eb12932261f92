"""The tiny Qwen2-VL: save/reload, image tokens, loss, batched generation, row selection, LoRA targets,
4-bit skip modules and the Collator with the `qwen2_vl` chat format."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

from cvit.config.schema import LANGUAGE_MODEL_LINEARS
from cvit.data.collate import IGNORE_INDEX, Collator
from cvit.model.batching import select_rows
from cvit.model.build import FAMILIES
from cvit.model.prompting import FORMATS
from cvit.model.qwen_processor import IMAGE_TOKEN, Qwen2VLImageOnlyProcessor, load_qwen2vl_processor
from cvit.model.tiny_qwen import build_tiny_qwen2vl, save_tiny_qwen2vl

LORA_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return save_tiny_qwen2vl(tmp_path_factory.mktemp("models") / "tiny-qwen2vl")


@pytest.fixture(scope="module")
def qwen(qwen_dir):
    return Qwen2VLForConditionalGeneration.from_pretrained(qwen_dir).eval(), load_qwen2vl_processor(qwen_dir)


def prompt(instruction: str) -> str:
    return FORMATS["qwen2_vl"].prompt.format(instruction=instruction)


def encode(processor, instructions: list[str], images: list[Image.Image]) -> dict[str, torch.Tensor]:
    return dict(processor(text=[prompt(i) for i in instructions], images=images, return_tensors="pt",
                          padding=True))


def greedy(model, processor, inputs: dict[str, torch.Tensor], tokens: int = 8) -> list[str]:
    out = model.generate(**inputs, max_new_tokens=tokens, do_sample=False)
    return processor.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_save_and_reload_gives_the_same_model_and_processor(qwen):
    model, processor = qwen
    built, built_processor = build_tiny_qwen2vl(seed=0)
    assert isinstance(processor, Qwen2VLImageOnlyProcessor)
    assert isinstance(processor.image_processor, Qwen2VLImageProcessorPil)
    instructions, images = ["What colour is the shape ?"], [Image.new("RGB", (32, 32), (200, 10, 10))]
    inputs, again = encode(processor, instructions, images), encode(built_processor, instructions, images)
    assert inputs.keys() == again.keys() and all(torch.equal(inputs[k], again[k]) for k in inputs)
    assert processor.tokenizer.unk_token_id not in inputs["input_ids"][0].tolist()
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, built.eval()(**inputs).logits)


def test_image_pad_count_matches_the_vision_features(qwen):
    model, processor = qwen
    inputs = encode(processor, ["Name it ."], [Image.new("RGB", (32, 32))])
    pads = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == model.config.image_token_id
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 8]]  # 32 px / patch 4, kept at 32x32
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    assert pads == len(features.pooler_output[0]) == 16  # 8x8 patches merged 2x2
    image_tokens = (inputs["input_ids"] == model.config.image_token_id).long()
    assert torch.equal(inputs["mm_token_type_ids"], image_tokens)  # text 0, image 1


def test_forward_with_labels_trains_vision_and_language(qwen_dir):
    model = Qwen2VLForConditionalGeneration.from_pretrained(qwen_dir)
    processor = load_qwen2vl_processor(qwen_dir)
    inputs = encode(processor, ["Count .", "What colour is the shape ?"], [Image.new("RGB", (32, 32))] * 2)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, IGNORE_INDEX)
    loss = model(**inputs, labels=labels).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert model.model.visual.blocks[0].attn.qkv.weight.grad is not None
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.grad is not None


def test_batched_left_padded_generation_equals_one_by_one(qwen):
    model, processor = qwen
    instructions = ["What colour is the shape ?", "Count ."]
    images = [Image.new("RGB", (32, 32), (200, 10, 10)), Image.new("RGB", (32, 32), (10, 10, 200))]
    batch = encode(processor, instructions, images)
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][0, 0] == 1  # left padding
    pairs = zip(instructions, images, strict=True)
    singles = [greedy(model, processor, encode(processor, [i], [im]))[0] for i, im in pairs]
    assert greedy(model, processor, batch) == singles


def test_select_rows_reproduces_single_image_encodings(qwen):
    model, processor = qwen
    instructions = ["What colour is the shape ?", "Count .", "Which shape is it ?"]
    # a 48x32 image is resized to 32x24 pixels: 8x6 patches, a different patch count from its neighbours
    images = [Image.new("RGB", (32, 32), (200, 10, 10)), Image.new("RGB", (48, 32), (10, 200, 10)),
              Image.new("RGB", (32, 32), (10, 10, 200))]
    batch = encode(processor, instructions, images)
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8], [1, 6, 8], [1, 8, 8]]
    for row in range(3):
        sub = select_rows(batch, [row])
        single = encode(processor, [instructions[row]], [images[row]])
        kept = sub["attention_mask"][0].bool()
        for key in ("input_ids", "mm_token_type_ids"):
            assert torch.equal(sub[key][:, kept], single[key])
        for key in ("pixel_values", "image_grid_thw"):
            assert torch.equal(sub[key], single[key])
    # generation split into row groups (as the router does) equals the whole batch's
    texts = dict(zip([2, 0], greedy(model, processor, select_rows(batch, [2, 0])), strict=True))
    texts[1] = greedy(model, processor, select_rows(batch, [1]))[0]
    assert [texts[row] for row in range(3)] == greedy(model, processor, batch)


def test_select_rows_indexes_llava_style_pixel_values():
    inputs = {"input_ids": torch.arange(12).view(3, 4), "pixel_values": torch.randn(3, 3, 8, 8)}
    sub = select_rows(inputs, [2, 0])
    assert torch.equal(sub["input_ids"], inputs["input_ids"][[2, 0]])
    assert torch.equal(sub["pixel_values"], inputs["pixel_values"][[2, 0]])


def test_select_rows_rejects_several_images_per_row():
    inputs = {"input_ids": torch.zeros(1, 4), "pixel_values": torch.zeros(8, 6),
              "image_grid_thw": torch.tensor([[1, 2, 2], [1, 2, 2]])}
    with pytest.raises(ValueError, match="one image per row"):
        select_rows(inputs, [0])


def test_default_lora_regex_targets_the_language_model_only():
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    model, _ = build_tiny_qwen2vl()
    projector = FAMILIES["qwen2_vl"].projector
    lora = LoraConfig(r=4, target_modules=LANGUAGE_MODEL_LINEARS, modules_to_save=[projector])
    peft_model = get_peft_model(model, lora)
    prefix = "base_model.model."
    wrapped = {name.removeprefix(prefix) for name, module in peft_model.named_modules()
               if isinstance(module, LoraLayer)}
    layers = range(model.config.text_config.num_hidden_layers)
    assert wrapped == {f"model.language_model.layers.{i}.{p}" for i in layers for p in LORA_PROJECTIONS}
    saved = [name.removeprefix(prefix) for name, module in peft_model.named_modules()
             if isinstance(module, ModulesToSaveWrapper)]
    assert saved == ["model.visual.merger"]


def test_4bit_skip_modules_keep_vision_tower_and_head_in_full_precision(qwen_dir):
    import bitsandbytes as bnb

    from cvit.model.build import quantization_config

    family = FAMILIES["qwen2_vl"]
    model = Qwen2VLForConditionalGeneration.from_pretrained(
        qwen_dir, dtype=torch.float32, quantization_config=quantization_config("nf4", torch.float32, family)
    )
    quantized = [name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)]
    assert len(quantized) == 7 * model.config.text_config.num_hidden_layers
    assert all(name.startswith("model.language_model.layers.") for name in quantized)


def test_collator_labels_cover_exactly_the_answer_and_end_token(qwen):
    model, processor = qwen
    collator = Collator(processor, "qwen2_vl", max_length=512)
    items = [
        {"image": Image.new("RGB", (32, 32)), "instruction": "Name the shape .", "answer": "It is a circle .",
         "loss_weight": 1.0,
         "template": "", "task": "t"},
        {"image": Image.new("RGB", (32, 32)), "instruction": "Count .", "answer": "two", "loss_weight": 2.0,
         "template": "", "task": "t"},
    ]
    batch = collator.train_batch(items)
    tokenizer = processor.tokenizer
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for row, item in enumerate(items):
        expected = tokenizer(item["answer"], add_special_tokens=False)["input_ids"] + [end]
        positions = (batch["labels"][row] != IGNORE_INDEX).nonzero().flatten()
        assert batch["labels"][row][positions].tolist() == expected
        assert batch["input_ids"][row][positions].tolist() == expected
        # the answer starts right after the prompt's "<|im_start|>assistant\n" (the tiny tokenizer reads the newline
        # as a space, a token of its own before the answer's first word)
        before = batch["input_ids"][row][positions[0] - 2: positions[0]].tolist()
        assert tokenizer.convert_ids_to_tokens(before) == ["assistant", "\u2581"]
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()  # right padding
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]] * 2 and batch["pixel_values"].shape[0] == 128


def test_collated_train_batch_feeds_the_model(qwen):
    from cvit.module import MODEL_INPUTS

    model, processor = qwen
    batch = Collator(processor, "qwen2_vl", max_length=512).train_batch(
        [{"image": Image.new("RGB", (32, 32)), "instruction": "Count .", "answer": "two", "loss_weight": 1.0,
         "template": "", "task": "t"}]
    )
    inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
    image_tokens = (inputs["input_ids"] == model.config.image_token_id).long()
    assert torch.equal(inputs["mm_token_type_ids"], image_tokens)
    with torch.no_grad():
        assert torch.isfinite(model(**inputs, labels=batch["labels"]).loss)

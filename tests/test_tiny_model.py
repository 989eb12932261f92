from __future__ import annotations

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from cvit.data.collate import IGNORE_INDEX, Collator
from cvit.model.tiny import build_tiny_llava, build_word_tokenizer, save_model
from cvit.synthetic.lexicon import split_words


def test_tokenizer_is_word_level_and_round_trips():
    tokenizer = build_word_tokenizer()
    text = "a red circle at the top left and a blue cross at the bottom right."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(split_words(text))
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_shipped_templates_have_no_unknown_words():
    import yaml

    from tests.conftest import CONFIGS

    tokenizer = build_word_tokenizer()
    spec = yaml.safe_load((CONFIGS / "benchmark" / "synthetic.yaml").read_text())["benchmark"]
    for name, task in spec["tasks"].items():
        for variant, templates in task["instructions"].items():
            for template in templates:
                ids = tokenizer(template, add_special_tokens=False)["input_ids"]
                assert tokenizer.unk_token_id not in ids, (name, variant, template)


def test_save_and_reload_gives_the_same_model(tmp_path):
    built, _ = build_tiny_llava()
    folder = save_model(tmp_path / "tiny", built, build_tiny_llava()[1])
    model = LlavaForConditionalGeneration.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert type(model.model.language_model).__name__ == "LlamaModel"
    assert type(model.model.vision_tower).__name__ == "CLIPVisionModel"
    image = Image.new("RGB", (32, 32), (200, 10, 10))
    inputs = processor(text=["USER: <image>\nWhat colour is the shape ? ASSISTANT:"], images=[image],
                       return_tensors="pt")
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert int((inputs["input_ids"] == image_token).sum()) == 16  # (32 / 8)^2 image tokens
    built.eval()
    with torch.no_grad():  # the reloaded model is the one that was saved, not merely one load of it twice
        assert torch.equal(model(**inputs).logits, built(**inputs).logits)
    other, _ = build_tiny_llava(seed=1)
    other.eval()
    with torch.no_grad():
        assert not torch.equal(model(**inputs).logits, other(**inputs).logits)


def test_labels_cover_exactly_the_answer_and_end_token(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    collator = Collator(processor, "llava", max_length=512)
    image = Image.new("RGB", (32, 32))
    items = [
        {"image": image, "instruction": "Name the shape .", "answer": "It is a circle .", "loss_weight": 1.0,
         "template": "", "task": "t"},
        {"image": image, "instruction": "Count .", "answer": "two", "loss_weight": 2.0,
         "template": "", "task": "t"},
    ]
    batch = collator.train_batch(items)
    tokenizer = processor.tokenizer
    for row, item in enumerate(items):
        labelled = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX].tolist()
        expected = tokenizer(" " + item["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert labelled == expected
        # the labelled tokens sit right after the prompt, at the same positions in input_ids
        positions = (batch["labels"][row] != IGNORE_INDEX).nonzero().flatten()
        assert batch["input_ids"][row][positions].tolist() == expected
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()  # right padding
    assert batch["loss_weight"].tolist() == [1.0, 2.0]
    generation = collator.eval_batch([{**items[0], "uid": "a", "answers": ["x"]},
                                      {**items[1], "uid": "b", "answers": ["y"]}])
    assert generation["attention_mask"][1, 0] == 0 and generation["attention_mask"][1, -1] == 1  # left padding

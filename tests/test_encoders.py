"""Feature encoders for task embeddings and anchors: the MLLM's own parts, a local CLIP folder, MiniLM."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

from cvit.errors import ConfigError
from cvit.model.encoders import build_encoder, mean_embeddings
from tests.test_module import prepared


def save_tiny_clip(out: Path) -> Path:
    """A tiny CLIP (character-level BPE vocabulary, 32 px images, 16-d projections) saved like a real one."""
    out.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits + "'?.,[]:":
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"))
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(out)
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(out)
    return out


IMAGES = [Image.new("RGB", (32, 32), colour) for colour in ((200, 0, 0), (0, 0, 200), (10, 200, 10))]
TEXTS = ["what colour is the shape ?", "how many shapes are there ?", "read the digit ."]


def test_mllm_encoder_uses_the_models_own_parts(small_config):
    _, module = prepared(small_config)
    encoder = build_encoder(module)
    images, texts = encoder.images(IMAGES), encoder.texts(TEXTS)
    hidden = module.pool.peft.get_input_embeddings().weight.shape[1]
    assert images.shape == (3, hidden) and texts.shape == (3, hidden)
    assert images.dtype == torch.float32 and not torch.allclose(images[0], images[1])
    ids = module.processor.tokenizer(TEXTS[:1], add_special_tokens=False, return_tensors="pt")["input_ids"]
    by_hand = module.pool.peft.get_input_embeddings()(ids)[0].mean(0)
    assert torch.allclose(texts[0], by_hand, atol=1e-6)


def test_local_clip_and_minilm_encoders(small_config, tmp_path):
    _, module = prepared(small_config)
    clip = build_encoder(module, "clip", "clip", str(save_tiny_clip(tmp_path / "clip")))
    assert clip.images(IMAGES).shape == (3, 16) and clip.texts(TEXTS).shape == (3, 16)
    sentence = build_encoder(module, "mllm", "minilm")
    vectors = sentence.texts(TEXTS)
    assert vectors.shape == (3, 384)
    assert torch.nn.functional.cosine_similarity(vectors[0], vectors[0], dim=0) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="clip_path"):
        build_encoder(module, "clip", "mllm")


def test_mean_embeddings_of_a_task(small_config):
    run, module = prepared(small_config)
    dataset = run.datamodule.train_set(run.datamodule.tasks["count_vqa"])
    means = mean_embeddings(build_encoder(module), dataset, samples=5, seed=1)
    assert set(means) == {"image", "instruction", "answer"} and all(v.dim() == 1 for v in means.values())
    again = mean_embeddings(build_encoder(module), dataset, samples=5, seed=1)
    assert all(torch.equal(means[k], again[k]) for k in means)  # seeded choice of records


def test_clip_text_features_released_and_projected(small_config, tmp_path):
    _, module = prepared(small_config)
    path = str(save_tiny_clip(tmp_path / "clip"))
    released = build_encoder(module, "mllm", "clip", path, clip_text_features="released").texts(TEXTS)
    projected = build_encoder(module, "mllm", "clip", path, clip_text_features="projected").texts(TEXTS)
    clip, processor = CLIPModel.from_pretrained(path).eval(), CLIPProcessor.from_pretrained(path)
    inputs = processor(text=TEXTS, return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        pooled = clip.text_model(**inputs).pooler_output  # HiDe's released CLIPTextModel output
        joint = clip.text_projection(pooled)
    assert released.shape == (3, clip.config.text_config.hidden_size) and projected.shape == (3, 16)
    assert torch.allclose(released, pooled, atol=1e-6) and torch.allclose(projected, joint, atol=1e-6)
    with pytest.raises(ConfigError, match="CLIP text features must be one of"):
        build_encoder(module, "mllm", "clip", path, clip_text_features="pooled")

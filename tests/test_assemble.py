"""`cvit assemble-llava` on tiny versions of its three inputs, each written in its original format: a Llama folder
as lmsys/vicuna-7b-v1.5 ships one (safetensors weights, a SentencePiece tokenizer.model and no tokenizer.json),
LLaVA's stage-1 mm_projector.bin, a CLIP folder (a whole CLIPModel)."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
import sentencepiece
import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
)

from cvit.errors import ConfigError
from cvit.model.build import load_mllm
from cvit.run.assemble import PROJECTOR_KEYS, assemble_llava

LLM_WIDTH, CLIP_WIDTH, VOCAB = 48, 32, 100


def save_sentencepiece_tokenizer(folder: Path) -> None:
    """Vicuna's tokenizer files: a SentencePiece BPE model (unk 0, bos 1, eos 2, no pad) and a LlamaTokenizer
    tokenizer_config.json, without a tokenizer.json."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 6))) for _ in range(300)]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(" ".join(rng.choice(words) for _ in range(8)) for _ in range(2000)),
        model_writer=model, vocab_size=VOCAB, model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        character_coverage=1.0, minloglevel=2)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "legacy": False, "clean_up_tokenization_spaces": False}))


def save_llama(folder: Path) -> Path:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=LLM_WIDTH, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                                         bos_token_id=1, eos_token_id=2))
    model.save_pretrained(folder)
    save_sentencepiece_tokenizer(folder)
    return folder


def save_clip(folder: Path) -> Path:
    torch.manual_seed(1)
    CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=CLIP_WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=28, patch_size=14),
    )).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(folder)
    return folder


def save_projector(path: Path, clip_width: int = CLIP_WIDTH, llm_width: int = LLM_WIDTH, drop: str = "") -> Path:
    torch.manual_seed(2)
    shapes = {"model.mm_projector.0.weight": (llm_width, clip_width), "model.mm_projector.0.bias": (llm_width,),
              "model.mm_projector.2.weight": (llm_width, llm_width), "model.mm_projector.2.bias": (llm_width,)}
    torch.save({key: torch.randn(shape) for key, shape in shapes.items() if key != drop}, path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("assemble")
    return {"llm": save_llama(root / "vicuna"), "projector": save_projector(root / "mm_projector.bin"),
            "vision": save_clip(root / "clip")}


def test_the_assembled_folder_loads_with_the_inputs_weights_and_generates(inputs, tmp_path):
    out = assemble_llava(inputs["llm"], inputs["projector"], inputs["vision"], tmp_path / "llava", "float32")
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    projector = torch.load(inputs["projector"], weights_only=True)
    assert torch.equal(model.model.multi_modal_projector.linear_1.weight, projector["model.mm_projector.0.weight"])
    assert torch.equal(model.model.multi_modal_projector.linear_2.bias, projector["model.mm_projector.2.bias"])
    config = model.config
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids("<image>") == config.image_token_id == VOCAB
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id == VOCAB + 1
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"
    assert config.image_seq_length == (28 // 14) ** 2 and processor.num_additional_image_tokens == 1
    # the language model's rows kept, two new ones drawn near their mean, padded to a multiple of 64
    llama = LlamaForCausalLM.from_pretrained(inputs["llm"])
    embed = model.get_input_embeddings().weight
    assert embed.shape == (128, LLM_WIDTH) and config.text_config.vocab_size == 128
    assert torch.equal(embed[:VOCAB], llama.model.embed_tokens.weight)
    assert torch.equal(model.lm_head.weight[:VOCAB], llama.lm_head.weight)
    old_mean = llama.model.embed_tokens.weight.mean(0)
    spread = (llama.model.embed_tokens.weight - old_mean).norm(dim=1).mean()
    assert (embed[VOCAB:] - old_mean).norm(dim=1).max() < 0.05 * spread  # 1e-5 of the covariance: close to the mean
    clip = CLIPModel.from_pretrained(inputs["vision"])
    assert torch.equal(model.model.vision_tower.embeddings.patch_embedding.weight,
                       clip.vision_model.embeddings.patch_embedding.weight)
    inputs_ = processor(text=["USER: <image>\nw3 w4 ASSISTANT:"], images=[Image.new("RGB", (40, 28), "red")],
                        return_tensors="pt")
    assert int((inputs_["input_ids"] == config.image_token_id).sum()) == config.image_seq_length
    output = model.generate(**inputs_, max_new_tokens=3, do_sample=False)
    assert output.shape[1] == inputs_["input_ids"].shape[1] + 3
    loaded, _ = load_mllm("llava", str(out), "none", "float32", False)  # the kit's own loading path
    assert loaded.config.image_token_id == VOCAB


def test_the_same_inputs_and_seed_give_the_same_folder(inputs, tmp_path):
    first = assemble_llava(inputs["llm"], inputs["projector"], inputs["vision"], tmp_path / "a", "float32", seed=3)
    second = assemble_llava(inputs["llm"], inputs["projector"], inputs["vision"], tmp_path / "b", "float32", seed=3)
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()


@pytest.mark.parametrize(("case", "match"), [
    ("missing_key", r"mm_projector_bad\.bin: key 'model\.mm_projector\.2\.bias' missing"),
    ("clip_width", r"mm_projector_bad\.bin: key 'model\.mm_projector\.0\.weight' takes width 40, but the CLIP "
                   r"vision tower gives 32 \(.*clip/config\.json\)"),
    ("llm_width", r"mm_projector_bad\.bin: key 'model\.mm_projector\.0\.weight' gives width 64, but the language "
                  r"model takes 48 \(.*vicuna/config\.json\)"),
    ("no_projector", r"nowhere\.bin: projector file not found"),
    ("no_clip", r"missing_clip/config\.json: the CLIP folder has no config\.json"),
])
def test_each_refusal_names_the_file_and_key_and_writes_nothing(inputs, tmp_path, case, match):
    projector = {
        "missing_key": lambda: save_projector(tmp_path / "mm_projector_bad.bin", drop=PROJECTOR_KEYS[3]),
        "clip_width": lambda: save_projector(tmp_path / "mm_projector_bad.bin", clip_width=40),
        "llm_width": lambda: save_projector(tmp_path / "mm_projector_bad.bin", llm_width=64),
        "no_projector": lambda: tmp_path / "nowhere.bin",
        "no_clip": lambda: inputs["projector"],
    }[case]()
    vision = tmp_path / "missing_clip" if case == "no_clip" else inputs["vision"]
    out = tmp_path / "llava"
    with pytest.raises(ConfigError, match=match):
        assemble_llava(inputs["llm"], projector, vision, out, "float32")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".llava")]


def test_an_output_folder_holding_files_is_refused(inputs, tmp_path):
    out = tmp_path / "llava"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        assemble_llava(inputs["llm"], inputs["projector"], inputs["vision"], out, "float32")
    assert (out / "notes.txt").read_text() == "mine"

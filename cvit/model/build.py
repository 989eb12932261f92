"""Load a Hugging Face MLLM from a local folder, optionally in 4-bit / 8-bit (bitsandbytes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoProcessor, BitsAndBytesConfig

from cvit.errors import ConfigError


@dataclass(frozen=True)
class Family:
    model_class: str  # transformers class name
    skip_quantization: tuple[str, ...]  # module-name prefixes kept in full precision under 4/8-bit
    projector: str  # the multimodal projector's module name (trainable with lora.train_projector)
    vision: str  # the vision tower's module path


FAMILIES = {
    "llava": Family(
        "LlavaForConditionalGeneration",
        ("model.vision_tower", "model.multi_modal_projector", "lm_head"),
        "multi_modal_projector",
        "model.vision_tower",
    ),
    "qwen2_vl": Family("Qwen2VLForConditionalGeneration", ("model.visual", "lm_head"), "merger", "model.visual"),
}
QUANTIZATIONS = ("none", "nf4", "int8")


def model_class(family_name: str) -> type:
    """The transformers class of a model family (e.g. LlavaForConditionalGeneration)."""
    import transformers

    return getattr(transformers, FAMILIES[family_name].model_class)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def quantization_config(kind: str, compute_dtype: torch.dtype, family: Family) -> BitsAndBytesConfig | None:
    # bitsandbytes matches skip modules from the start of the module name (DESIGN §7).
    skip = list(family.skip_quantization)
    if kind == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=True, llm_int8_skip_modules=skip,
        )
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return None


def disable_cpu_repacking(model: torch.nn.Module) -> None:
    """bitsandbytes repacks 4-bit weights for avx512-bf16 CPUs after an eval/no-grad forward, after
    which LoRA layers on top silently stop receiving gradients (DESIGN §7); keep the plain layout."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def load_processor(family_name: str, path: str | Path):
    """The family's processor from a local folder (Qwen2-VL's stock one needs torchvision)."""
    if family_name == "qwen2_vl":
        from cvit.model.qwen_processor import load_qwen2vl_processor

        return load_qwen2vl_processor(path)
    return AutoProcessor.from_pretrained(path)


def load_mllm(
    family_name: str, path: str, quantization: str, compute_dtype: str, gradient_checkpointing: bool
):
    """(model, processor) from a local folder; quantized models are prepared for k-bit training."""
    family = FAMILIES[family_name]
    if not Path(path).is_dir():
        raise ConfigError(f"key 'model.path': model folder not found: {path}")
    dtype = DTYPES[compute_dtype]
    model = model_class(family_name).from_pretrained(
        path, dtype=dtype, quantization_config=quantization_config(quantization, dtype, family)
    )
    processor = load_processor(family_name, path)
    # Non-reentrant checkpointing: its recomputation keeps gradients to tensors a layer reads from outside its
    # inputs, such as the per-row mixture weights of routed methods (cvit.model.mixing).
    checkpointing = {"use_reentrant": False}
    if quantization != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs=checkpointing)
        disable_cpu_repacking(model)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        model.enable_input_require_grads()
    return model, processor

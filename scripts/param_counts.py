"""Adapter parameter counts of ProgLoRA, HiDe-LLaVA and SMoLoRA at LLaVA-1.5-7B shapes, next to the papers' figures.

The model is built on the meta device from the published llava-hf/llava-1.5-7b-hf configuration (no weights),
LoRA is attached with peft exactly as the kit does (the language model's seven linears per layer), and the
pool's growth is counted: ProgLoRA (rank 16) adds one block per task (dynamic: plus a key, and its
projector once); HiDe-LLaVA (rank 8) keeps one LoRA per task and loads, per layout, the fused LoRA and/or
the experts (the multimodal projector, trained in the papers, is listed apart). SMoLoRA (8 experts of rank 16
on the MLP linears and the projector's two linears) is built with the kit's own layer type and counted by part.
"""

from __future__ import annotations

import torch
from cvit.callbacks.smolora import DEFAULT_TARGETS
from peft import LoraConfig
from transformers import LlavaConfig, LlavaForConditionalGeneration

from cvit.config.schema import LANGUAGE_MODEL_LINEARS
from cvit.methods.allocation import DynamicAllocator
from cvit.model.build import FAMILIES
from cvit.model.mixing import decoder_layer_index, lora_layers, top_decoder_layer
from cvit.model.pool import AdapterPool
from cvit.model.smolora import FUSION_HEADS, GATES, SMoLoRAOptions, SMoLoRAType

LLAVA_15_7B = LlavaConfig(  # llava-hf/llava-1.5-7b-hf config.json
    text_config={"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                 "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
                 "max_position_embeddings": 4096},
    vision_config={"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
                   "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336, "patch_size": 14,
                   "projection_dim": 768},
    image_token_index=32000, projector_hidden_act="gelu", vision_feature_layer=-2,
    vision_feature_select_strategy="default",
)
M = 1e6


def pool_at_7b(lora: LoraConfig, layer=None) -> AdapterPool:
    """The kit's adapter pool (LoRA on the language model's linears, the trained projector) on a meta-device
    LLaVA-1.5-7B: counted with the same accounting as a run's matrix.json `parameters`."""
    with torch.device("meta"):
        return AdapterPool(LlavaForConditionalGeneration(LLAVA_15_7B), lora, FAMILIES["llava"].projector, layer)


def lora_counts(rank: int) -> tuple[int, int, int]:
    """(one LoRA over every target, its part in the top decoder layer, the multimodal projector)."""
    pool = pool_at_7b(LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LANGUAGE_MODEL_LINEARS))
    layers = lora_layers(pool.peft)
    top = top_decoder_layer(layers)
    in_top = {name for name in layers if decoder_layer_index(name) == top}
    return pool.parameter_count(["default"]), pool.parameter_count(["default"], in_top), pool.projector_size


def proglora(tasks: int = 8) -> None:
    pool = pool_at_7b(LoraConfig(r=16, lora_alpha=32, target_modules=LANGUAGE_MODEL_LINEARS))
    block = pool.parameter_count(["default"])
    allocator = pool.add_extra("allocation", DynamicAllocator(4096))
    projector = pool.extras_size  # the dynamic allocator's projector, before any key
    allocator.add_key()
    key = pool.extras_size - projector
    print("ProgLoRA at LLaVA-1.5-7B shapes, rank 16 per block (paper, Table 13: 42M trainable in the pool)")
    print(f"{'task':>4} | {'static trainable':>16} | {'static stored':>13} | {'dynamic trainable':>17} | "
          f"{'dynamic stored':>14}")
    for task in range(1, tasks + 1):
        print(f"{task:>4} | {block / M:>15.2f}M | {task * block / M:>12.2f}M | "
              f"{(block + key + projector) / M:>16.2f}M | {(task * (block + key) + projector) / M:>13.2f}M")


def hide(tasks: int = 6) -> None:
    lora, top, mm = lora_counts(8)
    layouts = {  # LoRA parameters loaded at inference after `tasks` tasks
        "hide": lora - top + tasks * top, "merge_all": lora, "merge_all_but_top": lora,
        "expand_all": tasks * lora, "expand_all_but_top": tasks * (lora - top) + top,
    }
    paper = {"hide": 44.27, "merge_all": 38.27, "merge_all_but_top": 44.27, "expand_all": 229.62,
             "expand_all_but_top": 222.42}
    print(f"\nHiDe-LLaVA at LLaVA-1.5-7B shapes, rank 8, after {tasks} tasks (paper, Table 3, incl. the projector)")
    print(f"{'layout':>18} | {'LoRA loaded':>11} | {'+ projector':>11} | {'paper':>7}")
    for name, count in layouts.items():
        print(f"{name:>18} | {count / M:>10.2f}M | {(count + mm) / M:>10.2f}M | {paper[name]:>6.2f}M")


def smolora() -> None:
    layer = SMoLoRAType(SMoLoRAOptions(8), r=128, alpha=256, target_modules=DEFAULT_TARGETS["llava"])
    pool = pool_at_7b(LoraConfig(), layer)
    parts = {"experts (A, B)": ("lora_A", "lora_B"), "gates": GATES, "fusion heads": FUSION_HEADS}
    counts = {part: pool.parameter_count(["default"], parts=names) for part, names in parts.items()}
    on_projector = {name for name in lora_layers(pool.peft) if "multi_modal_projector" in name}
    in_projector = pool.parameter_count(["default"], on_projector)
    total = pool.parameter_count(["default"])
    assert total == sum(counts.values()), "a part of the SMoLoRA layer is not counted"
    print("\nSMoLoRA at LLaVA-1.5-7B shapes: 8 experts of rank 16 on gate/up/down_proj and the projector's two "
          "linears (the paper's count is not in the kit's folder)")
    for part, count in counts.items():
        print(f"{part:>16} | {count / M:>8.2f}M")
    print(f"{'total':>16} | {total / M:>8.2f}M (of which on the projector {in_projector / M:.2f}M; trained on every "
          f"task but the gates, one adapter for the whole stream; at inference 2 of the 8 experts run per layer)")


if __name__ == "__main__":
    proglora()
    hide()
    smolora()

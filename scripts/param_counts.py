"""Adapter parameter counts of ProgLoRA, HiDe-LLaVA and SMoLoRA at LLaVA-1.5-7B shapes, next to the papers' figures.

ProgLoRA and HiDe-LLaVA are counted as `cvit plan` counts them (cvit.plan.counting: the methods' own callbacks, with
their shipped configs, on a meta-device LLaVA-1.5-7B from configs/model/arch/llava15_7b.json, no weights), the
multimodal projector (trained in the papers) listed apart: ProgLoRA (rank 16) adds one block per task (dynamic: plus
a key, and its projector once); HiDe-LLaVA (rank 8) keeps one LoRA per task and loads, per layout, the fused LoRA
and/or the experts. SMoLoRA (8 experts of rank 16 on the MLP linears and the projector's two linears) is built with
its callback's own layer type and counted by part. Where the figures differ from the papers: cvit/plan/report.py.
"""

from __future__ import annotations

from pathlib import Path

from accelerate import init_empty_weights

from cvit.config.load import load_config
from cvit.config.registry import build_callbacks
from cvit.model.mixing import lora_layers
from cvit.model.smolora import FUSION_HEADS, GATES
from cvit.plan.architecture import model_config
from cvit.plan.counting import MethodCount, build_pool
from cvit.plan.report import count_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODEL = CONFIGS / "model" / "llava15_7b.yaml"
M = 1e6


def counts(method: str, tasks: int) -> MethodCount:
    """The plan's counts of configs/method/<method>.yaml at LLaVA-1.5-7B shapes through `tasks` tasks."""
    return count_config([MODEL, CONFIGS / "method" / f"{method}.yaml"], tasks=tasks, configs=CONFIGS)


def proglora(tasks: int = 8) -> None:
    static, dynamic = counts("proglora_static", tasks), counts("proglora_dynamic", tasks)
    print("ProgLoRA at LLaVA-1.5-7B shapes, rank 16 per block (paper, Table 13: 42M trainable in the pool)")
    print(f"{'task':>4} | {'static trainable':>16} | {'static stored':>13} | {'dynamic trainable':>17} | "
          f"{'dynamic stored':>14}")
    for task, (s, d) in enumerate(zip(static.stages, dynamic.stages, strict=True), start=1):
        mm = static.projector  # the multimodal projector, in every count
        print(f"{task:>4} | {(s.trainable - mm) / M:>15.2f}M | {(s.stored - mm) / M:>12.2f}M | "
              f"{(d.trainable - mm) / M:>16.2f}M | {(d.stored - mm) / M:>13.2f}M")


def hide(tasks: int = 6) -> None:
    layouts = {"hide": "hide", "merge_all": "hide_merge_all", "merge_all_but_top": "hide_merge_all_but_top",
               "expand_all": "hide_expand_all", "expand_all_but_top": "hide_expand_all_but_top"}
    paper = {"hide": 44.27, "merge_all": 38.27, "merge_all_but_top": 44.27, "expand_all": 229.62,
             "expand_all_but_top": 222.42}
    print(f"\nHiDe-LLaVA at LLaVA-1.5-7B shapes, rank 8, after {tasks} tasks (paper, Table 3, incl. the projector)")
    print(f"{'layout':>18} | {'LoRA loaded':>11} | {'+ projector':>11} | {'paper':>7}")
    for name, method in layouts.items():
        count = counts(method, tasks)
        loaded = count.stages[-1].inference  # what the layout's router runs after the last task, projector included
        print(f"{name:>18} | {(loaded - count.projector) / M:>10.2f}M | {loaded / M:>10.2f}M | {paper[name]:>6.2f}M")


def smolora() -> None:
    cfg, sources = load_config([MODEL, CONFIGS / "method" / "smolora.yaml"], sections=())
    config, _ = model_config(cfg.model, CONFIGS)
    (callback,) = build_callbacks(cfg.callbacks, sources).values()
    callback.check_model(config)  # chooses the family's default targets
    with init_empty_weights():
        pool = build_pool(cfg.model, config, callback.adapter_layer())
    parts = {"experts (A, B)": ("lora_A", "lora_B"), "gates": GATES, "fusion heads": FUSION_HEADS}
    by_part = {part: pool.parameter_count(["default"], parts=names) for part, names in parts.items()}
    on_projector = {name for name in lora_layers(pool.peft) if "multi_modal_projector" in name}
    in_projector = pool.parameter_count(["default"], on_projector)
    total = pool.parameter_count(["default"])
    assert total == sum(by_part.values()), "a part of the SMoLoRA layer is not counted"
    print("\nSMoLoRA at LLaVA-1.5-7B shapes: 8 experts of rank 16 on gate/up/down_proj and the projector's two "
          "linears (the paper's count is not in the kit's folder)")
    for part, count in by_part.items():
        print(f"{part:>16} | {count / M:>8.2f}M")
    print(f"{'total':>16} | {total / M:>8.2f}M (of which on the projector {in_projector / M:.2f}M; trained on every "
          f"task but the gates, one adapter for the whole stream; at inference 2 of the 8 experts run per layer)")


if __name__ == "__main__":
    proglora()
    hide()
    smolora()

"""`make real-shapes`: every method through the real continual loop at a real model's widths, on this CPU, against
`cvit plan`'s estimate for the same shapes.

The model: a shipped architecture (configs/model/arch/<name>.json) at its published widths with its depth cut to
one decoder layer and one vision layer (`cvit.plan.architecture.with_depth`), random weights, the word-level
tokenizer of the synthetic world (its ids lie inside the real vocabulary) and the family's real image processor at
the published image size (336 px for LLaVA-1.5: 576 image tokens). Each method runs the synthetic stream
colour_mc -> count_vqa from its own YAML on the model's recipe YAML (configs/model/<arch>.yaml), at batch 1 for
STEPS steps a task, then generates for one test item a task, under two weight formats: 4-bit NF4 (the recipe's) and
bf16 weights; gradient checkpointing off, so that what each decoder layer keeps for backward can be measured
(under checkpointing a layer keeps only its input, h x tokens in the residual dtype).

Measured (callbacks/memory_probe.py) at the last task's steps, against the plan's arithmetic (cvit.plan.memory) for
the same batch, tokens and answer tokens: the bytes one decoder layer's forward keeps for backward
(`activation_bytes(...).layer`; the CPU's dropout keeps fp32 noise where CUDA keeps a boolean mask, so the estimate
is taken with 4-byte masks), the rest of the model's (`outside`: the final norm, the loss's log-softmax, the mask;
the plan leaves the vision tower and projector out), and AdamW's state (two moments per trained parameter in its
dtype). The step time is the median over the last task's steps, as a multiple of SeqLoRA's in the same format.
Writes real_shapes.md to --out (default results/).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from transformers import (
    CLIPImageProcessorPil,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from cvit.config.load import load_config
from cvit.model.qwen_processor import IMAGE_TOKEN, Qwen2VLImageOnlyProcessor
from cvit.model.tiny import build_word_tokenizer, save_model
from cvit.model.tiny_qwen import build_qwen_word_tokenizer
from cvit.plan.architecture import model_config, with_depth
from cvit.plan.report import step_bytes
from cvit.reports.run_report import markdown_table
from cvit.run.atomic import write_text
from cvit.run.demo import applicable
from cvit.run.loop import ContinualRun
from cvit.run.provenance import cpu_model
from cvit.synthetic.writer import SyntheticSizes, make_synthetic

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
ARCHS = ("llava15_7b", "qwen2vl_2b")
METHODS = ("seqlora", "joint", "replay", "ewc", "lwf", "olora", "moelora", "llaca", "proglora_static",
           "proglora_dynamic", "hide", "smolora")
FORMATS = {"nf4": ("model.quantization=nf4",), "bf16": ("model.quantization=none", "model.compute_dtype=bfloat16")}
STEPS = 2
QWEN_IMAGE_SIDE = 336  # LLaVA-1.5's image size: 24 x 24 patches of 14 px, merged 2 x 2 into 144 tokens
MIB = 2**20


def llava_parts(config, tokenizer) -> tuple[torch.nn.Module, LlavaProcessor]:
    """A LLaVA of `config` and its processor: CLIP's at the vision tower's image size, one image token a patch."""
    config.image_token_index = tokenizer.convert_tokens_to_ids("<image>")
    size, patch = config.vision_config.image_size, config.vision_config.patch_size
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
        tokenizer=tokenizer, patch_size=patch, vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return LlavaForConditionalGeneration(config), processor


def qwen2vl_parts(config, tokenizer) -> tuple[torch.nn.Module, Qwen2VLImageOnlyProcessor]:
    """A Qwen2-VL of `config` and its processor, every image resized to QWEN_IMAGE_SIDE^2 pixels."""
    token = tokenizer.convert_tokens_to_ids
    config.image_token_id, config.video_token_id = token(IMAGE_TOKEN), token("<|video_pad|>")
    config.vision_start_token_id, config.vision_end_token_id = token("<|vision_start|>"), token("<|vision_end|>")
    vision = config.vision_config
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=vision.patch_size, merge_size=vision.spatial_merge_size, temporal_patch_size=2,
        min_pixels=QWEN_IMAGE_SIDE**2, max_pixels=QWEN_IMAGE_SIDE**2)
    return Qwen2VLForConditionalGeneration(config), Qwen2VLImageOnlyProcessor(image_processor, tokenizer)


# family: (its tokenizer: the synthetic world's words and the chat format's special tokens, its parts)
FAMILIES = {"llava": (build_word_tokenizer, llava_parts), "qwen2_vl": (build_qwen_word_tokenizer, qwen2vl_parts)}


def build_model(arch: str, out: Path) -> Path:
    """The architecture `arch` at one decoder and one vision layer, random weights (bf16), its processor."""
    model_section = load_config([CONFIGS / "model" / f"{arch}.yaml"], ["model.path=unset"], sections=())[0].model
    config, _ = model_config(model_section, CONFIGS)
    config = with_depth(config, 1)
    make_tokenizer, parts = FAMILIES[model_section.family]
    tokenizer = make_tokenizer()
    qwen = model_section.family == "qwen2_vl"
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>") if qwen else tokenizer.eos_token_id  # as the tiny models
    text = config.get_text_config()
    text.pad_token_id, text.bos_token_id, text.eos_token_id = tokenizer.pad_token_id, tokenizer.bos_token_id, eos
    torch.manual_seed(0)
    model, processor = parts(config, tokenizer)
    model = model.to(torch.bfloat16)
    generation = model.generation_config
    generation.pad_token_id, generation.bos_token_id, generation.eos_token_id = (tokenizer.pad_token_id,
                                                                                 tokenizer.bos_token_id, eos)
    return save_model(out, model, processor)


def method_run(arch: str, method: str, fmt: str, folder: Path, data: Path, work: Path) -> tuple[list[dict], list,
                                                                                          float]:
    """The method's run at real widths (made unless its probe file exists): (the probe's records of its last task,
    [the config files, the overrides], the seconds its stages took)."""
    name = f"{arch}-{fmt}-{method}"
    probe = work / "probes" / f"{name}.jsonl"
    files = [CONFIGS / "model" / f"{arch}.yaml", CONFIGS / "benchmark" / "synthetic.yaml",
             CONFIGS / "method" / f"{method}.yaml"]
    overrides = [f"model.path={folder}", f"benchmark.root={data}", f"run.root={work / 'runs'}", f"run.name={name}",
                 *FORMATS[fmt], "model.gradient_checkpointing=false", "benchmark.order=[colour_mc,count_vqa]",
                 "eval.unseen=false", "data.batch_size=1", "data.eval_batch_size=1", "data.num_workers=0",
                 f"data.max_train_samples={STEPS}", "data.max_test_samples=1", "train.accumulate_grad_batches=1",
                 "train.accelerator=cpu", "train.devices=1"]
    cfg, _ = load_config(files, overrides)
    overrides += applicable(cfg, (f"callbacks.ewc.batches={STEPS}",))
    if not probe.is_file():
        measured = [*overrides, "callbacks.probe.class_path=cvit.callbacks.memory_probe:MemoryProbe",
                    f"callbacks.probe.out={probe}"]
        cfg, sources = load_config(files, measured)
        ContinualRun(cfg, sources).run()
    records = [json.loads(line) for line in probe.read_text().splitlines()]
    seconds = sum(json.loads((work / "runs" / name / "matrix.json").read_text())["seconds"])
    return [r for r in records if r["task"] == records[-1]["task"]], [files, overrides], seconds


def ratio(measured: float, estimated: float) -> str:
    return f"{measured / estimated:.2f}" if estimated else "-"


def table(rows: list[dict]) -> str:
    header = ["method", "weights", "tokens", "layer MiB", "plan", "ratio", "outside MiB", "plan", "ratio",
              "AdamW MiB", "plan", "ratio", "step s", "x SeqLoRA"]
    base = {row["format"]: row["seconds"] for row in rows if row["method"] == "seqlora"}
    body = [[row["method"], row["format"], str(row["tokens"]),
             f"{row['layer'] / MIB:.1f}", f"{row['plan']['layer'] / MIB:.1f}",
             ratio(row["layer"], row["plan"]["layer"]),
             f"{row['outside'] / MIB:.1f}", f"{row['plan']['outside'] / MIB:.1f}",
             ratio(row["outside"], row["plan"]["outside"]),
             f"{row['optimizer'] / MIB:.1f}", f"{row['plan']['optimizer'] / MIB:.1f}",
             ratio(row["optimizer"], row["plan"]["optimizer"]),
             f"{row['seconds']:.2f}", f"{row['seconds'] / base[row['format']]:.2f}" if row["format"] in base else "-"]
            for row in rows]
    return markdown_table(header, body)


def measure(arch: str, methods: list[str], formats: list[str], work: Path, data: Path) -> list[dict]:
    """One row per method and weight format for the architecture `arch` (printed as each run ends)."""
    folder = work / "models" / arch
    if not folder.is_dir():
        build_model(arch, folder)
    rows = []
    for fmt in formats:
        for method in methods:
            records, (files, overrides), seconds = method_run(arch, method, fmt, folder, data, work)
            last = records[-1]
            rows.append({"method": method, "format": fmt, "tokens": last["batch"][1],
                         "layer": statistics.mean(last["layers"]), "outside": last["outside"],
                         "optimizer": last["optimizer"], "seconds": statistics.median(r["seconds"] for r in records),
                         "plan": step_bytes(files, overrides, *last["batch"], last["answers"], CONFIGS),
                         "run_seconds": seconds})
            print(arch, table(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("work") / "real_shapes")
    parser.add_argument("--out", type=Path, default=REPO / "results")
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--formats", default=",".join(FORMATS))
    args = parser.parse_args()
    started = time.time()
    data = args.work / "synthetic"
    if not data.is_dir():
        make_synthetic(data, SyntheticSizes(train=STEPS, test=1, base=0))
    methods, formats = args.methods.split(","), args.formats.split(",")
    measured = {arch: measure(arch, methods, formats, args.work, data) for arch in args.archs.split(",")}
    run_minutes = sum(row["run_seconds"] for rows in measured.values() for row in rows) / 60
    text = "\n".join([
        "# Real shapes: published widths, one decoder and one vision layer, every method through the loop",
        "",
        f"`make real-shapes` on {cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads): the "
        f"{sum(map(len, measured.values()))} runs' stages (training, task hooks, evaluation; not model loading) took "
        f"{run_minutes:.1f} min; this invocation {(time.time() - started) / 60:.1f} min (runs already made are "
        "reused). How: scripts/real_shapes.py's docstring. Per method and weight format, at the last task's steps "
        "(batch 1): the bytes one decoder layer keeps for backward, the bytes the rest of the model keeps, AdamW's "
        "state, each against `cvit plan`'s arithmetic for the same shapes (ratio = measured / plan; "
        "`cvit.plan.report.step_bytes`), and the median step time.",
        "",
        *[f"## {arch}\n\n{table(rows)}\n" for arch, rows in measured.items()],
    ])
    write_text(args.out / "real_shapes.md", text)
    print(f"wrote {args.out / 'real_shapes.md'}")


if __name__ == "__main__":
    main()

"""`cvit plan`: each method's adapter parameters through the stream and the peak memory of its training step on the
config's model, with a verdict for 24, 48 and 80 GiB GPUs, before any GPU is rented (cvit.plan.counting,
cvit.plan.memory). Counts are exact (the method's own callbacks run on the meta-device model); memory is an
estimate whose assumptions the output states.

Against the papers (LLaVA-1.5-7B, `scripts/param_counts.py` prints them side by side):
  ProgLoRA (Table 13, "42M trainable in the LoRA pool", rank 16): one block is 39.98M and the dynamic allocator
    (projector d_p 100 and one key per block) 0.83M, 40.81M per task beside the 20.98M multimodal projector. The
    paper does not itemise its 42M; the 1.2M (3%) left fits, e.g., a wider allocator projector than the kit's
    d_p = 100, which the paper does not state.
  HiDe-LLaVA (Table 3, 44.27M loaded at inference after 6 tasks, rank 8, with the projector): the kit loads 44.09M
    (the fused LoRA on layers 0-30, six LoRAs on layer 31, the 20.98M projector), 0.4% less; the paper does not say
    what the remaining 0.18M is. Its Merge (1-32) 38.27M is below one LoRA plus the projector (40.97M), and its
    Expand rows (229.62M, 222.42M) exceed six LoRAs plus the projector (140.91M): the table's counting is not stated.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from cvit.config.load import COMMAND_LINE, Sources, load_config, load_yaml, merge_parts, override_parts
from cvit.config.registry import build_callbacks
from cvit.config.validate import MODES, choose, validate_model_options
from cvit.data.stream import Task, build_tasks
from cvit.errors import ConfigError
from cvit.model.build import DTYPES, FAMILIES, QUANTIZATIONS
from cvit.plan.architecture import meta_model, model_config
from cvit.plan.counting import MethodCount, count_method
from cvit.plan.memory import GIB, GPUS_GIB, Decoder, activation_bytes, run_dtypes, training_peak, verdict
from cvit.plan.weights import Weights

M = 1e6
PLACEHOLDER_TOKENS = 16  # max_new_tokens of a task `--tasks` adds past the benchmark's


def method_files(configs: Path, names: Sequence[str] | None) -> list[Path]:
    """`configs/method/<name>.yaml` of each name (default: every method config); ConfigError naming the known ones."""
    known = {path.stem: path for path in sorted((configs / "method").glob("*.yaml"))}
    unknown = [name for name in names or () if name not in known]
    if unknown:
        raise ConfigError(f"--methods: unknown method(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[name] for name in names] if names else list(known.values())


def plan_stream(cfg: DictConfig, sources: Sources, tasks: int | None) -> tuple[list[Task], list[Task]]:
    """(stream, unseen tasks) of the benchmark, cut or extended with placeholder tasks to `tasks`."""
    if OmegaConf.is_missing(cfg.benchmark, "name"):
        if tasks is None:
            raise ConfigError("no benchmark: give a benchmark config (-c configs/benchmark/<name>.yaml) or --tasks N")
        stream, unseen = [], []
    else:
        stream, unseen = build_tasks(cfg.benchmark, sources)
    if tasks is not None:
        if tasks < 1:
            raise ConfigError(f"--tasks: must be >= 1, got {tasks}")
        stream = stream[:tasks] + [Task(f"task{i + 1}", i, None, Path(), "exact", PLACEHOLDER_TOKENS, ())
                                   for i in range(len(stream), tasks)]
    return stream, unseen


def check_options(cfg: DictConfig, sources: Sources) -> None:
    """The choices the plan reads (the rest is `cvit validate`'s, which needs the model and data)."""
    choose(cfg.model.family, FAMILIES, "model.family", sources)
    choose(cfg.model.quantization, QUANTIZATIONS, "model.quantization", sources)
    choose(cfg.model.compute_dtype, DTYPES, "model.compute_dtype", sources)
    choose(cfg.method.mode, MODES, "method.mode", sources)
    validate_model_options(cfg, sources)


def structure(cfg: DictConfig, sources: Sources) -> str:
    """What a method's counts depend on: its mode, LoRA settings and the callbacks that own the pool, its layer type
    or the router (methods that differ elsewhere share one count)."""
    owners = [key for key, cb in build_callbacks(cfg.callbacks, sources, cfg.method.mode).items() if cb.owns]
    return OmegaConf.to_yaml({"mode": cfg.method.mode, "lora": cfg.model.lora,
                              "owners": {key: cfg.callbacks[key] for key in owners}})


def millions(values: Sequence[int]) -> str:
    low, high = min(values) / M, max(values) / M
    return f"{low:.2f}M" if low == high else f"{low:.2f}-{high:.2f}M"


def method_config(base: DictConfig, base_sources: Sources, path: Path | None,
                  overrides: Sequence[str]) -> tuple[DictConfig, Sources]:
    """What `load_config([*files, path], overrides)` gives, from the loaded `files` + `overrides` (`base`): the method
    file at `path` (if any) and the overrides again (they apply last) merged on top. Checked for what the plan reads."""
    cfg, sources = base, copy.deepcopy(base_sources)
    if path is not None:
        cfg = merge_parts(cfg, sources, load_yaml(path) + override_parts(overrides))
    check_options(cfg, sources)
    return cfg, sources


def count_config(files: Sequence[str | Path], overrides: Sequence[str] = (), tasks: int | None = None,
                 configs: str | Path = "configs") -> MethodCount:
    """The counts `cvit plan` prints for the method the config `files` + `overrides` sets."""
    cfg, sources = method_config(*load_config(files, overrides, sections=()), None, overrides)
    config, _ = model_config(cfg.model, Path(configs))
    return count_method(cfg, sources, config, *plan_stream(cfg, sources, tasks))


def step_bytes(files: Sequence[str | Path], overrides: Sequence[str], batch: int, length: int, answers: int,
               configs: str | Path = "configs", mask_bytes: int = 4) -> dict[str, int]:
    """The plan's arithmetic for one training step of the config's last training stage at `batch` x `length` tokens
    with `answers` answer tokens, to set beside a measured step (callbacks/memory_probe.py): the bytes one decoder
    layer keeps for backward (`layer`), the rest of the model's (`outside`: `activation_bytes`' outside part), and
    AdamW's two moments (`optimizer`); under 16-bit autocast of fp32 weights, the 16-bit copies `training_peak`
    counts go to the layer (its unquantized Linears) or outside (lm_head, the trained projector). `mask_bytes`: a
    dropout mask's element where LoRA dropout is on (4: the CPU keeps the fp32 noise)."""
    cfg = load_config(files, overrides)[0]
    count = count_config(files, overrides, configs=configs)
    config, _ = model_config(cfg.model, Path(configs))
    dtypes = run_dtypes(cfg.model, cfg.train.precision)
    mask = mask_bytes if cfg.model.lora.dropout > 0 else 0
    decoder = Decoder.of(config)
    activations = activation_bytes(decoder, count.lora_inputs, batch, length, answers, dtypes, mask,
                                   count.frozen_inputs, count.weighted_outputs, count.routed_inputs,
                                   count.branch_outputs)
    layer_copies = outside_copies = 0
    if dtypes.mixed and dtypes.adapter == 4:  # 16-bit autocast keeps a 16-bit copy of each fp32 weight it uses
        layer_copies = 2 * count.layer_adapter_parameters
    if dtypes.mixed and dtypes.base == 4:
        weights = Weights.of(meta_model(config, cfg.model.family), cfg.model.family)
        layer_copies += (weights.autocast_copies(cfg.model, 4) - 2 * weights.lm_head) // decoder.layers
        outside_copies = 2 * (weights.lm_head + count.projector)
    stage = [stage for stage in count.stages if stage.trainable][-1]
    optimizer = 2 * ((stage.trainable - count.projector) * dtypes.adapter + count.projector * dtypes.base)
    return {"layer": activations.layer + layer_copies, "outside": activations.outside + outside_copies,
            "optimizer": optimizer}


def plan(files: Sequence[str | Path], overrides: Sequence[str] = (), methods: Sequence[str] | None = None,
         tasks: int | None = None, configs: str | Path = "configs") -> str:
    """The plan's text for the config `files` + `overrides`: every method of `methods` (names in
    `configs/method/`), default the config's own method when it sets one, else every method config."""
    configs = Path(configs)
    base, base_sources = load_config(files, overrides, sections=())
    own = base_sources.of("method.name") not in ("defaults", COMMAND_LINE)
    method_paths = [None] if own and not methods else method_files(configs, methods)
    config, source = model_config(base.model, configs)
    full = meta_model(config, base.model.family)
    weights, decoder = Weights.of(full, base.model.family), Decoder.of(full.config)
    stream, unseen = plan_stream(base, base_sources, tasks)
    counts: dict[str, MethodCount] = {}  # methods that differ only in callbacks that own nothing share one count
    results = []
    for path in method_paths:
        cfg, sources = method_config(base, base_sources, path, overrides)
        key = structure(cfg, sources)
        if key not in counts:
            counts[key] = count_method(cfg, sources, config, stream, unseen)
        results.append((cfg, counts[key]))
    return "\n".join(header(base, source, full, stream, decoder) + rows(results, weights, decoder, stream)
                     + notes(base)) + "\n"


def header(cfg: DictConfig, source: Path, full: torch.nn.Module, stream: list[Task], decoder: Decoder) -> list[str]:
    model = cfg.model
    bench = "" if OmegaConf.is_missing(cfg.benchmark, "name") else f"{cfg.benchmark.name}, "
    quantized = {"nf4": "NF4 (bitsandbytes, double quantization)", "int8": "int8"}.get(model.quantization)
    weights = f"{quantized} decoder linears, the rest fp32" if quantized else f"{model.compute_dtype} (compute_dtype)"
    return [
        f"model: {model.family} ({source}), {sum(p.numel() for p in full.parameters()) / 1e9:.2f}B parameters, "
        f"{decoder.layers} decoder layers",
        f"stream: {bench}{len(stream)} tasks ({', '.join(t.name for t in stream)})",
        f"training step: batch {cfg.data.batch_size} x {model.max_length} tokens (data.batch_size x model.max_length), "
        f"{cfg.train.precision}, attention {decoder.attention}",
        f"weights: {weights}; model.gradient_checkpointing: {str(model.gradient_checkpointing).lower()}",
        "",
    ]


def rows(results: list[tuple[DictConfig, MethodCount]], weights: Weights, decoder: Decoder,
         stream: list[Task]) -> list[str]:
    answer_tokens = max(t.max_new_tokens for t in stream) + 1  # a training answer is about its generation budget
    gpus = " ".join(f"{f'{g} GiB':>11}" for g in GPUS_GIB)
    lines = [f"{'':<30} {'parameters':^52} | {'peak GiB':^16} | {'verdict ckpt/no ckpt':^35}",
             f"{'method':<30} {'trainable/task':>15} {'stored@1':>11} {f'stored@{len(stream)}':>11} "
             f"{'inference':>11} | {'ckpt':>7} {'no ckpt':>8} | {gpus}"]
    for cfg, count in results:
        stages, model = count.stages, cfg.model
        dtypes = run_dtypes(model, cfg.train.precision)
        batch, length = cfg.data.batch_size, model.max_length
        peaks = [training_peak(count, weights, decoder, model, dtypes, batch, length,
                               batch * min(length, answer_tokens), checkpointing) for checkpointing in (True, False)]
        trained = [s.trainable for s in stages if s.trainable]
        line = (f"{cfg.method.name:<30} {millions(trained) if trained else '0':>15} {stages[0].stored / M:>10.2f}M "
                f"{stages[-1].stored / M:>10.2f}M {stages[-1].inference / M:>10.2f}M | ")
        if peaks[0] is None:
            line += f"{'no training':>16} |"
        else:
            line += f"{peaks[0].total / GIB:>7.1f} {peaks[1].total / GIB:>8.1f} | " + " ".join(
                f"{verdict(peaks[0].total, g) + '/' + verdict(peaks[1].total, g):>11}" for g in GPUS_GIB)
        lines.append(line)
    return lines


NOTES = """
trainable/task: parameters with requires_grad in a task (a range when tasks differ); stored@k: every adapter, the
  methods' extras and the trained projector after task k; inference: what the router runs after the last task (as a
  run's matrix.json `parameters`). Counted by the methods' own callbacks on the meta-device model (cvit.plan.counting).
peak: one training step's weights + trained adapters x 16 bytes (fp32 parameter, gradient, AdamW's two moments) and
  the trained projector's gradient and moments + frozen adapters + what autograd keeps for backward + the logits'
  gradients; linear in batch and length with SDPA (eager attention adds a term quadratic in length). Not counted:
  the callbacks' own copies (EMA, EWC, LwF: about 4 bytes per trainable parameter each), the CUDA context
  (cvit.plan.memory).
verdict: fits = within 90% of the GPU (10% left for the CUDA context and fragmentation), tight = within 100%,
  no = over.""".strip()


def notes(cfg: DictConfig) -> list[str]:
    lines = ["", *NOTES.splitlines()]
    if not OmegaConf.is_missing(cfg.benchmark, "name") and cfg.benchmark.templates == "as_is":
        lines.append("instruction grouping (LLaCA): decided on each task's first template variant of the spec\n"
                     "  (benchmark.templates is as_is: a run decides on the data's own wording)")
    return lines

"""The experiment configuration schema (OmegaConf structured configs).

Every YAML file and command-line override is merged onto `ExperimentConfig`, so an unknown key or a
wrong type fails at once, naming the key and the file it came from (see `cvit.config.load`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

LANGUAGE_MODEL_LINEARS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class LoraSchema:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str = LANGUAGE_MODEL_LINEARS  # a regex on module names (language model only)
    # one multimodal projector shared by every adapter, trained beside them (as the papers do) or frozen
    train_projector: bool = False
    projector_lr: float | None = None  # its learning rate (papers: 2e-5 beside LoRA's 2e-4); None: train.lr


@dataclass
class ModelSchema:
    family: str = "llava"  # llava | qwen2_vl
    path: str = MISSING  # a local Hugging Face model folder (model + processor)
    # a shipped architecture (configs/model/arch/<name>.json) used by cvit plan when model.path holds no config.json
    architecture: str | None = None
    quantization: str = "none"  # none | nf4 | int8 (bitsandbytes; QLoRA with LoRA on top)
    compute_dtype: str = "float32"  # float32 | bfloat16 | float16: load dtype and 4-bit compute dtype
    gradient_checkpointing: bool = False
    max_length: int = 512  # prompt + answer tokens; answers are truncated, never image tokens
    # minimal: "USER: <image>\n... ASSISTANT:"; llava_v1: the same after the system sentence of LLaVA-1.5's
    # training code (what the papers' forks train with; llava family only)
    chat_format: str = "minimal"
    # crop: the processor resizes the short side and crops the centre (a Hugging Face folder's CLIP processor);
    # pad: LLaVA-1.5's training code pads to a square of the processor's mean colour first (llava family only)
    image_aspect: str = "crop"
    lora: LoraSchema = field(default_factory=LoraSchema)


@dataclass
class TaskSchema:
    test: str = MISSING  # test file, relative to benchmark.root
    scorer: str = MISSING
    train: str | None = None  # train file; None for evaluation-only (unseen) tasks
    max_new_tokens: int = 16
    unseen: bool = False  # evaluation-only task (generalisation)
    # template variant -> templates; a template holding "{question}" wraps the question, any other is
    # appended on a new line. Data whose text already carries one of the task's templates (any variant)
    # has it stripped first, so a variant can be swapped on a release's files.
    instructions: dict[str, list[str]] = field(default_factory=dict)
    mif: str | None = None  # instruction-following rule: letter | short | caption | box | none; None: from scorer
    size: dict[str, int] = field(default_factory=dict)  # published record counts {train, test}, for `data check`


@dataclass
class ProtocolSchema:
    """Choices on which the papers' protocols differ; every report prints them."""

    follows: str = ""  # which paper(s) a number on this spec is comparable with
    base_model: str = ""  # e.g. "LLaVA-1.5-7B after its own SFT (CoIN)"
    # the matrix's caption number: cider | cider_raw (CIDEr without PTB tokenisation, SMoLoRA's scripts) | mean (of
    # BLEU-1..4, METEOR, ROUGE-L, CIDEr)
    caption_metric: str = "cider"
    bwt_denominator: str = "T-1"  # T-1 (GEM, LLaCA, HiDe) | T (ProgLoRA's tables)
    notes: list[str] = field(default_factory=list)


@dataclass
class BenchmarkSchema:
    name: str = MISSING
    root: str = MISSING
    tasks: dict[str, TaskSchema] = field(default_factory=dict)
    orders: dict[str, list[str]] = field(default_factory=dict)
    order: Any = "default"  # a name from `orders` or an explicit list of task names
    templates: str = "single"  # which instruction-template variant of each task to use; as_is: the data's text
    size_tolerance: float = 0.0  # relative slack of `size` checks (published tables that round to thousands)
    protocol: ProtocolSchema = field(default_factory=ProtocolSchema)


@dataclass
class DataSchema:
    root: str | None = None  # the data root; when set it replaces benchmark.root
    batch_size: int = 16
    eval_batch_size: int = 32
    num_workers: int = 0
    max_train_samples: int | None = None  # per task, first N records (for quick runs)
    max_test_samples: int | None = None
    verify_images: bool = False  # decode every image before the model loads (`cvit validate` always does)


@dataclass
class OptimizerSchema:
    class_path: str = "torch.optim.AdamW"  # any torch.optim.Optimizer (see cvit/run/optimization.py)
    kwargs: dict[str, Any] = field(default_factory=dict)  # its own arguments; lr, weight_decay come from train.*


@dataclass
class ScheduleSchema:
    name: str = "cosine"  # a transformers.get_scheduler name, per optimizer step, warmup train.warmup_ratio
    kwargs: dict[str, Any] = field(default_factory=dict)  # the schedule's own arguments (e.g. min_lr_rate)


@dataclass
class TrainSchema:
    lr: float = 2e-4
    epochs: int = 1
    max_steps: int = -1  # per task; -1 = run the epochs
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    optimizer: OptimizerSchema = field(default_factory=OptimizerSchema)
    schedule: ScheduleSchema = field(default_factory=ScheduleSchema)
    grad_clip: float = 1.0
    accumulate_grad_batches: int = 1
    precision: str = "32-true"  # Lightning precision, e.g. bf16-mixed on a GPU
    accelerator: str = "auto"
    # data parallelism through Lightning's strategies (cvit/run/parallel.py): processes per node, nodes, and a
    # strategy name (auto | ddp | fsdp | deepspeed_stage_2 | ...; never ddp_spawn). data.batch_size is per
    # process, so the global batch is data.batch_size x accumulate_grad_batches x devices x num_nodes.
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    seed: int = 0
    log_every_n_steps: int = 10
    # 0: the run directory is written between tasks only. N > 0: also an in-flight checkpoint every N
    # optimizer steps (trainable weights, optimizer, schedule, data position, RNG, callback states),
    # from which --resume continues mid-task.
    checkpoint_every_n_steps: int = 0


@dataclass
class EvalSchema:
    future_tasks: bool = False  # also evaluate not-yet-trained tasks (forward transfer)
    unseen: bool = True  # evaluate the benchmark's unseen tasks after each task
    relaxed: bool = False  # relaxed (contains) matching for short answers, e.g. for zero-shot figures
    # official: each benchmark's own evaluation code, including where it is strict; lenient: the kit's
    # more forgiving readings (see cvit/eval/scorers.py), reported as such
    scoring: str = "official"
    # METEOR beside the other caption metrics (a Java process, about 90 ms a caption on a 2-core CPU); always
    # computed where the benchmark's caption number is the seven-metric mean
    meteor: bool = True


@dataclass
class MethodSchema:
    name: str = "seqlora"
    mode: str = "sequential"  # sequential | joint (all tasks' data at once) | zeroshot (no training)


@dataclass
class RunSchema:
    root: str = "runs"
    name: str | None = None  # run directory name; default <method>-<benchmark>


@dataclass
class ExperimentConfig:
    model: ModelSchema = field(default_factory=ModelSchema)
    benchmark: BenchmarkSchema = field(default_factory=BenchmarkSchema)
    data: DataSchema = field(default_factory=DataSchema)
    train: TrainSchema = field(default_factory=TrainSchema)
    eval: EvalSchema = field(default_factory=EvalSchema)
    method: MethodSchema = field(default_factory=MethodSchema)
    run: RunSchema = field(default_factory=RunSchema)
    # name -> {name: <registry name> | class_path: "pkg.module:Class", ...constructor arguments};
    # a mapping (not a list) so files merge by key; `callbacks.<key>=null` drops one. YAML order = hook order.
    callbacks: dict[str, Any] = field(default_factory=dict)

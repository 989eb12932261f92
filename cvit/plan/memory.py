"""Peak GPU memory of one training step, estimated from the architecture and the config, in bytes (the report prints
GiB, 2^30 bytes):

    peak = weights + trainable state + frozen adapters + saved activations + logits

weights       every base parameter once (cvit.plan.weights): under `model.quantization: nf4` the Linear weights
              outside the family's skip list (cvit.model.build: vision tower, projector, lm_head) are bitsandbytes
              NF4 (`nf4_bytes`); under int8 one byte an element plus an fp32 scale per output row. Every other
              weight is in `model.compute_dtype`, or fp32 under quantization: `load_mllm` calls peft's
              `prepare_model_for_kbit_training`, which upcasts every parameter that is not 4/8-bit.
trainable     per trained parameter: itself, its gradient and AdamW's two moments, all in the parameter's dtype
              (torch's AdamW keeps no master copy; another `train.optimizer.class_path` is counted as AdamW):
              16 bytes for adapters and methods' extras (peft keeps them fp32 and mixed precision does not cast
              them); for the trained projector, whose weights are in `weights`, 3 x its weight dtype.
frozen        stored adapters that do not train this task: their parameters only.
activations   `activation_bytes`.
logits        `logit_bytes`: the gradients of the B x S x V logits and of their shifted slice, in the compute dtype.
Not counted: the CUDA context and allocator fragmentation (the verdict keeps 10% of the GPU free for them); the
frozen vision tower's forward (no activations saved); transients of a few B x S x h tensors in backward; the
callbacks' own tensors (EMA shadow weights, EWC Fisher and anchors, LwF's teacher: each about one fp32 copy of the
trainable parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig
from transformers import PretrainedConfig

from cvit.model.build import DTYPES
from cvit.plan.counting import MethodCount, StageCount
from cvit.plan.weights import Weights

GIB = 2**30
MIXED = ("bf16-mixed", "16-mixed", "bf16", "16")  # Lightning precisions that autocast to 16 bits
HALF = ("bf16-true", "16-true")  # Lightning precisions that cast the whole module to 16 bits
GPUS_GIB = (24, 48, 80)
FREE_SHARE = 0.1  # of a GPU kept for the CUDA context and fragmentation before a plan counts as fitting


@dataclass(frozen=True)
class Dtypes:
    """Element sizes in bytes of a run's tensors."""

    base: int  # frozen weights that are not quantized (and the trained projector)
    adapter: int  # adapters and methods' extras
    compute: int  # activations
    lora_input: int  # the input a trainable lora_A keeps: its autocast copy, else the input in the adapter's dtype
    residual: int  # the residual stream between decoder layers (the embeddings' dtype)
    mixed: bool  # autocast to 16 bits (then fp32 weights used with a gradient keep a 16-bit copy for backward)
    mlp: int  # the MLP's gate and up outputs: a quantized Linear returns its input's dtype (the fp32 norm output)


def run_dtypes(model: DictConfig, precision: str) -> Dtypes:
    """The element sizes a run with `model` (the config's section) and Lightning `precision` uses."""
    half, mixed = precision in HALF, precision in MIXED
    loaded = 4 if model.quantization != "none" else DTYPES[model.compute_dtype].itemsize
    base = 2 if half else loaded
    adapter = 2 if half else 4
    compute = 2 if half or mixed or base == 2 else 4
    mlp = base if model.quantization != "none" else compute  # bitsandbytes casts its output back to the input's
    return Dtypes(base, adapter, compute, 2 if mixed else adapter, base, mixed, mlp)


@dataclass(frozen=True)
class Decoder:
    """The language model's shapes (a LLaMA / Qwen2 decoder)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    query: int  # heads x head_dim
    vocab: int
    attention: str  # the attention implementation: sdpa (transformers' default), eager, flash_attention_2, ...

    @classmethod
    def of(cls, config: PretrainedConfig) -> Decoder:
        """From the config of a built model (building sets the attention implementation)."""
        text = config.get_text_config()
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        return cls(text.num_hidden_layers, text.hidden_size, text.intermediate_size, text.num_attention_heads,
                   text.num_attention_heads * head_dim, text.vocab_size, text._attn_implementation or "sdpa")


@dataclass(frozen=True)
class Activations:
    """Bytes autograd keeps for backward in one training step (`activation_bytes`)."""

    layer: int  # one decoder layer's saved tensors
    layer_input: int  # one decoder layer's input: all a layer keeps under gradient checkpointing
    layers: int
    outside: int  # the final norm, the loss's log-softmax, the attention mask

    def saved(self, checkpointing: bool) -> int:
        """Kept at the end of the forward pass."""
        return self.outside + self.layers * (self.layer_input if checkpointing else self.layer)

    def peak(self, checkpointing: bool) -> int:
        """The most alive in backward: under checkpointing one layer is recomputed at a time on top of the inputs."""
        return self.saved(checkpointing) + (self.layer if checkpointing else 0)


def activation_bytes(decoder: Decoder, lora_inputs: tuple[tuple[int, int], ...], batch: int, length: int,
                     answers: int, dtypes: Dtypes, mask_bytes: int = 1, frozen_inputs: tuple[int, ...] = (),
                     weighted_outputs: tuple[int, ...] = (), routed_inputs: tuple[tuple[int, int], ...] = (),
                     branch_outputs: tuple[tuple[int, int], ...] = ()) -> Activations:
    """What one training step of `batch` sequences of `length` tokens keeps for backward.

    Per token and decoder layer of a LLaMA / Qwen2 decoder (h hidden, i intermediate, q = heads x head_dim, e the
    compute element size), derived from what each op saves and checked against the tiny model (tests/test_plan.py):
      two RMSNorms  4h each: the fp32 input the norm reads (its upcast copy, or the fp32 residual itself)
      attention     SDPA (flash / memory-efficient kernels): query, key, value and output, 4eq (key and value
                    repeated to every query head: transformers does so whenever a padding mask is passed) and a
                    4-byte log-sum-exp per head. Eager: query, key, value (3eq) and per head the S x S fp32
                    softmax output, plus its 16-bit copy under autocast
      MLP           3mi: the gate output (SiLU's input), SiLU's output, the up output; m = e, but 4 bytes for a
                    4/8-bit base under autocast: bitsandbytes' Linear returns its input's dtype, and the input is
                    the fp32 norm output (measured at LLaVA-1.5-7B's widths: results/real_shapes.md)
      LoRA          per trainable LoRA module (in_features d, rank r, from the pool): the dropout mask (`mask_bytes`
                    an element: a bool on CUDA, the fp32 noise on the CPU; 0 without dropout), lora_A's input
                    (`lora_input` x d) and lora_A's output (er). Each module's input is its own copy (autocast's,
                    or dropout's output); without dropout and autocast, modules reading one tensor share it
                    (q/k/v, gate/up), which this over-counts. A LoRA module the training forward runs without
                    training it (`frozen_inputs`: ProgLoRA's earlier blocks) keeps its dropout mask only; a
                    module whose output a trained weight scales (`weighted_outputs`: dynamic ProgLoRA's
                    allocation) keeps that output (e x its out_features). A MoELoRA module (`routed_inputs`)
                    keeps its router's own copy of the input (`lora_input` x d) and the expert-weighted rank
                    activations (2er); each branch of a SMoLoRA module (`branch_outputs`) its output, which the
                    fusion weighs (e x out_features), and its masked ranks (er). Checked at LLaVA-1.5-7B's and
                    Qwen2-VL-2B's widths for every method (results/real_shapes.md: 0.98-1.09)
      frozen base linears keep nothing (a 4-bit one dequantizes its weight again in backward).
    Outside the layers: the final norm (4h), the cross-entropy's fp32 log-softmax of the `answers` tokens (4V each),
    the B x S x S attention mask shared by every layer (boolean for SDPA, e bytes for eager). Not modelled: the
    trained projector's few image-token-sized tensors and, under checkpointing, the frozen vision tower's layer
    inputs. With gradient checkpointing a layer keeps only its input (`residual` x h) and one layer's activations
    are recomputed at a time in backward. Scaling: linear in B and S with SDPA, plus a term quadratic in S with eager.
    """
    d, e, tokens = decoder, dtypes.compute, batch * length
    lora = sum(mask_bytes * fan_in + dtypes.lora_input * fan_in + e * rank for fan_in, rank in lora_inputs)
    lora += mask_bytes * sum(frozen_inputs) + e * sum(weighted_outputs)
    lora += sum(dtypes.lora_input * fan_in + 2 * e * rank for fan_in, rank in routed_inputs)
    lora += sum(e * fan_out + e * rank for fan_out, rank in branch_outputs)
    if d.attention == "eager":
        attention_bytes, mask = 3 * e * d.query + (4 + (e if e < 4 else 0)) * d.heads * length, e
    else:
        attention_bytes, mask = 4 * e * d.query + 4 * d.heads, 1
    layer = tokens * (2 * 4 * d.hidden + attention_bytes + 3 * dtypes.mlp * d.intermediate + lora)
    outside = tokens * 4 * d.hidden + answers * 4 * d.vocab + mask * batch * length * length
    return Activations(layer, tokens * dtypes.residual * d.hidden, d.layers, outside)


def logit_bytes(decoder: Decoder, batch: int, length: int, dtypes: Dtypes) -> int:
    """The largest logits-sized tensors alive at once: at the start of backward, the gradient of the B x S x V logits
    and that of their shifted slice (`cvit.module.answer_loss`), both in the compute dtype. The forward's logits are
    freed by then: the loss keeps only the answer positions' fp32 log-softmax (in `activation_bytes`)."""
    return 2 * batch * length * decoder.vocab * dtypes.compute


@dataclass(frozen=True)
class Estimate:
    """Bytes of one training step's peak, by part."""

    weights: int
    trainable: int
    frozen: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return self.weights + self.trainable + self.frozen + self.activations + self.logits


def verdict(total: int, gib: int) -> str:
    """`fits` with 10% of a `gib` GiB GPU to spare, `tight` within it, else `no`."""
    if total <= (1 - FREE_SHARE) * gib * GIB:
        return "fits"
    return "tight" if total <= gib * GIB else "no"


def training_peak(count: MethodCount, weights: Weights, decoder: Decoder, model: DictConfig, dtypes: Dtypes,
                  batch: int, length: int, answers: int, checkpointing: bool) -> Estimate | None:
    """The peak of the method's most demanding training stage at `batch` x `length` tokens with `answers` answer
    tokens (None when no stage trains). Under autocast each fp32 trainable weight also keeps a 16-bit copy for
    backward (counted with the activations)."""
    training = [stage for stage in count.stages if stage.trainable]
    if not training:
        return None

    def parts(stage: StageCount) -> tuple[int, int, int]:
        adapters, projector = stage.trainable - count.projector, count.projector
        trainable = 4 * adapters * dtypes.adapter + 3 * projector * dtypes.base  # the projector's weights: `weights`
        copies = 2 * (adapters * (dtypes.adapter == 4) + projector * (dtypes.base == 4)) if dtypes.mixed else 0
        return trainable, (stage.stored - stage.trainable) * dtypes.adapter, copies

    trainable, frozen, copies = max((parts(stage) for stage in training), key=sum)
    mask = 1 if model.lora.dropout > 0 else 0  # a boolean dropout mask on CUDA
    activations = activation_bytes(decoder, count.lora_inputs, batch, length, answers, dtypes, mask,
                                   count.frozen_inputs, count.weighted_outputs, count.routed_inputs,
                                   count.branch_outputs)
    frozen_copies = weights.autocast_copies(model, dtypes.base) if dtypes.mixed else 0
    return Estimate(weights.bytes(model, dtypes.base), trainable, frozen,
                    activations.peak(checkpointing) + frozen_copies + copies,
                    logit_bytes(decoder, batch, length, dtypes))

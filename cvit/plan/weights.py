"""The base model's weights in a run, in bytes: bitsandbytes' 4-bit / 8-bit layout of the quantized Linear weights,
the element size of the rest (cvit.model.build's skip list and quantization config)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from cvit.model.build import DTYPES, FAMILIES, quantization_config

NF4_BLOCK = 64  # bitsandbytes' default 4-bit block (Params4bit), which transformers does not change
ABSMAX_BLOCK = 256  # the block of the second quantization of the absmax values (double quantization)
NF4_CODE = 16 * 4  # each tensor's quant state holds its own 16-entry fp32 NF4 code table


def nf4_bytes(numel: int, double_quant: bool) -> int:
    """Bytes of one weight of `numel` elements under bitsandbytes' NF4 (`quantize_4bit`, block 64): two elements a
    byte, one absmax per block (fp32; with double quantization uint8, plus an fp32 absmax per 256 blocks and one fp32
    offset), and the tensor's NF4 code table. The 1 KiB 8-bit code table double quantization shares is not counted."""
    blocks = math.ceil(numel / NF4_BLOCK)
    absmax = blocks + 4 * math.ceil(blocks / ABSMAX_BLOCK) + 4 if double_quant else 4 * blocks
    return math.ceil(numel / 2) + absmax + NF4_CODE


@dataclass(frozen=True)
class Weights:
    """A model's parameters by how a run stores them (element counts)."""

    quantizable: list[tuple[int, int]]  # (out, in) of each Linear weight the family's skip list leaves to bitsandbytes
    other: int  # every other parameter (tied ones once)
    lm_head: int

    @classmethod
    def of(cls, model: torch.nn.Module, family: str) -> Weights:
        """From the full-depth (meta) model of a `family`."""
        skip = FAMILIES[family].skip_quantization  # matched from the start of the name, as bitsandbytes does
        linears = {name: m for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and not name.startswith(skip)}
        quantized = {id(m.weight) for m in linears.values()}
        other = sum(p.numel() for p in model.parameters() if id(p) not in quantized)
        lm_head = model.get_output_embeddings().weight.numel()
        return cls([tuple(m.weight.shape) for m in linears.values()], other, lm_head)

    def bytes(self, model: DictConfig, base: int) -> int:
        """Bytes of the base model's weights under `model.quantization` (a config's section), `base` bytes an element
        of every weight bitsandbytes leaves alone."""
        kind = model.quantization
        if kind == "none":
            return (sum(o * i for o, i in self.quantizable) + self.other) * base
        bnb = quantization_config(kind, DTYPES[model.compute_dtype], FAMILIES[model.family])
        if kind == "nf4":
            quantized = sum(nf4_bytes(o * i, bnb.bnb_4bit_use_double_quant) for o, i in self.quantizable)
        else:  # int8: the weight in bytes and an fp32 scale per output row
            quantized = sum(o * i + 4 * o for o, i in self.quantizable)
        return quantized + self.other * base

    def autocast_copies(self, model: DictConfig, base: int) -> int:
        """Bytes of the 16-bit copies 16-bit autocast makes of frozen weights of `base` = 4 bytes that compute with a
        gradient, kept for backward: lm_head, and every decoder Linear unless it is quantized."""
        if base != 4:
            return 0
        decoder = sum(o * i for o, i in self.quantizable) if model.quantization == "none" else 0
        return 2 * (decoder + self.lm_head)

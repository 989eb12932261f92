"""Perception pretraining of the tiny vision tower: the stand-in for the pretrained CLIP a real MLLM starts from.

A real LLaVA-1.5 starts from CLIP ViT-L, which already tells forms, colours, text and positions apart before any
instruction tuning, for far more categories than the instruction data names. The tiny tower starts from nothing,
and trained through the language model alone it learned colour but not form (a probe of the world-2 base: colour
100%, shape 25.5% = chance). So before base training the tower is trained on rendered scenes of every colour, shape
and number (the stream's too, as CLIP has seen the classes a stream brings), with heads that read from the patch
features LLaVA passes to its projector (the last hidden state, CLS dropped):

- each quadrant's 2x2 patches: its shape (none or one of SHAPES), its colour (none or one of COLOURS) and its box;
- all patches of a number scene: its length and each digit.

The heads are dropped afterwards; base training then keeps the tower frozen, as LLaVA-1.5 keeps CLIP frozen.
Written by hand because no library pretrains a CLIP tower on labelled synthetic scenes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from cvit.model.build import FAMILIES
from cvit.seeding import keyed_numpy, keyed_random
from cvit.synthetic.lexicon import COLOURS, SHAPES
from cvit.synthetic.scenes import CLEAR, HARD, IMAGE_SIZE, Scene, sample_shapes, sample_writing

MAX_DIGITS = 2  # the most that fit 32 px at the smallest digit scale
NONE = 0  # label of an empty quadrant or a missing digit; classes start at 1


@dataclass(frozen=True)
class PerceptionTraining:
    """Perception pretraining's settings (batch of rendered scenes, half CLEAR and half HARD)."""

    steps: int = 3000
    lr: float = 2e-3
    batch_size: int = 64
    seed: int = 0


def scene_labels(scene: Scene) -> dict[str, torch.Tensor]:
    """Targets of one scene: shape and colour per quadrant (4,) long, boxes (4, 4) float with mask (4,), and for a
    number its length (1,) and digits (MAX_DIGITS,) long (NONE where absent: the whole row of a shape scene)."""
    shapes, colours = torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long)
    boxes, has_box = torch.zeros(4, 4), torch.zeros(4)
    for shape in scene.shapes:
        shapes[shape.quadrant] = SHAPES.index(shape.shape) + 1
        colours[shape.quadrant] = COLOURS.index(shape.colour) + 1
        boxes[shape.quadrant] = torch.tensor(shape.box)
        has_box[shape.quadrant] = 1.0
    digits, length = torch.zeros(MAX_DIGITS, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    if scene.writing is not None:
        text = scene.writing.text
        length[0] = len(text)
        for index, digit in enumerate(text):
            digits[index] = int(digit) + 1
    return {"shapes": shapes, "colours": colours, "boxes": boxes, "has_box": has_box, "digits": digits,
            "length": length}


def sample_scene(rng: random.Random) -> Scene:
    """A scene of any colours and shapes (1-4 of them) or a number of 1-MAX_DIGITS digits, CLEAR or HARD."""
    conditions = CLEAR if rng.random() < 0.5 else HARD
    if rng.random() < 0.7:
        return sample_shapes(rng, rng.randint(1, 4), SHAPES, COLOURS, conditions=conditions)
    return sample_writing(rng, rng.randint(1, MAX_DIGITS), COLOURS, conditions)


class PerceptionHeads(nn.Module):
    """Linear read-outs of the tower's patch features (batch, patches, width), patches in raster order on a
    side x side grid: quadrant heads on each quadrant's patches concatenated, number heads on all of them."""

    def __init__(self, width: int, side: int):
        super().__init__()
        self.side = side
        cell = (side // 2) ** 2 * width
        self.shape = nn.Linear(cell, len(SHAPES) + 1)
        self.colour = nn.Linear(cell, len(COLOURS) + 1)
        self.box = nn.Linear(cell, 4)
        self.length = nn.Linear(side * side * width, MAX_DIGITS + 1)
        self.digits = nn.Linear(side * side * width, MAX_DIGITS * 11)

    def quadrants(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, 4, cell) from (batch, side*side, width): quadrants in reading order."""
        batch, _, width = features.shape
        half = self.side // 2
        grid = features.reshape(batch, 2, half, 2, half, width).permute(0, 1, 3, 2, 4, 5)
        return grid.reshape(batch, 4, half * half * width)

    def loss(self, features: torch.Tensor, labels: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """Summed cross-entropy and box L1 of one batch, with each head's accuracy."""
        cells, whole = self.quadrants(features), features.flatten(1)
        shape_logits, colour_logits = self.shape(cells), self.colour(cells)
        box_error = (torch.sigmoid(self.box(cells)) - labels["boxes"]).abs().mean(-1)
        box_loss = (box_error * labels["has_box"]).sum() / labels["has_box"].sum().clamp(min=1)
        length_logits = self.length(whole)
        digit_logits = self.digits(whole).reshape(-1, MAX_DIGITS, 11)
        is_number = labels["length"][:, 0] > 0
        loss = (F.cross_entropy(shape_logits.flatten(0, 1), labels["shapes"].flatten())
                + F.cross_entropy(colour_logits.flatten(0, 1), labels["colours"].flatten())
                + 10 * box_loss + F.cross_entropy(length_logits, labels["length"][:, 0]))
        if is_number.any():
            loss = loss + F.cross_entropy(digit_logits[is_number].flatten(0, 1), labels["digits"][is_number].flatten())
        present = labels["shapes"] > 0
        accuracy = {
            "shape": (shape_logits.argmax(-1) == labels["shapes"])[present].float().mean().item(),
            "colour": (colour_logits.argmax(-1) == labels["colours"])[present].float().mean().item(),
            "box_l1": box_loss.item(),
            "digit": (digit_logits.argmax(-1)[is_number] == labels["digits"][is_number]).all(-1).float().mean().item()
            if is_number.any() else float("nan"),
        }
        return loss, accuracy


def scene_batch(processor, seed: int, step: int, size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pixel values (size, 3, H, W) and stacked labels of `size` scenes keyed by (seed, step, index)."""
    scenes = [sample_scene(keyed_random(seed, "perception", step, index)) for index in range(size)]
    images = [scene.render(keyed_numpy(seed, "perception", step, index, "noise")) for index, scene in
              enumerate(scenes)]
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    labels = [scene_labels(scene) for scene in scenes]
    return pixels, {key: torch.stack([label[key] for label in labels]) for key in labels[0]}


def patch_features(vision_tower, pixels: torch.Tensor) -> torch.Tensor:
    """The features LLaVA's projector reads (vision_feature_layer -1, "default": CLS dropped), (batch, patches,
    width)."""
    return vision_tower(pixels, output_hidden_states=True).hidden_states[-1][:, 1:]


def pretrain_vision(model, processor, training: PerceptionTraining = PerceptionTraining(),
                    evaluate_every: int = 500) -> dict[str, float]:
    """Train `model`'s vision tower in place on `training.steps` batches of rendered scenes; returns the heads'
    accuracy on 512 held-out scenes (keyed apart from training's)."""
    tower = model.get_submodule(FAMILIES["llava"].vision)
    config = tower.config
    heads = PerceptionHeads(config.hidden_size, IMAGE_SIZE // config.patch_size)
    torch.manual_seed(training.seed)
    parameters = [*tower.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=training.lr, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, training.steps // 20, training.steps)
    tower.train()
    progress = tqdm(range(training.steps), desc="perception pretraining")
    for step in progress:
        pixels, labels = scene_batch(processor, training.seed, step, training.batch_size)
        loss, accuracy = heads.loss(patch_features(tower, pixels), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 50 == 0:
            progress.set_postfix(loss=f"{loss.item():.3f}", shape=f"{accuracy['shape']:.2f}",
                                 digit=f"{accuracy['digit']:.2f}")
    tower.eval()
    with torch.no_grad():
        pixels, labels = scene_batch(processor, training.seed + 1_000_003, -1, 512)
        _, accuracy = heads.loss(patch_features(tower, pixels), labels)
    return accuracy


def held_out_accuracy(values: dict[str, float]) -> str:
    return ", ".join(f"{key} {value:.3f}" for key, value in values.items() if not np.isnan(value))

"""Base training of the tiny model: full-parameter training on the synthetic base mixture.

Gives the tiny model the starting competence a real MLLM has before continual tuning (it sees
colours, shapes, counts, digits and positions, and follows varied free-form instructions), so the
continual stream teaches new formats on top of a capable base, as with LLaVA-1.5 (DESIGN §6).

Two stages share one optimizer and one warmup + cosine schedule: `align_steps` on base/align.json (the same
instructions about CLEAR scenes only), then `steps` on base/train.json (half CLEAR, half HARD). The vision tower
stays frozen, as LLaVA-1.5 keeps its CLIP frozen: it comes perception-pretrained (`cvit.run.vision_pretrain`), and
the projector and the language model learn to read it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from cvit.data.collate import Collator
from cvit.data.datasets import TrainSet
from cvit.data.records import load_train
from cvit.model.build import FAMILIES, load_processor, model_class
from cvit.module import answer_loss, model_inputs
from cvit.run.atomic import atomic_path
from cvit.seeding import seeded_generator


def base_train(
    model_dir: Path, data_root: Path, out_dir: Path, steps: int = 2400, lr: float = 1e-3,
    batch_size: int = 32, seed: int = 0, family: str = "llava", align_steps: int = 600, train_vision: bool = False,
) -> Path:
    """Train `model_dir`'s projector and language model (its vision tower too with `train_vision`, for a tower that
    is not perception-pretrained) for `align_steps` steps on `data_root/base/align.json`, then `steps` steps on
    `data_root/base/train.json`; save to `out_dir` atomically."""
    torch.manual_seed(seed)
    model = model_class(family).from_pretrained(model_dir)
    model.get_submodule(FAMILIES[family].vision).requires_grad_(train_vision)
    processor = load_processor(family, model_dir)
    collate = Collator(processor, family, 512).train_batch
    trainable = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    total = align_steps + steps
    schedule = get_cosine_schedule_with_warmup(optimizer, total // 20, total)
    model.train()
    progress = tqdm(total=total, desc="base training")
    for stage, count in (("align", align_steps), ("train", steps)):
        if not count:
            continue
        loader = DataLoader(
            TrainSet(load_train(data_root / "base" / f"{stage}.json", data_root), (), seed), batch_size=batch_size,
            shuffle=True, drop_last=True, collate_fn=collate, generator=seeded_generator(seed),
        )
        for batch in repeat_batches(loader, count):
            outputs = model(**model_inputs(batch))
            loss = answer_loss(outputs.logits, batch["labels"], batch["loss_weight"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            progress.update(1)
            progress.set_postfix(stage=stage, loss=f"{loss.item():.3f}")
    progress.close()
    with atomic_path(out_dir) as staged:
        model.save_pretrained(staged)
        processor.save_pretrained(staged)
    return out_dir


def repeat_batches(loader: DataLoader, count: int) -> Iterator[dict]:
    """`count` batches of `loader`, starting over (a new shuffle) as often as it takes."""
    produced = 0
    while produced < count:
        for batch in loader:
            yield batch
            produced += 1
            if produced == count:
                return

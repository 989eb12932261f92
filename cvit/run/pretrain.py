"""Base training of the tiny model: full-parameter training on the synthetic base mixture.

Gives the tiny model the starting competence a real MLLM has before continual tuning (it sees
colours, shapes, counts, digits and positions, and follows varied free-form instructions), so the
continual stream teaches new formats on top of a capable base, as with LLaVA-1.5 (DESIGN §6).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from cvit.data.collate import Collator
from cvit.data.datasets import TrainSet
from cvit.data.records import load_train
from cvit.model.build import load_processor, model_class
from cvit.module import answer_loss, model_inputs
from cvit.run.atomic import atomic_path
from cvit.seeding import seeded_generator


def base_train(
    model_dir: Path, data_root: Path, out_dir: Path, steps: int = 1500, lr: float = 1e-3,
    batch_size: int = 32, seed: int = 0, family: str = "llava",
) -> Path:
    """Train `model_dir` on `data_root/base/train.json` for `steps` steps; save to `out_dir` atomically."""
    torch.manual_seed(seed)
    model = model_class(family).from_pretrained(model_dir)
    processor = load_processor(family, model_dir)
    records = load_train(data_root / "base" / "train.json", data_root)
    loader = DataLoader(
        TrainSet(records, (), seed), batch_size=batch_size, shuffle=True, drop_last=True,
        collate_fn=Collator(processor, family, 512).train_batch,
        generator=seeded_generator(seed),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, steps // 20, steps)
    model.train()
    progress = tqdm(total=steps, desc="base training")
    step = 0
    while step < steps:
        for batch in loader:
            outputs = model(**model_inputs(batch))
            loss = answer_loss(outputs.logits, batch["labels"], batch["loss_weight"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}")
            if step == steps:
                break
    progress.close()
    with atomic_path(out_dir) as staged:
        model.save_pretrained(staged)
        processor.save_pretrained(staged)
    return out_dir

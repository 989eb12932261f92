"""How a finished HiDe run routes each task's test instances after its last stage: per task, the share of the
first N test instances whose largest routing weight is on their own task's LoRA, and the mean weight they put there.

    .venv/bin/python scripts/hide_routing.py work/runs/demo-hide_expand_all [--samples 50]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cvit.config.load import load_config
from cvit.model.encoders import build_encoder
from cvit.run.loop import ContinualRun


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    cfg, sources = load_config([args.run_dir / "config.yaml"])
    run = ContinualRun(cfg, sources, args.run_dir)
    run.prepare()
    run.load_model()
    run.restore(len(run.stages) - 1)
    [hide] = [cb for cb in run.callbacks.values() if type(cb).__name__ == "HiDeLLaVA"]
    hide.encoder = build_encoder(run.module, hide.encoders["image"], hide.encoders["text"], hide.encoders["clip_path"])
    hide.install(run.module)
    dm = run.datamodule
    print(f"{'task':<12} {'top-1 on own LoRA':>17} {'mean own weight':>15}")
    for own, task in enumerate(hide.tasks):
        records = dm.test_set(dm.tasks[task])
        batch = dm.collator.eval_batch([records[i] for i in range(min(args.samples, len(records)))])
        with torch.no_grad():
            weights = run.module.router.weights(batch)
        top1 = float((weights.argmax(-1) == own).float().mean())
        print(f"{task:<12} {top1:>17.2f} {float(weights[:, own].mean()):>15.3f}")


if __name__ == "__main__":
    main()

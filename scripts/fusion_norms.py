"""How large a HiDe run's LoRA changes are against the base weights: for the last stage of RUN_DIR, the mean over
the LoRA layers below the top of ||delta W|| / ||W|| (Frobenius) for one task's LoRA (mean over the experts), the
exact sum of the experts' deltas, and the fused adapter the lower layers run.

    .venv/bin/python scripts/fusion_norms.py work/runs/demo-hide
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import fmean

import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from cvit.model.mixing import decoder_layer_index, top_decoder_layer


def adapter_deltas(folder: Path) -> dict[str, torch.Tensor]:
    """layer name -> scaling * B @ A of the peft adapter saved in `folder`."""
    config = json.loads((folder / "adapter_config.json").read_text())
    weights = load_file(folder / "adapter_model.safetensors")
    layers = {key.rsplit(".lora_", 1)[0] for key in weights}
    scaling = config["lora_alpha"] / config["r"]
    return {layer: scaling * weights[f"{layer}.lora_B.weight"] @ weights[f"{layer}.lora_A.weight"] for layer in layers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    run_dir = parser.parse_args().run_dir
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    base = AutoModelForImageTextToText.from_pretrained(config["model"]["path"]).state_dict()
    stage = sorted((run_dir / "stages").iterdir())[-1] / "adapters"
    experts = [adapter_deltas(p) for p in sorted(stage.iterdir()) if p.is_dir() and p.name != "fused"]
    fused = adapter_deltas(stage / "fused")
    top = top_decoder_layer(fused)
    rows = []
    for layer in (name for name in fused if decoder_layer_index(name) != top):
        norm = base[layer.removeprefix("base_model.model.") + ".weight"].norm()
        rows.append((fmean(float(e[layer].norm() / norm) for e in experts),
                     float(sum(e[layer] for e in experts).norm() / norm), float(fused[layer].norm() / norm)))
    print(f"{stage.parent.name}: {len(experts)} task LoRAs, {len(rows)} LoRA layers below the top layer {top}")
    print("mean ||delta W|| / ||W||:  one task's LoRA {:.3f}   exact sum of the tasks' deltas {:.3f}   "
          "fused adapter {:.3f}".format(*(fmean(r[i] for r in rows) for i in range(3))))


if __name__ == "__main__":
    main()

"""Layer-wise linear CKA between the models a run trained on each task (HiDe-LLaVA App. B, Fig. 1).

For every stage k the adapter trained in that stage (the `trainable` entry of its saved pool) is applied
alone to a common probe set (the first `samples` test records of every trained task); each decoder layer's
output is averaged over the prompt's tokens, giving X_k^l [n, d]. Linear CKA (Kornblith et al., 2019):
    CKA(X, Y) = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F),   X_c = X with column means removed,
which is App. B's HSIC(K_X, K_Y) / sqrt(HSIC(K_X, K_X) HSIC(K_Y, K_Y)) with linear kernels K = X_c X_c^T.
The tasks' models are compared on the same inputs (paired samples, as CKA needs). HiDe's premise is that
the top layer's outputs differ across tasks while the lower layers' stay similar; `cka.png` shows the
task-by-task CKA of the bottom, middle and top layers and the mean off-diagonal CKA of every layer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cvit.run.atomic import write_json, write_with


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of [n, p] and [n, q] features of the same n inputs, in [0, 1]."""
    x = (x - x.mean(0)).double()
    y = (y - y.mean(0)).double()
    cross = (y.T @ x).pow(2).sum()
    return float(cross / ((x.T @ x).norm() * (y.T @ y).norm()))


def cka_matrices(features: list[list[torch.Tensor]]) -> np.ndarray:
    """features[k][l]: model k's [n, d] outputs of layer l -> [layers, models, models] CKA."""
    models, layers = len(features), len(features[0])
    out = np.ones((layers, models, models))
    for layer in range(layers):
        for a in range(models):
            for b in range(a + 1, models):
                out[layer, a, b] = out[layer, b, a] = linear_cka(features[a][layer], features[b][layer])
    return out


def off_diagonal_means(cka: np.ndarray) -> list[float]:
    """Mean CKA between different models, per layer (1.0 when there is one model)."""
    models = cka.shape[1]
    if models < 2:
        return [1.0] * cka.shape[0]
    mask = ~np.eye(models, dtype=bool)
    return [float(layer[mask].mean()) for layer in cka]


def cka_figure(cka: np.ndarray, tasks: list[str]) -> Figure:
    """Task-by-task CKA of the bottom, middle and top layers, and the per-layer mean between tasks."""
    layers = cka.shape[0]
    shown = sorted({0, layers // 2, layers - 1})
    figure = Figure(figsize=(4 * (len(shown) + 1), 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    for panel, layer in enumerate(shown):
        axes = figure.add_subplot(1, len(shown) + 1, panel + 1)
        image = axes.imshow(cka[layer], vmin=0, vmax=1, cmap="viridis")
        axes.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=7)
        axes.set_yticks(range(len(tasks)), tasks, fontsize=7)
        axes.set_title(f"layer {layer + 1} of {layers}")
    figure.colorbar(image, ax=axes, label="linear CKA")
    axes = figure.add_subplot(1, len(shown) + 1, len(shown) + 1)
    axes.plot(range(1, layers + 1), off_diagonal_means(cka), marker="o")
    axes.set_xticks(range(1, layers + 1))
    axes.set_xlabel("decoder layer")
    axes.set_ylabel("mean CKA between tasks")
    axes.set_ylim(0, 1.05)
    return figure


@torch.no_grad()
def layer_features(module, batches: list[dict]) -> list[torch.Tensor]:
    """Per decoder layer, [n, d] outputs averaged over each row's prompt tokens (hidden_states[1:])."""
    from cvit.module import model_inputs

    per_layer: list[list[torch.Tensor]] = []
    device = next(module.parameters()).device
    for batch in batches:
        inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
        groups = module.router.route(batch)  # the routing a method's own layer type needs (SMoLoRA's)
        if len(groups) != 1:
            raise ValueError("CKA runs each batch whole: the installed router splits it into row groups")
        with groups[0][1]:
            outputs = module.model(**inputs, output_hidden_states=True)
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        for layer, hidden in enumerate(outputs.hidden_states[1:]):
            pooled = (hidden.float() * mask).sum(1) / mask.sum(1)
            if layer == len(per_layer):
                per_layer.append([])
            per_layer[layer].append(pooled.cpu())
    return [torch.cat(parts) for parts in per_layer]


def analyze_run(run_dir: Path, samples: int = 16) -> Path:
    """Compute the CKA of every trained stage's adapter and write run_dir/analysis/cka.{json,png}."""
    from cvit.config.load import load_config
    from cvit.errors import RunDirError
    from cvit.run.loop import ContinualRun
    from cvit.run.rundir import RunDirectory

    run_dir = Path(run_dir)
    doc = RunDirectory(run_dir).load_matrix()
    if doc is None or doc.mode != "sequential" or doc.completed < 2:
        raise RunDirError(f"{run_dir}: CKA needs a sequential run with at least two completed stages")
    cfg, sources = load_config([run_dir / "config.yaml"], [f"data.max_test_samples={samples}"])
    run = ContinualRun(cfg, sources, run_dir)
    run.prepare()
    run.load_model()
    module, datamodule = run.module, run.datamodule
    module.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    tasks = [stage.task for stage in run.stages[: doc.completed]]
    batches = [datamodule.collator.eval_batch([datamodule.test_set(t)[i] for i in range(len(datamodule.test_set(t)))])
               for t in tasks]
    features = []
    for index, stage in enumerate(run.stages[: doc.completed]):
        adapters = run.run_dir.stage_dir(index, stage.name) / "adapters"
        module.pool.load(adapters)
        for callback in run.callbacks.values():
            if callback.adapter_layer() is not None:  # its layers route their forwards (SMoLoRA)
                callback.on_task_start(None, module, datamodule, stage.task)
        trained = json.loads((adapters / "pool.json").read_text())["trainable"]
        with module.pool.activated(trained):
            features.append(layer_features(module, batches))
    cka = cka_matrices(features)
    names = [t.name for t in tasks]
    out = run_dir / "analysis"
    out.mkdir(exist_ok=True)
    write_json(out / "cka.json", {"tasks": names, "samples_per_task": samples, "cka": cka.tolist(),
                                  "mean_between_tasks": off_diagonal_means(cka)})
    figure = cka_figure(cka, names)
    write_with(out / "cka.png", lambda path: figure.savefig(path, format="png", dpi=120))
    return out

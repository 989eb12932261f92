"""SMoLoRA's routing statistics: the fusion weight alpha (beta = 1 - alpha) per layer and the experts each task
chooses, recorded by a `RoutingContext` recorder during prompt forwards, summarised and plotted (the
supplement's Fig. 1: the distribution of [alpha, beta] across layers)."""

from __future__ import annotations

from collections import defaultdict

import torch

from cvit.model.mixing import decoder_layer_index


def short_name(layer: str) -> str:
    """'L<i>.<leaf>' for a decoder layer's module, 'proj.<leaf>' for the vision side."""
    index = decoder_layer_index(layer)
    leaf = layer.rsplit(".", 1)[-1]
    return f"L{index}.{leaf}" if index is not None else f"proj.{leaf}"


def layer_order(name: str) -> tuple[int, str]:
    index = decoder_layer_index(name)
    return (-1 if index is None else index, name)


class RoutingStats:
    """A `RoutingContext.recorder`: each row's alpha per layer, and per task (set `task` first) the count of rows
    routed to each expert, summed over layers."""

    def __init__(self, per_branch: int) -> None:
        self.per_branch = per_branch
        self.alpha: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.usage: dict[str, dict[str, torch.Tensor]] = {}
        self.task = ""

    def __call__(self, layer: str, alpha: torch.Tensor | None, vu: torch.Tensor | None,
                 instruction: torch.Tensor | None) -> None:
        if alpha is not None:
            self.alpha[layer].append(alpha.float())
        counts = self.usage.setdefault(self.task, {})
        for branch, choice in (("vu", vu), ("if", instruction)):
            if choice is not None:
                hist = torch.bincount(choice.long(), minlength=self.per_branch)
                counts[branch] = counts.get(branch, torch.zeros_like(hist)) + hist

    def summary(self) -> dict:
        """{"alpha": {layer: {mean, q25, median, q75, rows}}, "usage": {task: {branch: [count per expert]}}}."""
        alpha = {}
        for layer in sorted(self.alpha, key=layer_order):
            values = torch.cat(self.alpha[layer])
            q = torch.quantile(values, torch.tensor([0.25, 0.5, 0.75])).tolist()
            alpha[short_name(layer)] = {"mean": round(values.mean().item(), 4), "q25": round(q[0], 4),
                                        "median": round(q[1], 4), "q75": round(q[2], 4), "rows": len(values)}
        usage = {task: {b: c.tolist() for b, c in counts.items()} for task, counts in self.usage.items()}
        return {"alpha": alpha, "usage": usage}

    def alpha_figure(self, title: str):
        """Box plots of alpha and beta per layer (matplotlib Figure), or None when no layer fuses two branches."""
        if not self.alpha:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        layers = sorted(self.alpha, key=layer_order)
        values = [torch.cat(self.alpha[name]).numpy() for name in layers]
        fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(layers)), 3.6))
        positions = range(len(layers))
        ax.boxplot(values, positions=[p - 0.18 for p in positions], widths=0.3, patch_artist=True,
                   boxprops={"facecolor": "tab:blue", "alpha": 0.6}, showfliers=False)
        ax.boxplot([1 - v for v in values], positions=[p + 0.18 for p in positions], widths=0.3, patch_artist=True,
                   boxprops={"facecolor": "tab:orange", "alpha": 0.6}, showfliers=False)
        ax.set_xticks(list(positions), [short_name(n) for n in layers], rotation=90, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("fusion weight")
        ax.set_title(f"{title}: alpha (VU, blue) and beta (IF, orange) per layer")
        fig.tight_layout()
        return fig

    def usage_figure(self, title: str):
        """Per task, the share of (row, layer) routings each VU and IF expert received (matplotlib Figure)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        branches = sorted({b for counts in self.usage.values() for b in counts}, key=["vu", "if"].index)
        fig, axes = plt.subplots(1, len(branches), figsize=(5.0 * len(branches), 3.2), squeeze=False)
        tasks = list(self.usage)
        width = 0.8 / max(1, len(tasks))
        for ax, branch in zip(axes[0], branches, strict=True):
            for t, task in enumerate(tasks):
                counts = self.usage[task].get(branch)
                if counts is None:
                    continue
                share = (counts.float() / counts.sum().clamp(min=1)).numpy()
                ax.bar([e + t * width for e in range(self.per_branch)], share, width, label=task)
            ax.set_xticks([e + 0.4 - width / 2 for e in range(self.per_branch)],
                          [f"{branch.upper()} {e}" for e in range(self.per_branch)])
            ax.set_ylim(0, 1)
            ax.set_ylabel("share of routings")
        axes[0][-1].legend(fontsize=7)
        fig.suptitle(f"{title}: expert usage per task")
        fig.tight_layout()
        return fig

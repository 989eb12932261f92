"""Row selection in processor outputs, whose image tensors are not always indexed by batch row.

LLaVA-style outputs hold one image tensor per row (`pixel_values [B, C, H, W]`). Qwen2-VL-style outputs
concatenate the flattened patches of all images (`pixel_values [sum_i t_i*h_i*w_i, D]`) and give each
image's patch grid in `image_grid_thw [N, 3]`.
"""

from __future__ import annotations

import torch


def select_rows(inputs: dict[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
    """The processor output restricted to batch rows `rows`, in that order.

    Every tensor is indexed by row, except Qwen2-VL's `pixel_values` (present with `image_grid_thw`),
    whose per-image blocks of t*h*w patch rows are selected instead. Qwen2-VL batches must hold exactly
    one image per row (as the Collator builds them); otherwise ValueError.
    """
    index = torch.tensor(rows, dtype=torch.long)
    grid = inputs.get("image_grid_thw")
    if grid is None:
        return {key: value[index] for key, value in inputs.items()}
    if len(grid) != len(inputs["input_ids"]):
        raise ValueError(f"select_rows needs one image per row: {len(grid)} images, "
                         f"{len(inputs['input_ids'])} rows")
    patches = inputs["pixel_values"].split(grid.prod(-1).tolist())
    selected = {key: value[index] for key, value in inputs.items() if key != "pixel_values"}
    selected["pixel_values"] = torch.cat([patches[row] for row in rows])
    return selected

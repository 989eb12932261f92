"""The calibration table's quantities recomputed by hand: one task's LoRA against the weights it adapts, the answer
loss at a task's end, and the rows' verdicts."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from transformers import LlavaForConditionalGeneration

from cvit.run.calibration import calibrate, calibration_rows, calibration_table, lora_update_ratios
from cvit.run.document import RunDocument
from cvit.run.loop import ContinualRun
from cvit.run.step_record import StepRecord


def test_lora_update_ratio_by_hand(tmp_path):
    adapter, base = tmp_path / "adapter", tmp_path / "base"
    adapter.mkdir()
    base.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4}))
    name = "base_model.model.model.language_model.layers.0.self_attn.q_proj"
    down = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])  # A: 2 x 4
    up = torch.tensor([[1.0, 0], [0, 1.0], [0, 0], [0, 0]])  # B: 4 x 2
    save_file({f"{name}.lora_A.weight": down, f"{name}.lora_B.weight": up}, adapter / "adapter_model.safetensors")
    # the layout transformers writes for LLaVA checkpoints
    save_file({"language_model.model.layers.0.self_attn.q_proj.weight": 2 * torch.eye(4)}, base / "model.safetensors")
    # scaling 4 / 2 = 2; B A = diag(1, 1, 0, 0): ||2 B A|| = 2 sqrt(2); ||2 I|| = 4
    ratios = lora_update_ratios(adapter, base)
    assert ratios == {"model.language_model.layers.0.self_attn.q_proj": pytest.approx(2 * math.sqrt(2) / 4)}


def test_loss_summary_by_hand():
    record = StepRecord()
    assert record.loss_summary() is None
    record.losses = [float(v) for v in range(1, 21)]  # 20 batches: a tenth is 2
    assert record.loss_summary() == {"start": 1.5, "end": 19.5}


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory, synthetic_root, tiny_model_dir):
    from cvit.config.load import load_config
    from tests.conftest import CONFIGS, small_overrides

    root = tmp_path_factory.mktemp("calibration")
    runs = {}
    for method in ("zeroshot", "seqlora", "joint"):
        files = [CONFIGS / "model" / "tiny_llava.yaml", CONFIGS / "benchmark" / "synthetic.yaml",
                 CONFIGS / "method" / f"{method}.yaml"]
        overrides = small_overrides(synthetic_root, tiny_model_dir, root) + [
            f"run.name={method}", "benchmark.order=[colour_mc,count_vqa]", "train.max_steps=20",
            "data.max_train_samples=48", "data.batch_size=2", "eval.unseen=false"]
        cfg, sources = load_config(files, overrides)
        runs[method] = ContinualRun(cfg, sources).run()
    return runs


def test_end_of_task_loss_is_the_mean_of_the_logged_losses_over_the_last_tenth(three_runs):
    from tests.test_loop import stage_events

    doc = json.loads((three_runs["seqlora"] / "matrix.json").read_text())
    for index, stage in enumerate(("00_colour_mc", "01_count_vqa")):
        logged = [event.value for event in stage_events(three_runs["seqlora"], stage).Scalars("loss/answer")]
        assert len(logged) == 20  # log_every_n_steps=1
        assert doc["answer_loss"][index]["end"] == pytest.approx(statistics.fmean(logged[-2:]), abs=1e-5)
        assert doc["answer_loss"][index]["start"] == pytest.approx(statistics.fmean(logged[:2]), abs=1e-5)
    zero = json.loads((three_runs["zeroshot"] / "matrix.json").read_text())
    assert zero["answer_loss"] == [None]


def test_calibration_reads_the_runs_and_the_ratios_match_peft(three_runs, tiny_model_dir):
    rows = calibrate(three_runs, tiny_model_dir)
    adapter = three_runs["seqlora"] / "stages" / "00_colour_mc" / "adapters" / "default"
    model = PeftModel.from_pretrained(LlavaForConditionalGeneration.from_pretrained(tiny_model_dir), adapter)
    by_peft = []
    for module in model.modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            update = module.scaling["default"] * module.lora_B["default"].weight @ module.lora_A["default"].weight
            by_peft.append(float(update.norm() / module.base_layer.weight.norm()))
    ratio_row = next(r for r in rows if "‖BA‖" in r.quantity)
    assert ratio_row.world.startswith(f"{statistics.median(by_peft):.3f} ")
    assert f"over {len(by_peft)})" in ratio_row.world
    table = calibration_table(rows)
    assert table.count("\n") == len(rows) + 1 and "SeqLoRA BWT" in table


def doc(matrix, scorers, mode="sequential", losses=None, tasks=("a", "b")):
    return RunDocument(tasks=list(tasks), mode=mode, scorers=dict(zip(tasks, scorers, strict=True)), matrix=matrix,
                       answer_loss=losses or [])


def test_rows_judge_the_targets():
    seq = doc([[60.0], [40.0, 80.0]], ["choice", "vqa"], losses=[{"start": 1, "end": 0.3}, {"start": 1, "end": 0.1}])
    zero = doc([[20.0, 75.0]], ["choice", "vqa"], mode="zeroshot")
    joint = doc([[68.0, 79.0]], ["choice", "vqa"], mode="joint")
    rows = {row.quantity.split(" (")[0]: row for row in calibration_rows(zero, seq, joint, {"m": 0.05}, (2e-4, 2e-5))}
    assert rows["accuracy right after training each task"].holds  # 60 and 80
    assert rows["joint"].holds and rows["joint"].world.endswith("(+3.5)")  # joint 73.5 against 70.0
    assert rows["SeqLoRA BWT"].world == "-20.0" and rows["SeqLoRA BWT"].holds
    # b is open-format: zero-shot 75 is not 10 points below its right-after 80
    assert rows["zero-shot on the open-format tasks, strict scoring"].holds is False
    assert rows["answer loss at the end of each task"].holds is False  # b ends at 0.1
    assert rows["learning rate, LoRA / projector"].holds

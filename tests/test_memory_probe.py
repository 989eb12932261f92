"""callbacks/memory_probe.py (what `make real-shapes` measures) on the tiny model through the real loop: a record a
step, each decoder layer's saved bytes beside the plan's arithmetic for the same shapes, AdamW's state exact."""

from __future__ import annotations

import json

import pytest

from cvit.plan.report import step_bytes
from cvit.run.loop import ContinualRun
from tests.conftest import CONFIGS, small_overrides

FILES = [CONFIGS / "model" / "tiny_llava.yaml", CONFIGS / "benchmark" / "synthetic.yaml",
         CONFIGS / "method" / "seqlora.yaml"]


# over an NF4 base the MLP's outputs are fp32 (bitsandbytes returns its input's dtype): an estimate in the compute
# dtype was 15% short on this model
@pytest.mark.parametrize(("precision", "quantization"), [("32-true", "none"), ("bf16-mixed", "none"),
                                                         ("bf16-mixed", "nf4")])
def test_the_probe_measures_each_layer_and_the_optimizer_as_the_plan_counts_them(precision, quantization,
                                                                                 synthetic_root, tiny_model_dir,
                                                                                 tmp_path):
    from cvit.config.load import load_config

    out = tmp_path / "probe.jsonl"
    overrides = [*small_overrides(synthetic_root, tiny_model_dir, tmp_path / "runs"), "run.name=probe",
                 "benchmark.order=[colour_mc,count_vqa]", "train.max_steps=2", f"train.precision={precision}",
                 f"model.quantization={quantization}", "model.lora.dropout=0.05", "data.batch_size=4"]  # as the recipes
    probe = ["callbacks.probe.class_path=cvit.callbacks.memory_probe:MemoryProbe", f"callbacks.probe.out={out}"]
    run_dir = ContinualRun(*load_config(FILES, [*overrides, *probe])).run()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["task"], r["step"]) for r in records] == [("colour_mc", 1), ("colour_mc", 2), ("count_vqa", 1),
                                                        ("count_vqa", 2)]
    trainable = json.loads((run_dir / "matrix.json").read_text())["parameters"][-1]["trainable"]
    for record in records:
        assert len(record["layers"]) == 4 and record["seconds"] > 0
        assert record["optimizer"] == 2 * 4 * trainable  # two fp32 moments per trained parameter (fp32 here)
        plan = step_bytes(FILES, overrides, *record["batch"], record["answers"], CONFIGS)
        assert plan["optimizer"] == record["optimizer"]
        for layer in record["layers"]:  # the tolerance of tests/test_plan.py's hand-made step
            assert plan["layer"] <= layer * 1.1 and layer <= plan["layer"] * 1.1, (layer, plan["layer"])


# ProgLoRA runs its earlier blocks in the training forward without training them (their dropout keeps a mask), and
# dynamic allocation scales every block's output by a trained weight (autograd keeps each output); MoELoRA's router
# reads its own copy of the input; each SMoLoRA branch keeps its output and masked ranks for the fusion
@pytest.mark.parametrize("method", ["proglora_static", "proglora_dynamic", "moelora", "smolora"])
def test_the_plan_counts_the_adapters_and_routers_a_training_forward_runs(method, synthetic_root, tiny_model_dir,
                                                                          tmp_path):
    from cvit.config.load import load_config

    out = tmp_path / "probe.jsonl"
    files = [*FILES[:2], CONFIGS / "method" / f"{method}.yaml"]
    overrides = [*small_overrides(synthetic_root, tiny_model_dir, tmp_path / "runs"), "run.name=probe",
                 "benchmark.order=[colour_mc,count_vqa]", "train.max_steps=2", "train.precision=bf16-mixed",
                 "model.lora.dropout=0.05", "data.batch_size=4"]
    probe = ["callbacks.probe.class_path=cvit.callbacks.memory_probe:MemoryProbe", f"callbacks.probe.out={out}"]
    ContinualRun(*load_config(files, [*overrides, *probe])).run()
    last = [json.loads(line) for line in out.read_text().splitlines()][-1]
    assert last["task"] == "count_vqa"  # the second block trains beside the first
    plan = step_bytes(files, overrides, *last["batch"], last["answers"], CONFIGS)
    for layer in last["layers"]:
        assert plan["layer"] <= layer * 1.1 and layer <= plan["layer"] * 1.1, (layer, plan["layer"])

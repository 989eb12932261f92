"""HiDe-LLaVA: routing weights, fusion, the top layer's expert mixture, CKA, resume, 4-bit, layouts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from cvit.callbacks.hide import routing_weights

from cvit.analysis.cka import analyze_run, cka_matrices, linear_cka
from cvit.model.mixing import decoder_layer_index, lora_layers
from cvit.run.loop import ContinualRun
from tests.conftest import CONFIGS
from tests.test_loop import straight_and_resumed

HIDE = [CONFIGS / "method" / "hide.yaml"]
# counted by hand on the tiny LLaVA (Llama 128 x 4 layers, MLP 256; CLIP 64): a rank-4 LoRA holds 4 (in + out) per
# Linear, so a decoder layer's q, k, v, o (128 -> 128), gate, up (128 -> 256) and down (256 -> 128) hold
# 4 * 4 * 256 + 2 * 4 * 384 + 4 * 384 = 8704; the projector Linear(64, 128) + Linear(128, 128) with biases 24832
LORA_PER_LAYER, LAYERS, PROJECTOR, RANK = 8704, 4, 24832, 4  # RANK: configs/model/tiny_llava.yaml's
THREE = ("benchmark.order=[colour_mc,count_vqa,grounding]", "train.max_steps=3", "eval.unseen=false",
         "callbacks.hide.anchor_samples=16")


def test_routing_weights_on_hand_made_anchors():
    anchors = [{"image": torch.tensor([1.0, 0.0]), "instruction": torch.tensor([0.0, 1.0])},
               {"image": torch.tensor([0.0, 1.0]), "instruction": torch.tensor([1.0, 1.0])}]
    image, text = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    r = [0.5 * 1.0 + 0.5 * math.sqrt(0.5), 0.5 * 0.0 + 0.5 * 1.0]  # alpha r_v + beta r_ins per task
    expected = torch.softmax(torch.tensor(r) / 0.1, 0)
    got = routing_weights(image, text, anchors, 0.5, 0.5, 0.1)
    assert torch.allclose(got[0], expected)


def test_linear_cka_by_hand():
    torch.manual_seed(0)
    x, y = torch.randn(10, 4), torch.randn(10, 3)
    rotation, _ = torch.linalg.qr(torch.randn(4, 4))
    assert linear_cka(x, 3 * x @ rotation + 1) == pytest.approx(1.0)  # invariant to rotation, scale and shift
    assert linear_cka(x, x @ torch.diag(torch.tensor([1.0, 1.0, 1.0, 10.0]))) < 0.9  # not to stretching one axis
    xc, yc = (x - x.mean(0)).double(), (y - y.mean(0)).double()
    kx, ky = xc @ xc.T, yc @ yc.T  # App. B: linear kernels, HSIC = tr(K_X K_Y) / (n-1)^2
    hsic = lambda a, b: torch.trace(a @ b) / 81  # noqa: E731
    assert linear_cka(x, y) == pytest.approx(float(hsic(kx, ky) / torch.sqrt(hsic(kx, kx) * hsic(ky, ky))))
    z = torch.randn(10, 5)
    matrices = cka_matrices([[x, z], [y, x[:, :2]], [x + 0.1 * y[:, :1], z]])  # 3 models, 2 layers
    assert matrices.shape == (2, 3, 3) and np.allclose(matrices, matrices.transpose(0, 2, 1))
    assert matrices[0, 0, 1] == pytest.approx(linear_cka(x, y)) and matrices[1, 1, 2] == pytest.approx(
        linear_cka(x[:, :2], z))


def lora_delta(layer, adapter: str) -> torch.Tensor:
    return layer.scaling[adapter] * layer.lora_B[adapter].weight @ layer.lora_A[adapter].weight


def test_hide_fuses_lower_layers_and_mixes_top_layer_experts(small_config, tmp_path):
    cfg, sources = small_config(*THREE, "run.name=hide", files=HIDE)
    run = ContinualRun(cfg, sources)
    run_dir = run.run()
    module, hide = run.module, run.callbacks["hide"]
    experts = ["default", "task1", "task2"]
    assert sorted(module.pool.names) == sorted([*experts, "fused"])
    assert list(hide.anchors) == ["colour_mc", "count_vqa", "grounding"]
    layers = lora_layers(module.pool.peft)
    top = {n: layer for n, layer in layers.items() if decoder_layer_index(n) == 3}
    rest = {n: layer for n, layer in layers.items() if decoder_layer_index(n) != 3}
    assert top and rest
    # linear fusion (the released code): (sum_i B_i)(sum_i s_i A_i), with epsilon = 1
    for layer in list(rest.values())[:3]:
        summed = sum(layer.lora_B[e].weight for e in experts) @ sum(layer.scaling[e] * layer.lora_A[e].weight
                                                                   for e in experts)
        assert torch.allclose(lora_delta(layer, "fused"), summed, atol=1e-5)

    dm = run.datamodule
    items = [dm.test_set(dm.tasks[t])[0] for t in ("colour_mc", "grounding")]
    batch = dm.collator.eval_batch(items)
    router = module.router
    d = router.weights(batch)
    assert d.shape == (2, 3) and torch.allclose(d.sum(-1), torch.ones(2))
    name, layer = next(iter(top.items()))
    _, other = next(iter(rest.items()))
    x = torch.randn(2, 5, layer.in_features)
    expected_top = layer.base_layer(x) + torch.stack(
        [x[b] @ sum(d[b, c] * lora_delta(layer, e) for c, e in enumerate(experts)).T for b in range(2)])
    expected_rest = other.base_layer(x) + x @ lora_delta(other, "fused").T
    [(rows, context)] = router.route(batch)
    assert rows == [0, 1]
    with context:
        assert torch.allclose(layer(x), expected_top, atol=1e-5)
        assert torch.allclose(other(x), expected_rest, atol=1e-5)
    # parameters loaded at inference: the fused LoRA below the top, every expert at the top
    params = json.loads((run_dir / "matrix.json").read_text())["parameters"]
    assert params[-1]["inference"] == (LAYERS - 1) * LORA_PER_LAYER + 3 * LORA_PER_LAYER + PROJECTOR

    # the CKA analysis of the run: one task-by-task matrix per decoder layer, 1 on the diagonal
    out = analyze_run(run_dir, samples=4)
    cka = json.loads((out / "cka.json").read_text())
    matrix = np.array(cka["cka"])
    assert matrix.shape == (4, 3, 3) and np.allclose(np.diagonal(matrix, axis1=1, axis2=2), 1.0)
    assert (out / "cka.png").is_file() and len(cka["mean_between_tasks"]) == 4


def test_linear_fusion_puts_the_coefficient_on_a_and_b_as_the_released_code(small_config):
    """epsilon 0.5, linear: the released code's (sum_i 0.5 B_i)(sum_i 0.5 A_i) scaled by s, i.e. 0.25 on every
    product B_i A_j; with average over T = 2 tasks the coefficient is 0.25: the plain mean of the A and the B."""
    for extra, coefficient in (((), 0.5), (("callbacks.hide.average=true",), 0.25)):
        cfg, sources = small_config("benchmark.order=[colour_mc,count_vqa]", "train.max_steps=2",
                                    "eval.unseen=false", "callbacks.hide.epsilon=0.5",
                                    "callbacks.hide.anchor_samples=8", f"run.name=hide-linear-{coefficient}", *extra,
                                    files=HIDE)
        run = ContinualRun(cfg, sources)
        run.run()
        for layer in list(lora_layers(run.module.pool.peft).values())[:4]:
            a = coefficient * layer.lora_A["default"].weight + coefficient * layer.lora_A["task1"].weight
            b = coefficient * layer.lora_B["default"].weight + coefficient * layer.lora_B["task1"].weight
            by_hand = layer.scaling["default"] * b @ a
            assert torch.allclose(lora_delta(layer, "fused"), by_hand, atol=1e-6)
            products = coefficient * (lora_delta(layer, "default") + lora_delta(layer, "task1"))
            assert not torch.allclose(by_hand, products, atol=1e-6)  # the cross terms B_i A_j differ from it


def test_cat_fusion_is_the_exact_sum_of_deltas(small_config):
    cfg, sources = small_config("benchmark.order=[colour_mc,count_vqa]", "train.max_steps=2", "eval.unseen=false",
                                "callbacks.hide.fusion=cat", "callbacks.hide.epsilon=0.5",
                                "callbacks.hide.anchor_samples=8", "run.name=hide-cat", files=HIDE)
    run = ContinualRun(cfg, sources)
    run.run()
    for layer in list(lora_layers(run.module.pool.peft).values())[:4]:
        expected = 0.5 * (lora_delta(layer, "default") + lora_delta(layer, "task1"))
        assert torch.allclose(lora_delta(layer, "fused"), expected, atol=1e-6)


@pytest.mark.parametrize("layout", ["merge_all", "merge_all_but_top", "expand_all", "expand_all_but_top"])
def test_layouts_load_their_parameters(small_config, layout):
    cfg, sources = small_config("benchmark.order=[colour_mc,count_vqa]", "train.max_steps=1", "eval.unseen=false",
                                f"callbacks.hide.layout={layout}", "callbacks.hide.anchor_samples=8",
                                f"run.name=hide-{layout}", files=HIDE)
    run = ContinualRun(cfg, sources)
    run_dir = run.run()
    pool = run.module.pool
    one, at_top = LAYERS * LORA_PER_LAYER, LORA_PER_LAYER
    expected = {"merge_all": one, "merge_all_but_top": one, "expand_all": 2 * one,
                "expand_all_but_top": 2 * (one - at_top) + at_top}[layout]
    inference = json.loads((run_dir / "matrix.json").read_text())["parameters"][-1]["inference"]
    assert inference == expected + PROJECTOR
    assert pool.parameter_count(["default"]) == one and pool.projector_size == PROJECTOR
    assert ("fused" in pool.names) == (layout != "expand_all")


@pytest.mark.parametrize("fusion", ["linear", "cat"])
def test_hide_resumes_with_anchors_and_experts(small_config, fusion):
    """`cat` stores the fused adapter at rank T r (another rank than the experts'): it must be rebuilt so on resume."""
    straight_run, resumed_run = straight_and_resumed(small_config, (*THREE, f"callbacks.hide.fusion={fusion}"), HIDE,
                                                     "grounding")
    fused = next(iter(lora_layers(resumed_run.module.pool.peft).values())).lora_A["fused"].weight
    assert fused.shape[0] == (RANK * 3 if fusion == "cat" else RANK)  # three tasks fused; the resume loaded two
    a, b = straight_run.callbacks["hide"].anchors, resumed_run.callbacks["hide"].anchors
    assert list(a) == list(b) and all(torch.equal(a[t][m], b[t][m]) for t in a for m in a[t])
    sa, sb = straight_run.module.model.state_dict(), resumed_run.module.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if "lora_" in k)


def test_hide_under_4bit(small_config):
    cfg, sources = small_config("benchmark.order=[colour_mc,count_vqa]", "train.max_steps=2", "eval.unseen=false",
                                "model.quantization=nf4", "callbacks.hide.anchor_samples=8", "run.name=hide-nf4",
                                files=HIDE)
    run = ContinualRun(cfg, sources)
    run_dir = run.run()
    doc = json.loads((run_dir / "matrix.json").read_text())
    assert doc["completed"] == 2 and "fused" in run.module.pool.names
    dm = run.datamodule
    batch = dm.collator.eval_batch([dm.test_set(dm.tasks["count_vqa"])[i] for i in range(3)])
    assert run.module.router.weights(batch).shape == (3, 2)


def test_bad_top_layer_is_refused_before_loading(small_config):
    from cvit.errors import ConfigError

    cfg, sources = small_config("callbacks.hide.top_layers=[4]", files=HIDE)
    with pytest.raises(ConfigError, match=r"top_layers': \[4\] outside the model's 4 decoder layers"):
        ContinualRun(cfg, sources).prepare()


def test_hide_and_dynamic_proglora_route_a_qwen2vl_model(small_config, tmp_path):
    """The MLLM encoder and the layer names of the other family: anchors, routing and allocation run."""
    from cvit.model.tiny_qwen import save_tiny_qwen2vl

    model = save_tiny_qwen2vl(tmp_path / "tiny-qwen")
    common = ("model.family=qwen2_vl", f"model.path={model}", "benchmark.order=[count_vqa,colour_mc]",
              "train.max_steps=1", "eval.unseen=false")
    for files, extra in ((HIDE, "callbacks.hide.anchor_samples=4"),
                         ([CONFIGS / "method" / "proglora_dynamic.yaml"], "callbacks.pool.embedding_samples=4")):
        cfg, sources = small_config(*common, extra, f"run.name=qwen-{files[0].stem}", files=files)
        run = ContinualRun(cfg, sources)
        assert json.loads((run.run() / "matrix.json").read_text())["completed"] == 2
        if files == HIDE:
            assert run.module.router.top and run.module.router.rest  # the top decoder layer found by name

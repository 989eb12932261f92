"""MoELoRA: the mixture and the balancing term by hand, router weights, peft save/load, 4-bit, resume, bad input."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn

from cvit.model.moelora import MoELoRAOptions, MoELoRAType, load_balance, load_config, moelora_layers
from cvit.model.pool import PROJECTOR_FILE
from cvit.module import model_inputs
from cvit.run.loop import ContinualRun
from tests.conftest import CONFIGS
from tests.test_loop import refused_before_loading, stage_events, straight_and_resumed
from tests.test_qlora import lora_after_validation_and_backward

MOELORA = [CONFIGS / "method" / "moelora.yaml"]
TINY = ("callbacks.moelora.r=8", "callbacks.moelora.alpha=16", "callbacks.moelora.experts=4")
TWO = ("benchmark.order=[colour_mc,count_vqa]", "train.max_steps=3", "eval.unseen=false", *TINY)


def test_mixture_recomputed_by_hand_and_router_weights_sum_to_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5))
    kind = MoELoRAType(MoELoRAOptions(4), r=8, alpha=16, target_modules=r"0")
    peft = get_peft_model(model, kind.configure(LoraConfig()))
    layer = moelora_layers(peft)["base_model.model.0"]
    with torch.no_grad():
        for name, param in layer.named_parameters():
            if "lora_" in name:
                param.normal_()
    x = torch.randn(2, 3, 6)
    weights = layer.router_weights("default", x)
    assert weights.shape == (2, 3, 4) and torch.allclose(weights.sum(-1), torch.ones(2, 3))
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = layer.base_layer(x) + sum(
        weights[..., e:e + 1] * 2.0 * (x @ a[2 * e:2 * e + 2].T) @ b[:, 2 * e:2 * e + 2].T for e in range(4))
    assert torch.allclose(peft(x), expected, atol=1e-5)


def test_load_balance_by_hand():
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]])
    # top-1 shares [2/3, 1/3], mean probabilities [2/3, 1/3]: 2 * (4/9 + 1/9)
    assert load_balance(probs).item() == pytest.approx(10 / 9)
    assert load_balance(torch.full((4, 2), 0.5)).item() == pytest.approx(1.0)


def test_run_trains_with_the_balance_term_and_loads_through_peft(small_config):
    cfg, sources = small_config(*TWO, "callbacks.moelora.balance=0.01", "run.name=moelora", files=MOELORA)
    run = ContinualRun(cfg, sources)
    run_dir = run.run()
    events = stage_events(run_dir, "01_count_vqa")
    assert events.Scalars("loss/moe_balance")[-1].value > 0
    from transformers import LlavaForConditionalGeneration

    stage = run_dir / "stages" / "01_count_vqa" / "adapters"
    base = LlavaForConditionalGeneration.from_pretrained(cfg.model.path)
    _, unexpected = base.load_state_dict(load_file(stage / PROJECTOR_FILE), strict=False)
    assert not unexpected
    loaded = PeftModel.from_pretrained(base, stage / "default", config=load_config(stage / "default")).eval()
    assert moelora_layers(loaded)  # the mixture layers, not plain LoRA
    module, dm = run.module.eval(), run.datamodule
    batch = next(iter(dm.test_dataloader(dm.stream[1])))
    with torch.no_grad():
        assert torch.allclose(loaded(**model_inputs(batch)).logits, module.model(**model_inputs(batch)).logits,
                              atol=1e-5)


def test_moelora_over_a_4bit_base_has_gradients_after_a_validation_pass(small_config):
    import bitsandbytes as bnb

    cfg, sources = small_config(*TINY, "model.quantization=nf4", files=MOELORA)
    run = ContinualRun(cfg, sources)
    run.prepare()
    run.load_model()
    module = run.module
    assert any(isinstance(layer.base_layer, bnb.nn.Linear4bit) for layer in moelora_layers(module.model).values())
    lora = lora_after_validation_and_backward(run, module)
    assert any("lora_router" in n for n, _ in lora)


def test_moelora_resumes_to_the_same_matrix(small_config):
    three = ("benchmark.order=[colour_mc,count_vqa,grounding]", "train.max_steps=3", "eval.unseen=false", *TINY)
    straight_and_resumed(small_config, three, MOELORA, "grounding")


@pytest.mark.parametrize("override, message", [
    ("callbacks.moelora.experts=3", "does not divide into 3 experts"),
    ("callbacks.moelora.balance=-0.1", "balance must be >= 0"),
])
def test_bad_moelora_settings_fail_before_the_model_loads(small_config, override, message):
    refused_before_loading(small_config, MOELORA, override, message)

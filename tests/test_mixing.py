"""Weighted LoRA mixtures through peft's layers, checked against the sum computed by hand."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from cvit.model.mixing import decoder_layer_index, layers_in, mixed


class Tiny(nn.Module):
    """Two 'decoder layers' named like a language model's, one linear each."""

    def __init__(self) -> None:
        super().__init__()
        self.language_model = nn.Module()
        self.language_model.layers = nn.ModuleList([nn.Sequential(nn.Linear(6, 6)) for _ in range(2)])

    def forward(self, x):
        for layer in self.language_model.layers:
            x = layer(x)
        return x


def peft_with(adapters: list[str]):
    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=r".*layers\.\d+\.0", init_lora_weights=False)
    model = get_peft_model(Tiny(), config, adapter_name=adapters[0])
    for name in adapters[1:]:
        model.add_adapter(name, config)
    return model


def delta(layer, adapter: str) -> torch.Tensor:
    return layer.scaling[adapter] * layer.lora_B[adapter].weight @ layer.lora_A[adapter].weight


def test_row_weights_give_the_weighted_sum_of_adapter_outputs():
    model = peft_with(["a", "b", "c"])
    layer = model.base_model.model.language_model.layers[0][0]
    x = torch.randn(3, 4, 6)
    w_a, w_b = torch.tensor([1.0, 0.2, 0.0]), torch.tensor([0.5, 0.8, 1.0])
    name = [n for n in layers_in(model, [0])]
    assert len(name) == 1 and decoder_layer_index(name[0]) == 0
    with mixed(model, {"a": w_a, "b": w_b}, name):
        got = layer(x)
    base = layer.base_layer(x)
    expected = torch.stack([
        base[i] + x[i] @ (w_a[i] * delta(layer, "a") + w_b[i] * delta(layer, "b")).T for i in range(3)
    ])
    assert torch.allclose(got, expected, atol=1e-6)
    # restored: the active adapter alone, original scalings
    assert layer.active_adapters == ["a"] and all(isinstance(layer.scaling[k], float) for k in "abc")
    assert torch.allclose(layer(x), base + x @ delta(layer, "a").T, atol=1e-6)


def test_scalar_weights_and_layer_selection():
    model = peft_with(["a", "b"])
    first, second = (model.base_model.model.language_model.layers[i][0] for i in range(2))
    x = torch.randn(2, 3, 6)
    expected = second.base_layer(x) + x @ (0.25 * delta(second, "a") + 2.0 * delta(second, "b")).T
    with mixed(model, {"a": 0.25, "b": 2.0}, layers_in(model, [1])):
        assert torch.allclose(second(x), expected, atol=1e-6)
        assert first.active_adapters == ["a"]  # layer 0 untouched


def test_weights_carry_gradients():
    model = peft_with(["a", "b"])
    weight = torch.tensor([0.3, 0.7], requires_grad=True)
    with mixed(model, {"a": weight, "b": 1 - weight}):
        model(torch.randn(2, 3, 6)).sum().backward()
    assert weight.grad is not None and torch.any(weight.grad != 0)


def test_row_weights_follow_the_branch_dtype_under_autocast():
    model = peft_with(["a", "b"])
    layer = model.base_model.model.language_model.layers[0][0]
    with mixed(model, {"a": torch.tensor([0.5, 1.0]), "b": torch.tensor([1.0, 0.0])}):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(torch.randn(2, 3, 6))
        assert layer.scaling["a"].dtype == torch.bfloat16  # no float32 promotion of the residual stream
        model(torch.randn(2, 3, 6))
        assert layer.scaling["a"].dtype == torch.float32


def test_an_error_inside_a_mixture_restores_adapters_scalings_and_hooks():
    model = peft_with(["a", "b"])
    layer = model.base_model.model.language_model.layers[0][0]
    x = torch.randn(2, 3, 6)
    before = layer(x)
    try:
        with mixed(model, {"a": torch.tensor([1.0, 0.0]), "b": 0.5}):
            layer(x)
            raise RuntimeError("inside the mixture")
    except RuntimeError:
        pass
    assert layer.active_adapters == ["a"] and layer.scaling == {"a": 2.0, "b": 2.0}
    assert not layer._forward_pre_hooks  # the row-weight hook is gone
    assert torch.equal(layer(x), before)

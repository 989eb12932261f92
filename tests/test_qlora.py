"""4-bit NF4 loading on CPU through bitsandbytes, with the repacking trap of DESIGN §7."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch

from cvit.module import answer_loss, model_inputs
from tests.test_module import prepared


@pytest.fixture
def qlora(small_config):
    return prepared(small_config, "model.quantization=nf4")


def test_language_model_is_4bit_and_vision_projector_are_not(qlora):
    _, module = qlora
    names = {n for n, m in module.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert any("language_model" in n for n in names)
    assert not any("vision_tower" in n or "multi_modal_projector" in n or "lm_head" in n for n in names)


def lora_after_validation_and_backward(run, module, task_name: str = "count_vqa") -> list:
    """(name, parameter) of every trainable LoRA part after a generation pass, a no-grad forward and one training
    forward and backward (inside the module's router), each asserted to have a gradient."""
    dm = run.datamodule
    task = dm.tasks[task_name]
    module.eval()
    module.generate(next(iter(dm.test_dataloader(task))), 3)  # eval-mode, no-grad forward passes
    dm.set_stage([task])
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad(), module.router.training(batch):
        module.model(**model_inputs(batch))
    module.train()
    with module.router.training(batch):
        out = module.model(**model_inputs(batch))
        answer_loss(out.logits, batch["labels"], batch["loss_weight"]).backward()
    lora = [(n, p) for n, p in module.named_parameters() if "lora_" in n and p.requires_grad]
    assert lora
    missing = [n for n, p in lora if p.grad is None]
    assert not missing, missing[:3]
    return lora


def test_cpu_repacking_is_off_on_every_4bit_layer(qlora):
    """The guard itself, on any CPU: bitsandbytes sets the flag from the CPU (True on avx512-bf16 ones), the loader
    must clear it on every layer. The gradient test below shows the symptom only where the CPU repacks."""
    _, module = qlora
    layers = [m for m in module.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(layer.support_avx512bf16_for_cpu for layer in layers)


def test_lora_gradients_survive_a_validation_pass(qlora):
    lora = lora_after_validation_and_backward(*qlora)
    # lora_B starts at zero, so only its gradients are non-zero at the first step
    dead = [n for n, p in lora if "lora_B" in n and not torch.any(p.grad != 0)]
    assert not dead, dead[:3]

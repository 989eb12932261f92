"""`cvit plan`: adapter counts against hand counts, the papers and a full-depth run; the activation estimate against
the tensors autograd saves on the tiny model; NF4 bytes against bitsandbytes; the command end to end."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from peft import LoraConfig

from cvit.cli import main
from cvit.config.load import load_config
from cvit.config.schema import LANGUAGE_MODEL_LINEARS
from cvit.data.stream import build_tasks
from cvit.errors import ConfigError
from cvit.model.pool import AdapterPool
from cvit.model.tiny import build_tiny_llava
from cvit.module import answer_loss
from cvit.plan.architecture import meta_model, model_config
from cvit.plan.counting import count_method, run_stream, trainable_lora_inputs
from cvit.plan.memory import Decoder, activation_bytes, run_dtypes
from cvit.plan.report import count_config
from cvit.plan.weights import Weights, nf4_bytes

from .conftest import CONFIGS

M = 1e6
LLAVA_7B = CONFIGS / "model" / "llava15_7b.yaml"


def method(name: str):
    return CONFIGS / "method" / f"{name}.yaml"


@pytest.fixture(scope="module")
def tiny_config_dir(tmp_path_factory):
    """A folder holding only the tiny LLaVA's config.json: what the plan reads of a model folder."""
    folder = tmp_path_factory.mktemp("tiny-config")
    build_tiny_llava()[0].config.save_pretrained(folder)
    return folder


def tiny_files(name: str):
    return [CONFIGS / "model" / "tiny_llava.yaml", CONFIGS / "benchmark" / "synthetic.yaml", method(name)]


def test_counts_are_the_hand_count_of_a_lora_on_the_tiny_model(tiny_config_dir):
    # tiny LLaVA: 4 decoder layers, hidden 128, MLP 256; LoRA rank 4 on q,k,v,o (128 -> 128), gate, up (128 -> 256),
    # down (256 -> 128): r x (in + out) each
    per_layer = 4 * 4 * (128 + 128) + 2 * 4 * (128 + 256) + 4 * (256 + 128)
    lora = 4 * per_layer
    projector = (64 * 128 + 128) + (128 * 128 + 128)  # linear_1 64 -> 128, linear_2 128 -> 128, with biases
    path = [f"model.path={tiny_config_dir}"]
    seq = count_config(tiny_files("seqlora"), path, tasks=3)
    assert [n for s in seq.stages for n in (s.trainable, s.stored, s.inference)] == [lora + projector] * 9
    assert seq.projector == projector
    olora = count_config(tiny_files("olora"), path, tasks=3)  # a new LoRA per task, every one summed at inference
    assert [s.trainable for s in olora.stages] == [lora + projector] * 3
    assert [s.stored for s in olora.stages] == [k * lora + projector for k in (1, 2, 3)]
    assert olora.stages[-1].inference == 3 * lora + projector


@pytest.mark.parametrize("name", ["hide", "proglora_dynamic", "smolora"])
def test_shallow_extrapolation_equals_the_full_depth(tiny_config_dir, name):
    """The counts from 2 and 3 decoder layers, extrapolated to the tiny model's 4, equal a run at 4 layers."""
    cfg, sources = load_config(tiny_files(name), [f"model.path={tiny_config_dir}"])
    config, _ = model_config(cfg.model, CONFIGS)
    stream, unseen = build_tasks(cfg.benchmark, sources)
    assert count_method(cfg, sources, config, stream[:3], unseen) == run_stream(cfg, sources, config, stream[:3],
                                                                              unseen)


def test_7b_counts_against_the_papers():
    """ProgLoRA Table 13: 42M trainable in the pool per task at rank 16; the kit's block (39.98M) plus the dynamic
    allocator (0.83M) is 40.81M, 2.8% less: the paper does not itemise its 42M (e.g. its allocator projector's width
    is not stated). HiDe-LLaVA Table 3: 44.27M loaded after 6 tasks at rank 8 with the projector; the kit's 44.09M is
    0.4% less (cvit/plan/report.py)."""
    dynamic = count_config([LLAVA_7B, method("proglora_dynamic")], tasks=3, configs=CONFIGS)
    per_task = [s.trainable - dynamic.projector for s in dynamic.stages]
    assert per_task == [per_task[0]] * 3  # "doesn't increase with the arrival of new tasks"
    assert per_task[0] / M == pytest.approx(42.0, rel=0.035)
    static = count_config([LLAVA_7B, method("proglora_static")], tasks=2, configs=CONFIGS)
    block = 32 * 16 * (4 * (4096 + 4096) + 2 * (4096 + 11008) + (11008 + 4096))  # rank 16 on the 7 linears, 32 layers
    assert [s.stored - static.projector for s in static.stages] == [block, 2 * block]
    hide = count_config([LLAVA_7B, method("hide")], tasks=6, configs=CONFIGS)
    assert hide.stages[-1].inference / M == pytest.approx(44.27, rel=0.005)


def saved_bytes(precision: str, batch: int, length: int, checkpointing: bool, attention: str = "sdpa"):
    """(bytes autograd saves in one forward + loss of the tiny LLaVA with LoRA (rank 8, dropout 0.05, projector
    trained), the estimate of them). Parameters are not activations; a storage saved twice counts once."""
    model, _ = build_tiny_llava()
    model.config.text_config._attn_implementation = attention
    mixed = precision == "bf16-mixed"
    if mixed:
        model = model.to(torch.bfloat16)  # a bf16 model trained under bf16 autocast, as the shipped GPU configs
    if checkpointing:  # as load_mllm enables it
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=LANGUAGE_MODEL_LINEARS)
    pool = AdapterPool(model, lora, "multi_modal_projector")
    pool.peft.train()
    config = model.config
    ids = torch.randint(5, config.text_config.vocab_size, (batch, length))
    ids[:, 1:17] = config.image_token_index  # 16 image tokens
    labels = torch.where(torch.arange(length) >= length - 8, ids, -100)  # 8 answer tokens a row
    params = {p.untyped_storage().data_ptr() for p in pool.peft.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
        out = pool.peft(input_ids=ids, attention_mask=torch.ones_like(ids),
                        pixel_values=torch.randn(batch, 3, 32, 32, dtype=model.dtype))
        answer_loss(out.logits, labels, torch.ones(batch))
    model_cfg = OmegaConf.create({"quantization": "none", "compute_dtype": "bfloat16" if mixed else "float32"})
    estimate = activation_bytes(Decoder.of(config), trainable_lora_inputs(pool), batch, length, batch * 8,
                                run_dtypes(model_cfg, precision), mask_bytes=4)  # CPU dropout keeps fp32 noise
    return sum(saved.values()), estimate.saved(checkpointing)


@pytest.mark.parametrize(("precision", "checkpointing", "attention", "factor"), [
    ("32-true", False, "sdpa", 1.1), ("bf16-mixed", False, "sdpa", 1.1), ("bf16-mixed", False, "eager", 1.1),
    ("32-true", True, "sdpa", 1.25), ("bf16-mixed", True, "sdpa", 1.25)])
def test_activation_estimate_matches_the_saved_tensors(precision, checkpointing, attention, factor):
    """Within 10% of what autograd saves (the estimate leaves out the projector's few tensors), 25% under
    checkpointing (the frozen vision tower's checkpointed inputs weigh more beside 4 layers than beside 32). Eager
    attention keeps S x S probabilities per head: at 128 tokens a fifth of what the tiny model saves."""
    measured, estimate = saved_bytes(precision, 2, 128, checkpointing, attention)
    assert measured / factor <= estimate <= measured * factor


@pytest.mark.parametrize("shape", [(128, 200), (130, 77)])
@pytest.mark.parametrize("double_quant", [True, False])
def test_nf4_bytes_are_what_bitsandbytes_stores(shape, double_quant):
    import bitsandbytes.functional as bnbf

    packed, state = bnbf.quantize_4bit(torch.randn(shape), blocksize=64, compress_statistics=double_quant,
                                       quant_type="nf4")
    tensors = [packed, state.absmax, state.code]
    if double_quant:  # the 8-bit code table (state2.code) is one table shared by every tensor
        tensors += [state.offset, state.state2.absmax]
    assert sum(t.numel() * t.element_size() for t in tensors) == nf4_bytes(shape[0] * shape[1], double_quant)


def test_nf4_quantizes_the_language_model_linears_only():
    cfg, _ = load_config([LLAVA_7B], sections=())
    full = meta_model(model_config(cfg.model, CONFIGS)[0], "llava")
    weights = Weights.of(full, "llava")
    assert len(weights.quantizable) == 32 * 7  # not the vision tower, the projector nor lm_head
    assert weights.lm_head == 32064 * 4096
    assert sum(o * i for o, i in weights.quantizable) + weights.other == sum(p.numel() for p in full.parameters())


def test_cli_plans_every_method(capsys):
    assert main(["plan", "-c", str(LLAVA_7B), "-c", str(CONFIGS / "benchmark" / "coin.yaml"), "--tasks", "1",
                 "--configs", str(CONFIGS)]) == 0
    out = capsys.readouterr().out
    planned = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {path.stem for path in (CONFIGS / "method").glob("*.yaml")} <= planned
    assert "configs/model/arch/llava15_7b.json" in out and "24 GiB" in out


def test_bad_method_and_missing_architecture_are_clear_errors(capsys):
    coin = str(CONFIGS / "benchmark" / "coin.yaml")
    assert main(["plan", "-c", str(LLAVA_7B), "-c", coin, "--methods", "seqlora,nope",
                 "--configs", str(CONFIGS)]) == 2
    assert "error: --methods: unknown method(s) nope; known: dynamic_ema" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"model.architecture': unset, and model.path holds no config.json"):
        model_config(load_config([LLAVA_7B], ["model.architecture=null"], sections=())[0].model, CONFIGS)

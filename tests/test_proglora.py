"""ProgLoRA: allocation weights, fused blocks, frozen blocks, recall sizes, the KL recall term, resume, 4-bit."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cvit.methods.allocation import DynamicAllocator, max_pool, recall_kl, similarity_weight
from cvit.model.mixing import lora_layers
from cvit.run.loop import ContinualRun
from tests.conftest import CONFIGS
from tests.test_loop import straight_and_resumed

STATIC = [CONFIGS / "method" / "proglora_static.yaml"]
DYNAMIC = [CONFIGS / "method" / "proglora_dynamic.yaml"]
THREE = ("benchmark.order=[colour_mc,count_vqa,shape_cls]", "train.max_steps=3", "eval.unseen=false",
         "callbacks.recall.phi=10", "callbacks.pool.embedding_samples=16")


def embedding(image, instruction, answer):
    return {"image": torch.tensor(image), "instruction": torch.tensor(instruction), "answer": torch.tensor(answer)}


def test_similarity_weights_on_hand_made_embeddings():
    current = embedding([1.0, 0.0], [0.0, 2.0], [1.0, 1.0])
    earlier = embedding([1.0, 1.0], [0.0, 5.0], [1.0, 0.0])
    assert similarity_weight(earlier, current) == pytest.approx(math.sqrt(0.5) * 1.0 * math.sqrt(0.5))
    opposite = embedding([-1.0, 0.0], [0.0, 1.0], [1.0, 1.0])
    assert similarity_weight(opposite, current) == 0.0  # a negative product is clamped to 0
    scaled = {k: 3 * v for k, v in earlier.items()}  # cosines: the embeddings' norms do not count
    assert similarity_weight(scaled, current) == pytest.approx(similarity_weight(earlier, current))


def test_dynamic_allocation_recomputed_by_hand():
    torch.manual_seed(0)
    allocator = DynamicAllocator(dim=4, projector_dim=3, temperature=0.5)
    keys = [allocator.add_key() for _ in range(3)]
    pooled = torch.randn(2, 4)
    first, _, second, norm = allocator.projector
    h = norm(second(torch.nn.functional.silu(first(pooled))))
    expected = torch.softmax(h @ torch.stack(keys).T / 0.5, -1)
    assert torch.allclose(allocator(pooled), expected)
    assert allocator(pooled).sum(-1).tolist() == pytest.approx([1.0, 1.0])
    assert DynamicAllocator(dim=16).temperature == 4.0  # default sqrt(d_in)


def test_released_allocation_recomputed_by_hand():
    """The released form: LN(SiLU(W2 W1 x)) with bias-free linears, then the same keys and softmax."""
    torch.manual_seed(0)
    allocator = DynamicAllocator(dim=4, projector_dim=3, temperature=0.5, form="released")
    keys = [allocator.add_key() for _ in range(2)]
    first, second, _, norm = allocator.projector
    assert first.bias is None and second.bias is None and first.weight.shape == (3, 4)
    pooled = torch.randn(5, 4)
    h = torch.nn.functional.silu(pooled @ first.weight.T @ second.weight.T)
    h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + norm.eps)
    h = h * norm.weight + norm.bias
    expected = torch.softmax(h @ torch.stack(keys).T / 0.5, -1)
    assert torch.allclose(allocator(pooled), expected, atol=1e-6)
    # per row, not shifted by a batch maximum: a row's weights do not depend on the other rows
    assert torch.allclose(allocator(pooled[:1]), expected[:1], atol=1e-6)
    with pytest.raises(ValueError, match="allocator must be one of paper, released"):
        DynamicAllocator(dim=4, form="shared")


def test_max_pool_ignores_padding():
    values = torch.tensor([[[1.0, -5.0], [3.0, -1.0], [9.0, 9.0]]])
    assert max_pool(values, torch.tensor([[1, 1, 0]])).tolist() == [[3.0, -1.0]]


def test_kl_recall_term_by_hand():
    recorded = torch.tensor([[0.7, 0.3], [1.0, 0.0]])
    current = torch.tensor([[0.5, 0.25, 0.25], [0.6, 0.2, 0.2]])
    by_hand = 0.7 * math.log(0.7 / 0.5) + 0.3 * math.log(0.3 / 0.25) + 1.0 * math.log(1.0 / 0.6)
    assert float(recall_kl(current, recorded)) == pytest.approx(by_hand)  # Eq. 8: a sum over samples
    assert float(recall_kl(current, recorded, "mean")) == pytest.approx(by_hand / 2)


def train_batch(dm, task: str, size: int = 4) -> dict:
    return dm.collator.train_batch([dm.train_set(dm.tasks[task])[i] for i in range(size)])


def lora_delta(layer, adapter: str) -> torch.Tensor:
    return layer.scaling[adapter] * layer.lora_B[adapter].weight @ layer.lora_A[adapter].weight


def test_static_pool_fuses_blocks_freezes_old_ones_and_sizes_replay(small_config):
    cfg, sources = small_config(*THREE, "run.name=static", files=STATIC)
    run = ContinualRun(cfg, sources)
    run_dir = run.run()
    module, pool, recall = run.module, run.callbacks["pool"], run.callbacks["recall"]
    assert module.pool.names == ["default", "block1", "block2"]
    weights = pool.similarity["shape_cls"]
    assert len(weights) == 2 and all(0 <= w <= 1 for w in weights)
    # replay after the last task start: (1 - w) * phi samples of each earlier task, loss weight lambda
    expected = [round((1 - w) * 10) for w in weights]
    assert sum(expected) > 0  # something is replayed: the checks below are not vacuous
    assert [len(indices) for _, indices, _ in run.datamodule.replay] == [c for c in expected if c]
    assert len(run.datamodule.train_dataloader().dataset) == 32 + sum(expected)  # the stage trains on them
    assert all(weight == 2.0 for _, _, weight in run.datamodule.replay)
    assert list(recall.recalled["shape_cls"].values()) == expected
    # frozen blocks: only the newest block trains, and the earlier ones get no gradient
    trainable = {n for n, p in module.named_parameters() if p.requires_grad and "multi_modal_projector" not in n}
    assert trainable and all(".block2." in n for n in trainable)
    dm = run.datamodule
    batch = train_batch(dm, "shape_cls")
    module.train()
    with module.router.training(batch):
        from cvit.module import answer_loss, model_inputs

        out = module.model(**model_inputs(batch))
    answer_loss(out.logits, batch["labels"], batch["loss_weight"]).backward()
    grads = {n: p.grad for n, p in module.named_parameters() if "lora_" in n}
    assert all(g is None for n, g in grads.items() if ".block2." not in n)
    assert any(g is not None and torch.any(g != 0) for n, g in grads.items() if ".block2." in n)
    # the fused block of a task: its own block + w-weighted earlier blocks (a test row of count_vqa)
    name, layer = next(iter(lora_layers(module.pool.peft).items()))
    x = torch.randn(1, 3, layer.in_features)
    w_count = pool.similarity["count_vqa"][0]
    expected_out = layer.base_layer(x) + x @ (w_count * lora_delta(layer, "default") + lora_delta(layer, "block1")).T
    test_batch = dm.collator.eval_batch([dm.test_set(dm.tasks["count_vqa"])[0]])
    groups = module.router.route(test_batch)
    assert len(groups) == 1
    with groups[0][1]:
        assert torch.allclose(layer(x), expected_out, atol=1e-6)
    report = (run_dir / "report.md").read_text()
    assert "## Parameters" in report
    params = json.loads((run_dir / "matrix.json").read_text())["parameters"]
    assert params[0]["trainable"] == params[1]["trainable"] == params[2]["trainable"] > 0
    block = params[0]["trainable"] - module.pool.projector_size  # one block, and the shared projector once
    assert [p["stored"] for p in params] == [block * k + module.pool.projector_size for k in (1, 2, 3)]
    assert [p["inference"] for p in params] == [p["stored"] for p in params]  # every block, the projector once


@pytest.mark.parametrize(("switch", "uniform", "counts"), [
    ("callbacks.pool.weights=uniform", True, "similarity"),  # Table 3's w = 1: recall still sized by similarity
    ("callbacks.recall.counts=random", False, "random"),  # Table 3's random recall: phi from every earlier task
    ("callbacks.recall.counts=none", False, "none"),  # no recall
])
def test_table3_switches_change_the_fusion_weight_or_the_recall(small_config, monkeypatch, switch, uniform, counts):
    import cvit.callbacks.progressive_pool as progressive_pool

    # the tiny model's task similarities are near 0 (random features), where (1 - w) phi = phi hides the switches
    monkeypatch.setattr(progressive_pool, "similarity_weight", lambda earlier, current: 0.5)
    cfg, sources = small_config("benchmark.order=[colour_mc,count_vqa]", "train.max_steps=1", "eval.unseen=false",
                                "callbacks.recall.phi=10", "callbacks.pool.embedding_samples=16", switch,
                                f"run.name={counts}", files=STATIC)
    run = ContinualRun(cfg, sources)
    run.run()
    module, pool, dm = run.module, run.callbacks["pool"], run.datamodule
    [w] = pool.similarity["count_vqa"]
    assert w == 0.5
    recalled = {"similarity": 5, "random": 10, "none": 0}[counts]
    assert run.callbacks["recall"].recalled["count_vqa"] == {"colour_mc": recalled}
    assert [len(indices) for _, indices, _ in dm.replay] == ([recalled] if recalled else [])
    name, layer = next(iter(lora_layers(module.pool.peft).items()))
    x = torch.randn(1, 3, layer.in_features)
    fused = 1.0 if uniform else w
    expected = layer.base_layer(x) + x @ (fused * lora_delta(layer, "default") + lora_delta(layer, "block1")).T
    [(_, context)] = module.router.route(dm.collator.eval_batch([dm.test_set(dm.tasks["count_vqa"])[0]]))
    with context:
        assert torch.allclose(layer(x), expected, atol=1e-6)


def test_dynamic_pool_resumes_with_its_keys_projector_and_recall_buffer(small_config):
    straight_run, resumed_run = straight_and_resumed(small_config, THREE, DYNAMIC, "shape_cls")
    allocator = straight_run.module.pool.extras["allocation"]
    assert len(allocator.keys) == 3 and [k.requires_grad for k in allocator.keys] == [False, False, True]
    recall = straight_run.callbacks["recall"]
    assert [tuple(t.shape) for t in recall.recorded.values()] == [(10, 1), (10, 2), (10, 3)]
    again = resumed_run.module.pool.extras["allocation"].state_dict()
    assert all(torch.equal(v, again[k]) for k, v in allocator.state_dict().items())
    assert resumed_run.callbacks["recall"].buffer == recall.buffer
    assert all(torch.equal(recall.recorded[t], resumed_run.callbacks["recall"].recorded[t]) for t in recall.recorded)


def test_dynamic_kl_recall_trains_the_allocator_under_4bit(small_config):
    cfg, sources = small_config("benchmark.order=[colour_mc,count_vqa]", "train.max_steps=2", "eval.unseen=false",
                                "callbacks.recall.phi=6", "callbacks.pool.embedding_samples=8",
                                "model.quantization=nf4", "run.name=dynamic-nf4", files=DYNAMIC)
    run = ContinualRun(cfg, sources)
    run.run()
    recall, module = run.callbacks["recall"], run.module
    assert recall.recalled["count_vqa"]["colour_mc"] > 0
    dm = run.datamodule
    recall.memory.kept.pop("count_vqa")  # back to the start of count_vqa: colour_mc alone is in memory
    recall.on_task_start(None, module, dm, dm.tasks["count_vqa"])
    module.zero_grad()
    terms = recall.training_loss(module, train_batch(dm, "count_vqa"), None)
    assert float(terms["recall_kl"]) > 0
    terms["recall_kl"].backward()
    allocator = module.pool.extras["allocation"]
    assert allocator.keys[-1].grad is not None and torch.any(allocator.keys[-1].grad != 0)
    assert torch.any(allocator.projector[0].weight.grad != 0)


def test_kl_recall_needs_the_dynamic_pool_before_it(small_config):
    from cvit.errors import ConfigError

    cfg, sources = small_config("callbacks.pool.allocation=static", files=DYNAMIC)
    with pytest.raises(ConfigError, match="callbacks.recall.*dynamic_allocation"):
        ContinualRun(cfg, sources).prepare()


def allocation_gradients(small_config, checkpointing: bool) -> dict[str, torch.Tensor]:
    """Gradients of one training batch of dynamic ProgLoRA with two blocks (non-zero B matrices), through the
    module's batch hooks, as Lightning calls them."""
    from cvit.module import answer_loss, model_inputs

    cfg, sources = small_config(f"model.gradient_checkpointing={str(checkpointing).lower()}",
                                "callbacks.pool.embedding_samples=4", files=DYNAMIC)
    run = ContinualRun(cfg, sources)
    run.prepare()
    run.load_model()
    module, dm, pool = run.module, run.datamodule, run.callbacks["pool"]
    for name in ("colour_mc", "count_vqa"):
        torch.manual_seed(1)
        pool.on_task_start(None, module, dm, dm.tasks[name])
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.05)
    module.train()
    batch = train_batch(dm, "count_vqa")
    module.on_train_batch_start(batch, 0)
    out = module.model(**model_inputs(batch))
    answer_loss(out.logits, batch["labels"], batch["loss_weight"]).backward()
    module.on_train_batch_end(None, batch, 0)
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad and p.grad is not None}


def test_mixture_gradients_are_the_same_with_gradient_checkpointing(small_config):
    plain, checkpointed = (allocation_gradients(small_config, flag) for flag in (False, True))
    assert any("extras.allocation.keys.1" in n for n in plain) and any(".block1." in n for n in plain)
    assert plain.keys() == checkpointed.keys()
    assert all(torch.allclose(plain[n], checkpointed[n], atol=1e-6) for n in plain)
    assert torch.any(plain["extras.allocation.keys.1"] != 0)


def two_task_run(small_config, files, name: str, *extra: str) -> ContinualRun:
    cfg, sources = small_config("benchmark.order=[colour_mc,count_vqa]", "train.max_steps=1", "eval.unseen=false",
                                "callbacks.recall.phi=4", "callbacks.pool.embedding_samples=8", f"run.name={name}",
                                *extra, files=files)
    run = ContinualRun(cfg, sources)
    run.run()
    with torch.no_grad():  # B matrices away from zero, so every block's share shows in the output
        for n, p in run.module.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.05)
    return run


def test_dynamic_allocation_mixes_each_row_with_its_own_weights(small_config):
    run = two_task_run(small_config, DYNAMIC, "dynamic-rows")
    module, dm = run.module, run.datamodule
    items = [dm.test_set(dm.tasks["colour_mc"])[0], dm.test_set(dm.tasks["count_vqa"])[0]]
    batch = dm.collator.eval_batch(items)
    with torch.no_grad():
        rows = module.router.allocate(module.router.pooled(batch))
    assert rows.shape == (2, 2) and not torch.allclose(rows[0], rows[1])  # the two instructions weigh differently
    [(indices, context)] = module.router.route(batch)  # one group: the weights are per row, in one forward
    assert indices == [0, 1]
    name, layer = next(iter(lora_layers(module.pool.peft).items()))
    x = torch.randn(2, 3, layer.in_features)
    with torch.no_grad(), context:
        got = layer(x)
    for i in range(2):
        mixture = rows[i, 0] * lora_delta(layer, "default") + rows[i, 1] * lora_delta(layer, "block1")
        assert torch.allclose(got[i], layer.base_layer(x[i]) + x[i] @ mixture.T, atol=1e-5)


def test_released_allocation_pools_the_multimodal_input_the_model_reads(small_config):
    """x_max of the released form is the max over the language model's real input: image features spliced in."""
    run = two_task_run(small_config, DYNAMIC, "dynamic-released", "callbacks.pool.allocator=released")
    module, dm = run.module, run.datamodule
    allocator = module.pool.extras["allocation"]
    assert allocator.projector[0].bias is None and isinstance(allocator.projector[2], torch.nn.SiLU)
    batch = train_batch(dm, "count_vqa")
    seen = {}
    language_model = module.pool.peft.get_base_model().model.language_model
    def keep(_, args, kwargs) -> None:
        seen["embeds"] = kwargs["inputs_embeds"].detach()

    hook = language_model.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with torch.no_grad(), module.router.training(batch):
            module.pool.peft(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")})
            pooled = module.router.pooled(batch)
    finally:
        hook.remove()
    mask = batch["attention_mask"].bool().unsqueeze(-1)
    by_hand = seen["embeds"].masked_fill(~mask, float("-inf")).amax(1)
    assert torch.allclose(pooled, by_hand, atol=1e-6)
    image_rows = batch["input_ids"] == module.pool.peft.get_base_model().config.image_token_id
    assert image_rows.any() and not torch.allclose(
        pooled, max_pool(module.pool.peft.get_input_embeddings()(batch["input_ids"]), batch["attention_mask"]))
    kept = list(run.callbacks["recall"].buffer["colour_mc"])[:3]
    records = dm.train_set(dm.tasks["colour_mc"])
    with torch.no_grad():
        assert torch.allclose(module.router.pooled_records(dm, dm.tasks["colour_mc"], kept),
                              module.router.pooled(dm.collator.train_batch([records[i] for i in kept])), atol=1e-6)


def test_static_routing_sends_an_unseen_task_to_the_latest_fused_block(small_config):
    run = two_task_run(small_config, STATIC, "static-unseen", "eval.unseen=true")
    module, dm = run.module, run.datamodule
    w = run.callbacks["pool"].similarity["count_vqa"][0]
    items = [dm.test_set(dm.tasks["colour_mc"])[0], dm.test_set(dm.tasks["side_vqa"])[0]]
    groups = module.router.route(dm.collator.eval_batch(items))
    assert [rows for rows, _ in groups] == [[0], [1]]
    name, layer = next(iter(lora_layers(module.pool.peft).items()))
    x = torch.randn(1, 3, layer.in_features)
    own = layer.base_layer(x) + x @ lora_delta(layer, "default").T  # colour_mc: its own block alone
    latest = layer.base_layer(x) + x @ (w * lora_delta(layer, "default") + lora_delta(layer, "block1")).T
    for (_, context), expected in zip(groups, (own, latest), strict=True):
        with torch.no_grad(), context:
            assert torch.allclose(layer(x), expected, atol=1e-5)

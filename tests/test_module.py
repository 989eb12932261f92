from __future__ import annotations

import lightning as L
import torch

from cvit.module import answer_loss, model_inputs
from cvit.run.loop import ContinualRun


def test_answer_loss_by_hand():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # B=1, L=3, V=2
    labels = torch.tensor([[-100, 1, 0]])
    # position 0 predicts label[1]=1 from [2, 0]; position 1 predicts label[2]=0 from [0, 1]
    first = -torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[1]
    second = -torch.log_softmax(torch.tensor([0.0, 1.0]), 0)[0]
    expected = (first + second) / 2
    assert torch.allclose(answer_loss(logits, labels, torch.tensor([1.0])), expected)
    assert torch.allclose(answer_loss(logits, labels, torch.tensor([3.0])), 3 * expected)


def prepared(small_config, *overrides):
    cfg, sources = small_config(*overrides)
    run = ContinualRun(cfg, sources)
    run.prepare()
    run.load_model()
    return run, run.module


def test_short_fit_lowers_the_loss(small_config):
    run, module = prepared(small_config, "data.max_train_samples=48", "train.lr=5e-3")
    dm = run.datamodule
    dm.set_stage([run.stream[0]])
    batch = next(iter(dm.train_dataloader()))

    def loss_now() -> float:
        module.eval()
        with torch.no_grad():
            out = module.model(**model_inputs(batch))
        return float(answer_loss(out.logits, batch["labels"], batch["loss_weight"]))

    before = loss_now()
    lora_before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    frozen_before = {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}
    L.Trainer(accelerator="cpu", max_epochs=4, logger=False, enable_checkpointing=False,
              enable_progress_bar=False).fit(module, train_dataloaders=dm.train_dataloader())
    assert loss_now() < before * 0.8
    assert all("lora_" in n or "multi_modal_projector" in n for n in lora_before)  # adapters + shared projector
    assert any(not torch.equal(p, lora_before[n]) for n, p in module.named_parameters() if n in lora_before)
    assert all(torch.equal(p, frozen_before[n]) for n, p in module.named_parameters() if n in frozen_before)


def test_batched_generation_equals_one_by_one(small_config):
    run, module = prepared(small_config)
    module.eval()
    dm = run.datamodule
    for task in (dm.tasks["count_vqa"], dm.tasks["caption"]):  # short answers and captions
        batch = next(iter(dm.test_dataloader(task)))
        batched = module.generate(batch, 12)
        singles = []
        for i in range(len(batch["uids"])):
            one = dm.collator.eval_batch([dm.test_set(task)[i]])
            singles += module.generate(one, 12)
        assert batched == singles
        assert len(set(batched)) > 1  # rows differ: a batch that gave every row one output would fail


def test_router_splits_batches_into_groups(small_config):
    from contextlib import contextmanager, nullcontext

    from cvit.model.routing import Router

    run, module = prepared(small_config)
    module.eval()
    dm = run.datamodule
    batch = next(iter(dm.test_dataloader(dm.tasks["count_vqa"])))
    head = module.model.get_output_embeddings()

    @contextmanager
    def flipped():  # a context that changes every row's greedy tokens: the head's logits negated
        head.weight.data.neg_()
        try:
            yield
        finally:
            head.weight.data.neg_()

    plain = module.generate(batch, 4)
    with flipped():
        inverted = module.generate(batch, 4)
    assert all(a != b for a, b in zip(plain, inverted, strict=True))
    seen = []

    class Alternating(Router):
        def route(self, b):
            seen.append(len(b["input_ids"]))
            return [([0, 2, 4, 6], nullcontext()), ([1, 3, 5, 7], flipped())]

    module.set_router(Alternating())
    assert module.generate(batch, 4) == [plain[i] if i % 2 == 0 else inverted[i] for i in range(8)]
    assert seen == [8]

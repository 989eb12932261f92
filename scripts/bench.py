"""Benchmarks, each printed as a ratio measured within this one run (machines here are shared and
noisy, so only ratios taken side by side mean anything).

generation: batched greedy generation vs. batch size 1 on the tiny LLaVA (same outputs asserted).
ema:        training step time with LLaCA's dynamic EMA (paper formula) vs. SeqLoRA on the tiny LLaVA, fits
            alternated so both see the same machine load; target ratio <= 1.05.
baselines:  training step time of each baseline (replay, EWC, LwF, MoELoRA, O-LoRA) vs. SeqLoRA on the
            stream's second task, where the penalties and teachers are active (a short first task sets up
            the Fisher, the memory, the frozen LoRA), fits alternated across the methods.
routing:    LLaCA's instruction routing at a real size (5,000 test questions against a group of 10,000 training
            instructions, `benchmark.templates: as_is`): all pairs at once (cvit.methods.codebook.similarity_matrix)
            vs. the released code's TF-IDF fit per pair, timed on a sample and extrapolated; equality checked.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from cvit.data.collate import Collator
from cvit.data.datasets import TestSet
from cvit.data.records import load_test
from cvit.model.tiny import build_tiny_llava, save_tiny_llava
from cvit.synthetic.writer import SyntheticSizes, make_synthetic

TASK, MAX_NEW_TOKENS, ITEMS, BATCH = "caption", 24, 64, 32
STEPS, ROUNDS = 40, 5  # training steps per timed fit, fits per variant
REPO = Path(__file__).resolve().parents[1]


def generate(model, processor, batch) -> list[str]:
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                         pad_token_id=processor.tokenizer.pad_token_id)
    return processor.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def timed(fn) -> tuple[float, list[str]]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


@torch.no_grad()
def bench_generation(root: Path) -> None:
    model, processor = build_tiny_llava()
    model.eval()
    collator = Collator(processor, "llava", 512)
    test = TestSet(load_test(root / TASK / "test.json", root)[:ITEMS], (), 0)
    items = [test[i] for i in range(len(test))]

    def one_by_one():
        return [text for item in items for text in generate(model, processor, collator.eval_batch([item]))]

    def batched():
        return [text for start in range(0, len(items), BATCH)
                for text in generate(model, processor, collator.eval_batch(items[start:start + BATCH]))]

    batched()  # warm-up
    single_s, single_out = timed(one_by_one)
    batch_s, batch_out = timed(batched)
    assert single_out == batch_out, "batched generation differs from batch size 1"
    print(f"generation  {ITEMS} items, {MAX_NEW_TOKENS} new tokens: batch 1 {single_s:.2f} s, "
          f"batch {BATCH} {batch_s:.2f} s, speed-up x{single_s / batch_s:.1f} (outputs identical)")


class StepTimer(L.Callback):
    """Wall time of each training batch, from its start to the end of every callback's batch-end hook
    (so the EMA update is inside when the timer is the last callback)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self.started)


def prepared_run(root: Path, model_dir: Path, method: str = "seqlora", overrides: tuple[str, ...] = ()):
    """A ContinualRun of `method` on the synthetic stream with its model loaded (no run directory)."""
    from cvit.config.load import load_config
    from cvit.run.loop import ContinualRun

    configs = REPO / "configs"
    files = [configs / "model" / "tiny_llava.yaml", configs / "benchmark" / "synthetic.yaml",
             configs / "method" / f"{method}.yaml"]
    cfg, sources = load_config(files, [f"benchmark.root={root}", f"model.path={model_dir}", "eval.unseen=false",
                                       *overrides])
    run = ContinualRun(cfg, sources)
    run.prepare()
    run.load_model()
    return run


def bench_trainer(run, callbacks: list, steps: int = STEPS) -> L.Trainer:
    """A bare CPU trainer of `steps` steps with the run's gradient clipping; a StepTimer runs last."""
    return L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                     gradient_clip_val=run.cfg.train.grad_clip or None, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=[*callbacks, StepTimer()])


def timed_fit(run, callbacks: list, steps: int = STEPS) -> tuple[float, L.Trainer]:
    """(median step time in s, the trainer) of a `steps`-step fit on the run's current stage."""
    trainer = bench_trainer(run, callbacks, steps)
    trainer.fit(run.module, datamodule=run.datamodule)
    return statistics.median(trainer.callbacks[-1].times[5:]), trainer  # first steps warm up


def bench_ema(root: Path, model_dir: Path) -> None:
    from cvit.callbacks.dynamic_ema import DynamicEMACallback

    run = prepared_run(root, model_dir)
    run.datamodule.set_stage([run.stream[0]])
    medians: dict[str, list[float]] = {"seqlora": [], "dynamic_ema": []}
    for _ in range(ROUNDS):
        for variant in medians:
            extra = [DynamicEMACallback("paper")] if variant == "dynamic_ema" else []
            medians[variant].append(timed_fit(run, extra)[0])
    seqlora, ema = statistics.median(medians["seqlora"]), statistics.median(medians["dynamic_ema"])
    print(f"ema         step time (median of {ROUNDS} alternated fits x {STEPS} steps, batch "
          f"{run.cfg.data.batch_size}): SeqLoRA {1000 * seqlora:.1f} ms, dynamic EMA {1000 * ema:.1f} ms, "
          f"ratio x{ema / seqlora:.3f} (target <= 1.05)")


# each baseline as the ladder runs it (MoELoRA scaled to the tiny model); EWC's Fisher over 5 batches here
BASELINES = {"seqlora": (), "replay": (), "ewc": ("callbacks.ewc.batches=5",), "lwf": (),
             "moelora": ("callbacks.moelora.r=8", "callbacks.moelora.alpha=16"), "olora": ()}


def second_task(run) -> int:
    """Train the stream's first task briefly through the method's task hooks, then open the second (the state
    a penalty, a teacher or a memory needs is in place); returns the second stage's training samples."""
    first, second = run.stream[:2]
    hooks = list(run.callbacks.values())
    run.datamodule.set_stage([first])
    for callback in hooks:
        callback.on_task_start(bench_trainer(run, hooks), run.module, run.datamodule, first)
    _, trainer = timed_fit(run, hooks, 10)
    for callback in hooks:
        callback.on_task_end(trainer, run.module, run.datamodule, first)
    run.datamodule.set_stage([second])
    for callback in hooks:  # a trainer, as the loop gives (LwF keeps its teacher only in a training run)
        callback.on_task_start(bench_trainer(run, hooks), run.module, run.datamodule, second)
    return len(run.datamodule.train_dataloader().dataset)


def bench_baselines(root: Path, model_dir: Path) -> None:
    runs = {method: prepared_run(root, model_dir, method, overrides) for method, overrides in BASELINES.items()}
    samples = {method: second_task(run) for method, run in runs.items()}
    medians: dict[str, list[float]] = {method: [] for method in runs}
    order = list(runs)
    for round_index in range(len(order)):  # the order rotates each round: each method is first once
        for method in order[round_index % len(order):] + order[: round_index % len(order)]:
            medians[method].append(timed_fit(runs[method], list(runs[method].callbacks.values()))[0])
    seqlora = statistics.median(medians["seqlora"])
    print(f"baselines   step time on the second task (median of {len(order)} rotated fits x {STEPS} steps, batch "
          f"{runs['seqlora'].cfg.data.batch_size}), ratio to SeqLoRA {1000 * seqlora:.1f} ms; samples per epoch:")
    for method, times in medians.items():
        step = statistics.median(times)
        spread = f"{1000 * min(times):.0f}-{1000 * max(times):.0f}"
        print(f"            {method:<8} {1000 * step:7.1f} ms  x{step / seqlora:.3f}  (fits {spread} ms)  "
              f"{samples[method]} samples")


def instructions(count: int, seed: int) -> list[str]:
    """`count` question-like instructions drawn from a small vocabulary (seeded)."""
    import random

    rng = random.Random(seed)
    words = ("colour", "shape", "number", "object", "person", "animal", "car", "sign", "text", "left", "right",
             "top", "bottom", "large", "small", "red", "blue", "green", "wooden", "metal", "street", "table")
    return [f"What is the {' '.join(rng.sample(words, 3))} in the image? Answer the question using a single word"
            f" or phrase{rng.choice(['.', ' please.', ' (one word).'])} {rng.randrange(10_000)}" for _ in range(count)]


def bench_routing(tests: int = 5_000, group: int = 10_000, sample: int = 200) -> None:
    from cvit.methods.codebook import pair_similarity, similarity_matrix

    firsts, seconds = instructions(tests, 0), instructions(group, 1)
    started = time.perf_counter()
    matrix = similarity_matrix(firsts, seconds)
    closed = time.perf_counter() - started
    pairs = [(i * 7 % tests, i * 13 % group) for i in range(sample)]
    started = time.perf_counter()
    reference = [pair_similarity(firsts[i], seconds[j]) for i, j in pairs]
    per_pair = (time.perf_counter() - started) / sample
    error = max(abs(matrix[i, j] - value) for (i, j), value in zip(pairs, reference, strict=True))
    pairwise = per_pair * tests * group
    print(f"routing:    LLaCA, {tests} test instructions x {group} group instructions: all pairs at once "
          f"{closed:.1f} s; per pair {1000 * per_pair:.2f} ms -> {pairwise / 3600:.1f} h;  "
          f"x{pairwise / closed:,.0f} faster, max |difference| {error:.1e} on {sample} pairs")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic(Path(tmp) / "synthetic", SyntheticSizes(train=STEPS * 32, test=ITEMS, base=1))
        bench_generation(root)
        model_dir = save_tiny_llava(Path(tmp) / "tiny-llava")
        bench_ema(root, model_dir)
        bench_baselines(root, model_dir)
    bench_routing()


if __name__ == "__main__":
    main()

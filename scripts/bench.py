"""Benchmarks, each printed as a ratio measured within this one run (machines here are shared and
noisy, so only ratios taken side by side mean anything).

generation: batched greedy generation vs. batch size 1 on the tiny LLaVA (same outputs asserted).
methods:    every method against SeqLoRA on the stream's second task, where penalties, teachers, memories and
            pools are active (a short first task sets them up): training step time (each round's step over the
            same round's SeqLoRA step, the median over rounds; the methods' order rotates each round so all see the
            same machine load), the time spent inside the method's callbacks' per-step hooks (measured within the
            same steps, so free of the fit-to-fit noise: for a method whose extra work is in its hooks, the dynamic
            EMA, `1 + hooks / SeqLoRA step` is its cost; target <= x1.05), generation throughput after the task's
            end hooks (routing included; same rotation) and memory
            (each method in a fresh process: its peak resident memory, and how much training and generation added
            over the set-up's, Linux's peak counter reset in between).
routing:    LLaCA's instruction routing at a real size (5,000 test questions against a group of 10,000 training
            instructions, `benchmark.templates: as_is`): all pairs at once (cvit.methods.codebook.similarity_matrix)
            vs. the released code's TF-IDF fit per pair, timed on a sample and extrapolated; equality checked. Then
            HiDe's anchors, ProgLoRA's dynamic allocation and SMoLoRA's gates at LLaVA-1.5-7B sizes.
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
from cvit.run.demo import applicable
from cvit.run.results import TINY_SCALE
from cvit.run.step_record import StepRecord
from cvit.synthetic.writer import SyntheticSizes, make_synthetic

TASK, MAX_NEW_TOKENS, ITEMS, BATCH = "caption", 24, 64, 32
STEPS, ROUNDS = 30, 5  # training steps per timed fit, repeats per method
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


def prepared_run(root: Path, model_dir: Path, method: str = "seqlora", overrides: tuple[str, ...] = ()):
    """A ContinualRun of `method` on the synthetic stream with its model loaded (no run directory)."""
    from cvit.config.load import load_config
    from cvit.run.loop import ContinualRun

    configs = REPO / "configs"
    files = [configs / "model" / "tiny_llava.yaml", configs / "benchmark" / "synthetic.yaml",
             configs / "method" / f"{method}.yaml"]
    overrides = [f"benchmark.root={root}", f"model.path={model_dir}", "eval.unseen=false",
                 f"data.max_test_samples={ITEMS}", *overrides]
    cfg, _ = load_config(files, overrides)
    cfg, sources = load_config(files, overrides + applicable(cfg, TINY_SCALE))
    run = ContinualRun(cfg, sources)
    run.prepare()
    run.load_model()
    return run


def bench_trainer(run, callbacks: list, steps: int = STEPS) -> L.Trainer:
    """A bare CPU trainer of `steps` steps with the run's gradient clipping; a StepRecord runs last. Its root
    (where callbacks write reports) sits beside the benchmark's temporary data."""
    return L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                     default_root_dir=Path(run.cfg.benchmark.root).parent / "trainer",
                     gradient_clip_val=run.cfg.train.grad_clip or None, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=[*callbacks, StepRecord()])


def timed_fit(run, callbacks: list, steps: int = STEPS) -> tuple[float, L.Trainer]:
    """(median step time in s, the trainer) of a `steps`-step fit on the run's current stage."""
    trainer = bench_trainer(run, callbacks, steps)
    trainer.fit(run.module, datamodule=run.datamodule)
    return trainer.callbacks[-1].median(), trainer


# every method as `make results` runs it (the mixtures scaled to the tiny model, TINY_SCALE), the dynamic EMA
# alone for its per-step cost; EWC's Fisher over 5 batches here
METHODS = {"seqlora": (), "dynamic_ema": (), "llaca": (), "proglora_static": (), "proglora_dynamic": (), "hide": (),
           "smolora": (), "replay": (), "ewc": ("callbacks.ewc.batches=5",), "lwf": (), "moelora": (), "olora": ()}


PER_STEP_HOOKS = ("on_train_batch_start", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
                  "on_before_zero_grad", "on_train_batch_end")


class HookTimer:
    """Seconds spent inside the given callbacks' per-step hooks: each hook is replaced on the instance by a timed
    wrapper (Lightning looks hooks up by name on the callback, so the wrappers are what it calls)."""

    def __init__(self, callbacks: list) -> None:
        self.seconds = 0.0
        for callback in callbacks:
            for name in PER_STEP_HOOKS:
                setattr(callback, name, self.timed(getattr(callback, name)))

    def timed(self, hook):
        def run(*args, **kwargs):
            started = time.perf_counter()
            try:
                return hook(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return run


def second_task(run) -> int:
    """Train the stream's first task briefly through the method's task hooks, then open the second (the state
    a penalty, a teacher, a memory or a pool needs is in place); returns the second stage's training samples."""
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


def end_second_task(run) -> None:
    """The second task's end hooks (anchors, fusion, EMA weights, embeddings): the model then routes as at test."""
    hooks = list(run.callbacks.values())
    _, trainer = timed_fit(run, hooks, 5)
    for callback in hooks:
        callback.on_task_end(trainer, run.module, run.datamodule, run.stream[1])


def timed_generation(run) -> float:
    """Test items per second, generated (the method's routing included) over the two trained tasks."""
    from cvit.run.evaluate import evaluation_trainer, predict_tasks

    tasks = run.stream[:2]
    started = time.perf_counter()
    texts = predict_tasks(evaluation_trainer(run.cfg.train), run.module, run.datamodule, tasks)
    return sum(map(len, texts)) / (time.perf_counter() - started)


def rotated(names: list[str], rounds: int):
    """`rounds` passes over `names`, the order rotating each pass (each name leads one pass when rounds == len)."""
    for index in range(rounds):
        shift = index % len(names)
        yield from names[shift:] + names[:shift]


def peak_memory_mb(method: str, root: Path, model_dir: Path) -> dict[str, float]:
    """{"peak": MiB, "training": MiB} of a fresh process that sets the method up, then trains STEPS steps and
    generates: its peak resident memory, and how far training and generation raised it over the memory held
    after set-up (CPU memory has no per-phase counter of its own, so each method gets its own process)."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, __file__, "--peak", method, str(root), str(model_dir)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def status_mb(key: str) -> float:
    """A /proc/self/status memory line (VmRSS, VmHWM) in MiB."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(key))
    return int(line.split()[1]) / 1024


def peak_child(method: str, root: Path, model_dir: Path) -> None:
    import json

    run = prepared_run(root, model_dir, method, METHODS[method])
    second_task(run)
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the memory held now
    held = status_mb("VmRSS")
    timed_fit(run, list(run.callbacks.values()))
    end_second_task(run)
    timed_generation(run)
    peak = status_mb("VmHWM")
    print(json.dumps({"peak": peak, "training": peak - held}))


def bench_methods(root: Path, model_dir: Path) -> None:
    runs = {method: prepared_run(root, model_dir, method, overrides) for method, overrides in METHODS.items()}
    samples = {method: second_task(run) for method, run in runs.items()}
    timers = {method: HookTimer(list(run.callbacks.values())) for method, run in runs.items()}
    steps: dict[str, list[float]] = {method: [] for method in runs}
    hooks: dict[str, list[float]] = {method: [] for method in runs}
    for method in rotated(list(runs), ROUNDS):
        timers[method].seconds = 0.0
        step, trainer = timed_fit(runs[method], list(runs[method].callbacks.values()))
        steps[method].append(step)
        hooks[method].append(timers[method].seconds / trainer.global_step)
    for run in runs.values():
        end_second_task(run)
    speed: dict[str, list[float]] = {method: [] for method in runs}
    for method in rotated(list(runs), ROUNDS):
        speed[method].append(timed_generation(runs[method]))
    peaks = {method: peak_memory_mb(method, root, model_dir) for method in runs}
    step0, speed0 = (statistics.median(steps["seqlora"]), statistics.median(speed["seqlora"]))
    print(f"methods     on the second task, {ROUNDS} rotated rounds ({STEPS}-step fits, batch "
          f"{runs['seqlora'].cfg.data.batch_size}; generation of {2 * ITEMS} test items); SeqLoRA: step "
          f"{1000 * step0:.1f} ms, {speed0:.1f} items/s. x SeqLoRA: the median over rounds of the round's ratio; "
          f"hooks: ms a step inside the method's callbacks' per-step hooks, and 1 + that over SeqLoRA's step; "
          f"memory: the process's peak resident MiB, and what training and generation added over the set-up's")
    print(f"            {'method':<17} {'step ms':>8} {'x SeqLoRA':>9}   {'hooks ms':>8} {'x SeqLoRA':>9}   "
          f"{'items/s':>7} {'x SeqLoRA':>9}   {'peak MiB':>8} {'added MiB':>9}   samples")
    for method in runs:
        step, rate, hook = (statistics.median(steps[method]), statistics.median(speed[method]),
                            statistics.median(hooks[method]))
        step_ratio = statistics.median(a / b for a, b in zip(steps[method], steps["seqlora"], strict=True))
        rate_ratio = statistics.median(a / b for a, b in zip(speed[method], speed["seqlora"], strict=True))
        target = "  (target <= 1.05)" if method == "dynamic_ema" else ""
        print(f"            {method:<17} {1000 * step:8.1f} {step_ratio:9.3f}   {1000 * hook:8.2f} "
              f"{1 + hook / step0:9.3f}   {rate:7.1f} {rate_ratio:9.3f}   {peaks[method]['peak']:8.0f} "
              f"{peaks[method]['training']:9.1f}   {samples[method]}{target}")


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


# real sizes: LLaVA-1.5-7B (32 layers, hidden 4096, CLIP ViT-L/336 features 1024), a 600-token prompt, a test set
# of 5,000 items in batches of 16, eight tasks trained
TESTS, LAYERS, HIDDEN, CLIP, TOKENS, EVAL_BATCH, TRAINED = 5_000, 32, 4096, 1024, 600, 16, 8


def per_test_set(fn, repeats: int = 5) -> float:
    """Seconds for the whole test set: the median of `repeats` calls of `fn` (one batch) x the batches."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * -(-TESTS // EVAL_BATCH)


@torch.no_grad()
def bench_routing_tensors() -> None:
    """The routing of HiDe-LLaVA, ProgLoRA (dynamic) and SMoLoRA at real sizes: the routing arithmetic alone, on
    features as the model gives them (the encoders' forward is the model's own cost, in generation throughput)."""
    import importlib

    from cvit.methods.allocation import DynamicAllocator, max_pool
    from cvit.model.smolora import row_means, top1

    routing_weights = importlib.import_module("cvit.callbacks.hide").routing_weights
    anchors = [{"image": torch.randn(CLIP), "instruction": torch.randn(HIDDEN)} for _ in range(TRAINED)]
    image, text = torch.randn(EVAL_BATCH, CLIP), torch.randn(EVAL_BATCH, HIDDEN)
    hide = per_test_set(lambda: routing_weights(image, text, anchors, 0.5, 0.5, 0.1))
    allocator = DynamicAllocator(HIDDEN)
    for _ in range(TRAINED):
        allocator.add_key()
    tokens, mask = torch.randn(EVAL_BATCH, TOKENS, HIDDEN), torch.ones(EVAL_BATCH, TOKENS)
    proglora = per_test_set(lambda: allocator(max_pool(tokens, mask)))
    vu_gate, if_gate = torch.nn.Linear(HIDDEN, 4, bias=False), torch.nn.Linear(384, 4, bias=False)
    flat, rows = tokens.reshape(-1, HIDDEN), torch.arange(EVAL_BATCH).repeat_interleave(TOKENS)
    instruction = torch.randn(EVAL_BATCH, 384)

    def smolora_layer() -> None:  # both gates of one adapted layer
        top1(vu_gate(row_means(flat, rows, EVAL_BATCH)), False), top1(if_gate(instruction), False)

    adapted = 3 * LAYERS + 2  # the MLP's three linears in every layer and the projector's two
    smolora = per_test_set(smolora_layer) * adapted
    print(f"routing:    {TESTS} test items (batches of {EVAL_BATCH}, {TOKENS}-token prompts, {TRAINED} tasks, "
          f"LLaVA-1.5-7B sizes), the routing arithmetic on CPU:")
    print(f"            HiDe anchors (cosine to {TRAINED} image + instruction anchors): {hide:.2f} s")
    print(f"            ProgLoRA dynamic (max-pool, projector, {TRAINED} keys): {proglora:.2f} s")
    print(f"            SMoLoRA (VU + IF top-1 gates in {adapted} adapted linears, prefill): {smolora:.2f} s")
    print("            (each a pass over the activations, O(tokens x hidden) a layer, against the layers' own "
          "O(tokens x hidden^2))")


def main() -> None:
    import sys

    if sys.argv[1:2] == ["--peak"]:  # a child of peak_memory_mb
        peak_child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic(Path(tmp) / "synthetic", SyntheticSizes(train=STEPS * 16, test=ITEMS, base=0))
        bench_generation(root)
        model_dir = save_tiny_llava(Path(tmp) / "tiny-llava")
        bench_methods(root, model_dir)
    bench_routing()
    bench_routing_tensors()


if __name__ == "__main__":
    main()

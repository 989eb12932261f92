"""Benchmarks, each printed as a ratio measured within this one run (machines here are shared and
noisy, so only ratios taken side by side mean anything).

generation: batched greedy generation vs. batch size 1 on the tiny LLaVA (same outputs asserted).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from cvit.data.collate import Collator
from cvit.data.datasets import TestSet
from cvit.data.records import load_test
from cvit.model.tiny import build_tiny_llava
from cvit.synthetic.writer import SyntheticSizes, make_synthetic

TASK, MAX_NEW_TOKENS, ITEMS, BATCH = "caption", 24, 64, 32


def generate(model, processor, batch) -> list[str]:
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                         pad_token_id=processor.tokenizer.pad_token_id)
    return processor.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def timed(fn) -> tuple[float, list[str]]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_generation(root: Path) -> None:
    torch.set_grad_enabled(False)
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


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic(Path(tmp) / "synthetic", SyntheticSizes(train=1, test=ITEMS, base=1))
        bench_generation(root)


if __name__ == "__main__":
    main()

"""`cvit world probe MODEL_DIR`: what a base model sees, asked in its own base-training wording.

Probes on scenes of the base's own four colours and kinds, drawn from a fixed key (the same scenes on every
machine), answered by greedy generation:
- the colour and the kind of one shape, on 200 CLEAR and 200 HARD scenes (exact answer);
- the box of one of two shapes (the first or the second in reading order, in turn), on 100 HARD scenes (the kit's
  loose box reading, IoU > 0.5 against the true box);
- where one of two shapes is, named by its colour, on 200 HARD scenes: the share naming its place (`where_hard`)
  and the share naming the other shape's (`where_other_hard`). Equal shares mean the colour is not bound to its
  place: the answer is one of the occupied places, at chance.
Names what the base can and cannot read before any continual tuning (docs/world.md, "Measured").
"""

from __future__ import annotations

from pathlib import Path

import torch

from cvit.eval.scorers import box_iou, parse_box
from cvit.model.build import load_processor, model_class
from cvit.seeding import keyed_numpy, keyed_random
from cvit.synthetic.lexicon import BASE_COLOURS, BASE_SHAPES
from cvit.synthetic.scenes import CLEAR, HARD, Scene, sample_shapes

SHORT = "Respond with one word ."


def ask(model, processor, prompts: list[str], scenes: list[Scene], max_new_tokens: int, batch: int = 50) -> list[str]:
    """Greedy answers to `prompts` about `scenes` (one each), in the LLaVA chat format, stripped."""
    answers = []
    for start in range(0, len(scenes), batch):
        chunk = range(start, min(start + batch, len(scenes)))
        inputs = processor(text=[f"USER: <image>\n{prompts[i]} ASSISTANT:" for i in chunk],
                           images=[scenes[i].render(keyed_numpy("probe", i)) for i in chunk],
                           return_tensors="pt", padding=True)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=processor.tokenizer.pad_token_id)
        new = output[:, inputs["input_ids"].shape[1]:]
        answers += [text.strip() for text in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]
    return answers


def probe_base(model_dir: Path) -> dict[str, float]:
    """{"colour_clear", "kind_clear", "colour_hard", "kind_hard", "box_hard", "where_hard", "where_other_hard"}: the
    share (0..1) of probe scenes the model at `model_dir` answers right (`where_other_hard`: with the other shape's
    place)."""
    model = model_class("llava").from_pretrained(model_dir).eval()
    processor = load_processor("llava", model_dir)
    processor.tokenizer.padding_side = "left"
    shares = {}
    for name, conditions in (("clear", CLEAR), ("hard", HARD)):
        rng = keyed_random("probe", name)
        scenes = [sample_shapes(rng, 1, BASE_SHAPES, BASE_COLOURS, conditions=conditions) for _ in range(200)]
        for attribute, question in (("colour", "What colour is the shape ?"), ("kind", "Which shape is it ?")):
            answers = ask(model, processor, [f"{question}\n{SHORT}"] * len(scenes), scenes, 5)
            truth = [s.shapes[0].colour if attribute == "colour" else s.shapes[0].shape for s in scenes]
            shares[f"{attribute}_{name}"] = sum(a == t for a, t in zip(answers, truth, strict=True)) / len(scenes)
    rng = keyed_random("probe", "box")
    scenes = [sample_shapes(rng, 2, BASE_SHAPES, BASE_COLOURS, True, HARD) for _ in range(100)]
    targets = [scene.shapes[i % 2] for i, scene in enumerate(scenes)]  # the first or the second, in turn
    answers = ask(model, processor, [f"Give the box of the {t.colour} shape ." for t in targets], scenes, 30)
    hits = [(box := parse_box(a)) is not None and box_iou(box, t.box) > 0.5 for a, t in zip(answers, targets,
                                                                                            strict=True)]
    shares["box_hard"] = sum(hits) / len(hits)
    rng = keyed_random("probe", "where")
    scenes = [sample_shapes(rng, 2, BASE_SHAPES, BASE_COLOURS, True, HARD) for _ in range(200)]
    pairs = [(scene.shapes[i % 2], scene.shapes[1 - i % 2]) for i, scene in enumerate(scenes)]  # (named, other)
    answers = ask(model, processor, [f"Where is the {named.colour} shape ?" for named, _ in pairs], scenes, 8)
    for key, index in (("where_hard", 0), ("where_other_hard", 1)):
        shares[key] = sum(pair[index].where in answer for pair, answer in zip(pairs, answers, strict=True)) / 200
    return shares

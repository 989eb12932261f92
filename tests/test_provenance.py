"""What a run records for comparison with a paper: setup in matrix.json and report.md; the chat format."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest

from cvit.errors import ConfigError
from cvit.model.prompting import LLAVA_SYSTEM, chat_format
from cvit.run.loop import ContinualRun
from cvit.run.provenance import LIBRARIES, cpu_model, library_versions
from cvit.run.results import preamble


def test_run_records_its_setup_and_the_chat_format_it_trained_with(small_config):
    cfg, sources = small_config("benchmark.order=[count_vqa]", "train.max_steps=1", "eval.unseen=false",
                                "model.chat_format=llava_v1", "train.accumulate_grad_batches=2", "train.seed=7",
                                "model.lora.train_projector=true", "model.lora.projector_lr=3e-4", "run.name=setup")
    run = ContinualRun(cfg, sources)
    run_dir = run.run()
    setup = json.loads((run_dir / "matrix.json").read_text())["setup"]
    assert setup["versions"]["cvit-lightning"] == metadata.version("cvit-lightning")
    assert setup["versions"]["torch"] == metadata.version("torch") and set(setup["versions"]) == set(LIBRARIES)
    assert setup["world_size"] == 1 and setup["global_batch"] == 16 * 2 and setup["seed"] == 7
    assert setup["chat_format"] == "llava_v1" and setup["scoring"] == "official" and setup["image_aspect"] == "crop"
    assert setup["projector"] == {"trained": True, "lr": 3e-4} and setup["device"].startswith("cpu")
    report = (run_dir / "report.md").read_text()
    assert "## Setup" in report and "chat format llava_v1; images crop" in report and "global batch 32" in report
    assert "multimodal projector trained at lr 0.0003" in report and "epochs 1 per task (at most 1 steps)" in report
    assert setup["model"]["family"] == "llava" and setup["lora"]["target_modules"] == cfg.model.lora.target_modules
    # the prompts the model saw open with LLaVA-1.5's system sentence
    dm = run.datamodule
    batch = dm.collator.eval_batch([dm.test_set(dm.tasks["count_vqa"])[0]])
    prompt = dm.collator.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert prompt.split()[:4] == LLAVA_SYSTEM.split()[:4]


def test_chat_formats():
    assert chat_format("llava", "llava_v1").prompt == f"{LLAVA_SYSTEM} USER: <image>\n{{instruction}} ASSISTANT:"
    assert chat_format("llava").prompt == "USER: <image>\n{instruction} ASSISTANT:"
    with pytest.raises(ValueError, match="'llava_v1' does not apply to the 'qwen2_vl' family"):
        chat_format("qwen2_vl", "llava_v1")


def test_chat_format_of_another_family_is_refused_before_loading(small_config, qwen_config_dir):
    cfg, sources = small_config("model.family=qwen2_vl", f"model.path={qwen_config_dir}", "model.chat_format=llava_v1")
    with pytest.raises(ConfigError, match="'model.chat_format': 'llava_v1' is for the llava family, not 'qwen2_vl'"):
        ContinualRun(cfg, sources).prepare()


def test_cpu_model_is_the_cpuinfo_model_name():
    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
             if line.startswith("model name")] if info.is_file() else []
    if names:  # Linux
        assert cpu_model() == names[0]
    assert cpu_model().strip()


def test_results_header_states_time_machine_and_libraries():
    text = preamble(("seqlora", "composed/proglora_ema"), (0, 1, 2), 120.0, 1, True, 300.0)
    assert ("2.0 min of wall time (writing the benchmark and the base model folder included; 1 finished runs reused)"
            in text)
    assert "the runs' stages took 5.0 min summed over runs" in text
    assert cpu_model() in text and f"torch {library_versions()['torch']}" in text
    assert "(seqlora, composed/proglora_ema)" in text
    assert "seeds (seqlora) are the mean ± sample standard deviation over seeds 0, 1, 2 (runs" in text
    single = preamble(("seqlora",), (0,), 60.0, 0, False, 30.0, "make composed")
    assert "the world already built)" in single and "# The composed methods" in single
    assert "Seed 0.\n" in single and "standard deviation" not in single

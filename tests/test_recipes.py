"""The paper recipes in configs/recipe/: each loads with its own launch command (model and data paths swapped for the
tiny model and an empty folder), validates, builds its callbacks and its task stream, and sets the paper settings
its header claims; the README lists each with a command that loads. Also the model.family / config.json check."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from transformers import AutoConfig

from cvit.config.load import COMMAND_LINE, load_config
from cvit.config.registry import build_callbacks
from cvit.config.validate import validate_config
from cvit.data.stream import build_tasks
from cvit.errors import ConfigError

REPO = Path(__file__).parent.parent
RECIPES = REPO / "configs" / "recipe"
RECIPE_FILES = sorted(RECIPES.glob("*.yaml"))
README = REPO / "README.md"
SECTION = "## Reproducing the papers' tables"

COIN_ORIGIN = ["scienceqa", "textvqa", "imagenet", "gqa", "vizwiz", "grounding", "vqav2", "ocrvqa"]
UCIT_RAVICF = ["imagenet_r", "arxivqa", "vizwiz_caption", "iconqa", "clevr_math", "flickr30k"]
LLACA = {"grouping": {"name": "instruction_grouping", "threshold": 0.9, "similarity": "max", "new_group": "fresh"},
         "ema": {"name": "dynamic_ema", "formula": "paper", "granularity": "layer", "skip_new_adapters": False}}
HIDE = {"hide": {"name": "hide", "layout": "hide", "top_layers": [-1], "fusion": "linear", "epsilon": 1.0,
                 "temperature": 0.1, "alpha": 0.5, "beta": 0.5, "image_encoder": "clip", "text_encoder": "clip"}}
RECALL = {"name": "task_recall", "counts": "similarity", "phi": 200, "loss_weight": 2.0}

CVIT = ["scienceqa", "textvqa", "flickr30k", "imagenet", "gqa", "vqav2"]
SMOLORA = {"smolora": {"name": "smolora", "routing": "paper", "experts": 8, "r": 128, "alpha": 256,
                       "branches": ["vu", "if"]}}
# What each paper states (or its released scripts, as the recipe's header says): method, LoRA rank / alpha, order,
# templates, global batch, BWT denominator and the method's hyper-parameters (a subset of each callback's arguments);
# learning rate and weight decay where they are not 2e-4 and 0 (SMoLoRA's scripts).
PAPER = {
    "llaca_coin_table1.yaml": ("llaca", 128, 256, COIN_ORIGIN, "origin", 128, "T-1", LLACA),
    "llaca_coin_13b_table2.yaml": ("llaca", 128, 256, COIN_ORIGIN, "origin", 128, "T-1", LLACA),
    "proglora_coin_dynamic_table1.yaml": (
        "proglora_dynamic", 16, 32, COIN_ORIGIN, "origin", 64, "T",
        {"pool": {"name": "progressive_pool", "allocation": "dynamic", "projector_dim": 100},
         "recall": {**RECALL, "mode": "kl"}}),
    "proglora_coin_static_table2.yaml": (
        "proglora_static", 16, 32, COIN_ORIGIN, "origin", 64, "T",
        {"pool": {"name": "progressive_pool", "allocation": "static", "weights": "similarity"},
         "recall": {**RECALL, "mode": "replay"}}),
    "hide_ucit_table1.yaml": ("hide", 8, 16, UCIT_RAVICF, "origin", 96, "T-1", HIDE),
    "hide_coin_table2.yaml": ("hide", 8, 16, COIN_ORIGIN, "origin", 48, "T-1", HIDE),
    "smolora_cvit_single_table2.yaml": ("smolora", 128, 256, CVIT, "single", 64, "T-1", SMOLORA, 1e-4, 0.01),
    "smolora_cvit_multi_table2.yaml": ("smolora", 128, 256, CVIT, "multi", 64, "T-1", SMOLORA, 1e-4, 0.01),
}
ORDER_NAMES = {tuple(COIN_ORIGIN): "origin", tuple(UCIT_RAVICF): "RAVICF", tuple(CVIT): "default"}

PATH_KEYS = ("model.path", "data.root")  # and every *.clip_path: placeholders of the user's folders
# a key=value a header suggests: a known section, dotted keys, a value up to a space or closing punctuation
SUGGESTED = re.compile(r"(?<![\w./-])((?:model|benchmark|data|train|eval|callbacks|run)(?:\.\w+)+)=([^\s,;)]+)")


def header(path: Path) -> str:
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return "\n".join(lines)


def launch_command(path: Path) -> str:
    commands = [line for line in header(path).splitlines() if line.startswith(".venv/bin/cvit fit ")]
    assert len(commands) == 1, f"{path.name}: expected one launch command in the header, found {commands}"
    return commands[0]


def parse_command(command: str) -> tuple[list[Path], list[str]]:
    """(config files, key=value overrides) of a `cvit fit` command line."""
    words = shlex.split(command)
    assert words[:2] == [".venv/bin/cvit", "fit"], command
    files, overrides, rest = [], [], iter(words[2:])
    for word in rest:
        if word == "-c":
            files.append(REPO / next(rest))
        else:
            assert "=" in word, f"not a key=value override: {word!r} in {command}"
            overrides.append(word)
    return files, overrides


def localised(overrides: list[str], model: Path, root: Path) -> list[str]:
    """The command's overrides with the user's folders replaced by the tiny model and an empty data root; checks the
    placeholders follow the README's convention (/models/..., /data/...)."""
    out = []
    for item in overrides:
        key, value = item.split("=", 1)
        if key == "model.path" or key.endswith(".clip_path"):
            assert value.startswith("/models/"), item
            value = str(model if key == "model.path" else root)
        elif key == "data.root":
            assert value.startswith("/data/"), item
            value = str(root)
        out.append(f"{key}={value}")
    return out


def check_builds(cfg, sources, model: Path) -> tuple[dict, list]:
    """validate_config, the callbacks (and their model checks on the tiny model's config) and the task stream."""
    validate_config(cfg, sources)
    callbacks = build_callbacks(cfg.callbacks, sources, cfg.method.mode)
    model_config = AutoConfig.from_pretrained(model)
    for callback in callbacks.values():
        callback.check_model(model_config)
    stream, _ = build_tasks(cfg.benchmark, sources)
    return callbacks, stream


def load_launch(path: Path, model: Path, root: Path, *extra: str):
    files, overrides = parse_command(launch_command(path))
    return load_config(files, localised(overrides, model, root) + list(extra))


def test_every_recipe_has_its_papers_settings_listed():
    assert len(RECIPE_FILES) >= 3, f"no recipes found in {RECIPES}"
    assert sorted(p.name for p in RECIPE_FILES) == sorted(PAPER)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_recipe_launch_command_loads_validates_and_builds(name, tiny_model_dir, tmp_path):
    path = RECIPES / name
    command = launch_command(path)
    assert f"-c configs/recipe/{name} " in command + " "
    files, overrides = parse_command(command)
    assert files == [path], "the launch command runs the recipe alone"
    assert {o.split("=", 1)[0] for o in overrides} >= set(PATH_KEYS)
    cfg, sources = load_launch(path, tiny_model_dir, tmp_path)
    callbacks, stream = check_builds(cfg, sources, tiny_model_dir)
    assert list(callbacks) == list(PAPER[name][7])
    assert [t.name for t in stream] == PAPER[name][3]


@pytest.mark.parametrize("name", sorted(PAPER))
def test_recipe_sets_the_papers_settings(name, tiny_model_dir, tmp_path):
    method, rank, alpha, order, templates, batch, bwt, method_args, *optimizer = PAPER[name]
    lr, weight_decay = optimizer or (2e-4, 0.0)
    path = RECIPES / name
    cfg, _ = load_launch(path, tiny_model_dir, tmp_path)
    model, lora, train = cfg.model, cfg.model.lora, cfg.train
    assert cfg.method.name == method and cfg.method.mode == "sequential"
    assert model.family == "llava" and model.chat_format == "llava_v1" and model.max_length == 2048
    # the papers train full bf16 weights (no 4-bit) and the shared projector at 2e-5 beside LoRA's 2e-4
    assert model.quantization == "none" and model.compute_dtype == "bfloat16" and train.precision == "bf16-mixed"
    assert model.gradient_checkpointing
    assert lora.train_projector and lora.projector_lr == pytest.approx(2e-5)
    assert (lora.r, lora.alpha, lora.dropout) == (rank, alpha, 0.05)
    assert train.lr == pytest.approx(lr) and train.epochs == 1 and train.max_steps == -1
    assert train.warmup_ratio == pytest.approx(0.03) and train.weight_decay == pytest.approx(weight_decay)
    assert cfg.benchmark.order == ORDER_NAMES[tuple(order)]  # named orders of the specs
    assert cfg.benchmark.templates == templates and cfg.benchmark.protocol.bwt_denominator == bwt
    assert cfg.eval.scoring == "official"
    assert cfg.data.max_train_samples is None and cfg.data.max_test_samples is None
    assert cfg.run.name == path.stem.replace("_", "-")
    for key, expected in method_args.items():
        got = {k: v for k, v in dict(cfg.callbacks[key]).items() if k in expected}
        assert {k: (list(v) if k == "top_layers" else v) for k, v in got.items()} == expected, key


@pytest.mark.parametrize("name", sorted(PAPER))
def test_recipe_header_states_what_the_recipe_sets(name, tiny_model_dir, tmp_path):
    path = RECIPES / name
    text = header(path)
    cfg, _ = load_launch(path, tiny_model_dir, tmp_path)
    table = re.search(r"table(\d+)", path.stem).group(1)
    assert f"Table {table}" in text.split("\n\n")[0], "the first paragraph names the paper's table"
    claim = re.search(r"global batch (\d+) = data\.batch_size (\d+) x\s+accumulate_grad_batches (\d+) x 1\s+device",
                      text)
    assert claim, "the header states the global batch as data.batch_size x accumulate_grad_batches x 1 device"
    total, per_step, accumulate = map(int, claim.groups())
    assert (per_step, accumulate) == (cfg.data.batch_size, cfg.train.accumulate_grad_batches)
    assert total == per_step * accumulate == PAPER[name][5]
    assert "2e-5" in text and "bf16" in text and "no 4-bit" in text
    assert "released scripts" in text and "Hardware" in text


@pytest.mark.parametrize("name", sorted(PAPER))
def test_every_override_a_header_suggests_still_builds(name, tiny_model_dir, tmp_path):
    """The alternatives a header names (the released code's reading, QLoRA, another file layout) are real keys."""
    path = RECIPES / name
    launch = launch_command(path)
    suggested = [f"{k}={v}" for k, v in SUGGESTED.findall(header(path).replace(launch, ""))
                 if "<" not in k and k not in PATH_KEYS and not k.endswith(".clip_path")]
    for override in suggested:
        cfg, sources = load_launch(path, tiny_model_dir, tmp_path, override)
        assert OmegaConf.select(cfg, override.split("=", 1)[0]) is not None, override
        check_builds(cfg, sources, tiny_model_dir)
    if name.startswith("llaca"):  # the released code's reading, all at once
        released = [o for o in suggested if o.startswith("callbacks.")]
        assert len(released) >= 5
        cfg, sources = load_launch(path, tiny_model_dir, tmp_path, *released)
        check_builds(cfg, sources, tiny_model_dir)


def test_hide_recipes_need_the_clip_folder(tiny_model_dir, tmp_path):
    for name in ("hide_ucit_table1.yaml", "hide_coin_table2.yaml"):
        with pytest.raises(ConfigError, match=r"missing required key\(s\): callbacks\.hide\.clip_path"):
            load_config([RECIPES / name], [f"model.path={tiny_model_dir}", f"data.root={tmp_path}"])


def readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION + "\n")
    end = text.index("\n## ", start + len(SECTION))
    assert text[end + 1:].startswith("## Real benchmarks"), "the section comes right before the real benchmarks'"
    return text[start:end]


def test_readme_lists_every_recipe_with_a_command_that_loads(tiny_model_dir, tmp_path):
    section = readme_section()
    commands = re.findall(r"`(\.venv/bin/cvit (?:fit|validate) [^`]+)`", section)
    commands += re.findall(r"^(\.venv/bin/cvit (?:fit|validate) .+)$", section, flags=re.M)
    named = set()
    for command in commands:
        files, overrides = parse_command(command.replace("cvit validate ", "cvit fit ", 1))
        assert all(f.is_file() for f in files), command
        named.update(f.name for f in files if f.parent == RECIPES)
        cfg, sources = load_config(files, localised(overrides, tiny_model_dir, tmp_path))
        check_builds(cfg, sources, tiny_model_dir)
    rows = [line for line in section.splitlines() if line.startswith("| ") and "configs/recipe/" in line]
    assert sorted(named) == sorted(PAPER) and len(rows) == len(PAPER)
    for row in rows:  # the table's memory and time: stated by the paper, or labelled estimates
        cells = row.split(" | ")
        assert all("paper:" in cell and "estimate" in cell for cell in cells[3:5]), row
    assert "| SMoLoRA" in section and "pending" not in section


def assemble_command(path: Path) -> dict[str, str] | None:
    """The options of the header's `cvit assemble-llava` command (the recipe's starting model), or None."""
    lines = [line for line in header(path).splitlines() if line.startswith(".venv/bin/cvit assemble-llava ")]
    if not lines:
        return None
    words = shlex.split(lines[0])
    return dict(zip(words[2::2], words[3::2], strict=True))


ASSEMBLED = [name for name in sorted(PAPER) if assemble_command(RECIPES / name)]


def test_the_papers_that_start_from_vicuna_and_a_stage1_projector_are_assembled():
    assert ASSEMBLED == ["llaca_coin_13b_table2.yaml", "llaca_coin_table1.yaml", "smolora_cvit_multi_table2.yaml",
                         "smolora_cvit_single_table2.yaml"]


@pytest.mark.parametrize("name", ASSEMBLED)
def test_a_recipe_starts_from_the_folder_its_header_assembles(name, tmp_path):
    from cvit.run.assemble import assemble_llava
    from tests.test_assemble import save_clip, save_llama, save_projector

    options = assemble_command(RECIPES / name)
    assert set(options) == {"--llm", "--projector", "--vision", "--out"}
    assert all(value.startswith("/models/") for value in options.values())
    files, overrides = parse_command(launch_command(RECIPES / name))
    assert f"model.path={options['--out']}" in overrides, "the launch command uses the assembled folder"
    assembled = assemble_llava(save_llama(tmp_path / "vicuna"), save_projector(tmp_path / "mm_projector.bin"),
                               save_clip(tmp_path / "clip"), tmp_path / "assembled", "float32")
    cfg, sources = load_launch(RECIPES / name, assembled, tmp_path)
    check_builds(cfg, sources, assembled)


def fake_model(folder: Path, model_type: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": ["X"]}))
    return folder


def test_a_family_that_does_not_match_the_model_folder_fails_before_loading(tiny_model_dir, tmp_path):
    recipe = RECIPES / "llaca_coin_table1.yaml"
    qwen = fake_model(tmp_path / "qwen", "qwen2_vl")  # no weights: nothing could load
    cfg, sources = load_config([recipe], [f"model.path={qwen}", f"data.root={tmp_path}"])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, sources)
    message = str(err.value)
    assert message.startswith(f"{recipe}: key 'model.family': 'llava'")
    assert str(qwen / "config.json") in message and "model_type 'qwen2_vl'" in message
    assert "set model.family=qwen2_vl" in message
    # the other way round, set on the command line: the tiny LLaVA is model_type llava
    cfg, sources = load_config([recipe], [f"model.path={tiny_model_dir}", f"data.root={tmp_path}",
                                          "model.family=qwen2_vl", "model.chat_format=minimal"])
    with pytest.raises(ConfigError, match=rf"^{COMMAND_LINE}: key 'model\.family': 'qwen2_vl' .*model_type 'llava' "
                                          r"\(set model\.family=llava\)"):
        validate_config(cfg, sources)
    # LLaVA's original (non Hugging Face) release: no family fits, the message says what the kit loads
    original = fake_model(tmp_path / "llava-v1.5-7b", "llava_llama")
    cfg, sources = load_config([recipe], [f"model.path={original}", f"data.root={tmp_path}"])
    with pytest.raises(ConfigError, match=r"model_type 'llava_llama' \(the kit loads Hugging Face-format folders"):
        validate_config(cfg, sources)
    # a matching folder passes (the recipe tests cover the tiny LLaVA; here a bare config.json of the right type)
    cfg, sources = load_config([recipe], [f"model.path={fake_model(tmp_path / 'llava', 'llava')}",
                                          f"data.root={tmp_path}"])
    validate_config(cfg, sources)


def test_the_family_check_comes_after_the_folder_check(tmp_path):
    cfg, sources = load_config([RECIPES / "llaca_coin_table1.yaml"],
                               [f"model.path={tmp_path / 'missing'}", f"data.root={tmp_path}"])
    with pytest.raises(ConfigError, match="key 'model.path': model folder not found"):
        validate_config(cfg, sources)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    cfg, sources = load_config([RECIPES / "llaca_coin_table1.yaml"], [f"model.path={broken}", f"data.root={tmp_path}"])
    with pytest.raises(ConfigError, match=r"broken/config\.json: not a JSON object with 'model_type'"):
        validate_config(cfg, sources)

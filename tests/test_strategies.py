"""Data parallelism in one process: which strategies a run may use, the rank before Lightning knows it, the
sharded sampler, the module staying on its device between stages, and a run writing nothing outside its run
directory and the temp folder (the 2-process runs: test_parallel.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from lightning.fabric.utilities.device_dtype_mixin import _DeviceDtypeModuleMixin
from omegaconf import OmegaConf

from cvit.data.sampler import ResumableSampler
from cvit.errors import ConfigError
from cvit.run.loop import ContinualRun
from cvit.run.parallel import launch_rank, shard
from tests.writes import recorded_writes


@pytest.mark.parametrize(("overrides", "method", "match"), [
    (["train.strategy=ddp_spawn"], "seqlora", r"command line: key 'train\.strategy': 'ddp_spawn' starts new "
                                              r"processes at every fit.*use 'ddp'"),
    (["train.strategy=ddp_fork_find_unused_parameters_true"], "seqlora", r"starts new processes at every fit"),
    (["train.strategy=dpp"], "seqlora", r"key 'train\.strategy': unknown strategy 'dpp'; known: auto, ddp,"),
    (["train.strategy=fsdp"], "seqlora", r"'fsdp' needs a GPU, and train\.accelerator is 'cpu'"),
    (["train.strategy=fsdp", "train.accelerator=gpu"], "llaca",
     r"'fsdp' shards parameters or gradients.*callback 'ema' \(DynamicEMACallback, .*llaca\.yaml\) reads every "
     r"trainable parameter"),
    (["train.devices=0"], "seqlora", r"key 'train\.devices': must be >= 1, got 0"),
])
def test_strategies_the_loop_cannot_drive_are_refused_before_loading(small_config, overrides, method, match):
    cfg, sources = small_config(*overrides, method=method)
    with pytest.raises(ConfigError, match=match):
        ContinualRun(cfg, sources).prepare()


def test_deepspeed_needs_its_package_or_is_refused_with_the_ema(small_config):
    cfg, sources = small_config("train.strategy=deepspeed_stage_1", "train.accelerator=gpu", method="llaca")
    with pytest.raises(ConfigError, match=r"deepspeed"):
        ContinualRun(cfg, sources).prepare()


@pytest.mark.parametrize(("env", "rank"), [
    ({}, 0),  # Lightning's launcher's main process
    ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, 1),  # a process it started
    ({"LOCAL_RANK": "2", "NODE_RANK": "1"}, 6),  # on the second node, 4 per node
    ({"RANK": "5", "LOCAL_RANK": "1"}, 5),  # torchrun
    ({"SLURM_PROCID": "3"}, 3),  # srun
])
def test_the_rank_comes_from_the_launchers_environment(monkeypatch, env, rank):
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert launch_rank(OmegaConf.create({"devices": 4})) == rank


@pytest.mark.parametrize("size", [16, 13, 3])
def test_ranks_take_disjoint_shares_of_one_permutation_and_a_step_sees_one_processs_batch(size):
    single = list(ResumableSampler(size, 7, lambda: 0))
    ranks = [list(ResumableSampler(size, 7, lambda: 0, rank, 4)) for rank in range(4)]
    assert len({len(share) for share in ranks}) == 1  # equal steps on every rank
    padded = [ranks[index % 4][index // 4] for index in range(4 * len(ranks[0]))]
    assert padded[:size] == single  # batch B on 4 ranks = the single process's next 4B samples
    assert padded[size:] == single[: len(padded) - size]  # padding wraps around, as DistributedSampler's


def test_a_resumed_rank_skips_what_it_trained_on():
    full = list(ResumableSampler(20, 3, lambda: 0, 1, 2))
    assert list(ResumableSampler(20, 3, lambda: 4, 1, 2)) == full[4:]


def test_test_records_are_sharded_uneven_without_padding():
    shares = [shard(7, rank, 2) for rank in range(2)]
    assert shares == [[0, 2, 4, 6], [1, 3, 5]]


def test_the_module_stays_on_its_device_between_stages(small_config, monkeypatch):
    moved = []
    original = _DeviceDtypeModuleMixin.cpu
    monkeypatch.setattr(_DeviceDtypeModuleMixin, "cpu", lambda self: moved.append(type(self).__name__) or
                        original(self))
    cfg, sources = small_config("benchmark.order=[colour_mc,count_vqa]", "train.max_steps=1", "eval.unseen=false")
    run = ContinualRun(cfg, sources)
    run.run()
    assert "ContinualModule" not in moved  # Lightning's teardown after each fit and predict asked; it stayed
    run.module.stay_on_device = False
    run.module.cpu()
    assert moved == ["ContinualModule"]


def test_a_run_writes_only_to_its_run_directory_and_the_temp_folder(small_config, tmp_path, monkeypatch):
    # a cluster's install and data root are read-only: nothing may be written there (tests/writes.py)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    cfg, sources = small_config("benchmark.order=[caption,count_vqa]", "train.max_steps=1", "eval.unseen=false",
                                "run.name=cluster")
    run = ContinualRun(cfg, sources)
    with recorded_writes() as written:
        run.run()
    allowed = (str(run.run_dir.path.resolve()), str(temp.resolve()))
    assert written and [p for p in written if str(Path(p).resolve()).startswith(allowed[0])]
    assert [p for p in written if not str(Path(p).resolve()).startswith(allowed)] == []

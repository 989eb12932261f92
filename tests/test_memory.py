"""The replay memory behind experience replay and ProgLoRA's task recall: quotas, the reservoir's uniform
sampling, similarity sizing, determinism, and the same replayed indices after a resume."""

from __future__ import annotations

import pytest

from cvit.methods.memory import ReplayMemory, similarity_counts
from tests.conftest import CONFIGS
from tests.test_loop import SHORT, refused_before_loading, straight_and_resumed

REPLAY = [CONFIGS / "method" / "replay.yaml"]


def test_quota_keeps_size_distinct_indices_per_task_seeded():
    memory = ReplayMemory("quota", size=5, seed=3)
    memory.store("a", 0, 20)
    memory.store("b", 1, 3)  # fewer records than the quota: all of them
    buffer = memory.buffer
    assert len(buffer["a"]) == 5 and len(set(buffer["a"])) == 5 and all(0 <= i < 20 for i in buffer["a"])
    assert sorted(buffer["b"]) == [0, 1, 2]
    again = ReplayMemory("quota", size=5, seed=3)
    again.store("a", 0, 20)
    assert again.buffer["a"] == buffer["a"]
    other = ReplayMemory("quota", size=5, seed=4)
    other.store("a", 0, 20)
    assert other.buffer["a"] != buffer["a"]
    assert memory.recall() == buffer  # every kept index is replayed


def test_reservoir_holds_its_size_and_samples_the_stream_uniformly():
    sizes, capacity, trials = (100, 300), 40, 300
    first_task, first_half = 0.0, 0.0
    for seed in range(trials):
        memory = ReplayMemory("reservoir", size=capacity, seed=seed)
        memory.store("a", 0, 20)
        assert sum(map(len, memory.buffer.values())) == 20  # not full yet: everything is kept
        memory = ReplayMemory("reservoir", size=capacity, seed=seed)
        for index, (name, size) in enumerate(zip("ab", sizes, strict=True)):
            memory.store(name, index, size)
        buffer = memory.buffer
        assert sum(map(len, buffer.values())) == capacity
        for kept, size in zip(buffer.values(), sizes, strict=True):
            assert len(set(kept)) == len(kept) and all(0 <= i < size for i in kept)
        first_task += len(buffer["a"]) / capacity
        first_half += sum(i < sizes[1] // 2 for i in buffer["b"]) / max(1, len(buffer["b"]))
    # each of the 400 records is kept with probability 40/400: task a's share is 100/400, and within task b
    # the records offered first are as likely to stay as the last ones (a buffer that overwrote a slot at every
    # record would keep b's tail; one that stopped at full, a's head)
    assert first_task / trials == pytest.approx(0.25, abs=0.02)
    assert first_half / trials == pytest.approx(0.5, abs=0.03)


def test_reservoir_state_round_trip_continues_identically():
    whole = ReplayMemory("reservoir", size=10, seed=1)
    for index, name in enumerate("abc"):
        whole.store(name, index, 30)
    part = ReplayMemory("reservoir", size=10, seed=1)
    part.store("a", 0, 30)
    part.store("b", 1, 30)
    restored = ReplayMemory("reservoir", size=10, seed=1)
    restored.load_state_dict(part.state_dict())
    restored.store("c", 2, 30)
    assert restored.buffer == whole.buffer and list(restored.buffer) == ["a", "b", "c"]


def test_similarity_recall_takes_one_minus_w_times_phi_of_each_task():
    assert similarity_counts([0.25, 1.0, 0.0, 0.333], 200) == [150, 0, 200, 133]
    memory = ReplayMemory("similarity", size=8, seed=0)
    memory.store("a", 0, 50)
    memory.store("b", 1, 50)
    recalled = memory.recall([0.5, 0.0])
    assert recalled == {"a": memory.buffer["a"][:4], "b": memory.buffer["b"]}
    with pytest.raises(ValueError, match="one weight per earlier task"):
        memory.recall([0.5])


def test_bad_policy_and_size_are_refused():
    with pytest.raises(ValueError, match="policy must be one of quota, reservoir, similarity"):
        ReplayMemory("fifo")
    with pytest.raises(ValueError, match="size must be >= 0"):
        ReplayMemory("quota", -1)


def test_replay_callback_refuses_bad_arguments_before_loading(small_config):
    refused_before_loading(small_config, REPLAY, "callbacks.replay.policy=fifo",
                           r"callbacks\.replay.*policy must be one of")
    refused_before_loading(small_config, REPLAY, "callbacks.replay.loss_weight=-1",
                           r"callbacks\.replay.*loss_weight must be >= 0")
    refused_before_loading(small_config, REPLAY, "callbacks.replay.policy=similarity",
                           r"allocation")  # similarity sizing needs the progressive pool before it


@pytest.mark.parametrize("policy", ["quota", "reservoir"])
def test_replay_resumes_with_the_same_memory_and_replayed_indices(small_config, policy):
    overrides = (*SHORT, "eval.unseen=false", f"callbacks.replay.policy={policy}", "callbacks.replay.size=6")
    straight, resumed = straight_and_resumed(small_config, overrides, REPLAY, "grounding")
    memory = straight.callbacks["replay"].buffer
    assert list(memory) == ["colour_mc", "count_vqa", "grounding"]
    kept = [len(v) for v in memory.values()]
    assert kept == [6, 6, 6] if policy == "quota" else sum(kept) == 6
    assert resumed.callbacks["replay"].buffer == memory
    replayed = [(task.name, indices, weight) for task, indices, weight in straight.datamodule.replay]
    assert replayed and replayed == [(t.name, i, w) for t, i, w in resumed.datamodule.replay]
    assert straight.callbacks["replay"].recalled == resumed.callbacks["replay"].recalled


# cvit recipes. Every recipe creates the environment in .venv first if it is missing.
PY       := .venv/bin/python
CVIT     := .venv/bin/cvit
UV       := .venv/bin/uv
WORK     ?= work
CONFIG   ?= configs/experiment/demo.yaml
ARGS     ?=
JOBS     ?= 2
SEEDS    ?= 0 1 2

.PHONY: install lock demo results composed world world-check calibration scaling real-shapes test lint bench params \
	plan parallel-check \
	run clean ladder-llaca ladder-proglora ladder-hide ladder-smolora ladder-baselines

# The versions every figure was made with are pinned in requirements.lock (make lock re-resolves it). uv installs in
# parallel (about 30 s here against pip's 2 min); it is given pip's local wheel folder when pip has one (where the
# CPU build of torch is found). It compiles the packages' bytecode once: where PYTHONDONTWRITEBYTECODE is set, as on
# the 2-core machines here, every process would otherwise compile what it imports (about 25 s of each test process).
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell python3 -m pip config get global.find-links 2>/dev/null))
UV_ENV := $(if $(FIND_LINKS),UV_FIND_LINKS="$(FIND_LINKS)")
.venv/.installed: pyproject.toml requirements.lock
	python3 -m venv .venv
	$(PY) -m pip install -q uv==0.13.9
	$(UV_ENV) $(UV) pip install -q --python $(PY) --compile-bytecode -r requirements.lock
	$(UV) pip install -q --python $(PY) --no-deps -e .
	touch $@

install: .venv/.installed

lock: install
	$(UV_ENV) $(UV) pip compile -q pyproject.toml --extra dev -c constraints.txt --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 -o requirements.lock

demo: install
	$(CVIT) demo --work $(WORK) --jobs $(JOBS)

# every method and baseline on the embedded default: results/synthetic.md and its plots (SeqLoRA, joint and the
# papers' methods under each of SEEDS)
results: install
	$(CVIT) results --work $(WORK) --out results --jobs $(JOBS) --seeds $(SEEDS)

# the composed methods beside the methods they are made of (seed 0; reuses make results' runs): results/composed/
composed: install
	$(CVIT) results --composed --work $(WORK) --out results --jobs $(JOBS)

# base-train the tiny model from scratch and commit its weights as the world's base (cvit/synthetic/base/)
world: install
	$(CVIT) world build --work $(WORK)/world-build

# the world under two CPU capabilities and two thread counts: the same benchmark, base, zero-shot and SeqLoRA?
world-check: install
	$(CVIT) world check --work $(WORK)/world-check

# the world's quantities against the real regime's (zero-shot, SeqLoRA and joint): results/calibration.md
calibration: install
	$(CVIT) world calibration --work $(WORK) --out results --jobs $(JOBS)

# each method's cost after 3, 6 and 12 tasks of the long synthetic stream: results/scaling.md and scaling.png
scaling: install
	$(PY) scripts/scaling.py --work $(WORK) --out results

# every method through the real loop at LLaVA-1.5-7B's and Qwen2-VL-2B's widths (one decoder layer, random weights),
# NF4 and bf16, against cvit plan's arithmetic for the same shapes: results/real_shapes.md
real-shapes: install
	$(PY) scripts/real_shapes.py --work $(WORK)/real_shapes --out results

# the suite on one pytest-xdist worker per logical CPU (TEST_JOBS=0: in this process), a test file per worker at a
# time (test_parallel.py's tests share their two-process runs); the 25 slowest tests printed at the end
TEST_JOBS ?= logical
test: install
	$(PY) -m pytest tests -n $(TEST_JOBS) --dist loadfile --durations=25

lint: install
	.venv/bin/ruff check .

bench: install
	$(PY) scripts/bench.py

# adapter parameter counts of ProgLoRA and HiDe-LLaVA at LLaVA-1.5-7B shapes (meta device, no weights)
params: install
	$(PY) scripts/param_counts.py

# each method's adapter parameters and peak GPU memory at LLaVA-1.5-7B on CoIN (meta device, no weights)
plan: install
	$(CVIT) plan -c configs/model/llava15_7b.yaml -c configs/benchmark/coin.yaml $(ARGS)

# every method on 1 and on 2 CPU processes (DDP) at the same global batch, side by side
parallel-check: install
	$(PY) scripts/parallel_check.py --work $(WORK)

# LLaCA's Table 6 ablation ladder on the embedded default (and the released pipeline), metrics side by side
ladder-llaca: install
	$(CVIT) demo --work $(WORK) --jobs $(JOBS) --methods seqlora stable_ema dynamic_ema dynamic_ema_released llaca llaca_released

# ProgLoRA's Table 3 ablations (static and dynamic) beside SeqLoRA
ladder-proglora: install
	$(CVIT) demo --work $(WORK) --jobs $(JOBS) --methods seqlora proglora_static proglora_static_w1 proglora_static_no_recall \
		proglora_static_random_recall proglora_dynamic proglora_dynamic_no_recall

# HiDe-LLaVA's Table 3 layouts beside SeqLoRA
ladder-hide: install
	$(CVIT) demo --work $(WORK) --jobs $(JOBS) --methods seqlora hide hide_average hide_merge_all hide_merge_all_but_top \
		hide_expand_all hide_expand_all_but_top

# SMoLoRA's routings and branch ablations beside SeqLoRA, with single- and with multi-type instruction templates.
# Scaled to the tiny model as the paper's ratio: SMoLoRA's total rank (8 experts of rank 1) is the SeqLoRA rank (8)
SMOLORA_TINY = --set callbacks.smolora.r=8 callbacks.smolora.alpha=16
SMOLORA_LADDER = seqlora smolora smolora_released smolora_vu_only smolora_if_only
ladder-smolora: install
	$(CVIT) demo --work $(WORK) --jobs $(JOBS) --methods $(SMOLORA_LADDER) $(SMOLORA_TINY)
	$(CVIT) demo --work $(WORK) --jobs $(JOBS) --templates multi --methods $(SMOLORA_LADDER) $(SMOLORA_TINY)

# The baselines the papers' tables compare with; MoELoRA scaled to the tiny model (8 experts sharing SeqLoRA's rank 8)
ladder-baselines: install
	$(CVIT) demo --work $(WORK) --jobs $(JOBS) --methods zeroshot seqlora joint replay ewc lwf moelora olora \
		--set callbacks.moelora.r=8 callbacks.moelora.alpha=16

run: install
	$(CVIT) fit -c $(CONFIG) $(ARGS)

clean:
	rm -rf $(WORK)

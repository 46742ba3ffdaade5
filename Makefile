# rlhf-img: `make quickstart` (install + the main job on the embedded default), `make test` (install + tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/pip --disable-pip-version-check -q

.PHONY: install test test-fast quickstart shapes-tiny bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip 2>&1 | grep -v "is ignored" || true
	# torch first, pinned: the CUDA build (runs on CPU too) from the local wheel cache / PyPI
	$(PIP) install torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "is ignored" || true
	$(PIP) install -e '.[dev,deepspeed,ocr,judge]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import rlhf_img, torch, trl; print('rlhf-img', rlhf_img.__version__, '| torch', torch.__version__, '| trl', trl.__version__)"
	touch $(STAMP)

install: $(STAMP)

# everything CI needs: tests/unit, tests/families (the contract suite over every registered family and each
# family's quirks), tests/integration, tests/distributed, and the parity replays in tests/
test: $(STAMP)
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(BIN)/python -m pytest -q --durations=15

# the inner loop: the same without the tests marked slow (real commands, several processes, torch.compile)
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(BIN)/python -m pytest -q -m "not slow" --durations=15

quickstart: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/rlhf-img quickstart --checkpoint checkpoints/shapes-tiny --recipe recipes/shapes-grpo.yaml --output_dir runs/quickstart

# Rebuild checkpoints/shapes-tiny from scratch (see checkpoints/README.md for times on 2 cores).
shapes-tiny: $(STAMP)
	$(BIN)/rlhf-img pretrain-tokenizer recipes/shapes-tokenizer.yaml
	$(BIN)/rlhf-img sft recipes/shapes-sft.yaml
	$(BIN)/rlhf-img eval runs/shapes-sft

bench: $(STAMP)
	$(BIN)/python bench/rollouts.py --json runs/bench-rollouts.json

clean:
	rm -rf runs wandb .pytest_cache

# rlhf-img: `make quickstart` (install + the main job on the embedded default), `make test` (install + tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/pip --disable-pip-version-check -q

.PHONY: install test test-fast quickstart shapes-tiny bench clean docs lint test-min-deps

$(STAMP): pyproject.toml rlhf_img/_version.py
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

# the documentation site into site/ (docs/contributing/docs.md): --strict, so a broken link or anchor, a page missing
# from the nav or a config field without help text fails; the reference pages are generated from the code
DOCS_STAMP := $(VENV)/.docs-stamp
$(DOCS_STAMP): $(STAMP)
	$(PIP) install -e '.[docs]' 2>&1 | grep -v "is ignored" || true
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	HF_HUB_OFFLINE=1 NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# ruff over the whole tree (config in pyproject.toml; .pre-commit-config.yaml runs the same): lint, then whether
# `ruff format` would change anything (it does not rewrite files here)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# the dependency floors of pyproject.toml are true: a separate venv with the lowest allowed transformers, trl,
# accelerate, peft and datasets (constraints/min-deps.txt) runs the sampling and family tests (about 6 min on
# 2 cores: 1.5 building the venv, 4 the tests)
MIN_VENV  := .venv-min-deps
MIN_STAMP := $(MIN_VENV)/.installed-stamp
$(MIN_STAMP): pyproject.toml rlhf_img/_version.py constraints/min-deps.txt
	test -x $(MIN_VENV)/bin/python || $(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/pip --disable-pip-version-check -q install torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "is ignored" || true
	$(MIN_VENV)/bin/pip --disable-pip-version-check -q install -e '.[dev]' -c constraints/min-deps.txt 2>&1 | grep -v "is ignored" || true
	$(MIN_VENV)/bin/python -c "import transformers, trl, accelerate, peft, datasets as d; print(*(f'{m.__name__} {m.__version__}' for m in (transformers, trl, accelerate, peft, d)), sep=' | ')"
	touch $(MIN_STAMP)

test-min-deps: $(MIN_STAMP)
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(MIN_VENV)/bin/python -m pytest -q --durations=10 tests/unit/test_fast_sampler.py tests/unit/test_cfg_modes.py tests/families

bench: $(STAMP)
	$(BIN)/python bench/rollouts.py --json runs/bench-rollouts.json

clean:
	rm -rf runs wandb .pytest_cache site

# Set-up is two commands on a fresh machine: `make demo` and `make test`.
# The venv installs torch 2.13.0 first (the CPU wheel here), then DeepSpeed without build isolation (its setup
# imports torch; an isolated build would fetch another torch), then cogvid itself, editable, with its dev extra.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cogvid-installed
FIXTURE := tests/fixtures/sat_tiny_2b

.PHONY: venv test demo lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0
	DS_BUILD_OPS=0 $(PY) -m pip install -q --no-build-isolation deepspeed==0.19.8
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# Sample 50 steps with the tiny model from the original SAT checkpoint bundled in the tests, then compare
# against the latents the original SAT code produced for the same seed and text embeddings.
demo: $(STAMP)
	$(VENV)/bin/cogvid-sample model=tiny model.ckpt=$(FIXTURE)/dit_ckpt \
	  infer.text_embeddings=$(FIXTURE)/sampler_50step.safetensors infer.seed=20240003 \
	  infer.output_dir=outputs/demo
	$(PY) scripts/compare_latents.py outputs/demo/latents/000_seed20240003.safetensors \
	  $(FIXTURE)/sampler_50step.safetensors

lint: $(STAMP)
	$(VENV)/bin/ruff check cogvid tests scripts

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache

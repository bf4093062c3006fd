# Set-up is two commands on a fresh machine: `make demo` and `make test`.
# The venv installs torch 2.13.0 first (the CPU wheel here), then DeepSpeed without build isolation (its setup
# imports torch; an isolated build would fetch another torch), then cogvid itself, editable, with its dev extra.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cogvid-installed

.PHONY: venv test demo fidelity shapes-model shapes-lora lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0
	DS_BUILD_OPS=0 $(PY) -m pip install -q --no-build-isolation deepspeed==0.19.8
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

# The tests run in TEST_WORKERS processes (pytest-xdist), a module's tests in one of them (--dist loadscope), so that
# a module-scoped fixture is built once and the multi-process training runs (one module) never overlap. (loadgroup's
# xdist_group marks have no effect with pytest 9.2 and xdist 3.8.0: the @group suffix never reaches the node ids.)
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --durations=20

# The main job on a bundled default: the shapes model shipped in cogvid/weights/shapes (trained by cogvid itself:
# `make shapes-model`) samples one prompt into an MP4 and a PNG strip of its frames, and the log says where.
DEMO_PROMPT ?= a red circle moving right
demo: $(STAMP)
	$(VENV)/bin/cogvid-sample model=shapes infer.prompt="$(DEMO_PROMPT)" infer.output_dir=outputs/demo \
	  infer.frame_strip=true

# How close cogvid's numbers are to the original SAT code's outputs on the tiny SAT fixture (the tests check them).
fidelity: $(STAMP)
	$(PY) scripts/fidelity_report.py

# Train the shapes model from nothing (data, tokenizer + T5, VAE, latents, DiT, then the VAE and DiT refined; fixed
# seeds; about 3 hours on 2 idle CPU cores, docs/shapes.md#the-recipe)
# into cogvid/weights/shapes (what model=shapes loads); stages finished in $(SHAPES_WORK)/recipe.json are skipped.
SHAPES_WORK ?= outputs/shapes-model
shapes-model: $(STAMP)
	$(PY) scripts/make_shapes_model.py $(SHAPES_WORK)

# The LoRA that teaches the shipped shapes model the colour "cyan" (data, latents, LoRA run; fixed seeds) into
# cogvid/weights/shapes/lora-cyan (what `cogvid-sample model=shapes adapter=cyan` loads).
LORA_WORK ?= outputs/shapes-lora
shapes-lora: $(STAMP)
	$(PY) scripts/make_shapes_model.py --lora $(LORA_WORK)

lint: $(STAMP)
	$(VENV)/bin/ruff check cogvid tests scripts

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache

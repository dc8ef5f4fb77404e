# Two commands on a fresh machine (README "Quick start"):
#   make demo   creates .venv, installs everything a CPU-only machine needs (torch CPU build, the project with
#               its jittor+dev extras, Jittor compiled once) and fuses the shipped samples with pictures
#   make test   the full test suite in that same environment (.ci/run calls it)
# Elsewhere than here, a CPU-only machine should take torch from the CPU index:
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.film-installed
# the numerics tests, run again under an older CPU's instruction set (issue: tolerances on any x86-64 CPU)
NUMERICS := tests/test_golden.py tests/test_parity_ops.py tests/test_parity_blocks.py tests/test_parity_train.py

.PHONY: setup demo demo-weights demo-task-weights test test-fast test-avx2 clean-venv lock

$(STAMP): pyproject.toml requirements/lock.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -c requirements/lock.txt -e ".[jittor,text,plot,onnx,serve,dev]"
	$(PY) -m film.backends.jittor.runtime
	@command -v mpicc >/dev/null 2>&1 || echo "note: OpenMPI not found; Jittor multi-process training and its test need it: apt-get install openmpi-bin libopenmpi-dev"
	touch $@

setup: $(STAMP)

demo: setup
	$(VENV)/bin/film fuse --checkpoint demo --random-text --pairs film/samples -o demo_out --grid --color

# the shipped demo weights (docs/training.md, "Demo weights"): about 8 h on 2 CPU cores (torch and Jittor
# side by side, then Jittor alone); writes film/weights/demo.safetensors, the four demo-<TASK>.safetensors and
# build/demo/{curves.png,judge*.json}.
# DATA: the public pairs it trains on (task/dataset/{A,B} folders)
DATA ?= ../shared/data/fusion_samples
demo-weights: setup
	$(PY) scripts/demo_weights.py all --data $(DATA) --work build/demo

# one task's weights (film/weights/demo-$(TASK).safetensors: IVF, MIF or MFF) from the trunk's weights, e.g. the
# trunk as shipped until 2026-12-02: git show a8d1000:film/weights/demo.safetensors > trunk.safetensors
demo-task-weights: setup
	@test -n "$(TASK)" -a -n "$(INIT)" || { echo "give TASK=IVF|MIF|MFF and INIT=<the trunk's weights>"; exit 2; }
	$(PY) scripts/demo_weights.py task $(TASK) --data $(DATA) --init $(INIT) --work build/demo-$(TASK)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

test-avx2: setup
	ONEDNN_MAX_CPU_ISA=AVX2 DNNL_MAX_CPU_ISA=AVX2 $(PY) -m pytest -q $(NUMERICS) -k "not mpi and not torchrun and not cli"

clean-venv:
	rm -rf $(VENV)

# requirements/lock.txt: what pip install -e ".[all]" resolves to (numpy<2 for Jittor; tests/test_numpy_guard.py)
lock: setup
	$(PY) requirements/lock.py "$(TORCH)"

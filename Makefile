# Set-up is part of every target: a local .venv with a pinned torch (the CPU wheel here, the CUDA
# wheel where that is what pip finds), then graphmfu itself.  An existing install is reused.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
CORE   := $(VENV)/.graphmfu-installed
TESTS  := $(VENV)/.graphmfu-test-extras

.PHONY: demo test gpu-test bench clean

# what graphmfu itself needs (the demo needs nothing more): torch, sympy, networkx, tabulate, numpy.  --no-compile:
# no byte-compiling of every file at install (torch: 28 s -> 14 s here); Python compiles what it imports
$(CORE): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q --no-compile $(TORCH)
	$(BIN)/python -m pip install -q --no-compile "setuptools>=64" numpy sympy networkx tabulate
	$(BIN)/python -m pip install -q --no-compile --no-deps --no-build-isolation -e .
	touch $@

# what the test suite adds: the real-model suite (transformers), integrations, plots, trace checks
$(TESTS): $(CORE)
	$(BIN)/python -m pip install -q --no-compile "transformers==5.23.*" "accelerate==1.*" "lightning==2.*"
	$(BIN)/python -m pip install -q --no-compile "matplotlib==3.11.*" "plotly==7.1.*" "plotext==5.3.2" "pandas==3.1.*" tqdm psutil pyyaml
	$(BIN)/python -m pip install -q --no-compile --no-deps "HolisticTraceAnalysis==0.5.0"
	$(BIN)/python -m pip install -q --no-compile pytest hypothesis
	touch $@

demo: $(CORE)
	$(BIN)/python examples/minimal_llama.py --static

# one process: two workers (pytest-xdist) took 10 min against 12 here, but on 2 cores each worker's two torch
# threads contend and timing-ordered tests failed (3 of 805 in a fresh clone: kernels of ~16 ms that take 0.2)
test: $(TESTS)
	$(BIN)/python -m pytest -q tests

# GPU tests and benches run on a CUDA machine (through the device tool here)
gpu-test: $(TESTS)
	$(BIN)/python -m pytest -q tests/gpu

bench: $(CORE)
	$(BIN)/python bench/static_scale.py
	$(BIN)/python bench/compile_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info

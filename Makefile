# Set-up is part of every target: a local .venv with a pinned torch (the CPU wheel here, the CUDA
# wheel where that is what pip finds), then graphmfu itself.  An existing install is reused.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.graphmfu-installed

.PHONY: demo test gpu-test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q "transformers==5.23.*" "accelerate==1.*" "lightning==2.*"
	$(BIN)/python -m pip install -q "matplotlib==3.11.*" "plotly==7.1.*" "plotext==5.3.2" "pandas==3.1.*" tqdm psutil pyyaml
	$(BIN)/python -m pip install -q --no-deps "HolisticTraceAnalysis==0.5.0"
	$(BIN)/python -m pip install -q "setuptools>=64" numpy sympy networkx tabulate pytest hypothesis
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

demo: $(STAMP)
	$(BIN)/python examples/minimal_llama.py --static

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# GPU tests and benches run on a CUDA machine (through the device tool here)
gpu-test: $(STAMP)
	$(BIN)/python -m pytest -q tests/gpu

bench: $(STAMP)
	$(BIN)/python bench/static_scale.py
	$(BIN)/python bench/compile_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info

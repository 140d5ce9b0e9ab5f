#!/usr/bin/env bash
# The GPU validation runs, in batches (device time is scarce): bash bench/gpu_batch.sh <part>...
# Parts: meter (bench/meter_overhead.py, the two examples), diag (bench/probe/meter_decode_diag.py), views (annotated trace test, ncu, calibrate,
# graphmfu run), models (the real-model suite through graphmfu.profile()), gpu-tests (tests/gpu).
# Everything it prints lands under $OUT.  Wheels the device lacks are carried in .whl/ (git-ignored).
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
mkdir -p /tmp/site && pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi -L > "$OUT/gpu.txt"; python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> "$OUT/gpu.txt"
for part in "$@"; do case $part in
meter)
  timeout 240 python bench/meter_overhead.py > "$OUT/meter_overhead.log" 2>&1; echo "meter_overhead rc=$?"
  timeout 150 python examples/train_llama.py --device cuda --preset 8b-2l --steps 6 --batch 1 --seq 2048 --check \
    > "$OUT/train_llama.txt" 2>&1; echo "train_llama rc=$?"
  timeout 150 python examples/generate_llama.py --device cuda --mode reduce-overhead --preset 8b-2l --batch 8 \
    --prompt 512 --tokens 32 --check > "$OUT/generate_llama.txt" 2>&1; echo "generate_llama rc=$?" ;;
diag)
  PROFILE=1 timeout 240 python bench/probe/meter_decode_diag.py > "$OUT/meter_decode_diag.txt" 2>&1; echo "diag rc=$?" ;;
views)
  timeout 200 python -m pytest -q -s tests/gpu/test_trace_gpu.py > "$OUT/trace_gpu.txt" 2>&1; echo "trace rc=$?"
  timeout 200 python bench/ncu_validate.py --out "$OUT" > "$OUT/ncu.txt" 2>&1; echo "ncu rc=$?"
  export GRAPHMFU_CACHE_DIR=$OUT/cache GRAPHMFU_PROGRESS=0
  timeout 60 python -m graphmfu calibrate > "$OUT/calibrate.txt" 2>&1; echo "calibrate rc=$?"
  timeout 150 python -m graphmfu run examples/minimal_llama.py --out "$OUT/run" -- --device cuda > "$OUT/run.txt" 2>&1
  echo "run rc=$?"; python -m graphmfu show "$OUT/run/report.json" --ceilings calibrated > "$OUT/show_calibrated.txt" 2>&1 ;;
models)
  timeout 300 python -m pytest -q -s tests/gpu/test_models_gpu.py > "$OUT/models_gpu.txt" 2>&1; echo "models rc=$?" ;;
gpu-tests)
  timeout 300 python -m pytest -q tests/gpu --ignore=tests/gpu/test_models_gpu.py > "$OUT/gpu_tests.txt" 2>&1
  echo "gpu tests rc=$?" ;;
esac; done

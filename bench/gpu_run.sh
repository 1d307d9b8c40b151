#!/usr/bin/env bash
# The GPU bench and the GPU checks on a device machine (one H100):
#   bash bench/gpu_run.sh [RUNS]   tests/test_gpu_paths.py (fp32 equivalence of every GPU path, at most CHECK_SECONDS),
#                                  then bench/bench_gpu.py over RUNS (its JSON rewritten after every cell)
# Needs, carried beside the repo: .whl-bench (trl 1.16.0, liger-kernel 0.8.5, datasets 5.2.0 and what the GPU image
# lacks of its needs) and .gpu/tokenizer (SmolLM2's tokenizer files). Writes under $OUT.
#   here, once:   bash bench/gpu_run.sh --fetch     (then du -sh .whl-bench .gpu: under 64 MiB together)
#   the device:   run(command="STEPS=8 bash bench/gpu_run.sh", carry=[".whl-bench", ".gpu"], timeout_s=570)
# then commit $OUT/bench.json as bench/results/bench_gpu-<device>-<date>.json and put its table
# (python bench/bench_gpu.py --table FILE) in docs/performance.md.
set -uo pipefail
WHEELS="trl==1.16.0 liger-kernel==0.8.5 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash==3.6.0
  transformers==5.19.0 accelerate==1.16.0"
if [ "${1:-}" = "--fetch" ]; then
  grep -qx '/.whl-bench/' .git/info/exclude || echo /.whl-bench/ >> .git/info/exclude
  grep -qx '/.gpu/' .git/info/exclude || echo /.gpu/ >> .git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl-bench $WHEELS || exit 1
  mkdir -p .gpu/tokenizer && .venv/bin/python -c "
from transformers import AutoTokenizer; from prefbench import models
AutoTokenizer.from_pretrained(models.resolve(models.EMBEDDED)).save_pretrained('.gpu/tokenizer')"
  du -sh .whl-bench .gpu
  exit 0
fi
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl-bench/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout "${CHECK_SECONDS:-120}" python3 -m pytest -q --tb=short --show-capture=no -p no:cacheprovider -W ignore tests/test_gpu_paths.py > "$OUT/gpu_paths.log" 2>&1
tail -5 "$OUT/gpu_paths.log"
echo "checks: ${SECONDS} s"
# issue 33's levers, each beside the default in one run: aligned packing (exact bf16 step 1), more pairs per forward
RUNS=${1:-135m:16,135m:16:align,135m:64,135m:16:trl,1.7b:4,1.7b:4:align,1.7b:4:trl}
python3 bench/bench_gpu.py --tokenizer .gpu/tokenizer --steps "${STEPS:-10}" --warmup "${WARMUP:-3}" --runs "$RUNS" --profile --out "$OUT/bench.json" > "$OUT/bench.log" 2>&1
grep -v -E "it/s\]|seq/s\]|step/s|s/step" "$OUT/bench.log" | tail -25
echo "bench: ${SECONDS} s"

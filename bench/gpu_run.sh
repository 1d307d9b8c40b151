#!/usr/bin/env bash
# The GPU bench and the GPU checks on a device machine (one H100):
#   bash bench/gpu_run.sh [RUNS]   tests/test_gpu_paths.py (fp32 equivalence of every GPU path, at most CHECK_SECONDS),
#                                  then bench/bench_gpu.py over RUNS (its JSON rewritten after every cell)
# Needs, carried beside the repo: .whl (trl 1.16.0, liger-kernel 0.8.5, datasets 5.2.0 and what the GPU image lacks
# of its needs: dill, multiprocess, pyarrow) and .gpu/tokenizer (SmolLM2's tokenizer files). Writes under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout "${CHECK_SECONDS:-120}" python3 -m pytest -q --tb=short --show-capture=no -p no:cacheprovider -W ignore tests/test_gpu_paths.py > "$OUT/gpu_paths.log" 2>&1
tail -5 "$OUT/gpu_paths.log"
echo "checks: ${SECONDS} s"
RUNS=${1:-135m:16:eager,135m:16,135m:16:liger,135m:16:trl,1.7b:4:eager,1.7b:4,1.7b:4:liger,1.7b:4:trl}
python3 bench/bench_gpu.py --tokenizer .gpu/tokenizer --steps "${STEPS:-10}" --warmup "${WARMUP:-3}" --runs "$RUNS" --out "$OUT/bench.json" > "$OUT/bench.log" 2>&1
grep -v -E "it/s\]|seq/s\]|step/s|s/step" "$OUT/bench.log" | tail -25
echo "bench: ${SECONDS} s"

#!/usr/bin/env bash
# The whole pipeline on one GPU (bench/gpu_e2e.py) on a device machine, in one call of at most 8 minutes:
#   here, once:   bash bench/gpu_e2e.sh --fetch      the wheels the GPU image lacks into .whl/ (git-ignored), and
#                                                    SmolLM2's tokenizer files into .gpu/tokenizer
#   the device:   run(command="bash bench/gpu_e2e.sh", carry=[".whl", ".gpu"], timeout_s=540)
# Writes $OUT/gpu_e2e.json (commit it as bench/results/gpu_e2e-<device>.json) and $OUT/gpu_e2e.log.
set -uo pipefail
# What prefbench's run needs beyond the image's packages (its list: the device library's KINDS.md): lm-eval and the
# modules its hf backend imports, datasets, the openai client, gguf.
# (the versions of this project's .venv; numexpr and zstandard are optional to lm-eval and left out)
WHEELS="lm_eval==0.4.13 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 evaluate==0.4.6 pytablewriter==1.2.1
  DataProperty==1.1.1 mbstrdecoder==1.1.5 pathvalidate==3.3.1 tabledata==1.3.5 tcolorpy==0.1.7 typepy==1.3.5
  chardet==6.0.0.post1 more-itertools==11.2.1 openai==3.63.0 distro==1.9.0
  jiter==0.19.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 sniffio==1.3.1
  gguf==0.19.0 nltk==3.10.4 transformers==5.19.0 peft==0.21.2 accelerate==1.16.0"
# published as source only (pure Python): built into wheels here
SOURCE_ONLY="sqlitedict==2.1.0 word2number==1.1 rouge_score==0.1.2"
if [ "${1:-}" = "--fetch" ]; then
  grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
  grep -qx '/.gpu/' .git/info/exclude || echo /.gpu/ >> .git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $WHEELS || exit 1
  .venv/bin/python -m pip wheel --no-deps -q -w .whl $SOURCE_ONLY || exit 1
  mkdir -p .gpu/tokenizer && .venv/bin/python -c "
from transformers import AutoTokenizer; from prefbench import models
AutoTokenizer.from_pretrained(models.resolve(models.EMBEDDED)).save_pretrained('.gpu/tokenizer')"
  du -sh .whl .gpu
  exit 0
fi
OUT=${OUT:-/tmp/gpu-e2e}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PREFBENCH_CACHE=/tmp/prefbench-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout "${E2E_SECONDS:-480}" python3 bench/gpu_e2e.py --tokenizer .gpu/tokenizer --out "$OUT"
echo "exit $? after ${SECONDS} s"
tail -20 "$OUT/gpu_e2e.log"

#!/usr/bin/env bash
# The GPU half of benchmarks/gpu_benchmark.py, run on the lent GPU machine (the tool library's `device` run, in the
# repository root, carrying .gpu and .whl; docs/BENCHMARKS.md, "GPU figures"). The machine's image has torch and
# transformers but not soundfile, soxr, librosa, datasets or jiwer, and cannot download: their wheels travel in .whl.
# Arguments go to `gpu_benchmark.py run`. The JSON and a log without progress bars land in $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, pyarrow, datasets, soundfile, librosa, jiwer
print('torch', torch.__version__, 'transformers', transformers.__version__, 'pyarrow', pyarrow.__version__,
      'datasets', datasets.__version__, 'librosa', librosa.__version__)"
cd benchmarks || exit 1
python3 gpu_benchmark.py run --data ../.gpu/data --out "$OUT" "$@" 2>&1 | tr '\r' '\n' \
    | grep --line-buffered -v -E "it/s\]|s/it\]|examples/s\]|^ *$" > "$OUT/log.txt"
status=${PIPESTATUS[0]}
tail -60 "$OUT/log.txt"
exit "$status"

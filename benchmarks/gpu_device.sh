#!/usr/bin/env bash
# The GPU half of benchmarks/gpu_benchmark.py, run on the lent GPU machine (the tool library's `device` run, in the
# repository root, carrying .gpu/data and .whl; docs/BENCHMARKS.md, "GPU figures"). The machine's image has torch and
# transformers but not soundfile, soxr, librosa, datasets or jiwer, and cannot download: their wheels travel in .whl.
# Arguments go to `gpu_benchmark.py run`. The JSON and a log without progress bars land in $OUT.
# Real whisper-base weights travel as parts in .gpu_weights, one a call with the manifest (gpu_weights.py): every
# call stashes what it carried. `--stash-only K` (alone) stops there, failing unless parts 0..K-1 are stashed intact;
# `--real-base` (anywhere) joins the parts and benchmarks the released model for the base shape.
set -uo pipefail
if [ "${1:-}" = "--stash-only" ]; then
  exec python3 benchmarks/gpu_weights.py stash --parts .gpu_weights --expect "${2:?--stash-only K: parts expected}"
fi
if [ -d .gpu_weights ]; then python3 benchmarks/gpu_weights.py stash --parts .gpu_weights --expect 0 || exit $?; fi
args=()
real_base=0
for arg in "$@"; do
  if [ "$arg" = "--real-base" ]; then real_base=1; else args+=("$arg"); fi
done
if [ "$real_base" = 1 ]; then
  python3 benchmarks/gpu_weights.py join --parts .gpu_weights --files .gpu/data/tokenizer --out /tmp/asr_whisper_base \
      || exit $?
  args=(--real-base /tmp/asr_whisper_base "${args[@]}")
fi
set -- "${args[@]}"
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

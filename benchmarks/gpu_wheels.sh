#!/usr/bin/env bash
# The wheels the lent GPU machine lacks for gpu_benchmark.py (its image has torch, transformers, numpy, scipy, pandas,
# pyarrow, numba, scikit-learn, huggingface-hub and the rest of their needs, per the tool library's device/KINDS.md,
# but not these), for Python 3.12, at the versions this checkout's .venv runs. Run here, from the repository root;
# gpu_device.sh installs them there from .whl (carried: name .whl in the call's carry list).
#   usage: bash benchmarks/gpu_wheels.sh            (needs .venv: make install)
set -euo pipefail
names="soundfile cffi pycparser soxr librosa audioread pooch platformdirs decorator datasets dill multiprocess jiwer
rapidfuzz"
grep -qx '/.whl/' .gitignore || { echo "gpu_wheels: .gitignore must ignore /.whl/ (it travels by carry)" >&2; exit 1; }
pins=()
for name in $names; do
  version=$(.venv/bin/python -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
  [ -n "$version" ] || { echo "gpu_wheels: $name is not installed in .venv" >&2; exit 1; }
  pins+=("$name==$version")
done
rm -rf .whl && mkdir .whl
platforms=()
for n in 2_28 2_27 2_24 2_17 2014 1; do
  case $n in 2014|1) platforms+=(--platform "manylinux${n}_x86_64");; *) platforms+=(--platform "manylinux_${n}_x86_64");; esac
done
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "${pins[@]}"
ls .whl
du -sh .whl

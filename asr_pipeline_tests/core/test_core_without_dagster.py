"""asr_pipeline.core is the framework-free layer a notebook user imports, and what the GPU benchmark runs on a
machine that has torch and transformers but no Dagster: every core module, and the benchmark's own imports, must
load with Dagster absent."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = r"""
import importlib, importlib.abc, pkgutil, sys

class NoDagster(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "dagster" or name.startswith(("dagster.", "dagster_")):
            raise ImportError(f"{name} is not installed here")
        return None

sys.meta_path.insert(0, NoDagster())
import asr_pipeline.core as core
names = [f"asr_pipeline.core.{m.name}" for m in pkgutil.iter_modules(core.__path__)]
for name in names:
    importlib.import_module(name)
sys.path.insert(0, "benchmarks")
for name in ("bench_common", "gpu_arms", "gpu_benchmark", "packing_benchmark"):
    importlib.import_module(name)
print(len(names), "core modules")
"""


def test_core_modules_and_the_gpu_benchmark_import_without_dagster():
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[0]) >= 30

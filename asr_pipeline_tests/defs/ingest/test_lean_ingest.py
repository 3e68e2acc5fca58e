"""An `asr-pipeline ingest` process needs neither torch nor transformers (issue 14, "Lean runs"): importing them is
seconds of every ingest, and the features and label ids are made without them (core/whisper_inputs.py). Nor pandas:
its tables are read and written with pyarrow (core/tables.py), 0.2-0.3 s less a process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.mysql]
REPO = Path(__file__).resolve().parents[3]

# runs the real command line in a process of its own, then says which heavy packages that process imported
INGEST_AND_LIST_MODULES = """
import json, sys
from asr_pipeline.cli import main
main(["ingest"])
print("MODULES " + json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_an_ingest_process_imports_neither_torch_nor_transformers_nor_pandas(pipeline_env):
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", INGEST_AND_LIST_MODULES], env=environment, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    modules = json.loads(result.stdout.split("MODULES ")[-1])
    assert "asr_pipeline" in modules and "dagster" in modules
    assert not {"torch", "transformers", "datasets", "accelerate", "librosa", "pandas"} & set(modules)
    meta = json.loads(next((pipeline_env / "storage" / "featurized_shards").glob("*/meta.json")).read_text())
    assert meta["rows"] == 40 and meta["num_mel_bins"] == 80  # the 40 clips, featurized (one row has no file)

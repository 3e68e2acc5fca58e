"""The planning lock on the embedded SQLite database: a lock file beside it, exclusive across processes."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from asr_pipeline.core.database import TranscriptTable
from asr_pipeline.core.errors import PlannerBusy
from asr_pipeline.core.locks import planning_lock

HOLD = """
import sys, time
from asr_pipeline.core.database import TranscriptTable
from asr_pipeline.core.locks import planning_lock
with planning_lock(TranscriptTable(sys.argv[1]), lock_dir=None):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_second_planner_waits_for_the_first_and_times_out_with_a_clear_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'transcripts.sqlite'}"
    repo = Path(__file__).resolve().parents[2]
    holder = subprocess.Popen([sys.executable, "-c", HOLD, url, "3"], cwd=repo, stdout=subprocess.PIPE, text=True,
                              env={"PYTHONPATH": str(repo), "PATH": ""})
    assert holder.stdout.readline().strip() == "held"
    table = TranscriptTable(url)
    with pytest.raises(PlannerBusy, match="another planner"):
        with planning_lock(table, tmp_path, timeout_s=0.5):
            pass
    started = time.monotonic()
    with planning_lock(table, tmp_path, timeout_s=30) as held:  # granted once the holder exits
        assert held.startswith("lock file") and (tmp_path / ".training_datas.asr-plan.lock").exists()
    assert time.monotonic() - started < 10
    holder.wait(timeout=30)

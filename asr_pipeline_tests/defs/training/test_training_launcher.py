"""finetuned_checkpoint launched through Dagster Pipes as a torchrun subprocess (one process here; one per GPU is
the same code with ASR_TRAIN_PROCESSES=N)."""

import json

import dagster as dg
import pytest
from transformers import WhisperForConditionalGeneration

from asr_pipeline import cli
from asr_pipeline.core.errors import ConfigError
from asr_pipeline.defs.training import launcher


def test_launcher_configuration_is_validated(monkeypatch):
    assert launcher.resolve("", 0) == launcher.Launch("inprocess", 1)
    monkeypatch.setenv("ASR_TRAIN_LAUNCHER", "torchrun")
    monkeypatch.setenv("ASR_TRAIN_PROCESSES", "8")
    launch = launcher.resolve("", 0)
    assert launch.describe() == "torchrun --nproc_per_node=8"
    command = launcher.torchrun_command(launch, "/tmp/job.json")
    assert command[5:9] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8"]
    assert launcher.resolve("inprocess", 0).kind == "inprocess"  # run config wins over the environment
    monkeypatch.setenv("ASR_TORCHRUN_ARGS", "--nnodes=2 --rdzv-endpoint=head:29400")
    assert "--standalone" not in launcher.torchrun_command(launcher.resolve("", 2), "/tmp/job.json")
    with pytest.raises(ConfigError, match="ASR_TRAIN_LAUNCHER"):
        launcher.resolve("slurm", 0)
    monkeypatch.setenv("ASR_TRAIN_PROCESSES", "zero")
    with pytest.raises(ConfigError, match="ASR_TRAIN_PROCESSES"):
        launcher.resolve("torchrun", 0)


@pytest.mark.mysql
@pytest.mark.slow
def test_training_runs_under_torchrun_through_dagster_pipes(pipeline_env, monkeypatch):
    monkeypatch.setenv("ASR_TRAIN_LAUNCHER", "torchrun")
    monkeypatch.setenv("ASR_TRAIN_PROCESSES", "1")
    cli.main(["ingest"])
    cli.main(["train", "--max-steps", "2", "--batch-size", "2", "--eval-steps", "2", "--warmup-steps", "0"])
    checkpoint = pipeline_env / "storage" / "finetuned_checkpoint"
    summary = json.loads((checkpoint / "training_summary.json").read_text())
    assert summary["launcher"] == "torchrun --nproc_per_node=1" and summary["steps"] == 2
    WhisperForConditionalGeneration.from_pretrained(checkpoint)

    instance = dg.DagsterInstance.get()
    run = instance.get_runs(filters=dg.RunsFilter(job_name="asr_train"), limit=1)[0]
    messages = [e.message or "" for e in instance.all_logs(run.run_id)]
    # the worker's own log lines came back through Pipes, from rank 0 of a 1-process torchrun world
    assert any("training worker: rank 0 of 1" in m for m in messages), messages
    assert any("fine-tuning" in m and "2 steps of " in m for m in messages)  # of 2 clips, or of packed windows
    assert any("torch.distributed.run" in m for m in messages)
    # and its custom message (the summary's path and the world size) reached the asset
    assert any("training worker reported" in m and "'world_size': 1" in m for m in messages)


def test_the_launched_command_dies_with_a_parent_killed_by_sigkill(tmp_path):
    """The training subprocess must not outlive a run worker killed with -9."""
    import os
    import signal
    import subprocess
    import sys
    import time

    marker = tmp_path / "child.pid"
    child_script = tmp_path / "child.py"
    child_script.write_text(f"import os, time\nopen({str(marker)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)\n")
    parent_script = tmp_path / "parent.py"
    parent_script.write_text(
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-m', 'asr_pipeline.workers.die_with_parent', '--', sys.executable, "
        f"{str(child_script)!r}])\n"
        "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, str(parent_script)])
    deadline = time.monotonic() + 30
    while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int(marker.read_text())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{child}/stat") as stat:  # a zombie (reaped by init later) counts as gone
            if stat.read().split(") ")[1].startswith("Z"):
                break
        time.sleep(0.1)
    else:
        with open(f"/proc/{child}/status") as status:  # what kept it alive: its state and signal masks
            detail = [line.strip() for line in status if line.startswith(("State", "SigBlk", "SigIgn", "SigPnd",
                                                                           "ShdPnd", "PPid"))]
        os.kill(child, signal.SIGKILL)
        raise AssertionError(f"the child outlived its SIGKILLed parent: {detail}")

"""How finetuned_checkpoint runs the training: in the run's own process, or as a Dagster Pipes subprocess under
torchrun (torch.distributed.run), so going from one process to one per GPU, or to several nodes, is configuration:

    ASR_TRAIN_LAUNCHER=torchrun ASR_TRAIN_PROCESSES=8      (or run config: launcher, nproc_per_node)

The subprocess (asr_pipeline.workers.train) gets a job file; its rank 0 streams its log lines back to this run
through Pipes. Extra torchrun arguments (multi-node rendezvous, say) go in ASR_TORCHRUN_ARGS. The subprocess dies
with the run worker (asr_pipeline.workers.die_with_parent), so a killed run leaves no training behind.
"""

import os
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import dagster as dg

from asr_pipeline.core.errors import ConfigError
from asr_pipeline.core.storage import read_json, write_json

LAUNCHERS = ("inprocess", "torchrun")


@dataclass(frozen=True)
class Launch:
    kind: str
    nproc_per_node: int
    extra_args: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.kind == "inprocess":
            return "inprocess"
        return f"torchrun --nproc_per_node={self.nproc_per_node} {' '.join(self.extra_args)}".strip()


def resolve(launcher: str, nproc_per_node: int) -> Launch:
    """Run config first, then the environment; validated with the name of what is wrong."""
    kind = launcher or os.environ.get("ASR_TRAIN_LAUNCHER") or "inprocess"
    if kind not in LAUNCHERS:
        raise ConfigError(f"training launcher must be one of {', '.join(LAUNCHERS)} (run config `launcher` or "
                          f"ASR_TRAIN_LAUNCHER), got {kind!r}")
    processes = nproc_per_node or os.environ.get("ASR_TRAIN_PROCESSES") or 1
    try:
        processes = int(processes)
    except ValueError:
        processes = 0
    if processes < 1:
        raise ConfigError(f"ASR_TRAIN_PROCESSES / nproc_per_node must be a positive whole number, got "
                          f"{nproc_per_node or os.environ.get('ASR_TRAIN_PROCESSES')!r}")
    return Launch(kind, processes, tuple(shlex.split(os.environ.get("ASR_TORCHRUN_ARGS", "")))
                  if kind == "torchrun" else ())


def torchrun_command(launch: Launch, job_file: Path) -> list[str]:
    rendezvous = list(launch.extra_args) or ["--standalone"]  # one node unless ASR_TORCHRUN_ARGS says otherwise
    # die_with_parent: a run worker killed with -9 takes the training down with it (torchrun stops its ranks)
    return [sys.executable, "-m", "asr_pipeline.workers.die_with_parent", "--",
            sys.executable, "-m", "torch.distributed.run", *rendezvous, f"--nproc_per_node={launch.nproc_per_node}",
            "-m", "asr_pipeline.workers.train", str(job_file)]


def train_with_torchrun(context: dg.AssetExecutionContext, launch: Launch, base_source: str, shard_dirs: list[Path],
                        out_dir: Path, work_dir: Path, settings, exclude_ids=frozenset()) -> dict:
    work_dir.parent.mkdir(parents=True, exist_ok=True)
    job_file = work_dir.parent / f"{work_dir.name}.job.json"
    write_json(job_file, {"base_source": base_source, "shards": [str(p) for p in shard_dirs],
                          "out_dir": str(out_dir), "work_dir": str(work_dir), "settings": asdict(settings),
                          "exclude_ids": sorted(int(i) for i in exclude_ids)})
    command = torchrun_command(launch, job_file)
    context.log.info(f"launching the training through Dagster Pipes: {shlex.join(command)}")
    invocation = dg.PipesSubprocessClient().run(command=command, context=context,
                                                env={"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS":
                                                     os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1))})
    for message in invocation.get_custom_messages():
        context.log.info(f"training worker reported: {message}")
    job_file.unlink(missing_ok=True)
    return read_json(out_dir / "training_summary.json")

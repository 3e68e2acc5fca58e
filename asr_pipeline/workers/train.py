"""Fine-tuning as a subprocess, launched by finetuned_checkpoint through Dagster Pipes under torchrun:

    python -m torch.distributed.run --standalone --nproc_per_node N -m asr_pipeline.workers.train JOB.json

Every rank reads the same job file (base model, shard directories, output and work directories, TrainingSettings)
and runs the same train_whisper; Seq2SeqTrainer does the distributed part (DDP, one process per GPU). Rank 0 alone
talks to Dagster: its progress lines arrive in the run's log, and it reports the training summary as a custom
message. Only rank 0 writes the checkpoint (train_whisper checks).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def run_job(job: dict, emit) -> dict:
    from asr_pipeline.core.features import FeatureShard
    from asr_pipeline.core.training import TrainingSettings, train_whisper

    shards = [FeatureShard(Path(p)) for p in job["shards"]]
    return train_whisper(job["base_source"], shards, Path(job["out_dir"]), TrainingSettings(**job["settings"]),
                         emit=emit, work_dir=Path(job["work_dir"]), exclude_ids=frozenset(job.get("exclude_ids", [])))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m asr_pipeline.workers.train JOB.json")
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    if int(os.environ.get("RANK", "0")) != 0:
        run_job(job, emit=lambda _: None)
        return
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        world = os.environ.get("WORLD_SIZE", "1")
        pipes.log.info(f"training worker: rank 0 of {world} (pid {os.getpid()})")
        summary = run_job(job, emit=pipes.log.info)
        pipes.report_custom_message({"summary_path": str(Path(job["out_dir"]) / "training_summary.json"),
                                     "world_size": int(world), "steps": summary.get("steps")})


if __name__ == "__main__":
    main()

"""Dataloader workers forked again every epoch, against workers that persist (what train_whisper now asks for).

    cd benchmarks && ../.venv/bin/python epoch_stall_probe.py --base-model /work/cache/whisper-base [--clips 300]
        [--workers 4] [--work DIR]

Why: on the H100 (docs/BENCHMARKS.md, "Issue 14: GPU figures") packed whisper-base steps had a heavy tail (mean
131 ms, median 65.5 ms), with 4 loader workers, as train_whisper uses on a GPU, and transformers forks the workers
again every epoch by default. This looks at that cost on a CPU (a possible contributor, not a demonstrated cause).
The step timer starts after the batch is fetched: what it sees is a step slowed by fresh workers beside it. The
model is a tiny random Whisper (one narrow layer each side, whisper-base's vocabulary), so a step is mostly fixed
costs, as a small model's is on a GPU. The corpus, model and shard are made in a child process, so the training
process is like a trainer's, which has not featurized. It trains on the espeak-ng corpus (featurize_benchmark.corpus;
the last episodes valid), 100 unpacked steps of 16 clips and 108 packed steps of about 16 clips (4 windows),
float32, with --workers workers:
- every_epoch: transformers' default, workers forked again each epoch;
- persistent: `dataloader_persistent_workers`, what train_whisper passes when it has workers.

Each optimizer step is timed (bench_common.time_steps). It prints one JSON object, and writes it to
benchmarks/results/epoch_stall_<date>_cpu-<kind>.json: per arm the median, mean and slowest steps after the first
five, and which steps were slowest (an epoch's first step is where the fork shows).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

import transformers

from bench_common import cpu_info, cpu_tag, our_shard, random_whisper, split_by_episode, time_steps
from result_files import write_result
from featurize_benchmark import corpus

RESULTS = Path(__file__).resolve().parent / "results"


def tiny_model(base_model: str, out: Path) -> str:
    return random_whisper(Path(base_model), out, {"d_model": 64, "encoder_layers": 1, "decoder_layers": 1,
                                                  "encoder_attention_heads": 2, "decoder_attention_heads": 2,
                                                  "encoder_ffn_dim": 128, "decoder_ffn_dim": 128})


class EveryEpochArguments(transformers.Seq2SeqTrainingArguments):
    """transformers' default: no persistent workers (at module level: the Trainer pickles its arguments)."""

    def __post_init__(self):
        self.dataloader_persistent_workers = False
        super().__post_init__()


def forking_every_epoch():
    """Makes the next trainings ask for EveryEpochArguments; returns the function that undoes it."""
    original = transformers.Seq2SeqTrainingArguments
    transformers.Seq2SeqTrainingArguments = EveryEpochArguments
    return lambda: setattr(transformers, "Seq2SeqTrainingArguments", original)


def train_arm(model: str, shard, out: Path, packing: bool, workers: int) -> dict:
    from asr_pipeline.core.training import TrainingSettings, train_whisper

    seconds = time_steps()
    settings = TrainingSettings(learning_rate=1e-5, batch_size=16, warmup_steps=5, max_steps=108 if packing else 100,
                                eval_steps=10_000, logging_steps=25, max_eval_samples=5, generation_max_length=8,
                                packing=packing, cpu_bf16=False, dataloader_num_workers=workers)
    summary = train_whisper(model, [shard], out, settings, emit=lambda _: None)
    steady = seconds[5:]
    slowest = sorted(range(len(seconds)), key=lambda i: -seconds[i])[:8]
    return {"steps": summary["steps"], "epochs": summary["epochs"], "windows_per_step": summary["windows_per_step"],
            "train_windows": summary["train_windows"],
            "step_ms_median": round(1000 * statistics.median(steady), 1),
            "step_ms_mean": round(1000 * statistics.mean(steady), 1),
            "step_ms_max": round(1000 * max(steady), 1), "steps_total_s": round(sum(seconds), 2),
            "slowest_steps": [[i, round(1000 * seconds[i])] for i in slowest]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", required=True, help="its configuration and tokenizer files (not weights)")
    parser.add_argument("--clips", type=int, default=300)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--work", default="/tmp/asr_epoch_stall_probe")
    parser.add_argument("--prepare-into", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)
    if args.prepare_into:  # the child: corpus, tiny model and shard, then exit
        run = Path(args.prepare_into)
        our_shard(split_by_episode(corpus(work, args.clips), test=0, valid=5), run / "ours",
                  tiny_model(args.base_model, run / "model"))
        return
    run = work / f"run_{os.getpid()}"
    run.mkdir(parents=True)
    # prepared in another process: a trainer's process has not featurized (what the parent has loaded before the
    # workers fork changes what each fresh worker pays; featurizing here hid the stall)
    subprocess.run([sys.executable, __file__, *sys.argv[1:], "--prepare-into", str(run)], check=True)
    from asr_pipeline.core.features import FeatureShard

    model, shard = str(run / "model"), FeatureShard(run / "ours" / "features")
    results = {"command": "cd benchmarks && ../.venv/bin/python epoch_stall_probe.py " + " ".join(sys.argv[1:]),
               "date": date.today().isoformat(), "cpu": cpu_info(), "cpu_count": os.cpu_count(),
               "workers": args.workers, "arms": {}}
    for workers_live in ("every_epoch", "persistent"):
        restore = forking_every_epoch() if workers_live == "every_epoch" else (lambda: None)
        try:
            for name, packing in (("unpacked", False), ("packed", True)):
                print(f"{workers_live}: {name}", file=sys.stderr, flush=True)
                results["arms"][f"{name}_{workers_live}"] = train_arm(model, shard, run / f"{name}_{workers_live}",
                                                                      packing, args.workers)
        finally:
            restore()
    write_result(results, RESULTS, f"epoch_stall_{results['date']}_cpu-{cpu_tag(results['cpu'])}.json")


if __name__ == "__main__":
    main()

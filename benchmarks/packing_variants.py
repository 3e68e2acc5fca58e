"""Packed-training variants on the packing benchmark's corpus (exploration behind packing_max_seconds' default).

    cd benchmarks && [UTT=128] [BATCH=8] [LR=1e-5] [SEED=42] ../.venv/bin/python packing_variants.py --base-model DIR \\
        VARIANT [VARIANT ...]

Variants: `unpacked`; `packed` (the training default's windows); `short=S` (windows of at most S seconds);
`shuffled` (30 s windows filled with train clips in a random order instead of an episode's clips in broadcast order).
Each trains whisper-base on the train split of packing_benchmark.py's corpus (480 espeak-ng clips, the last 50 test,
5 valid) for UTT utterances in steps of about BATCH utterances at lr LR with training seed SEED, float32 (packing_benchmark.train_ours), and
scores the test split with the report's decoding and normalised CER (packing_benchmark.test_scores). One JSON line a
variant is appended to benchmarks/results/packing_variants_<date>.jsonl. Single runs: the training is deterministic
(seed 42), so a rerun gives the same CER; the utterances/s depend on what else shares the machine.
"""

import argparse
import json
import os
import shutil
from datetime import date
from pathlib import Path

import numpy as np

import packing_benchmark as pb  # noqa: E402  (benchmarks/ is the script's directory)
from asr_pipeline.core import packing, training
from asr_pipeline.core.features import FeatureShard
from asr_pipeline.core.model import load_model, load_processor

RESULTS = Path(__file__).resolve().parent / "results"


def variant_class(name: str, param: str):
    original = packing.PackedWindows

    class Variant(original):
        def __init__(self, rows, tokenizer, max_frames=packing.MAX_WINDOW_FRAMES, max_label_tokens=444):
            if name == "short":
                max_frames = packing.window_frames_limit(float(param))
            elif name == "shuffled":
                max_frames = packing.MAX_WINDOW_FRAMES
            super().__init__(rows, tokenizer, max_frames, max_label_tokens)
            if name == "shuffled":  # one group, ids replaced by a random order: windows of random clips
                order = np.random.default_rng(0).permutation(len(rows)).tolist()
                rank = {row: k for k, row in enumerate(order)}
                self.set_windows(packing.plan_windows(["g"] * len(rows), [rank[i] for i in range(len(rows))],
                                                      rows.column("num_frames"), self.first_lengths,
                                                      self.joined_lengths(), max_frames, max_label_tokens))

    return Variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--work", default="/tmp/asr_packing_variants")
    parser.add_argument("variants", nargs="+")
    cli = parser.parse_args()
    args = argparse.Namespace(base_model=cli.base_model, utterances=int(os.environ.get("UTT", 128)),
                              batch_size=int(os.environ.get("BATCH", 8)),
                              learning_rate=float(os.environ.get("LR", 1e-5)), valid=5,
                              seed=int(os.environ.get("SEED", 42)))
    work = Path(cli.work)
    work.mkdir(parents=True, exist_ok=True)
    shard_dir = work / "shard"
    if not (shard_dir / "features").exists():
        pb.our_shard(pb.split_by_episode(pb.corpus(work, 480), 50, 5), shard_dir, args.base_model)
    shard = FeatureShard(shard_dir / "features")
    processor = load_processor(args.base_model)
    for variant in cli.variants:
        name, _, param = variant.partition("=")
        training.PackedWindows = pb.PackedWindows = variant_class(name, param)
        out = work / f"run_{variant}_{args.utterances}_{args.batch_size}_{args.learning_rate}_{args.seed}"
        shutil.rmtree(out, ignore_errors=True)
        seconds = float(param) if name == "short" else (30.0 if name == "shuffled" else
                                                        training.TrainingSettings.packing_max_seconds)
        trained = pb.train_ours(variant, shard, out, args.base_model, args, name != "unpacked", False, seconds)
        scores, _ = pb.test_scores(load_model(str(out / variant)), processor, shard)
        record = {"variant": variant, "utt": args.utterances, "batch": args.batch_size, "lr": args.learning_rate,
                  "seed": args.seed,
                  "date": date.today().isoformat(), "train": trained,
                  "test": {k: scores[k] for k in ("cer_normalized", "cer_normalized_ci95")}}
        print(json.dumps(record), flush=True)
        RESULTS.mkdir(exist_ok=True)
        with open(RESULTS / f"packing_variants_{record['date']}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()

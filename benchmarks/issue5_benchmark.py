"""Issue 5 in one command: featurization, training and evaluation, the seed recipe against ours, same corpus, one run.

    cd benchmarks && ../.venv/bin/python issue5_benchmark.py --base-model DIR [--clips 1000] [--steps 8]
        [--batch-size 4] [--valid 32] [--variants full,full_fp32,frozen,checkpointing,compile] [--work DIR]

Runs featurize_benchmark (every clip, both sides) and then train_eval_benchmark (the same corpus; the last --valid
clips held out) and prints one JSON object with both results and the ratios the issue asks for:
featurization rows/s and bytes a row, training samples/s with the validation loss after the same number of samples,
evaluation utterances/s.
"""

import json
import os
from pathlib import Path

from featurize_benchmark import run_featurization
from train_eval_benchmark import parser, run_benchmark


def main() -> None:
    args = parser().parse_args()
    featurization = run_featurization(Path(args.work), args.clips, args.base_model)
    train_eval = run_benchmark(args)
    seed_loss = train_eval["seed_train"]["validation_loss"]
    training = {name[len("ours_train_"):]: {"speedup": r["speedup"], "validation_loss": r["validation_loss"],
                                             "equal_or_lower_loss_than_seed": r["validation_loss"] <= seed_loss}
                for name, r in train_eval.items() if name.startswith("ours_train_")}
    print(json.dumps({
        "clips": args.clips, "cpu_count": os.cpu_count(),
        "ratios": {"featurization_rows_per_s": featurization["rows_per_s_ratio"],
                   "featurization_bytes_per_row_smaller": featurization["bytes_per_row_ratio"],
                   "training_samples_per_s": training, "seed_validation_loss": seed_loss,
                   "evaluation_utterances_per_s": {"bf16": train_eval["ours_eval"]["speedup"],
                                                   "float32": train_eval["ours_eval_fp32"]["speedup"]}},
        "featurization": featurization, "train_eval": train_eval,
    }, indent=2))


if __name__ == "__main__":
    main()

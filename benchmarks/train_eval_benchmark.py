"""Training and evaluation: the seed recipe (../shared/reference/seed_recipe.py) and ours, same corpus, one run.

    .venv/bin/python benchmarks/train_eval_benchmark.py --base-model DIR [--clips 1000] [--steps 8]
        [--batch-size 4] [--valid 32] [--work DIR] [--variants full,full_fp32,frozen]

Variants: full (bf16 autocast where the CPU has AMX/AVX512-BF16), full_fp32 (cpu_bf16 off), frozen (freeze_encoder),
checkpointing (gradient checkpointing). Our evaluation runs twice: bf16 (the default where supported) and float32.

Corpus: --clips espeak-ng Korean utterances (as in featurize_benchmark.py). The last --valid clips are held out.
Training: the seed's `train` (Seq2SeqTrainer, its collator, its arguments) and ours (`train_whisper`) with the same
learning rate, warmup, batch size and number of steps, so both have seen the same number of samples. Each trained
model's validation loss is then computed the same way for both (our collator, i.e. labels without the doubled start
token, on the held-out clips). Evaluation: the notebook's way (Seq2SeqTrainer.predict with predict_with_generate,
generation_max_length=225, batch 16) against ours (evaluate_on_test's decoding), on the held-out clips with the base
model. Prints one JSON object.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path


from asr_pipeline.core.decoding import DecodingPolicy
from asr_pipeline.core.transformers_decoding import transcribe_features
from asr_pipeline.core.features import FeatureShard
from asr_pipeline.core.model import inference_dtype, load_model, load_processor
from bench_common import cpu_info, cpu_tag, one_split_shard, seed_evaluate, seed_module, seed_train  # noqa: E402
from featurize_benchmark import corpus  # noqa: E402  (benchmarks/ is the script's directory)
from asr_pipeline.core.text import error_rates
from asr_pipeline.core.training import TrainingSettings, train_whisper
from asr_pipeline.core.training_data import FeatureRows, SpeechSeq2SeqCollator

RESULTS = Path(__file__).resolve().parent / "results"


def _validation_loss(model, shard: FeatureShard, batch_size: int = 8) -> float:
    import torch

    rows = FeatureRows([shard], "valid")
    collate = SpeechSeq2SeqCollator(model.config.decoder_start_token_id)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            items = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
            batch = collate(items)
            tokens = int((batch["labels"] != -100).sum())
            total += float(model(**batch).loss) * tokens
            count += tokens
    return total / count


def our_evaluate(shard: FeatureShard, model_dir: str, batch_size: int = 16, prefer_bf16: bool = True) -> dict:
    rows = FeatureRows([shard], "valid")
    model, processor = load_model(model_dir, dtype=inference_dtype(prefer_bf16)), load_processor(model_dir)
    durations = [float(rows.row(i)["duration"]) for i in range(len(rows))]
    started = time.perf_counter()
    decoded = transcribe_features(model, processor, lambda i: shard.features(rows.positions[i][1]), durations,
                                  DecodingPolicy(batch_size=batch_size), emit=lambda _: None)
    seconds = time.perf_counter() - started
    references = [str(rows.row(i)["transcript"]) for i in range(len(rows))]
    return {"utterances": len(rows), "seconds": round(seconds, 3), "utterances_per_s": round(len(rows) / seconds, 4),
            "dtype": str(next(model.parameters()).dtype), "cer": round(error_rates(references, decoded.texts).cer, 4),
            **{k: round(v, 3) for k, v in decoded.stats().items()}}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--valid", type=int, default=32)
    parser.add_argument("--variants", default="full,full_fp32,frozen")
    parser.add_argument("--work", default="/tmp/asr_featurize_benchmark")
    parser.add_argument("--evaluation-only", action="store_true", help="no training: decode the held-out clips the "
                        "seed's way and ours (float32, and bf16 where the CPU has it) with each --eval-models model, "
                        "and save benchmarks/results/evaluation_<date>_cpu-<kind>.json")
    parser.add_argument("--eval-models", default="", help="comma-separated models for --evaluation-only "
                        "(default: --base-model); a fine-tuned checkpoint falls back far less than the raw model")
    return parser


def main() -> None:
    args = parser().parse_args()
    if args.evaluation_only:
        results = evaluation_benchmark(args)
        RESULTS.mkdir(exist_ok=True)
        name = f"evaluation_{results['date']}_cpu-{cpu_tag(results['cpu'])}.json"
        (RESULTS / name).write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results, indent=2))
        return
    print(json.dumps(run_benchmark(args), indent=2))


def evaluation_benchmark(args) -> dict:
    """The seed's evaluation (Seq2SeqTrainer.predict, greedy, generation_max_length=225, batch 16) against ours (the
    report's decoding policy: budget, temperature fallback, no-speech guard), on the last --valid clips, per model."""
    from datetime import date
    import platform

    import torch

    from asr_pipeline.core.model import cpu_has_native_bf16

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    frame = corpus(work, args.clips)
    valid_frame = frame.iloc[-args.valid:]
    run = work / f"evaluation_{os.getpid()}"
    run.mkdir(parents=True)
    seed = seed_module()
    valid_frame[["audio_path", "transcript"]].to_csv(run / "seed_valid.csv", index=False)
    seed.featurize(str(run / "seed_valid.csv"), str(run / "seed_valid_features"), args.base_model)
    ours_valid = one_split_shard(valid_frame, "valid", run / "ours_valid", args.base_model)
    results = {"command": "python benchmarks/train_eval_benchmark.py " + " ".join(sys.argv[1:]),
               "date": date.today().isoformat(), "cpu": cpu_info(), "cpu_count": os.cpu_count(),
               "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
               "clips": args.clips, "held_out": args.valid, "models": {}}
    for model_dir in [m for m in args.eval_models.split(",") if m] or [args.base_model]:
        print(f"evaluation: {model_dir}", file=sys.stderr)
        entry = {"seed": seed_evaluate(run / "seed_valid_features", model_dir, seed=seed),
                 "ours_fp32": our_evaluate(ours_valid, model_dir, prefer_bf16=False)}
        if cpu_has_native_bf16():
            entry["ours_bf16"] = our_evaluate(ours_valid, model_dir, prefer_bf16=True)
        entry["seed"]["cer"] = round(error_rates(list(valid_frame["transcript"]), entry["seed"]["texts"]).cer, 4)
        for name in [k for k in entry if k.startswith("ours")]:
            entry[name]["speedup"] = round(entry[name]["utterances_per_s"] / entry["seed"]["utterances_per_s"], 2)
        results["models"][model_dir] = entry
    return results


def run_benchmark(args) -> dict:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    frame = corpus(work, args.clips)
    train_frame, valid_frame = frame.iloc[:-args.valid], frame.iloc[-args.valid:]
    run = work / f"train_eval_{os.getpid()}"
    run.mkdir(parents=True)
    seed = seed_module()
    print("featurizing (seed: train and held-out; ours: train and held-out)", file=sys.stderr)
    train_frame[["audio_path", "transcript"]].to_csv(run / "seed_train.csv", index=False)
    valid_frame[["audio_path", "transcript"]].to_csv(run / "seed_valid.csv", index=False)
    seed.featurize(str(run / "seed_train.csv"), str(run / "seed_train_features"), args.base_model)
    seed.featurize(str(run / "seed_valid.csv"), str(run / "seed_valid_features"), args.base_model)
    ours_train = one_split_shard(train_frame, "train", run / "ours_train", args.base_model)
    ours_valid = one_split_shard(valid_frame, "valid", run / "ours_valid", args.base_model)

    results = {"clips": args.clips, "held_out": args.valid, "steps": args.steps, "batch_size": args.batch_size,
               "samples_seen": args.steps * args.batch_size, "cpu_count": os.cpu_count()}
    base = load_model(args.base_model)
    results["base_validation_loss"] = round(_validation_loss(base, ours_valid), 4)
    del base

    print("training: seed recipe", file=sys.stderr)
    seed_result, seed_model = seed_train(seed, run / "seed_train_features", run / "seed_out", args.base_model,
                                         args.steps, args.batch_size)
    results["seed_train"] = {**seed_result, "validation_loss": round(_validation_loss(seed_model, ours_valid), 4)}
    del seed_model
    for variant in args.variants.split(","):
        print(f"training: ours ({variant})", file=sys.stderr)
        settings = TrainingSettings(learning_rate=1e-5, batch_size=args.batch_size, warmup_steps=min(5, args.steps),
                                    max_steps=args.steps, logging_steps=max(1, args.steps // 4),
                                    freeze_encoder=variant.startswith("frozen"),
                                    gradient_checkpointing=variant == "checkpointing",
                                    torch_compile=variant == "compile",
                                    cpu_bf16=not variant.endswith("fp32"))
        summary = train_whisper(args.base_model, [ours_train], run / f"ours_{variant}", settings, emit=lambda _: None)
        trained = load_model(str(run / f"ours_{variant}"))
        results[f"ours_train_{variant}"] = {
            "seconds": summary["train_runtime_s"], "samples_per_s": summary["train_samples_per_s"],
            "validation_loss": round(_validation_loss(trained, ours_valid), 4),
            "speedup": round(summary["train_samples_per_s"] / seed_result["samples_per_s"], 2)}
        del trained

    print("evaluation: seed recipe vs ours (base model, held-out clips)", file=sys.stderr)
    results["seed_eval"] = seed_evaluate(run / "seed_valid_features", args.base_model)
    results["seed_eval"]["cer"] = round(error_rates(list(valid_frame["transcript"]), results["seed_eval"]["texts"]).cer,
                                        4)
    results["ours_eval"] = our_evaluate(ours_valid, args.base_model)
    results["ours_eval_fp32"] = our_evaluate(ours_valid, args.base_model, prefer_bf16=False)
    for name in ("ours_eval", "ours_eval_fp32"):
        results[name]["speedup"] = round(results[name]["utterances_per_s"] / results["seed_eval"]["utterances_per_s"],
                                         2)
    return results


if __name__ == "__main__":
    main()

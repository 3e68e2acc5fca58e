"""Packed training windows (issue 14, point 1): utterances trained per second and test CER, packed against unpacked,
with the seed recipe (../shared/reference/seed_recipe.py) alongside, on the same corpus in one run, in float32.

    cd benchmarks && flock /work/bench.lock ../.venv/bin/python packing_benchmark.py --base-model DIR \\
        [--clips 480] [--test 50] [--valid 5] [--utterances 128] [--batch-size 8] [--learning-rate 1e-5] [--work DIR]
        [--seed-recipe PATH] [--with-base] [--window-seconds S] [--also-window-seconds S1,S2]

Corpus: --clips espeak-ng Korean utterances (featurize_benchmark.corpus: about 3.5 s each, five clips an episode,
named like the archive). Whole episodes are split: the last ones (at least --test clips) are the test split, the
ones before (at least --valid clips) the valid split our trainer selects its checkpoint on, the rest train.

Every variant trains on the train split until it has seen --utterances utterances, in steps of about --batch-size
utterances, at lr --learning-rate with 5 warmup steps (the seed's own arguments; the seed's lr is fixed at 1e-5).
A packed step takes round(batch / clips a window) windows, so its step count is the one that sees --utterances
clips (round(utterances / (windows a step x clips a window))), within a step of the others':
  seed             the seed's train() on its own features (padded float32, datasets)
  unpacked         train_whisper, packing off, cpu_bf16 off (float32)
  packed           train_whisper, packing on (the default) with windows of at most --window-seconds (default: the
                   training default, packing_max_seconds), cpu_bf16 off (float32)
  packed_<s>s      the same with windows of at most s seconds, for each s in --also-window-seconds
  packed_bf16      train_whisper, packing on, bf16 autocast (only where the CPU has bf16 hardware)
Utterances/s are utterances seen over the trainer's train_runtime minus the validation time inside it
(`training_s`); `call_s` is the whole train_whisper call (loading, packing, validation, saving) as a user waits for
it. Then every trained model (and the base model) decodes the test split in float32 with the report's decoding
policy (transformers_decoding.transcribe_features) and is scored with the report's scoring (evaluation.score, the
default normalisation policy). Prints one JSON object and writes it to benchmarks/results/packing_<date>_cpu-<kind>.json
(kind amx, avx512bf16, avx512 or avx2: bench_common.cpu_tag) with the CPU model and flags.

An AVX2-only CPU, emulated on a newer one: PyTorch's own kernels, oneDNN and MKL held to AVX2 by the environment
(recorded in the JSON as `isa`; the file name then ends in _held-avx2, after the limits; the bf16 arm is
left out, as cpu_has_native_bf16 says no where oneDNN is held below AVX512_CORE_BF16):

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
        ../.venv/bin/python packing_benchmark.py ...
"""

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path


from asr_pipeline.core.decoding import DecodingPolicy
from asr_pipeline.core.transformers_decoding import transcribe_features
from asr_pipeline.core.evaluation import score
from asr_pipeline.core.features import FeatureShard
from asr_pipeline.core.model import cpu_has_native_bf16, load_model, load_processor
from asr_pipeline.core.settings import normalization_policy
from asr_pipeline.core.packing import PackedWindows, window_frames_limit, windows_per_step
from asr_pipeline.core.text import clean, paired_episode_bootstrap
from asr_pipeline.core.training import TrainingSettings, train_whisper
from asr_pipeline.core.training_data import FeatureRows
from featurize_benchmark import corpus  # noqa: E402  (benchmarks/ is the script's directory)
from bench_common import (SEED_RECIPE, cpu_info, cpu_tag, isa_limits, our_shard, seed_module, seed_train,  # noqa: E402
                          split_by_episode)
from result_files import write_result  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def score_test_split(rows: FeatureRows, hypotheses: list[str]) -> tuple[dict, object]:
    """The report's scoring of hypotheses against the rows' cleaned transcripts: (rates, edit counts)."""
    return score([clean(t) for t in rows.column("transcript")], hypotheses, normalization_policy(), resamples=1000)


def test_scores(model, processor, shard: FeatureShard) -> tuple[dict, object]:
    """The report's decoding policy and scoring, float32, on the whole test split: (scores, edit counts)."""
    import torch

    model.to(dtype=torch.float32).eval()
    rows = FeatureRows([shard], "test")
    durations = [float(d) for d in rows.column("duration")]
    started = time.perf_counter()
    hypotheses = transcribe_features(model, processor, lambda i: shard.features(rows.positions[i][1]), durations,
                                     DecodingPolicy(), emit=lambda _: None).texts
    seconds = time.perf_counter() - started
    rates, counts = score_test_split(rows, hypotheses)
    return {"utterances": len(rows), "decode_s": round(seconds, 1),
            **{k: rates[k] for k in ("cer", "cer_normalized", "cer_normalized_ci95", "wer")},
            "examples": [[str(r), h] for r, h in list(zip(rows.column("transcript"), hypotheses))[:3]]}, counts


def packed_steps(shard: FeatureShard, model: str, utterances: int, batch_size: int, window_seconds: float) -> int:
    """Steps of packed windows that train on `utterances` clips (windows a step x clips a window), as train_whisper
    plans them (the valid split exists, so every train clip is packed)."""
    windows = PackedWindows(FeatureRows([shard], "train"), load_processor(model).tokenizer,
                            max_frames=window_frames_limit(window_seconds))
    per_step = windows_per_step(batch_size, windows.utterances(), len(windows)) * windows.packing_factor()
    return max(1, round(utterances / per_step))


def train_ours(name: str, shard: FeatureShard, out: Path, model: str, args, packing: bool, bf16: bool,
               window_seconds: float = TrainingSettings.packing_max_seconds) -> dict:
    steps = packed_steps(shard, model, args.utterances, args.batch_size, window_seconds) if packing \
        else args.utterances // args.batch_size
    settings = TrainingSettings(learning_rate=args.learning_rate, batch_size=args.batch_size, warmup_steps=5,
                                max_steps=steps, eval_steps=10_000, logging_steps=max(1, steps // 4),
                                max_eval_samples=args.valid, generation_max_length=64, packing=packing,
                                packing_max_seconds=window_seconds, cpu_bf16=bf16,
                                seed=getattr(args, "seed", TrainingSettings.seed))
    print(f"training: {name}", file=sys.stderr)
    started = time.perf_counter()
    summary = train_whisper(model, [shard], out / name, settings, emit=lambda line: print(line, file=sys.stderr))
    call_s = time.perf_counter() - started
    history = json.loads((out / name / "training_log.json").read_text())
    validation_s = sum(h.get("eval_runtime", 0.0) for h in history)
    training_s = summary["train_runtime_s"] - validation_s
    return {"precision": summary["precision"], "packing": summary["packing"],
            "packing_max_seconds": window_seconds if packing else None, "steps": summary["steps"],
            "windows_per_step": summary["windows_per_step"], "packing_factor": summary["packing_factor"],
            "train_windows": summary["train_windows"], "windows_seen": summary["windows_seen"],
            "utterances_seen": summary["utterances_seen"], "train_runtime_s": summary["train_runtime_s"],
            "validation_s": round(validation_s, 2), "training_s": round(training_s, 2), "call_s": round(call_s, 2),
            "utterances_per_s": round(summary["utterances_seen"] / training_s, 4),
            "utterances_per_s_whole_call": round(summary["utterances_seen"] / call_s, 4),
            "first_logged_loss": summary["first_logged_loss"], "last_logged_loss": summary["last_logged_loss"]}


def run(args) -> dict:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    frame = split_by_episode(corpus(work, args.clips), args.test, args.valid)
    run_dir = work / f"packing_{os.getpid()}"
    run_dir.mkdir(parents=True)
    print("featurizing (seed: train split; ours: every split)", file=sys.stderr)
    shard = our_shard(frame, run_dir / "ours", args.base_model)
    seed = seed_module(Path(args.seed_recipe))
    frame[frame["split"] == "train"][["audio_path", "transcript"]].to_csv(run_dir / "seed_train.csv", index=False)
    seed.featurize(str(run_dir / "seed_train.csv"), str(run_dir / "seed_features"), args.base_model)
    processor = load_processor(args.base_model)
    steps = args.utterances // args.batch_size
    results = {
        "command": "cd benchmarks && ../.venv/bin/python packing_benchmark.py " + " ".join(sys.argv[1:]),
        "date": date.today().isoformat(), "cpu": cpu_info(), "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "torch_threads": __import__("torch").get_num_threads(),
        "isa": isa_limits(),
        "note": "other jobs may have shared this machine's CPU cores during the run",
        "corpus": {"clips": len(frame), **{f"{s}_clips": int((frame["split"] == s).sum()) for s in
                                          ("train", "valid", "test")},
                   "mean_seconds": round(float(shard.index["duration"].mean()), 2)},
        "utterances": args.utterances, "batch_size": args.batch_size, "steps": steps,
        "learning_rate": args.learning_rate, "window_seconds": args.window_seconds, "training": {}, "test": {},
    }
    counts = {}
    if args.with_base:  # slow: the raw model on synthetic speech falls back through every temperature
        results["test"]["base"], counts["base"] = test_scores(load_model(args.base_model), processor, shard)

    print("training: seed recipe", file=sys.stderr)
    started = time.perf_counter()
    seed_result, seed_model = seed_train(seed, run_dir / "seed_features", run_dir / "seed_out", args.base_model,
                                         steps, args.batch_size)
    results["training"]["seed"] = {"precision": "fp32", "steps": steps, "utterances_seen": steps * args.batch_size,
                                   "training_s": seed_result["seconds"],
                                   "call_s": round(time.perf_counter() - started, 2),
                                   "utterances_per_s": seed_result["samples_per_s"]}
    results["test"]["seed"], counts["seed"] = test_scores(seed_model, processor, shard)
    del seed_model

    # (name, packing, bf16, longest window in seconds): "packed" is the default window; --also-window-seconds adds
    # packed_<s>s variants to compare window lengths on the same corpus in the same run
    variants = [("unpacked", False, False, 30.0), ("packed", True, False, args.window_seconds)]
    variants += [(f"packed_{s:g}s", True, False, s) for s in args.also_window_seconds]
    if cpu_has_native_bf16():
        variants.append(("packed_bf16", True, True, args.window_seconds))
    for name, packing, bf16, seconds in variants:
        results["training"][name] = train_ours(name, shard, run_dir / "models", args.base_model, args, packing, bf16,
                                               seconds)
        results["test"][name], counts[name] = test_scores(load_model(str(run_dir / "models" / name)), processor,
                                                          shard)

    training, test = results["training"], results["test"]
    groups = FeatureRows([shard], "test").column("group")
    results["ratios"] = {"unpacked_vs_seed_utterances_per_s": round(training["unpacked"]["utterances_per_s"]
                                                                    / training["seed"]["utterances_per_s"], 2)}
    for name in [v[0] for v in variants if v[1] and not v[2]]:
        results["ratios"].update({
            f"{name}_vs_unpacked_utterances_per_s": round(training[name]["utterances_per_s"]
                                                          / training["unpacked"]["utterances_per_s"], 2),
            f"{name}_vs_unpacked_whole_call": round(training[name]["utterances_per_s_whole_call"]
                                                    / training["unpacked"]["utterances_per_s_whole_call"], 2),
            f"{name}_vs_seed_utterances_per_s": round(training[name]["utterances_per_s"]
                                                      / training["seed"]["utterances_per_s"], 2),
            # paired over test episodes, as the promotion decision compares two models
            f"{name}_minus_unpacked_test_cer_normalized": paired_episode_bootstrap(counts[name], counts["unpacked"],
                                                                                    groups),
        })
    if "packed_bf16" in training:
        results["ratios"]["packed_bf16_vs_unpacked_fp32_utterances_per_s"] = round(
            training["packed_bf16"]["utterances_per_s"] / training["unpacked"]["utterances_per_s"], 2)
    results["goal_met"] = (results["ratios"]["packed_vs_unpacked_utterances_per_s"] >= 3
                           and test["packed"]["cer_normalized"] <= test["unpacked"]["cer_normalized"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--clips", type=int, default=480)
    parser.add_argument("--test", type=int, default=50)
    parser.add_argument("--valid", type=int, default=5)
    parser.add_argument("--utterances", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--with-base", action="store_true", help="score the base model too (slow)")
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--window-seconds", type=float, default=TrainingSettings.packing_max_seconds,
                        help="the longest packed window of the 'packed' variant (default: the training default)")
    parser.add_argument("--also-window-seconds", type=lambda v: [float(x) for x in v.split(",") if x], default=[],
                        help="comma-separated window lengths to compare too (packed_<s>s variants)")
    parser.add_argument("--work", default="/tmp/asr_packing_benchmark")
    parser.add_argument("--seed-recipe", default=str(SEED_RECIPE), help="the seed recipe (default: the one beside "
                        "the repository, ../shared/reference/seed_recipe.py)")
    parser.add_argument("--no-save", action="store_true", help="print only; write nothing to benchmarks/results")
    args = parser.parse_args()
    if args.utterances % args.batch_size:
        parser.error("--utterances must be a multiple of --batch-size")
    results = run(args)
    if args.no_save:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        held = "".join(f"_held-{v}" for v in sorted({v.lower() for v in results["isa"]["held_by"].values()}))
        write_result(results, RESULTS, f"packing_{results['date']}_cpu-{cpu_tag(results['cpu'])}{held}.json")


if __name__ == "__main__":
    main()

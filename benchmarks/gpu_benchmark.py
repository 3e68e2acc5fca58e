"""GPU figures (issue 14, point 5): training (the seed recipe, ours unpacked, ours packed) and evaluation (the seed's
Seq2SeqTrainer.predict against our decoding) on a GPU, for whisper-base's shape and a 128-mel large-v3-turbo shape.

The lent GPU machine (the tool library's `device`) has torch and transformers but no Dagster, no espeak-ng and no
network, and a call carries at most 64 MiB of files. So this runs in two halves:

  here:   .venv/bin/python benchmarks/gpu_benchmark.py prepare --base-model /work/cache/whisper-base \\
              --clips 300 --data .gpu/data
          (the espeak-ng corpus as 16 kHz FLAC with its manifest, the seed recipe, whisper-base's configuration,
          tokenizer and feature-extractor files: no weights)
  there:  python3 benchmarks/gpu_benchmark.py run --data .gpu/data --out $OUT [--shapes base,turbo128]
          [--utterances base=640,turbo128=320] [--deadline-s 420] [--packed-batches 64]
          (with the wheels of soundfile, soxr, librosa, datasets and jiwer carried in .whl; see docs/BENCHMARKS.md)

Weights. whisper-base's real weights (290 MB) cannot travel in a call's 64 MiB and nothing can be downloaded there,
so both models are seeded random initialisations of real configurations: whisper-base's config, and large-v3-turbo's
shape (128 mel bins, 32 encoder and 4 decoder layers of width 1280, 20 heads) with whisper-base's vocabulary (51,865
tokens, one fewer than v3's, so the same tokenizer serves both). Training speed depends on the shape, not the
weights. Random weights never end a transcript, so clips decode to their limits: 225 tokens for the seed (recorded as
mean_generated_tokens); for ours the duration budget (mean_budget_tokens), at the fallback temperatures the guards
ask for (`ours_greedy_bf16` is one pass) -- the worst case of both, not a trained model's speed.
mean_tokens_of_final_text is the kept text re-tokenized. Test CER of such models means nothing and is not reported.
The arms run in a fixed order (seed, unpacked, packed, packed_batchN; seed, bf16, greedy, float32 decoding), after a
warm-up of a training step and of generation (fp16 autocast, float32, bf16). Ours records mean_passes: decoding
passes a clip.

Per shape: featurize once (ours: resampled_dataset + featurized_shards; the seed's own featurize for its train and
test splits), then train each variant for the same number of utterances at the seed's batch (16) and lr (1e-5): the
seed's train(), ours with packing off, ours with packing on (the training default: windows of at most
packing_max_seconds, 15 s; a step takes about 16 utterances) and, with --packed-batches, ours packed with more
utterances a step (GPU-sized steps: on the H100 a step of 4 packed windows cost about what 16 clips did; give
--utterances enough for 25 such steps, or steady_state says the median still includes warm-up). The GPU is warmed up
(one forward and backward in fp16 and bf16) before the first timed run. Each optimizer step of ours is timed (CUDA
synchronised): step_ms_median (after the first five; step_timings_n says how many it covers); the rest of
train_runtime is validation, checkpoint saving and loading the best one. Results go to OUT/gpu_<date>.json after
every stage, so a run cut short still reports what it measured. Every run works in a folder of its own under --work
(a checkpoint left by an earlier run would otherwise be resumed, and time fewer steps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from bench_common import (MODEL_FILES, cpu_info, our_shard, random_whisper, seed_evaluate, seed_module,
                          seed_train, split_by_episode, step_summary, time_steps)

TURBO_SHAPE = {"num_mel_bins": 128, "d_model": 1280, "encoder_layers": 32, "decoder_layers": 4,
               "encoder_attention_heads": 20, "decoder_attention_heads": 20, "encoder_ffn_dim": 5120,
               "decoder_ffn_dim": 5120}
def prepare(args) -> None:
    """Here: the corpus as 16 kHz FLAC (the seed reads it with librosa at 16 kHz: nothing to resample there)."""
    import soundfile as sf
    import soxr

    from featurize_benchmark import corpus
    from bench_common import SEED_RECIPE

    data = Path(args.data)
    (data / "audio").mkdir(parents=True, exist_ok=True)
    frame = corpus(Path(args.work), args.clips)
    names = []
    for path in frame["audio_path"]:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
        audio = soxr.resample(audio.mean(axis=1), rate, 16000)
        name = Path(path).stem + ".flac"
        sf.write(data / "audio" / name, audio, 16000, subtype="PCM_16")
        names.append(name)
    pd.DataFrame({"audio": names, "transcript": frame["transcript"]}).to_csv(data / "manifest.csv", index=False)
    (data / "tokenizer").mkdir(exist_ok=True)
    for name in MODEL_FILES:
        if (Path(args.base_model) / name).exists():
            shutil.copy(Path(args.base_model) / name, data / "tokenizer" / name)
    shutil.copy(args.seed_recipe or SEED_RECIPE, data / "seed_recipe.py")
    size = sum(f.stat().st_size for f in data.rglob("*") if f.is_file())
    print(f"{len(names)} clips and the model files in {data}: {size / 2**20:.1f} MiB")


def random_model(data: Path, out: Path, shape: str, tiny: bool = False) -> str:
    """A seeded random initialisation of whisper-base's configuration, or of the 128-mel turbo shape (tiny: two
    narrow layers each, to try the script on a CPU)."""
    if shape != "turbo128":
        return random_whisper(data / "tokenizer", out, {})
    narrow = {"d_model": 256, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
              "decoder_attention_heads": 4, "encoder_ffn_dim": 1024, "decoder_ffn_dim": 1024} if tiny else {}
    return random_whisper(data / "tokenizer", out, {**TURBO_SHAPE, **narrow})


def warm_up(model_dir: str, device: str = "cuda") -> None:
    """CUDA's context, cuBLAS handles and the kernels' first loads (training and generation), paid before any timed
    run. (The 2026-11-27 results predate the generation part.) device: "cpu" only to try this function here."""
    import torch

    from asr_pipeline.core.model import load_model

    if device == "cuda" and not torch.cuda.is_available():
        return
    model = load_model(model_dir, device=device)
    features = torch.randn(2, model.config.num_mel_bins, 3000, device=device)
    labels = torch.randint(0, 1000, (2, 20), device=device)
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast(device, dtype=dtype):
            model(input_features=features, labels=labels).loss.backward()
    model.eval()
    with torch.no_grad():  # generation too: the seed's (fp16 autocast), then in float32 and bf16 weights as ours
        with torch.autocast(device, dtype=torch.float16):
            model.generate(input_features=features, max_new_tokens=4)
        model.generate(input_features=features, max_new_tokens=4)
        model.to(torch.bfloat16).generate(input_features=features.to(torch.bfloat16), max_new_tokens=4)
    if device == "cuda":
        torch.cuda.synchronize()
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def our_decode(model_dir: str, shard, prefer_bf16: bool, greedy_only: bool = False) -> dict:
    """The report's decoding (transformers_decoding.transcribe_features) on the test split, placed as
    evaluate_on_test places it."""
    import torch

    from asr_pipeline.core.decoding import DecodingPolicy
    from asr_pipeline.core.transformers_decoding import transcribe_features
    from asr_pipeline.core.model import inference_placement, load_model, load_processor
    from asr_pipeline.core.training_data import FeatureRows

    device, dtype = inference_placement(prefer_bf16)
    model, processor = load_model(model_dir, device=device, dtype=dtype), load_processor(model_dir)
    rows = FeatureRows([shard], "test")
    durations = [float(d) for d in rows.column("duration")]
    policy = DecodingPolicy(temperatures=(0.0,)) if greedy_only else DecodingPolicy()
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    decoded = transcribe_features(model, processor, lambda i: shard.features(rows.positions[i][1]), durations,
                                  policy, emit=lambda _: None)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    tokens = [len(processor.tokenizer(t, add_special_tokens=False).input_ids) for t in decoded.texts]
    return {"utterances": len(rows), "seconds": round(seconds, 3), "utterances_per_s": round(len(rows) / seconds, 4),
            "device": device, "dtype": str(dtype).replace("torch.", ""),
            "temperatures": list(policy.temperatures), "mean_budget_tokens": round(
                sum(policy.budget(d) for d in durations) / len(durations), 1),
            "mean_tokens_of_final_text": round(sum(tokens) / len(tokens), 1), **{k: round(v, 3) for k, v in
                                                                                  decoded.stats().items()}}


def run_shape(shape: str, data: Path, work: Path, frame: pd.DataFrame, utterances: int, results: dict, save,
              deadline: float, tiny: bool = False, only_ours: bool = False,
              packed_batches: tuple[int, ...] = ()) -> None:
    from packing_benchmark import train_ours

    entry = results["shapes"].setdefault(shape, {})
    if time.time() > deadline:
        entry["skipped"] = "deadline"
        return
    model_dir = random_model(data, work / "models" / f"{shape}_random", shape, tiny)
    seed = seed_module(data / "seed_recipe.py")
    started = time.perf_counter()
    shard = our_shard(frame, work / shape / "ours", model_dir)
    entry["featurize_ours_s"] = round(time.perf_counter() - started, 2)
    entry["mean_clip_seconds"] = round(float(shard.index["duration"].mean()), 2)
    for split in () if only_ours else ("train", "test"):
        frame[frame["split"] == split][["audio_path", "transcript"]].to_csv(work / shape / f"seed_{split}.csv",
                                                                            index=False)
        started = time.perf_counter()
        try:  # the seed needs librosa and datasets there: without them, ours is still measured
            seed.featurize(str(work / shape / f"seed_{split}.csv"), str(work / shape / f"seed_{split}"), model_dir)
            entry[f"featurize_seed_{split}_s"] = round(time.perf_counter() - started, 2)
        except Exception as error:
            entry[f"featurize_seed_{split}"] = f"{type(error).__name__}: {error}"
    warm_up(model_dir)
    batch = 16
    steps = utterances // batch
    entry.update({"utterances": utterances, "batch_size": batch, "training": {}, "evaluation": {}})
    save()
    if time.time() > deadline:
        entry["skipped"] = "deadline"
        return
    started = time.perf_counter()
    try:
        if only_ours:
            raise RuntimeError("not run (--only-ours)")
        seed_result, seed_model = seed_train(seed, work / shape / "seed_train", work / shape / "seed_out",
                                             model_dir, steps, batch)
        del seed_model
        entry["training"]["seed"] = {"precision": "fp16 autocast (the notebook's)", "steps": steps,
                                     "utterances_seen": steps * batch, "training_s": seed_result["seconds"],
                                     "call_s": round(time.perf_counter() - started, 2),
                                     "utterances_per_s": seed_result["samples_per_s"]}
    except Exception as error:
        entry["training"]["seed"] = {"error": f"{type(error).__name__}: {error}"}
    save()
    arms = [("unpacked", False, batch), ("packed", True, batch)]
    # GPU-sized packed steps: as many utterances a step as the batch's windows hold (--packed-batches), same lr
    arms += [(f"packed_batch{b}", True, b) for b in packed_batches]
    for name, packing, arm_batch in arms:
        if time.time() > deadline:
            entry["training"][name] = {"skipped": "deadline"}
            continue
        options = SimpleNamespace(utterances=utterances, batch_size=arm_batch, learning_rate=1e-5, valid=10, seed=42)
        try:
            seconds = time_steps()
            entry["training"][name] = train_ours(name, shard, work / shape / "models", model_dir, options, packing,
                                                 True)
        except Exception as error:  # one broken arm must not lose the others' figures
            import traceback

            traceback.print_exc()
            entry["training"][name] = {"error": f"{type(error).__name__}: {error}"}
            continue
        result = entry["training"][name]
        result["batch_size"] = arm_batch
        result.update(step_summary(seconds, result["utterances_seen"] / max(1, result["steps"]),
                                   result["train_runtime_s"]))
        save()
    training = entry["training"]
    entry["ratios"] = {f"{name}_vs_seed_utterances_per_s": round(training[name]["utterances_per_s"]
                                                                 / training["seed"]["utterances_per_s"], 2)
                       for name in ("unpacked", "packed")
                       if "utterances_per_s" in training.get(name, {}) and "utterances_per_s" in training["seed"]}
    for name, *_ in arms[1:]:  # whole runs (fixed costs included), and steady steps
        for key in ("utterances_per_s", "utterances_per_s_steady"):
            if key in training.get(name, {}) and key in training.get("unpacked", {}):
                entry["ratios"][f"{name}_vs_unpacked_{key}"] = round(training[name][key] / training["unpacked"][key], 2)
    save()
    if only_ours:
        return
    evaluation = entry["evaluation"]
    for name, run in (("seed", lambda: seed_evaluate(work / shape / "seed_test", model_dir, seed=seed)),
                      ("ours_bf16", lambda: our_decode(model_dir, shard, prefer_bf16=True)),
                      ("ours_greedy_bf16", lambda: our_decode(model_dir, shard, True, greedy_only=True)),
                      ("ours_fp32", lambda: our_decode(model_dir, shard, prefer_bf16=False))):
        if time.time() > deadline:
            evaluation[name] = {"skipped": "deadline"}
            continue
        try:
            evaluation[name] = run()
        except Exception as error:  # one broken arm must not lose the others' figures
            evaluation[name] = {"error": f"{type(error).__name__}: {error}"}
        if name != "seed" and "utterances_per_s" in evaluation[name] and "utterances_per_s" in evaluation["seed"]:
            evaluation[name]["speedup_vs_seed"] = round(evaluation[name]["utterances_per_s"]
                                                        / evaluation["seed"]["utterances_per_s"], 2)
        save()


def environment() -> dict:
    import torch
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda, "cpu": cpu_info(), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": properties.name, "memory_gib": round(properties.total_memory / 2**30, 1),
                       "multiprocessors": properties.multi_processor_count,
                       "bf16": torch.cuda.is_bf16_supported()}
    return info


def run(args) -> None:
    started = time.time()
    deadline = started + args.deadline_s
    data, out, work = Path(args.data).resolve(), Path(args.out), Path(args.work) / f"run_{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True)
    manifest = pd.read_csv(data / "manifest.csv")
    frame = split_by_episode(pd.DataFrame({"audio_path": [str(data / "audio" / a) for a in manifest["audio"]],
                                           "transcript": manifest["transcript"]}), args.test, args.valid)
    results = {"command": "python3 benchmarks/gpu_benchmark.py " + " ".join(sys.argv[1:]),
               "date": date.today().isoformat(), "environment": environment(),
               "corpus": {"clips": len(frame), **{f"{s}_clips": int((frame["split"] == s).sum())
                                                  for s in ("train", "valid", "test")}},
               "weights": "seeded random initialisation (see the script's docstring)", "shapes": {}}
    path = out / f"gpu_{results['date']}.json"

    def save() -> None:
        results["elapsed_s"] = round(time.time() - started, 1)
        results["dagster_imported"] = "dagster" in sys.modules
        path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")

    save()
    budgets = dict(item.split("=") for item in args.utterances.split(","))
    packed_batches = tuple(sorted({int(b) for b in args.packed_batches.split(",") if b}))  # an arm a folder
    if any(b < 1 for b in packed_batches):
        raise SystemExit(f"--packed-batches must be positive batch sizes, got {args.packed_batches}")
    for shape in args.shapes.split(","):
        print(f"== {shape}", file=sys.stderr, flush=True)
        try:
            run_shape(shape, data, work, frame, int(budgets[shape]), results, save, deadline,
                      args.tiny, args.only_ours, packed_batches)
        except Exception as error:
            import traceback

            traceback.print_exc()
            results["shapes"].setdefault(shape, {})["error"] = f"{type(error).__name__}: {error}"
        save()
    print(json.dumps(results, indent=2, ensure_ascii=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    here = sub.add_parser("prepare", help="here: the corpus and model files for the device")
    here.add_argument("--base-model", required=True)
    here.add_argument("--clips", type=int, default=300)
    here.add_argument("--data", default=".gpu/data")
    here.add_argument("--work", default="/tmp/asr_packing_benchmark")
    here.add_argument("--seed-recipe", default=None)
    there = sub.add_parser("run", help="on the GPU machine")
    there.add_argument("--data", default=".gpu/data")
    there.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_benchmark_out"))
    there.add_argument("--work", default="/tmp/gpu_benchmark")
    there.add_argument("--shapes", default="base,turbo128")
    there.add_argument("--utterances", default="base=640,turbo128=320")
    there.add_argument("--test", type=int, default=48)
    there.add_argument("--valid", type=int, default=10)
    there.add_argument("--only-ours", action="store_true", help="train ours only (no seed, no evaluation)")
    there.add_argument("--packed-batches", default="", help="extra packed arms with these batch sizes in utterances, "
                       "e.g. 64: about 17 windows a step at 3.7 clips a window, as many inputs as an unpacked step "
                       "of 16 (the learning rate stays 1e-5: a speed figure, not a tuned recipe)")
    there.add_argument("--tiny", action="store_true", help="a narrow turbo128 shape, to try this on a CPU")
    there.add_argument("--deadline-s", type=float, default=420.0, help="start no new stage after this many seconds")
    args = parser.parse_args()
    prepare(args) if args.command == "prepare" else run(args)


if __name__ == "__main__":
    main()

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
          (with the wheels of soundfile, soxr, librosa, datasets and jiwer carried in .whl: gpu_wheels.sh)

Weights. whisper-base's real weights (290 MB) do not fit a call's 64 MiB and nothing can be downloaded there: they
travel as float16 parts over three calls (gpu_weights.py; --real-base, docs/BENCHMARKS.md). Without them both models
are seeded random initialisations of real configurations: whisper-base's config, and large-v3-turbo's
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
import math
import os
import shutil
import sys
import time
from datetime import date
from pathlib import Path

import pandas as pd

from bench_common import MODEL_FILES, attention_label, keep_cudnn_attention, our_shard, seed_module, split_by_episode
from result_files import device_code, fresh_result_path, prepared_code
from gpu_arms import (SEED_LEARNING_RATE, environment, evaluate_arms, packed_arm_name, random_model, score_trained,
                      train_arms, warm_up)


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
    code = prepared_code(data)
    print(f"code: {code['commit']}" + (" with uncommitted changes" if code["uncommitted_changes"] else ""))
    size = sum(f.stat().st_size for f in data.rglob("*") if f.is_file())
    print(f"{len(names)} clips and the model files in {data}: {size / 2**20:.1f} MiB")

def run_shape(shape: str, data: Path, work: Path, frame: pd.DataFrame, utterances: int, results: dict, save,
              deadline: float, tiny: bool = False, only_ours: bool = False,
              packed_batches: tuple[tuple[int, float | None], ...] = (), real_base: Path | None = None,
              default_packed: bool = True) -> None:
    entry = results["shapes"].setdefault(shape, {})
    if time.time() > deadline:
        entry["skipped"] = "deadline"
        return
    real = shape == "base" and real_base is not None
    if real:
        model_dir = str(real_base)
        sha = (real_base / "weights_sha256.txt").read_text().split()[0] if (real_base / "weights_sha256.txt").exists() \
            else "unknown"
        entry["weights"] = f"OpenAI whisper-base as released (float16 SHA-256 {sha}, gpu_weights.py)"
    else:
        model_dir = random_model(data, work / "models" / f"{shape}_random", shape, tiny)
        entry["weights"] = "seeded random initialisation"
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
    entry.update({"utterances": utterances, "batch_size": batch, "training": {}, "evaluation": {}})
    save()
    if time.time() > deadline:
        entry["skipped"] = "deadline"
        return
    train_arms(entry, seed, shard, model_dir, work / shape, utterances, batch, packed_batches, only_ours, deadline,
               save, default_packed)
    if not only_ours:
        evaluate_arms(entry["evaluation"], seed, shard, model_dir, work / shape, deadline, save, scored=real)
    if real:  # the packing goal's CER half, then the evaluation of a model that has learnt this speech
        score_trained(entry, shard, work / shape / "models", deadline, save)
        packed = work / shape / "models" / "packed"
        if not only_ours and (packed / "config.json").exists():
            entry["evaluation_finetuned"] = {}  # the packed arm's checkpoint; its bf16 decode is test_scores'
            evaluate_arms(entry["evaluation_finetuned"], seed, shard, str(packed), work / shape, deadline, save,
                          scored=True, known={"ours_bf16": entry["test_scores"].get("packed")})


def packed_arms(text: str) -> tuple[tuple[int, float | None], ...]:
    """--packed-batches "64,64@4e-5": (utterances a step, learning rate or None) per extra packed arm, each once."""
    arms: dict[str, tuple[int, float | None]] = {}
    for item in (i.strip() for i in text.split(",") if i.strip()):
        size, at, rate = item.partition("@")
        try:
            arm = (int(size), float(rate) if at else None)
        except ValueError:
            raise SystemExit(f"--packed-batches: {item!r} is not BATCH or BATCH@LR (e.g. 64 or 64@4e-5)")
        if arm[0] < 1 or (arm[1] is not None and not (math.isfinite(arm[1]) and arm[1] > 0)):
            raise SystemExit(f"--packed-batches: {item!r} needs a positive batch size and a positive finite "
                             "learning rate")
        if arm[1] == SEED_LEARNING_RATE:
            arm = (arm[0], None)  # the seed's rate is the plain arm's
        named = arms.setdefault(packed_arm_name(*arm), arm)
        if named != arm:
            raise SystemExit(f"--packed-batches: {item!r} and {named} would share the arm {packed_arm_name(*arm)}")
    return tuple(sorted(arms.values(), key=lambda a: (a[0], a[1] or 0.0)))  # an arm a folder


def run(args) -> None:
    if args.keep_cudnn_sdpa:
        keep_cudnn_attention()
    started = time.time()
    deadline = started + args.deadline_s
    data, out, work = Path(args.data).resolve(), Path(args.out), Path(args.work) / f"run_{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True)
    manifest = pd.read_csv(data / "manifest.csv")
    frame = split_by_episode(pd.DataFrame({"audio_path": [str(data / "audio" / a) for a in manifest["audio"]],
                                           "transcript": manifest["transcript"]}), args.test, args.valid)
    results = {"command": "python3 benchmarks/gpu_benchmark.py " + " ".join(sys.argv[1:]),
               "date": date.today().isoformat(), "code": device_code(data), "environment": environment(),
               "corpus": {"clips": len(frame), **{f"{s}_clips": int((frame["split"] == s).sum())
                                                  for s in ("train", "valid", "test")}},
               "weights": "per shape (shapes.*.weights); random unless --real-base",
               "cudnn_sdpa": attention_label(args.keep_cudnn_sdpa), "shapes": {}}
    path = fresh_result_path(out, f"gpu_{results['date']}.json")

    def save() -> None:
        results["elapsed_s"] = round(time.time() - started, 1)
        results["dagster_imported"] = "dagster" in sys.modules
        path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")

    save()
    budgets = dict(item.split("=") for item in args.utterances.split(","))
    if args.real_base and ("base" not in args.shapes.split(",") or not (args.real_base / "config.json").exists()):
        raise SystemExit(f"--real-base {args.real_base}: needs a model directory (gpu_weights.py join) and the base "
                         f"shape in --shapes (got {args.shapes})")
    packed_batches = packed_arms(args.packed_batches)
    for shape in args.shapes.split(","):
        print(f"== {shape}", file=sys.stderr, flush=True)
        try:
            run_shape(shape, data, work, frame, int(budgets[shape]), results, save, deadline,
                      args.tiny, args.only_ours, packed_batches, args.real_base and args.real_base.resolve(),
                      not args.no_default_packed)
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
                       "of 16, at the seed's lr 1e-5; 64@4e-5 at lr 4e-5 (a quarter of the optimizer steps)")
    there.add_argument("--no-default-packed", action="store_true",
                       help="leave out the packed arm at the default step (keeps unpacked and --packed-batches)")
    there.add_argument("--tiny", action="store_true", help="a narrow turbo128 shape, to try this on a CPU")
    there.add_argument("--real-base", type=Path, default=None,
                       help="whisper-base with its real weights (gpu_weights.py join) for the base shape: then the "
                            "trained arms' test CER and the evaluation of the released and fine-tuned models")
    there.add_argument("--keep-cudnn-sdpa", action="store_true",
                       help="leave cuDNN among the attention backends (ASR_CUDNN_ATTENTION=1), to compare")
    there.add_argument("--deadline-s", type=float, default=420.0, help="start no new stage after this many seconds")
    args = parser.parse_args()
    prepare(args) if args.command == "prepare" else run(args)


if __name__ == "__main__":
    main()

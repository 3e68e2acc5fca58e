"""Why the report's decoding ran slower in bf16 than in float32 on the H100 (docs/BENCHMARKS.md, "GPU figures"):
decodes the test split with the report's policy in each dtype of --rounds, in that order (so a first-round effect
shows as the same dtype differing between rounds), and records every decode call (temperature, rows, decoder steps,
seconds, CUDA synchronised) and each round's torch.profiler summary of the heaviest operators.

    python3 benchmarks/gpu_decode_probe.py --data .gpu/data --out $OUT [--model DIR] [--rounds float32,bfloat16,...]

--data: gpu_benchmark.py prepare's folder; --model: a model directory (default: a seeded random whisper-base, which
never ends a transcript: every clip falls back through every temperature, the worst case). No Dagster import: the
GPU machine has none. Writes OUT/decode_probe_<date>.json and one profile table a round (profile_<n>_<dtype>.txt).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import pandas as pd

from bench_common import attention_label, keep_cudnn_attention, our_shard, split_by_episode
from result_files import device_code, fresh_result_path
from gpu_arms import environment, random_model, warm_up


def probe_round(model_dir: str, shard, dtype_name: str, clips: int, profile_path: Path | None) -> dict:
    import torch

    from asr_pipeline.core import transformers_decoding
    from asr_pipeline.core.decoding import DecodingPolicy
    from asr_pipeline.core.model import load_model, load_processor
    from asr_pipeline.core.training_data import FeatureRows

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, dtype_name)
    model, processor = load_model(model_dir, device=device, dtype=dtype), load_processor(model_dir)
    rows = FeatureRows([shard], "test")
    durations = [float(d) for d in rows.column("duration")][:clips]
    runtime_class = transformers_decoding.TransformersRuntime
    calls: list[dict] = []
    counts = {"forwards": 0, "batch_selects": 0}

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    original_decode, original_forward = runtime_class.decode, runtime_class._forward

    def decode(self, chosen, temperature, max_new_tokens, best_of, seed):
        sync()
        before, started = dict(counts), time.perf_counter()
        result = original_decode(self, chosen, temperature, max_new_tokens, best_of, seed)
        sync()
        calls.append({"temperature": temperature, "rows": len(chosen), "budget": max_new_tokens,
                      "forwards": counts["forwards"] - before["forwards"],
                      "seconds": round(time.perf_counter() - started, 4)})
        return result

    def forward(self, hidden, cache, ids):
        counts["forwards"] += 1
        if not getattr(cache, "_probe_wrapped", False):  # count the rows leaving the batch
            select = cache.batch_select_indices

            def counted(index):
                counts["batch_selects"] += 1
                return select(index)

            cache.batch_select_indices, cache._probe_wrapped = counted, True
        return original_forward(self, hidden, cache, ids)

    runtime_class.decode, runtime_class._forward = decode, forward
    try:
        sync()
        started = time.perf_counter()
        if profile_path is None:
            result = transformers_decoding.transcribe_features(
                model, processor, lambda i: shard.features(rows.positions[i][1]), durations, DecodingPolicy(),
                emit=lambda _: None)
        else:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
            with profile(activities=activities) as profiler:
                result = transformers_decoding.transcribe_features(
                    model, processor, lambda i: shard.features(rows.positions[i][1]), durations, DecodingPolicy(),
                    emit=lambda _: None)
        sync()
        seconds = time.perf_counter() - started
    finally:
        runtime_class.decode, runtime_class._forward = original_decode, original_forward
    if profile_path is not None:
        averages = profiler.key_averages()
        tables = [averages.table(sort_by="self_cpu_time_total", row_limit=20)]
        if device == "cuda":
            tables.append(averages.table(sort_by="self_cuda_time_total", row_limit=20))
        profile_path.write_text("\n\n".join(tables) + "\n")
    by_temperature: dict[str, dict] = {}
    for call in calls:
        entry = by_temperature.setdefault(str(call["temperature"]), {"calls": 0, "rows": 0, "forwards": 0,
                                                                     "seconds": 0.0})
        for key in ("rows", "forwards", "seconds"):
            entry[key] += call[key]
        entry["calls"] += 1
    for entry in by_temperature.values():
        entry["ms_per_forward"] = round(1000 * entry["seconds"] / max(1, entry["forwards"]), 2)
        entry["seconds"] = round(entry["seconds"], 3)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"dtype": dtype_name, "device": device, "profiled": profile_path is not None, "clips": len(durations),
            "seconds": round(seconds, 3), "forwards": counts["forwards"], "batch_selects": counts["batch_selects"],
            "ms_per_forward": round(1000 * seconds / max(1, counts["forwards"]), 2), **result.stats(),
            "by_temperature": by_temperature, "calls": calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=".gpu/data")
    parser.add_argument("--out", default="/tmp/gpu_decode_probe")
    parser.add_argument("--work", default="/tmp/gpu_decode_probe_work")
    parser.add_argument("--model", default=None, help="a model directory (default: random whisper-base)")
    parser.add_argument("--rounds", default="float32,bfloat16,float32,bfloat16")
    parser.add_argument("--profile-rounds", default="float32,bfloat16",
                        help="then one profiled round each of these dtypes")
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--test", type=int, default=48)
    parser.add_argument("--keep-cudnn-sdpa", action="store_true",
                        help="leave cuDNN among the attention backends (ASR_CUDNN_ATTENTION=1), to compare")
    args = parser.parse_args()
    if args.keep_cudnn_sdpa:
        keep_cudnn_attention()
    data, out, work = Path(args.data).resolve(), Path(args.out), Path(args.work) / f"run_{time.time_ns()}"
    out.mkdir(parents=True, exist_ok=True)
    manifest = pd.read_csv(data / "manifest.csv")
    frame = split_by_episode(pd.DataFrame({"audio_path": [str(data / "audio" / a) for a in manifest["audio"]],
                                           "transcript": manifest["transcript"]}), args.test, 10)
    frame = frame[frame["split"] == "test"].reset_index(drop=True)
    model_dir = args.model or random_model(data, work / "model", "base")
    shard = our_shard(frame, work / "shard", model_dir)
    warm_up(model_dir)
    results = {"command": "python3 benchmarks/gpu_decode_probe.py " + " ".join(sys.argv[1:]),
               "date": date.today().isoformat(), "code": device_code(data), "environment": environment(),
               "weights": "given" if args.model else "seeded random initialisation",
               "cudnn_sdpa": attention_label(args.keep_cudnn_sdpa), "rounds": []}
    path = fresh_result_path(out, f"decode_probe_{results['date']}.json")
    path.write_text(json.dumps(results, indent=2) + "\n")  # valid JSON from the start, even if round 1 fails
    plan = [(name, None) for name in args.rounds.split(",") if name]
    plan += [(name, True) for name in args.profile_rounds.split(",") if name]
    for number, (dtype_name, profiled) in enumerate(plan):
        profile_path = out / f"{path.stem}_profile_{number}_{dtype_name}.txt" if profiled else None
        round_result = probe_round(model_dir, shard, dtype_name, args.clips, profile_path)
        results["rounds"].append(round_result)
        print({k: v for k, v in round_result.items() if k != "calls"}, flush=True)
        path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

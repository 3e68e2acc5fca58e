"""Decoding policy figures for docs/EVALUATION.md, on a real Whisper (e.g. whisper-base) and synthetic Korean speech.

1. the same clips decoded three ways: the old reference-derived budget (2 x label tokens + 10, longest label
   first, greedy), the audio budget greedy only, and the audio budget with Whisper's guards (the default policy);
2. the hypothesis cache: evaluate_on_test on two "nights" with an unchanged base model and champion and a new
   challenger; the second night decodes only the challenger.

usage: python benchmarks/decoding_policy_benchmark.py --base-model /work/cache/whisper-base --clips 16 --work DIR
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from asr_pipeline.core.audio import resample_manifest
from asr_pipeline.core.audio_shard import AudioShard
from asr_pipeline.core.benchmark_sets import BenchmarkSet
from asr_pipeline.core.decoding import GREEDY_ONLY, DecodingPolicy
from asr_pipeline.core.transformers_decoding import transcribe_features
from asr_pipeline.core.evaluation import evaluate_on_test
from asr_pipeline.core.features import FeatureShard, featurize_shard
from asr_pipeline.core.model import LANGUAGE, TASK, load_model, load_processor
from asr_pipeline.core.synth import write_demo_corpus
from asr_pipeline.core.text import clean, error_rates


def old_label_budget_decode(model, processor, features, label_lengths, batch_size):
    """main at 4b86012: longest reference label first, at most 2 x the batch's longest label + 10 tokens, greedy."""
    order = sorted(range(len(features)), key=lambda i: -label_lengths[i])
    texts = [None] * len(features)
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        budget = min(225, 2 * max(label_lengths[i] for i in chosen) + 10)
        with torch.inference_mode():
            tokens = model.generate(torch.from_numpy(np.stack([features[i] for i in chosen])), language=LANGUAGE,
                                    task=TASK, num_beams=1, do_sample=False, max_new_tokens=budget)
        for i, text in zip(chosen, processor.tokenizer.batch_decode(tokens, skip_special_tokens=True)):
            texts[i] = clean(text)
    return texts


def perturbed_copy(source, out, seed):
    model = load_model(source)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 1e-3 * torch.randn_like(p))
    model.save_pretrained(out)
    load_processor(source).save_pretrained(out)
    return str(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--work", required=True)
    parser.add_argument("--part", choices=["all", "policy", "cache"], default="all")
    args = parser.parse_args()
    work = Path(args.work)
    rows = write_demo_corpus(work / "audio_src", args.clips, emit=lambda _: None)
    manifest = pd.DataFrame([{"id": i + 1, "source_path": r["audio_path"], "audio_path": r["audio_path"],
                              "transcript": r["transcript"], "split": "test",
                              "group": Path(r["audio_path"]).stem.rsplit("_", 1)[0]} for i, r in enumerate(rows)])
    for d in ("audio", "features"):
        (work / d).mkdir(parents=True, exist_ok=True)
    resample_manifest(manifest, work / "audio", emit=lambda _: None)
    processor = load_processor(args.base_model)
    featurize_shard(AudioShard(work / "audio"), work / "features", processor.feature_extractor, processor.tokenizer,
                    args.base_model, emit=lambda _: None)
    shard = FeatureShard(work / "features")
    features = [shard.features(i) for i in range(len(shard))]
    refs = [clean(t) for t in shard.index["transcript"]]
    durations = shard.index["duration"].astype(float).tolist()
    labels = shard.index["label_length"].astype(int).tolist()
    model = load_model(args.base_model)
    out = {"cpu": os.popen("lscpu | grep 'Model name'").read().strip(), "clips": len(refs),
           "torch_threads": torch.get_num_threads()}
    runs = {"old: 2 x reference label + 10, greedy": lambda: old_label_budget_decode(
                model, processor, features, labels, args.batch_size),
            "audio budget, greedy only": lambda: transcribe_features(
                model, processor, features, durations, DecodingPolicy(**{**GREEDY_ONLY.__dict__,
                                                                       "batch_size": args.batch_size}),
                emit=lambda _: None),
            "audio budget + guards (default)": lambda: transcribe_features(
                model, processor, features, durations, DecodingPolicy(batch_size=args.batch_size),
                emit=lambda _: None)}
    for name, run in runs.items() if args.part in ("all", "policy") else ():
        started = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - started
        texts = result if isinstance(result, list) else result.texts
        rates = error_rates(refs, texts)
        out[name] = {"cer": round(rates.cer, 4), "cer_normalized": round(rates.cer_normalized, 4),
                     "seconds": round(seconds, 1), "empty": sum(not t for t in texts),
                     **(result.stats() if not isinstance(result, list) else {})}
        print(name, out[name], flush=True)
    if args.part == "policy":
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return
    # the cache: two nights, greedy policy to keep CPU time down (the saving is the same share with the guards)
    policy = DecodingPolicy(**{**GREEDY_ONLY.__dict__, "batch_size": args.batch_size})
    champion = perturbed_copy(args.base_model, work / "champion", 1)
    golden = work / "golden"  # a fixed benchmark set: four of the clips, with a manifest.csv of relative paths
    (golden / "audio").mkdir(parents=True, exist_ok=True)
    lines = ["audio_path,transcript"]
    for r in rows[:4]:
        target = golden / "audio" / Path(r["audio_path"]).name
        target.write_bytes(Path(r["audio_path"]).read_bytes())
        lines.append(f"audio/{target.name},{r['transcript']}")
    (golden / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    sets = [BenchmarkSet.load("golden", golden)]
    for night, challenger_seed in ((1, 2), (2, 3)):
        challenger = perturbed_copy(args.base_model, work / f"challenger{night}", challenger_seed)
        started = time.perf_counter()
        report = evaluate_on_test(args.base_model, challenger, [shard], decoding=policy, emit=lambda _: None,
                                  champion={"model_path": champion}, cache_dir=work / "cache",
                                  bootstrap_resamples=200, prefer_bf16=False, benchmark_sets=sets,
                                  out_dir=(work / f"report{night}").mkdir(exist_ok=True) or work / f"report{night}")
        out[f"night {night}"] = {"seconds": round(time.perf_counter() - started, 1),
                                 "models_decoded": report["hypotheses_decoded"],
                                 "cached": [n for n in ("base", "finetuned", "champion") if report[n]["cached"]]}
        print(f"night {night}", out[f"night {night}"], flush=True)
    print(json.dumps(out, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()

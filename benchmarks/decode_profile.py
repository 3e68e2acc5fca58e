"""Where float32 evaluation time goes: the encoder (with the cross-attention keys/values) against the decoding passes.

    cd benchmarks && ../.venv/bin/python decode_profile.py --model DIR --features DIR [--clips 32]

--features: a featurized shard's features/ directory whose test split is decoded (packing_variants.py leaves one at
/tmp/asr_packing_variants/shard/features). Decodes the first --clips test clips with the report's policy in float32,
timing the runtime's _encode and _generate, and prints one JSON line with the texts and the temperature each kept
text came from. Run it with PYTHONPATH set to another checkout to time that checkout's decoder on the same clips
(older checkouts have no _generate: only the total and the encoder are timed there).
"""

import argparse
import json
import time
from pathlib import Path

import torch

from asr_pipeline.core import transformers_decoding
from asr_pipeline.core.decoding import DecodingPolicy
from asr_pipeline.core.transformers_decoding import transcribe_features
from asr_pipeline.core.features import FeatureShard
from asr_pipeline.core.model import load_model, load_processor
from asr_pipeline.core.training_data import FeatureRows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--features", required=True)
    parser.add_argument("--clips", type=int, default=32)
    args = parser.parse_args()
    shard = FeatureShard(Path(args.features))
    rows = FeatureRows([shard], "test")
    durations = [float(d) for d in rows.column("duration")][: args.clips]
    model = load_model(args.model).to(torch.float32).eval()
    processor = load_processor(args.model)
    timers: dict[str, float] = {}

    def timed(name, function):
        def inner(*a, **k):
            started = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                timers[name] = timers.get(name, 0.0) + time.perf_counter() - started
        return inner

    runtime = transformers_decoding.TransformersRuntime
    for name in ("_encode", "_generate"):
        if hasattr(runtime, name):
            setattr(runtime, name, timed(name.strip("_"), getattr(runtime, name)))
    started = time.perf_counter()
    result = transcribe_features(model, processor, lambda i: shard.features(rows.positions[i][1]), durations,
                                 DecodingPolicy(), emit=lambda _: None)
    total = time.perf_counter() - started
    print(json.dumps({"model": args.model, "clips": len(durations), "total_s": round(total, 2),
                      "utterances_per_s": round(len(durations) / total, 3),
                      **{f"{k}_s": round(v, 2) for k, v in timers.items()}, **result.stats(),
                      "texts": result.texts, "temperatures": result.temperatures}, ensure_ascii=False))


if __name__ == "__main__":
    main()

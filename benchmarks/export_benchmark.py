"""The deployable export: CTranslate2 int8 against the transformers checkpoint it came from, on this CPU.

    .venv/bin/python benchmarks/export_benchmark.py --base-model DIR [--clips 400] [--test 100] [--steps 30]
        [--batch-size 8] [--work DIR]

Corpus: --clips espeak-ng Korean utterances; the last --test are held out. whisper-base is fine-tuned for --steps on
the rest (our train_whisper; a few steps already make it far less prone to hallucinate on synthetic speech, which is
what a deployed fine-tuned model is like), exported with export_ctranslate2, and both runtimes decode the held-out
clips with the same policy (greedy, longest first, 2 x label length + 10 tokens, batch --batch-size). Prints one JSON
object: CER/normalised CER of each, the difference in points, utterances/s and the speed ratio.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from asr_pipeline.core.decoding import DecodingPolicy
from asr_pipeline.core.transformers_decoding import transcribe_features
from asr_pipeline.core.export import export_ctranslate2, load_ctranslate2, transcribe_features_ct2
from asr_pipeline.core.model import inference_dtype, load_model, load_processor
from asr_pipeline.core.synth import write_demo_corpus
from asr_pipeline.core.text import error_rates
from asr_pipeline.core.training import TrainingSettings, train_whisper
from asr_pipeline.core.training_data import FeatureRows

from bench_common import one_split_shard  # noqa: E402  (benchmarks/ is the script's directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--clips", type=int, default=400)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="export-bench-"))
    rows = write_demo_corpus(work / "audio", args.clips)
    import pandas as pd

    frame = pd.DataFrame(rows)
    train = one_split_shard(frame.iloc[: -args.test], "train", work / "train", args.base_model)
    test = one_split_shard(frame.iloc[-args.test:], "test", work / "test", args.base_model)
    settings = TrainingSettings(learning_rate=1e-4, batch_size=4, warmup_steps=0, max_steps=args.steps,
                                logging_steps=5)
    train_whisper(args.base_model, [train], work / "checkpoint", settings, emit=print)
    rows_ = FeatureRows([test], "test")
    features = [test.features(i) for _, i in rows_.positions]
    refs = [str(rows_.row(k)["transcript"]) for k in range(len(rows_))]
    durations = [float(rows_.row(k)["duration"]) for k in range(len(rows_))]
    policy = DecodingPolicy(batch_size=args.batch_size)
    checkpoint = str(work / "checkpoint")
    processor = load_processor(checkpoint)

    started = time.perf_counter()
    hf = transcribe_features(load_model(checkpoint), processor, features, durations, policy, emit=print,
                             what="transformers generate").texts
    hf_seconds = time.perf_counter() - started
    # the report's default on CPUs with AMX/AVX512-BF16: the same checkpoint decoded in bfloat16
    started = time.perf_counter()
    bf16 = transcribe_features(load_model(checkpoint, dtype=inference_dtype()), processor, features, durations,
                               policy, emit=print, what="transformers generate (bf16)").texts
    bf16_seconds = time.perf_counter() - started
    export = export_ctranslate2(checkpoint, work / "ctranslate2")
    model = load_ctranslate2(export)
    started = time.perf_counter()
    ct2 = transcribe_features_ct2(model, processor.tokenizer, features.__getitem__, durations, policy,
                                  emit=print).texts
    ct2_seconds = time.perf_counter() - started
    hf_rates, ct2_rates, bf16_rates = error_rates(refs, hf), error_rates(refs, ct2), error_rates(refs, bf16)
    print(json.dumps({
        "machine": f"{os.cpu_count()} CPU cores", "test_utterances": len(refs), "steps": args.steps,
        "transformers": {"cer": hf_rates.cer, "cer_normalized": hf_rates.cer_normalized,
                         "utterances_per_s": len(refs) / hf_seconds},
        "transformers_bf16": {"dtype": str(inference_dtype()), "cer": bf16_rates.cer,
                              "cer_normalized": bf16_rates.cer_normalized,
                              "utterances_per_s": len(refs) / bf16_seconds,
                              "identical_to_float32": sum(a == b for a, b in zip(hf, bf16))},
        "ctranslate2_int8": {"cer": ct2_rates.cer, "cer_normalized": ct2_rates.cer_normalized,
                             "utterances_per_s": len(refs) / ct2_seconds},
        "cer_difference_points": 100 * (ct2_rates.cer - hf_rates.cer),
        "speed_ratio": hf_seconds / ct2_seconds,
        "identical_hypotheses": sum(a == b for a, b in zip(hf, ct2)),
        "export_bytes": sum(f.stat().st_size for f in Path(export).iterdir()),
        "checkpoint_bytes": sum(f.stat().st_size for f in Path(checkpoint).glob("*.safetensors")),
    }, indent=2))


if __name__ == "__main__":
    main()

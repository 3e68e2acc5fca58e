"""Featurization: the seed recipe (../shared/reference/seed_recipe.py) and ours, on the same corpus, in one run.

    .venv/bin/python benchmarks/featurize_benchmark.py --base-model DIR [--clips 1000] [--work DIR]

DIR is a Whisper directory (e.g. built by ../shared/tools/whisper_base_offline/build.sh). The corpus is espeak-ng
Korean speech (22.05 kHz WAV, every 10th clip 44.1 kHz stereo FLAC), so both sides decode and resample.
"Ours" is what resampled_dataset + featurized_shards do: decode/resample on all cores, int16 audio, compact float16
frames. Prints one JSON object with both sides, the ratios, and the CPU (model, SIMD flags).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from asr_pipeline.core.audio import resample_manifest
from asr_pipeline.core.audio_shard import AudioShard
from asr_pipeline.core.features import featurize_shard
from asr_pipeline.core.model import load_processor
from asr_pipeline.core.storage import directory_bytes
from asr_pipeline.core.synth import write_demo_corpus
from bench_common import SEED_RECIPE, cpu_info  # noqa: E402  (benchmarks/ is the script's directory)


def corpus(work: Path, clips: int) -> pd.DataFrame:
    manifest = work / f"corpus_{clips}.csv"
    if not manifest.exists():
        rows = write_demo_corpus(work / f"corpus_{clips}", clips, emit=lambda m: print(m, file=sys.stderr))
        pd.DataFrame(rows).to_csv(manifest, index=False)
    return pd.read_csv(manifest)


def seed_featurize(manifest_csv: Path, out: Path, model: str) -> dict:
    result = subprocess.run([sys.executable, str(SEED_RECIPE), "featurize", str(manifest_csv), str(out), model],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def our_featurize(frame: pd.DataFrame, out: Path, model: str) -> dict:
    manifest = pd.DataFrame({"id": range(len(frame)), "source_path": frame["audio_path"],
                             "audio_path": frame["audio_path"], "transcript": frame["transcript"],
                             "group": [f"id:{i}" for i in range(len(frame))], "split": "train"})
    audio_dir, features_dir = out / "resampled", out / "features"
    audio_dir.mkdir(parents=True), features_dir.mkdir(parents=True)
    processor = load_processor(model)  # loaded before the clock starts, as the seed loads its own before map()
    started = time.perf_counter()
    resample_manifest(manifest, audio_dir, emit=lambda _: None)
    summary = featurize_shard(AudioShard(audio_dir), features_dir, processor.feature_extractor,
                              processor.tokenizer, model, emit=lambda _: None)
    seconds = time.perf_counter() - started
    size, audio_size = directory_bytes(features_dir), directory_bytes(audio_dir)
    return {"step": "featurize", "rows": summary["rows"], "seconds": round(seconds, 3),
            "rows_per_s": round(summary["rows"] / seconds, 3), "bytes": size,
            "bytes_per_row": size // max(summary["rows"], 1),
            "audio_bytes_per_row": audio_size // max(summary["rows"], 1),
            "bytes_per_row_with_16k_audio": (size + audio_size) // max(summary["rows"], 1)}


def run_featurization(work: Path, clips: int, base_model: str) -> dict:
    """Both sides on the same corpus (made once under work/), with the ratios."""
    work.mkdir(parents=True, exist_ok=True)
    frame = corpus(work, clips)
    run_dir = work / f"run_{os.getpid()}"
    seed = seed_featurize(work / f"corpus_{clips}.csv", run_dir / "seed", base_model)
    ours = our_featurize(frame, run_dir / "ours", base_model)
    return {"clips": clips, "cpu": cpu_info(), "cpu_count": os.cpu_count(), "seed": seed, "ours": ours,
            "rows_per_s_ratio": round(ours["rows_per_s"] / seed["rows_per_s"], 2),
            "bytes_per_row_ratio": round(seed["bytes_per_row"] / ours["bytes_per_row"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--work", default="/tmp/asr_featurize_benchmark")
    args = parser.parse_args()
    print(json.dumps(run_featurization(Path(args.work), args.clips, args.base_model), indent=2))


if __name__ == "__main__":
    main()

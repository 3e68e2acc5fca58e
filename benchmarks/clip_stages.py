"""Lean runs (issue 14.3): where an ingest's per-clip work goes on this CPU, stage by stage.

    .venv/bin/python benchmarks/clip_stages.py [--clips 1000] [--repeats 3] [--work /tmp/asr_featurize_benchmark]

The corpus is ingest_process_benchmark.py's (featurize_benchmark.corpus: espeak-ng Korean, 16-bit WAV at 22.05 kHz,
every tenth clip 44.1 kHz stereo FLAC; made once under --work, which defaults to that script's, and reused).
For each clip, one thread, the stages `resample_manifest` runs per row (core/audio.py, _prepare_clip): decoding
(libsndfile), the mix to mono, what the mix to mono keeps of the channels (mix_retention), resampling to 16 kHz
(soxr HQ), the finite check, int16 quantization, the peaks (with and without DC), how long the clip has sound
(sound_seconds), and the content hash (sha256: fast where the CPU has the SHA extensions, `sha_ni` in its flags, slow where it does not). Best of
--repeats passes, in milliseconds a clip (their sum adds bests from different passes: a lower bound). Then whole `resample_manifest` calls on the same rows with 1 and 2 worker
threads (best of --repeats), which shows how much of the single-thread sum the threads overlap. Last, the mix to
mono of synthetic 2- and 6-channel clips (3.5 s at 48 kHz): numpy's mean over the channel axis against audio.downmix.

Prints one JSON object and writes it to benchmarks/results/clip_stages_<date>_cpu-<kind>.json with the CPU model
and flags (`sha_ni` included).
"""

import argparse
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench_common import cpu_info, cpu_tag  # noqa: E402
from result_files import write_result  # noqa: E402
from featurize_benchmark import corpus  # noqa: E402

from asr_pipeline.core import audio, audio_quality  # noqa: E402
from asr_pipeline.core.audio_shard import content_hash, to_pcm16  # noqa: E402

STAGES = ("decode", "downmix", "mix_retention", "resample_to_16k", "finite_check", "to_pcm16", "peaks",
          "sound_seconds", "content_hash")


def one_pass(paths: list[str]) -> dict[str, float]:
    """Seconds in each stage over all clips, one thread, in _prepare_clip's order."""
    spent = dict.fromkeys(STAGES, 0.0)
    for path in paths:
        clock = time.perf_counter()

        def lap(stage):
            nonlocal clock
            now = time.perf_counter()
            spent[stage] += now - clock
            clock = now

        data, rate, _ = audio.decode(path, max_seconds=30.0)
        lap("decode")
        mono = audio.downmix(data)
        lap("downmix")
        audio_quality.mix_retention(data)
        lap("mix_retention")
        samples = audio.resample_to_16k(mono, rate)
        lap("resample_to_16k")
        np.isfinite(samples).all()
        lap("finite_check")
        pcm, scale = to_pcm16(samples)
        lap("to_pcm16")
        float(np.abs(samples).max()), audio_quality.ac_peak(mono)
        lap("peaks")
        audio_quality.sound_seconds(samples, audio.SAMPLE_RATE)
        lap("sound_seconds")
        content_hash(pcm, scale)
        lap("content_hash")
    return spent


def multichannel_downmix(seconds: float = 3.5, rate: int = 48_000, repeats: int = 50) -> dict:
    """ms to average 2 and 6 channels of `seconds` at `rate` to mono: numpy's data.mean(axis=1), which the ingest
    used until 2026-11-27, against audio.downmix (the same values, a channel at a time), and what the channels'
    measure of what the mix keeps costs (audio_quality.mix_retention), best of `repeats`."""
    rng = np.random.default_rng(0)
    timings = {}
    for channels in (2, 6):
        data = (0.1 * rng.standard_normal((int(seconds * rate), channels))).astype(np.float32)
        for name, mix in (("numpy_mean", lambda: data.mean(axis=1)), ("shipped", lambda: audio.downmix(data)),
                          ("mix_retention", lambda: audio_quality.mix_retention(data))):
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                mix()
                best = min(best, time.perf_counter() - started)
            timings[f"{channels}ch_{name}_ms"] = round(best * 1000, 3)
        assert np.array_equal(data.mean(axis=1), audio.downmix(data))
    return {"clip": f"{seconds:g} s at {rate} Hz, float32", **timings}


def has_sha_extensions() -> bool:
    with open("/proc/cpuinfo") as cpuinfo:
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    return "sha_ni" in flags


def whole_call(frame: pd.DataFrame, workers: int) -> float:
    manifest = pd.DataFrame({"id": range(len(frame)), "audio_path": frame["audio_path"],
                             "transcript": frame["transcript"]})
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        audio.resample_manifest(manifest, Path(out), emit=lambda _: None, workers=workers)
        return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default="/tmp/asr_featurize_benchmark")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    frame = corpus(work, args.clips)
    paths = list(frame["audio_path"])
    passes = [one_pass(paths) for _ in range(args.repeats)]
    best = {stage: min(p[stage] for p in passes) for stage in STAGES}
    per_clip_ms = {stage: round(best[stage] * 1000 / len(paths), 3) for stage in STAGES}
    calls = {workers: min(whole_call(frame, workers) for _ in range(args.repeats)) for workers in (1, 2)}
    cpu = cpu_info()
    result = {
        "clips": len(paths),
        "repeats": args.repeats,
        "per_clip_ms_one_thread": per_clip_ms,
        "per_clip_ms_one_thread_sum": round(sum(per_clip_ms.values()), 3),  # of each stage's best: a lower bound
        "resample_manifest_s": {f"{workers}_workers": round(seconds, 3) for workers, seconds in calls.items()},
        "two_workers_speedup": round(calls[1] / calls[2], 2),
        "multichannel_downmix": multichannel_downmix(),
        "sha_ni": has_sha_extensions(),
        "cpu": cpu,
        "python": sys.version.split()[0],
        "date": date.today().isoformat(),
        "command": "python benchmarks/clip_stages.py " + " ".join(sys.argv[1:]),
    }
    write_result(result, args.out, f"clip_stages_{date.today().isoformat()}_cpu-{cpu_tag(cpu)}.json")


if __name__ == "__main__":
    main()

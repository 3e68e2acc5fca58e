"""What the IO manager's publish costs in an asset directory of many batches (issue: replaced versions swept).

    .venv/bin/python benchmarks/publish_sweep_benchmark.py [--batches 10000] [--repeats 5] [--work /tmp/asr_sweep]

Builds a directory shaped as an asset's storage after N published batches (each a link and its version
directory), then times, best of --repeats: the directory-wide sweep a publish makes (storage.remove_stale_leftovers),
the per-path clean-up of staging_dir (storage.remove_stale_staging), and a whole publish of one more batch with the
sweep (staging, fsync, link swap, sweep). Nothing is old enough to be removed: this is the cost every publish pays.
Writes benchmarks/results/publish_sweep_<date>_cpu-<kind>.json with the CPU model and flags.
"""

import argparse
import os
import shutil
import sys
import time
import uuid
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench_common import cpu_info, cpu_tag  # noqa: E402
from result_files import write_result  # noqa: E402

from asr_pipeline.core import storage  # noqa: E402


def asset_directory(root: Path, batches: int) -> Path:
    directory = root / f"featurized_shards_{batches}"
    if not directory.exists():
        directory.mkdir(parents=True)
        for n in range(batches):
            key = f"ids-{n * 10 + 1:010d}-{n * 10 + 10:010d}"
            version = directory / f".{key}.v-{os.getpid()}-{uuid.uuid4().hex[:12]}"
            version.mkdir()
            os.symlink(version.name, directory / key)
    return directory


def best_ms(call, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    return round(min(timings) * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", default="/tmp/asr_sweep")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    directory = asset_directory(Path(args.work), args.batches)
    first = "ids-0000000001-0000000010"
    published = []

    def publish_one():
        final = directory / f"new-{uuid.uuid4().hex[:8]}"
        staged = storage.staging_dir(final)
        (staged / "meta.json").write_text("{}")
        storage.publish(staged, final, sweep_directory=True)
        published.append(final)

    result = {
        "batches": args.batches, "repeats": args.repeats,
        "best_ms": {
            "sweep_of_the_directory": best_ms(lambda: storage.remove_stale_leftovers(directory, first), args.repeats),
            "per_path_clean_up": best_ms(lambda: storage.remove_stale_staging(directory / first), args.repeats),
            "publish_with_sweep": best_ms(publish_one, args.repeats),
        },
        "cpu": cpu_info(), "cpu_count": os.cpu_count(), "date": date.today().isoformat(),
        "command": "python benchmarks/publish_sweep_benchmark.py " + " ".join(sys.argv[1:]),
    }
    for final in published:
        storage.unpublish(final)
    print(result["best_ms"])
    write_result(result, args.out, f"publish_sweep_{result['date']}_cpu-{cpu_tag(result['cpu'])}.json")
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Lean runs (issue 14.3): a whole `asr-pipeline ingest` process against the seed recipe's whole featurize process.

    .venv/bin/python benchmarks/ingest_process_benchmark.py --base-model DIR [--clips 1000] [--repeats 3]

Both sides are timed as a user times them: wall clock from starting the process to its exit, nothing loaded
beforehand. The corpus is the espeak-ng Korean one of featurize_benchmark.py (made once under --work and reused);
its rows go into a MariaDB table of the notebook's shape, which `asr-pipeline ingest` reads (a fresh ASR_HOME and
Dagster instance each time: the first ingest of those rows, one batch). The seed recipe featurizes the same clips
from a CSV of the same paths and transcripts (`seed_recipe.py featurize`).

Each repetition runs both sides twice: "cold" after the page cache has dropped every file either side reads (the
Python packages, the model directory, the corpus; posix_fadvise DONTNEED, the state after a reboot or a long
pause), then "warm" right after it. Medians over --repeats. Each of our runs also records when its output lines
arrived, so the JSON shows where the time goes (start-up, planning, each asset).

First, `launched_batch`: one registered batch run --repeats times as the daemon runs a launched run (`asr-pipeline
ingest-batch KEY`), on the ingest job's default in-process executor and, alternately (each first every other
repetition), with ASR_EXECUTOR=multiprocess (a process per step); --launched-only stops there.

Prints one JSON object and writes it to benchmarks/results/ingest_process_<date>_cpu-<kind>.json (--launched-only:
ingest_launched_...), with CPU model and flags. The database it creates (asr_bench_*) is dropped at the end.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench_common import SEED_RECIPE, cpu_info as _cpu, cpu_tag  # noqa: E402
from result_files import write_result  # noqa: E402
from featurize_benchmark import corpus  # noqa: E402  (benchmarks/ is this script's directory)
from ingest_benchmark import DEFAULT_MYSQL, _database, _drop  # noqa: E402


def evict_from_page_cache(roots: list[Path]) -> int:
    """Ask the kernel to drop the cached pages of every file under roots; returns the number of files."""
    count = 0
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                try:
                    fd = os.open(os.path.join(folder, name), os.O_RDONLY)
                except OSError:
                    continue
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    count += 1
                finally:
                    os.close(fd)
    return count


def timed_process(command: list[str], env: dict, cwd: Path) -> dict:
    """Wall seconds from start to exit, and when each output line arrived (seconds after start)."""
    lines: list[tuple[float, str]] = []
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1)

    def collect():
        for line in process.stdout:
            lines.append((time.perf_counter() - started, line.rstrip("\n")))

    reader = threading.Thread(target=collect)
    reader.start()
    process.wait()
    seconds = time.perf_counter() - started
    reader.join()
    if process.returncode != 0:
        tail = "\n".join(line for _, line in lines[-30:])
        raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}:\n{tail}")
    return {"seconds": round(seconds, 3), "lines": lines}


def when_printed(lines: list[tuple[float, str]], *needles: str, last: bool = False) -> float | None:
    found = [round(at, 3) for at, line in lines if all(needle in line for needle in needles)]
    return (found[-1] if last else found[0]) if found else None


def milestones(lines: list[tuple[float, str]]) -> dict:
    """When our process reached each stage, from its own output: seconds after start."""
    return {
        "planned": when_printed(lines, "ingest: batch"),
        "raw_manifest_reading": when_printed(lines, "raw_manifest", "reading ids"),
        "raw_manifest_done": when_printed(lines, "raw_manifest", "rows, splits"),
        "resampling_done": when_printed(lines, "resampling: ", last=True),
        "featurizing_started": when_printed(lines, "featurized_shards", "featurizing ", "clips for"),
        "featurizing_done": when_printed(lines, "featurizing: ", last=True),
        "run_succeeded": when_printed(lines, "succeeded"),
    }


def dagster_instance_template(env_base: dict, work: Path) -> Path:
    """A Dagster instance as any earlier `asr-pipeline` command leaves it (dagster.yaml, SQLite schema), with no run
    and no batch in it: copied for each of our runs, so each ingests the 1,000 rows as new."""
    template = Path(tempfile.mkdtemp(prefix="dagster_template_", dir=work))
    subprocess.run([sys.executable, "-c", "from asr_pipeline.cli import _instance; _instance()"],
                   env={**env_base, "DAGSTER_HOME": str(template), "ASR_HOME": str(template.parent)}, check=True)
    return template


def our_home(env_base: dict, url: str, base_model: str, corpus_dir: Path, work: Path, prefix: str,
             instance_template: Path | None) -> tuple[Path, dict]:
    """A fresh ASR_HOME (with a copy of instance_template as its Dagster instance, if given) and the environment
    `asr-pipeline` runs with there."""
    home = Path(tempfile.mkdtemp(prefix=prefix, dir=work))
    if instance_template is not None:
        shutil.copytree(instance_template, home / "dagster")
    return home, {**env_base, "ASR_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "ASR_DB_URL": url,
                  "ASR_BASE_MODEL": base_model, "ASR_AUDIO_ROOTS": str(corpus_dir.resolve())}


def cli_command(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "asr-pipeline"  # the console script a user runs
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "asr_pipeline.cli", *args]


def run_ours(env_base: dict, url: str, base_model: str, corpus_dir: Path, work: Path,
             instance_template: Path | None) -> dict:
    """instance_template None: a DAGSTER_HOME that does not exist yet (the first command on a new machine)."""
    home, env = our_home(env_base, url, base_model, corpus_dir, work, "ingest_home_", instance_template)
    result = timed_process(cli_command("ingest"), env, REPO)
    meta = json.loads((home / "storage" / "featurized_shards").glob("*/meta.json").__next__().read_text())
    shutil.rmtree(home, ignore_errors=True)
    return {"seconds": result["seconds"], "rows": meta["rows"], "milestones": milestones(result["lines"])}


def run_seed(env_base: dict, seed_recipe: Path, manifest_csv: Path, base_model: str, work: Path) -> dict:
    out = Path(tempfile.mkdtemp(prefix="seed_out_", dir=work)) / "features"
    result = timed_process([sys.executable, str(seed_recipe), "featurize", str(manifest_csv), str(out), base_model],
                           env_base, REPO)
    inner = json.loads(result["lines"][-1][1])  # the recipe's own JSON line: its map() + save_to_disk time
    shutil.rmtree(out.parent, ignore_errors=True)
    return {"seconds": result["seconds"], "rows": inner["rows"], "featurize_loop_s": inner["seconds"]}


def paired_arguments(description: str) -> argparse.ArgumentParser:
    """The options of a paired benchmark (startup_gc_benchmark.py, event_log_benchmark.py)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default="/work/cache/whisper-base")
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--mysql", default=DEFAULT_MYSQL)
    parser.add_argument("--work", default="/tmp/asr_featurize_benchmark", help="corpus cache and scratch space")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    return parser


def paired_ingest_runs(args, arms: tuple[str, str], prepare, run) -> dict[str, list[dict]]:
    """`asr-pipeline ingest` of the corpus in pairs, one run of each arm, the arm going first alternating.

    prepare(env_base, scratch) runs once, with the corpus in a scratch MariaDB database; its result goes to every
    run(arm, env_base, url, corpus_dir, work, prepared), which returns the run's record (at least "seconds")."""
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    frame = corpus(work, args.clips)
    corpus_dir = work / f"corpus_{args.clips}"
    env_base = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    url, server = _database(args.mysql)
    engine = sa.create_engine(url)
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    scratch = Path(tempfile.mkdtemp(prefix="paired_bench_", dir=work))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO training_datas (raw_data, transcript) VALUES (:p, :t)"),
                         [{"p": r.audio_path, "t": r.transcript} for r in frame.itertuples()])
        prepared = prepare(env_base, scratch)
        for pair in range(args.pairs):
            for arm in (arms if pair % 2 == 0 else arms[::-1]):  # neither always goes first
                runs[arm].append(run(arm, env_base, url, corpus_dir, work, prepared))
                print(f"pair {pair + 1}/{args.pairs} {arm}: {runs[arm][-1]}", file=sys.stderr)
    finally:
        engine.dispose()
        _drop(server, url)
        shutil.rmtree(scratch, ignore_errors=True)
    return runs


def write_paired_result(args, runs: dict[str, list[dict]], name: str, faster_key: str,
                        medians_of: tuple[str, ...] = (), variant: str = "") -> None:
    """Writes benchmarks/results/<name>_<date>_cpu-<kind>.json for paired_ingest_runs' runs: each arm's median
    seconds (and of each key in medians_of, as median_<key>), the second arm's seconds less the first's in each pair
    (the saving of the first, shipped arm), how many pairs the first was faster in (faster_key), the CPU."""
    first, second = runs
    paired = [round(b["seconds"] - a["seconds"], 3) for a, b in zip(runs[first], runs[second])]

    def medians(key: str) -> dict:
        return {arm: round(statistics.median(r[key] for r in runs[arm]), 3) for arm in runs}

    result = {"clips": args.clips, "pairs": args.pairs, "median_seconds": medians("seconds"),
              **{f"median_{key}": medians(key) for key in medians_of},
              "paired_saving_seconds": paired, "median_paired_saving_seconds": round(statistics.median(paired), 3),
              faster_key: sum(d > 0 for d in paired),
              "runs": runs, "cpu": _cpu(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
              "date": date.today().isoformat(),
              **({"before_commit": args.before_commit} if getattr(args, "before_commit", None) else {}),
              "command": f"python benchmarks/{name}_benchmark.py " + " ".join(sys.argv[1:])}
    write_result(result, args.out, f"{name}{variant}_{result['date']}_cpu-{cpu_tag(result['cpu'])}.json")


def launched_batch_runs(env_base: dict, url: str, base_model: str, corpus_dir: Path, work: Path,
                        template: Path, repeats: int) -> dict:
    """One registered 1,000-row batch run again and again as the daemon runs a launched run (`asr-pipeline
    ingest-batch KEY`: dg.execute_job on the reconstructable job), on the ingest job's default executor (in-process)
    and on the multiprocess executor (ASR_EXECUTOR=multiprocess, a process per step), alternately."""
    home, env = our_home(env_base, url, base_model, corpus_dir, work, "launched_home_", template)
    timed_process(cli_command("ingest"), env, REPO)  # registers the batch (and materializes it once)
    key = sorted(p.name for p in (home / "storage" / "featurized_shards").iterdir() if p.name.startswith("ids-"))[0]
    runs: dict[str, list[float]] = {"in_process (default)": [], "multiprocess": []}
    for repeat in range(repeats):
        for name in (list(runs) if repeat % 2 == 0 else list(runs)[::-1]):  # neither always goes first
            extra = {"ASR_EXECUTOR": "multiprocess"} if name == "multiprocess" else {}
            seconds = timed_process(cli_command("ingest-batch", key), {**env, **extra}, REPO)["seconds"]
            runs[name].append(seconds)
            print(f"repeat {repeat + 1}/{repeats} launched batch, {name}: {seconds} s", file=sys.stderr)
    shutil.rmtree(home, ignore_errors=True)
    medians = {name: round(statistics.median(values), 3) for name, values in runs.items()}
    return {"seconds": runs, "median_seconds": medians,
            "multiprocess_over_in_process": round(medians["multiprocess"] / medians["in_process (default)"], 2)}


def median_of(runs: list[dict], key: str = "seconds") -> float:
    return round(statistics.median(r[key] for r in runs), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", required=True, help="a local Whisper directory (e.g. whisper-base)")
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mysql", default=DEFAULT_MYSQL)
    parser.add_argument("--work", default="/tmp/asr_featurize_benchmark", help="corpus cache and scratch space")
    parser.add_argument("--seed-recipe", default=str(SEED_RECIPE))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--launched-only", action="store_true", help="only the launched-run comparison: one batch "
                        "as the daemon runs it, in-process (the default) against a process per step")
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    frame = corpus(work, args.clips)
    manifest_csv = work / f"corpus_{args.clips}.csv"
    corpus_dir = work / f"corpus_{args.clips}"
    # subprocesses import this checkout's package, whatever is installed in the environment
    env_base = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    read_by_either = [Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["stdlib"]),
                      Path(args.base_model), corpus_dir, REPO / "asr_pipeline"]

    url, server = _database(args.mysql)
    engine = sa.create_engine(url)
    runs = {"seed_cold": [], "seed_warm": [], "ours_cold": [], "ours_warm": [], "ours_warm_new_instance": []}
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO training_datas (raw_data, transcript) VALUES (:p, :t)"),
                         [{"p": r.audio_path, "t": r.transcript} for r in frame.itertuples()])
        template = dagster_instance_template(env_base, work)
        launched = launched_batch_runs(env_base, url, args.base_model, corpus_dir, work, template, args.repeats)
        for repeat in range(0 if args.launched_only else args.repeats):
            for name in runs:
                if name.endswith("cold"):
                    evict_from_page_cache(read_by_either)
                if name.startswith("seed"):
                    result = run_seed(env_base, Path(args.seed_recipe), manifest_csv, args.base_model, work)
                else:
                    result = run_ours(env_base, url, args.base_model, corpus_dir, work,
                                      None if name == "ours_warm_new_instance" else template)
                runs[name].append(result)
                print(f"repeat {repeat + 1}/{args.repeats} {name}: {result['seconds']} s ({result['rows']} rows)",
                      file=sys.stderr)
    finally:
        engine.dispose()
        _drop(server, url)

    result = {"clips": args.clips, "repeats": args.repeats, "base_model": args.base_model}
    if not args.launched_only:
        medians = {name: median_of(values) for name, values in runs.items()}
        result.update({
            "median_seconds": medians,
            "ratio_cold": round(medians["seed_cold"] / medians["ours_cold"], 2),
            "ratio_warm": round(medians["seed_warm"] / medians["ours_warm"], 2),
            "ratio_warm_new_instance": round(medians["seed_warm"] / medians["ours_warm_new_instance"], 2),
            # where our time goes: the median second at which each stage's line was printed
            "ours_milestones_median": {
                name: {stage: round(statistics.median(r["milestones"][stage] for r in runs[name]), 3)
                       for stage in runs[name][0]["milestones"]}
                for name in runs if name.startswith("ours")},
            "runs": runs,
        })
    result.update({
        "launched_batch": launched,
        "note": "other work may have shared the machine's cores while this ran",
        "cpu": _cpu(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "date": date.today().isoformat(),
        "command": "python benchmarks/ingest_process_benchmark.py " + " ".join(sys.argv[1:]),
    })
    kind = "launched" if args.launched_only else "process"
    write_result(result, args.out, f"ingest_{kind}_{result['date']}_cpu-{cpu_tag(result['cpu'])}.json")


if __name__ == "__main__":
    main()

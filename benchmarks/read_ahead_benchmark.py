"""Lean runs (issue 14.3): what reading the next clips' files ahead of the resampling threads saves
(asr_pipeline/core/read_ahead.py).

    .venv/bin/python benchmarks/read_ahead_benchmark.py [--clips 1000] [--pairs 8] [--warm] [--base-model DIR]
        [--audio-mount DIR]

`asr-pipeline ingest` of the 1,000-clip corpus of ingest_process_benchmark.py (a fresh ASR_HOME and a copy of an
initialized Dagster instance each time), run as a whole process in pairs: as shipped, and with the read-ahead
replaced by a no-op, in alternating order. Both arms run the same checkout through the same wrapper, which only (for
the "no read-ahead" arm) does the replacing and (in both) reports how many files were read ahead. By default every
file either arm reads is dropped from the page cache before each run (the Python packages, the model, the corpus:
ingest_process_benchmark.py's cold runs, the case the read-ahead is for); --warm leaves the cache warm, to measure
what the read-ahead costs when the files are cached already. --audio-mount DIR: the corpus folder as another mount
shows it (a NAS share of it; the docs use a FUSE passthrough that waits 2 ms in every read,
benchmarks/slow_mount.py); the rows keep their paths and ASR_PATH_MAP maps them there, as users map the archive's
paths to their NAS, and ASR_AUDIO_ROOTS is the mount. Prints one JSON object and writes it to
benchmarks/results/read_ahead[_warm]_<date>_cpu-<kind>.json, with the CPU model and flags.
"""

import json
import shutil
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from ingest_process_benchmark import (dagster_instance_template, evict_from_page_cache, our_home,  # noqa: E402
                                      paired_arguments, paired_ingest_runs, timed_process, write_paired_result)

ARMS = ("read-ahead (shipped)", "no read-ahead")

# run as `python -c WRAPPER ingest`: the console script's main(), with the read-ahead counted (or turned off)
WRAPPER = """
import atexit, os, sys
import asr_pipeline.core.audio as audio
import asr_pipeline.cli.parser as parser
calls, asked = [0], [0]
shipped = audio.read_ahead
def counted(paths, roots=None):
    calls[0] += 1
    if os.environ["READ_AHEAD_ARM"] == "off":
        return 0
    files = shipped(paths, roots)
    asked[0] += files
    return files
audio.read_ahead = counted
atexit.register(lambda: print(f"READ_AHEAD {calls[0]} {asked[0]}", file=sys.stderr))
sys.argv = ["asr-pipeline", *sys.argv[1:]]
parser.main()
"""


def one_run(arm: str, env_base: dict, url: str, corpus_dir: Path, work: Path, prepared: tuple) -> dict:
    base_model, template, cold, mount = prepared
    flag = "off" if arm == ARMS[1] else "on"
    home, env = our_home(env_base, url, base_model, corpus_dir, work, f"read_ahead_{flag}_", template)
    if mount:
        env.update(ASR_PATH_MAP=f"{corpus_dir.resolve()}/={mount}/", ASR_AUDIO_ROOTS=str(mount))
    if cold:
        evict_from_page_cache([Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["stdlib"]),
                               Path(base_model), corpus_dir, REPO / "asr_pipeline", home, *([mount] if mount else [])])
    result = timed_process([sys.executable, "-c", WRAPPER, "ingest"], {**env, "READ_AHEAD_ARM": flag}, REPO)
    line = next(line for _, line in result["lines"] if line.startswith("READ_AHEAD "))
    calls, files = map(int, line.split()[1:3])
    if calls == 0 or (flag == "off" and files):  # warm, the shipped arm may rightly ask for none (its probe)
        raise SystemExit(f"the {arm!r} arm: {calls} read-ahead calls, {files} files asked for")
    meta = json.loads(next((home / "storage" / "featurized_shards").glob("*/meta.json")).read_text())
    shutil.rmtree(home, ignore_errors=True)  # 160 MB of shards a run
    return {"seconds": result["seconds"], "rows": meta["rows"], "read_ahead_calls": calls, "files_read_ahead": files}


def main() -> None:
    parser = paired_arguments(__doc__)
    parser.add_argument("--warm", action="store_true", help="leave the page cache warm (the read-ahead's cost)")
    parser.add_argument("--audio-mount", type=Path, default=None,
                        help="the corpus folder as mounted elsewhere (a NAS share, a slow FUSE passthrough)")
    args = parser.parse_args()
    mount = args.audio_mount and args.audio_mount.resolve()
    if mount and not (mount.is_dir() and any(mount.iterdir())):
        raise SystemExit(f"--audio-mount {mount}: not a folder with the corpus in it (mount it first)")
    runs = paired_ingest_runs(args, ARMS, lambda env_base, scratch: (
        args.base_model, dagster_instance_template(env_base, scratch), not args.warm, mount), one_run)
    variant = ("_warm" if args.warm else "") + ("_mount" if mount else "")
    write_paired_result(args, runs, "read_ahead", "pairs_faster_with_read_ahead", variant=variant)


if __name__ == "__main__":
    main()

"""Benchmark result files: written once, never over an earlier run's, with the code they measured (the commit, or
on the GPU machine, whose copy has no git, the commit `prepare` recorded and whether the code is still that)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def write_result(result: dict, out: str | Path, name: str) -> Path:
    """Print the result as JSON, with the commit it measured, and write it to out/name (the results folder, made if
    missing); a file of that name already there is kept and this one gets a numbered name (name_2.json...)."""
    if "code" not in result:
        result["code"] = code_version()
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    path = fresh_result_path(out, name)  # a same-day rerun must not overwrite the first run's figures
    path.write_text(text + "\n", encoding="utf-8")
    return path


def fresh_result_path(out: str | Path, name: str) -> Path:
    """out/name, or name_2.json... if that exists: for a script that rewrites its own file after every stage (so a
    run cut short keeps what it measured) but must not overwrite an earlier run's file. Claimed at once ("x")."""
    path = Path(out) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    number = 1
    while True:
        try:
            with open(path, "x", encoding="utf-8"):
                return path
        except FileExistsError:
            number += 1
            path = Path(out) / f"{Path(name).stem}_{number}{Path(name).suffix}"


def source_digest(repo: Path = Path(__file__).resolve().parents[1]) -> str:
    """SHA-256 over the package's Python files and the benchmarks' Python and shell scripts (paths and bytes, in
    path order; gpu_device.sh is the entry point there): what the GPU
    machine can compute without git, to tell whether it ran the code a prepared data folder was made from."""
    import hashlib

    digest = hashlib.sha256()
    for path in _source_files(repo):
        digest.update(path.relative_to(repo).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _source_files(repo: Path) -> list[Path]:
    return sorted([*(repo / "asr_pipeline").rglob("*.py"), *(repo / "benchmarks").glob("*.py"),
                   *(repo / "benchmarks").glob("*.sh")])


def prepared_code(data: Path, repo: Path = Path(__file__).resolve().parents[1]) -> dict:
    """Here, at `prepare`: the commit and the source digest, kept beside the data that travels to the GPU."""
    record = {**code_version(repo), "source_sha256": source_digest(repo)}
    (data / "code.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def device_code(data: Path, repo: Path = Path(__file__).resolve().parents[1]) -> dict:
    """The code a result measured: the commit recorded at `prepare` when the code that ran is the code prepared from
    (same source digest); else a clean git checkout's own commit (no changes, no untracked source files); else
    "unknown", with prepared_commit; with no code.json at all, git's HEAD and whether it had changes. The device
    copy has no git, or (seen on 2026-11-28) a git whose HEAD is the session's first commit with every later change
    uncommitted: that HEAD is not what ran, so it is kept only as `checkout`.
    Rerun `prepare` after changing the code (untracked Python files count in the digest too)."""
    here = code_version(repo)
    clean = here["commit"] != "unknown" and here["uncommitted_changes"] is False and not _untracked_source(repo)
    digest = source_digest(repo)
    try:
        prepared = json.loads((data / "code.json").read_text())
    except (OSError, ValueError):
        return here if clean else {**here, "source_sha256": digest, "prepared": "unknown (no code.json in the data)"}
    same = digest == prepared.get("source_sha256")
    if clean and not same:
        return here  # a clean checkout whose code is not the prepared code: its own commit says what ran
    record = {"commit": prepared.get("commit", "unknown") if same else "unknown (the code changed since prepare)",
              "prepared_commit": prepared.get("commit", "unknown"),
              "uncommitted_changes": prepared.get("uncommitted_changes") if same else None,
              "recorded": "at prepare", "source_sha256": digest, "same_source_as_prepared": same}
    if here["commit"] != "unknown":
        record["checkout"] = here  # what the copy's own git said (an older HEAD, changes or new files on top)
    return record


def code_version(repo: Path = Path(__file__).resolve().parents[1]) -> dict:
    """The checkout's commit and whether its tracked files had changes (what a result measured)."""
    commit = _git(repo, "rev-parse", "HEAD")
    status = _git(repo, "status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit or "unknown", "uncommitted_changes": None if status is None else bool(status)}


def _untracked_source(repo: Path) -> bool:
    """Whether git does not track some of the files source_digest reads (a stale HEAD with a later commit's new
    files on top looks clean to `git status --untracked-files=no`)."""
    tracked = _git(repo, "ls-files", "--", "asr_pipeline", "benchmarks")
    if tracked is None:
        return True
    known = set(tracked.splitlines())
    return any(path.relative_to(repo).as_posix() not in known for path in _source_files(repo))


def _git(repo: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):  # no git (the GPU machine): the result is kept anyway
        return None
    return done.stdout.strip() if done.returncode == 0 else None

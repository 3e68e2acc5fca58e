"""Benchmark results say which code measured them: on the GPU machine (a copy without git) through what `prepare`
recorded here, with a digest telling whether the code that ran is the code prepared from; no result file is
overwritten by a later run."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import result_files  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def device_copy(tmp_path: Path) -> Path:
    """What the GPU machine gets: the package and the benchmarks as files, no .git."""
    copy = tmp_path / "device"
    shutil.copytree(REPO / "asr_pipeline", copy / "asr_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "benchmarks", copy / "benchmarks", ignore=shutil.ignore_patterns("__pycache__", "results"))
    return copy


needs_git = pytest.mark.skipif(result_files.code_version(REPO)["commit"] == "unknown",
                               reason="a checkout without git (an archive): no commit to record")


@needs_git
def test_a_device_result_names_the_prepared_commit_and_whether_the_code_changed_since(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    prepared = result_files.prepared_code(data)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert prepared["commit"] == commit.strip()
    assert json.loads((data / "code.json").read_text()) == prepared

    copy = device_copy(tmp_path)
    same = result_files.device_code(data, copy)
    assert same["commit"] == prepared["commit"] and same["recorded"] == "at prepare"
    assert same["uncommitted_changes"] == prepared["uncommitted_changes"]
    assert same["same_source_as_prepared"] is True

    for name in ("gpu_arms.py", "gpu_device.sh"):  # a script edited after prepare, the device's entry point too
        edited = copy / "benchmarks" / name
        original = edited.read_text()
        edited.write_text(original + "\n# edited after prepare\n")
        changed = result_files.device_code(data, copy)
        assert changed["same_source_as_prepared"] is False and changed["commit"].startswith("unknown")
        assert changed["prepared_commit"] == prepared["commit"]
        edited.write_text(original)
    assert result_files.device_code(data, copy)["same_source_as_prepared"] is True

    (data / "code.json").unlink()
    unknown = result_files.device_code(data, copy)
    assert unknown["commit"] == "unknown" and "no code.json" in unknown["prepared"]


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                           "-c", "commit.gpgsign=false", *args],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="no git")
def test_a_clean_checkout_names_its_own_commit_and_a_stale_one_the_prepared_commit(tmp_path):
    copy = device_copy(tmp_path)
    git(copy, "init", "-q")
    git(copy, "add", "-A")
    git(copy, "commit", "-q", "-m", "first")
    data = tmp_path / "data"
    data.mkdir()
    (data / "code.json").write_text(json.dumps({"commit": git(copy, "rev-parse", "HEAD"), "source_sha256": "x"}))
    assert result_files.device_code(data, copy) == result_files.code_version(copy)  # clean, prepared: git is the truth
    (data / "code.json").unlink()
    assert result_files.device_code(data, copy) == result_files.code_version(copy)  # clean, nothing prepared

    # clean but stale: a later commit only added files, which `git status --untracked-files=no` does not see
    (copy / "benchmarks" / "added_later.py").write_text("# a new benchmark\n")
    (data / "code.json").write_text(json.dumps({"commit": "b" * 40, "uncommitted_changes": False,
                                                "source_sha256": result_files.source_digest(copy)}))
    assert result_files.device_code(data, copy)["commit"] == "b" * 40
    (data / "code.json").write_text(json.dumps({"commit": "b" * 40, "source_sha256": "x"}))  # and not prepared
    unknown = result_files.device_code(data, copy)
    assert unknown["commit"].startswith("unknown") and unknown["checkout"]["commit"] == git(copy, "rev-parse", "HEAD")
    (copy / "benchmarks" / "added_later.py").unlink()

    # the device copy as found: HEAD is an older commit, the code that ran (and was prepared from) sits on top of
    # it as uncommitted changes; its HEAD must not be reported as what ran
    edited = copy / "benchmarks" / "gpu_arms.py"
    edited.write_text(edited.read_text() + "\n# a later commit's change\n")
    (data / "code.json").write_text(json.dumps({"commit": "a" * 40, "uncommitted_changes": False,
                                                "source_sha256": result_files.source_digest(copy)}))
    stale = result_files.device_code(data, copy)
    assert stale["commit"] == "a" * 40 and stale["same_source_as_prepared"] is True
    assert stale["checkout"] == {"commit": git(copy, "rev-parse", "HEAD"), "uncommitted_changes": True}

    edited.write_text(edited.read_text() + "# edited after prepare\n")
    changed = result_files.device_code(data, copy)
    assert changed["commit"].startswith("unknown") and changed["prepared_commit"] == "a" * 40


def test_a_rerun_never_takes_an_earlier_runs_file(tmp_path):
    first = result_files.fresh_result_path(tmp_path / "out", "gpu_2026-11-28.json")
    first.write_text('{"run": 1}')
    second = result_files.fresh_result_path(tmp_path / "out", "gpu_2026-11-28.json")
    third = result_files.fresh_result_path(tmp_path / "out", "gpu_2026-11-28.json")
    assert (first.name, second.name, third.name) == ("gpu_2026-11-28.json", "gpu_2026-11-28_2.json",
                                                     "gpu_2026-11-28_3.json")
    assert first.read_text() == '{"run": 1}'

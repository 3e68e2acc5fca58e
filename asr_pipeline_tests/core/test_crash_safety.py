"""Issue 11, point 8: publishing is atomic at every instant; process checks and path lists are Windows-safe."""

import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asr_pipeline.core import processes, storage
from asr_pipeline.core.settings import AudioRoots, PathMap
from asr_pipeline.core.storage import publish, staging_dir


def _stage(final: Path, version: int) -> Path:
    staged = staging_dir(final)
    (staged / "a.txt").write_text(str(version))
    (staged / "b.txt").write_text(str(version))
    return staged


def _complete_version(final: Path) -> int:
    """The version `final` holds, read the way readers do (the path resolved once); fails on a missing or mixed one."""
    root = Path(os.path.realpath(final))
    a, b = (root / "a.txt").read_text(), (root / "b.txt").read_text()
    assert a == b, f"a mix of versions: {a} and {b}"
    return int(a)


@pytest.mark.parametrize("first_publish_by_old_code", [False, True])
def test_every_intermediate_state_of_a_publish_is_the_old_or_the_new_version(tmp_path, monkeypatch,
                                                                             first_publish_by_old_code):
    """Checks the asset path after every file-system call publish makes: each is an instant a reader could see."""
    final = tmp_path / "featurized_shards" / "ids-0000000001-0000000010"
    if first_publish_by_old_code:  # a plain directory, as publish() before symlinks left it
        final.mkdir(parents=True)
        (final / "a.txt").write_text("0"), (final / "b.txt").write_text("0")
    else:
        publish(_stage(final, 0), final)
    seen = []

    def checked(function):
        def call(*args, **kwargs):
            result = function(*args, **kwargs)
            seen.append(_complete_version(final))
            return result
        return call

    monkeypatch.setattr(storage, "REPLACED_GRACE_S", -1.0)  # delete replaced versions at once: more instants
    with monkeypatch.context() as patched:
        for name in ("rename", "replace", "symlink", "unlink", "rmdir", "utime"):
            patched.setattr(os, name, checked(getattr(os, name)))
        patched.setattr(shutil, "rmtree", checked(shutil.rmtree))
        for version in (1, 2, 3):
            publish(_stage(final, version), final)
            assert _complete_version(final) == version
    assert len(seen) >= 9 and set(seen) <= {0, 1, 2, 3} and seen == sorted(seen)
    # the replaced versions are gone, only the current one is left beside the link
    leftovers = sorted(p.name for p in final.parent.iterdir())
    assert len(leftovers) == 2 and final.name in leftovers


def _hammer(final: str, stop_at: float, errors) -> None:
    while time.monotonic() < stop_at:
        try:
            _complete_version(Path(final))
        except Exception as exc:  # missing or mixed
            errors.put(repr(exc))
            return


def test_a_reader_process_never_sees_a_missing_or_mixed_directory_while_publishing_in_a_loop(tmp_path):
    final = tmp_path / "raw_manifest" / "ids-0000000001-0000000010"
    publish(_stage(final, 0), final)
    errors = multiprocessing.get_context("spawn").Queue()
    reader = multiprocessing.get_context("spawn").Process(target=_hammer,
                                                          args=(str(final), time.monotonic() + 4.0, errors))
    reader.start()
    version = 0
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        version += 1
        publish(_stage(final, version), final)
    reader.join(10)
    assert errors.empty(), errors.get()
    assert _complete_version(final) == version


def test_replaced_and_orphaned_versions_are_removed_after_the_grace_period_never_the_current_one(tmp_path):
    final = tmp_path / "resampled_dataset" / "ids-0000000001-0000000010"
    publish(_stage(final, 1), final)
    pid = 99999999
    orphan = final.parent / f".{final.name}.v-{pid}-deadbeef0000"  # renamed into place, never linked
    orphan.mkdir()
    replaced_recently = final.parent / os.readlink(final)
    publish(_stage(final, 2), final)
    current = final.parent / os.readlink(final)
    assert storage.remove_stale_staging(final) == []  # within the grace period a reader may still open them
    stale = time.time() - storage.REPLACED_GRACE_S - 1
    os.utime(orphan, (stale, stale))
    os.utime(replaced_recently, (stale, stale))
    removed = storage.remove_stale_staging(final)
    assert sorted(removed) == sorted([orphan, replaced_recently]) and current.is_dir()
    assert _complete_version(final) == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process start in clock ticks: Linux")
def test_a_staging_directory_whose_pid_a_later_process_has_is_removed(tmp_path):
    """After a reboot, or in a restarted container, a killed publisher's pid is soon another process's: the start
    in its staging directory's name tells them apart. Names without it (before it was recorded) go by the pid."""
    final = tmp_path / "featurized_shards" / "ids-0000000001-0000000010"
    mine = storage.staging_dir(final)
    pid, started, table = os.getpid(), processes.process_start_ticks(os.getpid()), processes.process_table()
    assert mine.name.startswith(f".{final.name}.tmp-{pid}s{started}t{table}-")
    pid_reused = final.parent / f".{final.name}.tmp-{pid}s{started - 100}t{table}-0123abcd"
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = final.parent / f".{final.name}.tmp-{int(finished.stdout)}s{started}t{table}-89abcdef"
    # names without the table (before it was recorded, and the forms of two earlier commits): the pid decides
    older_names = [final.parent / f".{final.name}.tmp-{pid}{whose}-4567cdef" for whose in ("", f"s{started - 100}",
                                                                                          f"s{started - 100}n7")]
    gone_older = final.parent / f".{final.name}.tmp-{int(finished.stdout)}s{started}n7-0123cdef"
    # another machine's or container's (a pod writing the same path): its pid means nothing here; a day unchanged
    other_table = final.parent / f".{final.name}.tmp-{int(finished.stdout)}s{started}t{'0' * 8}-4567abcd"
    for path in (pid_reused, gone, *older_names, gone_older, other_table):
        path.mkdir()
    assert sorted(storage.remove_stale_staging(final)) == sorted([pid_reused, gone, gone_older])
    assert mine.is_dir() and all(path.is_dir() for path in older_names) and other_table.is_dir()
    (other_table / "shard.arrow").write_bytes(b"written a day ago")
    stale = time.time() - storage.OTHER_PATHS_GRACE_S - 60
    os.utime(other_table / "shard.arrow", (stale, stale))
    assert storage.remove_stale_staging(final) == []  # the directory itself changed just now
    os.utime(other_table, (stale, stale))
    assert storage.remove_stale_staging(final) == [other_table]


def _age_everything(directory: Path, seconds: float | None = None) -> None:
    stale = time.time() - (storage.REPLACED_GRACE_S + 1 if seconds is None else seconds)
    for path in directory.iterdir():
        os.utime(path, (stale, stale), follow_symlinks=False)


def test_a_batch_republished_once_loses_its_old_version_at_the_next_publish_of_any_batch(tmp_path):
    """A backfill republishes each batch once: the old versions go when any later batch of the asset is published
    a day on (the IO manager's sweep), not only at the next publish of the same batch, which may never come. A day,
    not 10 minutes: a training on another machine may still read them (NFS)."""
    directory = tmp_path / "resampled_dataset"
    keys = [f"ids-{n * 10 + 1:010d}-{n * 10 + 10:010d}" for n in range(3)]
    for version in (1, 2):  # the ingest, then the backfill
        for key in keys:
            publish(_stage(directory / key, version), directory / key, sweep_directory=True)
    assert len(list(directory.glob(".*.v-*"))) == 6  # within the grace period: the old ones kept for readers
    new = directory / "ids-0000000031-0000000040"
    _age_everything(directory, storage.OTHER_PATHS_GRACE_S - 60)
    publish(_stage(new, 1), new, sweep_directory=True)
    assert len(list(directory.glob(".*.v-*"))) == 7  # less than a day: still kept
    # and what other paths' writers are doing is theirs: a staging directory whose PID is unknown here (a pod on
    # another host) and a never-linked fresh version are left
    foreign = directory / f".{keys[0]}.tmp-99999999-0123abcd"
    foreign.mkdir()
    orphan = directory / ".ids-0000000041-0000000050.v-99999999-0123456789ab"  # a first publish killed, long ago
    orphan.mkdir()
    _age_everything(directory, storage.OTHER_PATHS_GRACE_S + 1)
    newest = directory / "ids-0000000051-0000000060"
    publish(_stage(newest, 1), newest, sweep_directory=True)
    kept = sorted(p.name for p in directory.iterdir())
    published = [*keys, new.name, newest.name]
    assert kept == sorted([*published, *(os.readlink(directory / k) for k in published), foreign.name])
    assert [_complete_version(directory / key) for key in keys] == [2, 2, 2]


def test_the_replaced_version_is_fresh_before_the_link_stops_naming_it(tmp_path, monkeypatch):
    """Another batch's publish may sweep the directory at any instant: a version the link no longer names must
    already carry the time it was replaced, or a two-day-old one would go while a reader still opens it."""
    final = tmp_path / "featurized_shards" / "ids-0000000001-0000000010"
    publish(_stage(final, 1), final)
    first = final.parent / os.readlink(final)
    _age_everything(final.parent, 2 * 86400)
    real_replace, ages = os.replace, []

    def replace(source, target):
        if Path(target) == final:
            ages.append(time.time() - first.stat().st_mtime)
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    publish(_stage(final, 2), final)
    assert ages and ages[0] < 60
    assert storage.remove_stale_leftovers(final.parent, "another-batch") == [] and first.is_dir()


def test_without_the_sweep_and_in_any_case_other_files_of_the_directory_are_left_alone(tmp_path):
    """A directory a user named (an export's parent) is swept for the published path only; names that only look
    like leftovers (not the exact forms publishing makes) are never touched."""
    directory = tmp_path / "models"
    first, second = directory / "whisper-ct2", directory / "whisper-ct2-b"
    publish(_stage(first, 1), first)
    publish(_stage(first, 2), first)
    lookalikes = [directory / ".notes.old-2020", directory / ".cache.v-1-abc", directory / ".x.tmp-1",
                  directory / ".whisper-ct2.v-12-NOTHEX000000", directory / "plain.v-1-0123456789ab"]
    for path in lookalikes:
        path.mkdir()
    _age_everything(directory, storage.OTHER_PATHS_GRACE_S + 1)
    publish(_stage(second, 1), second)  # no sweep: first's replaced version stays
    assert len(list(directory.glob(".whisper-ct2.v-*"))) == 3  # its two versions and the lookalike
    publish(_stage(second, 2), second, sweep_directory=True)
    assert all(path.is_dir() for path in lookalikes)
    assert sorted(p.name for p in directory.glob(".whisper-ct2.v-*")) == sorted(
        [os.readlink(first), ".whisper-ct2.v-12-NOTHEX000000"])
    assert _complete_version(first) == 2 and _complete_version(second) == 2


def test_a_link_left_by_a_publish_killed_before_its_swap_is_removed_after_the_grace_period(tmp_path):
    final = tmp_path / "featurized_shards" / "ids-0000000001-0000000010"
    publish(_stage(final, 1), final)
    leftover = final.parent / f".{final.name}.link-0123456789ab"  # made by os.symlink, never swapped in
    os.symlink(os.readlink(final), leftover, target_is_directory=True)
    assert storage.remove_stale_staging(final) == []  # a publisher may be about to swap it in
    stale = time.time() - storage.REPLACED_GRACE_S - 1
    os.utime(leftover, (stale, stale), follow_symlinks=False)
    assert storage.remove_stale_staging(final) == [leftover]
    assert not os.path.lexists(leftover) and _complete_version(final) == 1


def test_every_file_is_on_disk_before_the_link_points_at_it(tmp_path, monkeypatch):
    """A power cut can reorder a rename before the data it publishes; fsync of each file first rules that out."""
    final = tmp_path / "resampled_dataset" / "ids-0000000001-0000000010"
    staged = _stage(final, 1)
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), real_replace(a, b))[1])
    publish(staged, final)
    swap = events.index(("replace", str(final)))
    synced_before = {Path(p).name for kind, p in events[:swap] if kind == "fsync"}
    assert {"a.txt", "b.txt"} <= synced_before
    assert ("fsync", str(final.parent)) in events[swap:]  # and the swap itself


def test_unc_and_drive_prefixes_match_whatever_the_case_posix_prefixes_keep_it():
    rules = PathMap.parse(r"\\NAS01\Cul_M01\=/mnt/nas/cul_m01/;D:\Archive\=/mnt/d/;/cul_m01/=/mnt/posix/")
    assert rules.rewrite(r"\\nas01\CUL_M01\2021\PRGTM_202106270005_00001.wav") == \
        "/mnt/nas/cul_m01/2021/PRGTM_202106270005_00001.wav"
    assert rules.rewrite(r"d:\archive\a.wav") == "/mnt/d/a.wav"
    assert rules.rewrite("/CUL_M01/a.wav") == "/CUL_M01/a.wav"  # a POSIX file system is case-sensitive
    assert rules.rewrite("/cul_m01/a.wav") == "/mnt/posix/a.wav"


def test_audio_roots_are_split_on_the_platform_path_separator(tmp_path, monkeypatch):
    first, second = tmp_path / "nas", tmp_path / "local"
    roots = AudioRoots.from_settings(f"{first}{os.pathsep}{second}", PathMap(), tmp_path)
    assert roots.roots == (first.resolve(), second.resolve())
    monkeypatch.setattr(os, "pathsep", ";")  # as on Windows, where ':' is part of C:\...
    roots = AudioRoots.from_settings(f"{first};{second}", PathMap(), tmp_path)
    assert roots.roots == (first.resolve(), second.resolve())

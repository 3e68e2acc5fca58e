"""Directories that are written under a temporary name and published atomically.

An asset directory `final` is a symbolic link to a version directory beside it (`.NAME.v-<pid>-<id>`). Publishing
renames the staged directory to a new version and swaps the link with one os.replace, which is atomic: at every
instant `final` is the complete old version or the complete new one, never missing and never a mix. Readers that
open several files of one directory resolve the link once (`resolved()`), so they read one version throughout.
A replaced version is deleted by a later publish into the same directory (of any path there: a batch republished
once by a backfill may never be published again) once it has been out of use for REPLACED_GRACE_S, so a reader
that resolved the link just before the swap can still open its files (open files and memory maps outlive deletion).
A run killed half way leaves only a `*.tmp-*` or an unlinked `.v-*` directory, removed the same way.
Where symbolic links cannot be made (Windows without the privilege), publishing falls back to two renames.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import sys
import time
import uuid
from pathlib import Path

from asr_pipeline.core.processes import process_alive, process_start_ticks, process_table

REPLACED_GRACE_S = 600.0
# versions of the other paths of a directory a publish sweeps (a batch a backfill republished once): a day, so that
# a training reading a replaced version from another machine (NFS, where a deleted file is gone for other clients
# even while open) has finished with it (the deployment's run monitoring stops a run after 12 h)
OTHER_PATHS_GRACE_S = 86400.0

def staging_dir(final: Path) -> Path:
    """A fresh sibling of `final` to write into; publish() moves it into place.

    Its name carries our PID and, on Linux, when this process started, so leftovers of killed runs (whose PID is
    gone, or is a later process's) are recognised and removed.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(final)
    path = final.parent / _staging_name(final)
    path.mkdir()
    return path


# what publishing leaves beside a published path NAME, exactly as staging_dir, publish and _publish_by_renames name
# it: .NAME.tmp-PIDsSTARTtTABLE-ID8 (staging, _staging_name; .NAME.tmp-PID-ID8 where those are unknown and in names of
# earlier versions, which also wrote -PIDsSTART- and -PIDsSTARTnNS-, judged by the pid), .NAME.v-PID-ID12 and
# .NAME.v-replaced-ID12 (versions), .NAME.old-ID8 (the two-rename fallback), .NAME.link-ID12 (a link not yet swapped in)
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:(?P<kind>tmp)-(?P<pid>\d+)"
                       r"(?:s(?P<start>\d+)(?:t(?P<table>[0-9a-f]{8})|n\d+)?)?-[0-9a-f]{8}"
                       r"|(?P<v>v)-(?:\d+|replaced)-[0-9a-f]{12}|(?P<old>old)-[0-9a-f]{8}|(?P<link>link)-[0-9a-f]{12})\Z")


def remove_stale_staging(final: Path) -> list[Path]:
    """Delete staging and version directories of `final` left by processes that no longer run, and versions it
    replaced more than REPLACED_GRACE_S ago."""
    return _remove_leftovers(final.parent, final.name)


def remove_stale_leftovers(directory: Path, name: str) -> list[Path]:
    """remove_stale_staging for `name`, and for every other path published in `directory` the versions replaced
    more than OTHER_PATHS_GRACE_S ago and links never swapped in: a backfill republishes each batch once, and
    its old version would otherwise stay for good. Not other paths' staging directories: their writer may run on
    another host (a pod per step), where its PID means nothing here. For directories the pipeline owns (the asset
    storage), not one a user named, where a file of theirs could look like a leftover."""
    return _remove_leftovers(directory, name, sweep=True)


def _remove_leftovers(directory: Path, name: str, sweep: bool = False) -> list[Path]:
    removed = []
    try:
        entries = [entry.name for entry in os.scandir(directory)]
    except FileNotFoundError:
        return removed
    published = {entry for entry in entries if not entry.startswith(".")}
    prefix = "." if sweep else f".{name}."
    found = [(entry, match) for entry in entries if entry.startswith(prefix)
             for match in [_LEFTOVER.match(entry)] if match is not None and (sweep or match["name"] == name)]
    versions: dict[str, int] = {}
    for _, match in found:
        if match["v"]:
            versions[match["name"]] = versions.get(match["name"], 0) + 1
    for entry, match in found:
        candidate, of, own = directory / entry, match["name"], match["name"] == name
        grace = REPLACED_GRACE_S if own else OTHER_PATHS_GRACE_S
        if match["kind"] or match["old"]:
            if not own:  # staging of other paths: only their own publisher (or its rerun) judges it
                continue
            # staging whose process is gone; the two-rename fallback died half way
            stale = _staging_abandoned(candidate, match) if match["kind"] else (directory / of).exists()
        elif match["v"]:
            # replaced (touched when it was) or never linked, and unused for the grace period. A path's one version
            # behind its link is its current one: no readlink for it (10,000 batches make 10,000 of them)
            if versions[of] == 1 and of in published and not own:
                continue
            stale = _age(candidate) > grace and entry != _link_target(directory / of)
        else:  # killed between making the link and the swap
            if os.path.islink(candidate) and _link_age(candidate) > grace:
                candidate.unlink(missing_ok=True)
                removed.append(candidate)
            continue
        if stale:
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


def _staging_name(final: Path) -> str:
    """.NAME.tmp-PIDsSTARTtTABLE-ID8 where the start (clock ticks since boot) and the process table (process_table)
    are known, else .NAME.tmp-PID-ID8: a later process given this PID (after a reboot, in a restarted container)
    started at another time, and a writer on another machine or in another container has another table."""
    pid, started, table = os.getpid(), process_start_ticks(os.getpid()), process_table()
    whose = f"{pid}s{started}t{table}" if started is not None and table is not None else str(pid)
    return f".{final.name}.tmp-{whose}-{uuid.uuid4().hex[:8]}"


def _staging_abandoned(candidate: Path, match: re.Match) -> bool:
    """Whether no process will write this staging directory of the path being published any more."""
    pid = int(match["pid"])
    if match["table"] is None:  # named where the table is unknown, or before it was recorded: its pid decides
        return not process_alive(pid)
    if match["table"] != process_table():
        # another machine or container (or this one before a reboot): its pid means nothing here, so a day with
        # nothing in it changed, as for other paths' leftovers
        newest = newest_mtime(candidate)
        return newest is not None and time.time() - newest > OTHER_PATHS_GRACE_S
    if not process_alive(pid):
        return True
    now = process_start_ticks(pid)
    return now is not None and now != int(match["start"])  # unreadable now: cannot tell, so not abandoned


def newest_mtime(path: Path) -> float | None:
    """The latest change of anything in path, or None when nothing in it could be read."""
    newest = None
    for folder, _, files in os.walk(path):
        for name in [folder, *(os.path.join(folder, f) for f in files)]:
            try:
                changed = os.stat(name).st_mtime
            except OSError:
                continue
            newest = changed if newest is None else max(newest, changed)
    return newest


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _link_age(link: Path) -> float:
    try:
        return time.time() - os.lstat(link).st_mtime
    except OSError:
        return 0.0


def _link_target(final: Path) -> str | None:
    """The version directory's name `final` links to, or None when it is no link."""
    try:
        return os.path.basename(os.readlink(final)) if os.path.islink(final) else None
    except OSError:
        return None


def resolved(path: Path) -> Path:
    """The version directory behind a published path: open every file of one directory through it."""
    return Path(os.path.realpath(path))


def publish(staged: Path, final: Path, sweep_directory: bool = False) -> Path:
    """Make `staged` the content of `final` in one atomic step, then remove the version it replaced.
    sweep_directory: also the versions other paths of final's directory replaced a day ago (remove_stale_leftovers;
    the IO manager's asset directories)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    version = final.parent / f".{final.name}.v-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    sync_tree(staged)  # on disk before the link points at it: a power cut cannot publish empty files
    os.utime(staged)  # fresh: no other publisher's clean-up takes it for a long-replaced version
    os.rename(staged, version)
    link = final.parent / f".{final.name}.link-{uuid.uuid4().hex[:12]}"
    try:
        os.symlink(version.name, link, target_is_directory=True)
    except OSError:  # no symlink privilege (Windows): the old two-rename publish
        return _publish_by_renames(version, final)
    previous = _link_target(final)
    if previous and previous != version.name:
        try:
            # its grace period starts now, before the swap: another batch's publish sweeping this directory in
            # between must not find it unlinked with its old time
            os.utime(final.parent / previous)
        except OSError:
            pass
    if final.is_symlink() or not final.exists():
        os.replace(link, final)  # atomic: readers see the old link or the new one
    else:
        _replace_directory_with_link(link, final)  # the first publish after an older version of this code
    _sync_directory(final.parent)  # the swap itself survives a power cut
    if sweep_directory:
        remove_stale_leftovers(final.parent, final.name)
    else:
        remove_stale_staging(final)
    return final


def unpublish(final: Path) -> None:
    """Remove a published path and the version directory behind it (a plain directory published by an older
    version of this code, too): the version first, so a kill in between leaves a dangling link, which the next
    call removes, rather than a hidden version nothing names. A link that publish() did not make (its target is not
    a sibling `.{name}.v-*`) is removed alone. A reader that already opened its files keeps them until it closes
    them; raises OSError when something could not be removed."""
    if os.path.islink(final):
        target = os.readlink(final)
        if os.path.dirname(target) == "" and target.startswith(f".{final.name}.v-") \
                and os.path.lexists(final.parent / target):
            shutil.rmtree(final.parent / target)
        os.unlink(final)
    elif final.exists():
        shutil.rmtree(final)
    _sync_directory(final.parent)


def sync_tree(root: Path) -> None:
    """fsync every file and directory under root. A killed process loses nothing the OS has (its page cache
    survives); a power cut or kernel crash loses what is not on disk, and renames can reach the disk before data."""
    for directory, _, files in os.walk(root):
        for name in files:
            # Windows flushes only handles opened for writing (FlushFileBuffers); POSIX fsyncs any descriptor
            fd = os.open(os.path.join(directory, name), os.O_RDWR | getattr(os, "O_BINARY", 0) if os.name == "nt"
                         else os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _sync_directory(Path(directory))


def _sync_directory(path: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows; NTFS journals its metadata
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_directory_with_link(link: Path, final: Path) -> None:
    """`final` is still a plain directory (published by an older version): swap it with the link atomically where
    the OS can (Linux renameat2 RENAME_EXCHANGE), else with two renames, once."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        at_fdcwd, rename_exchange = -100, 2
        if libc.renameat2(at_fdcwd, os.fsencode(link), at_fdcwd, os.fsencode(final), rename_exchange) == 0:
            replaced = final.parent / f".{final.name}.v-replaced-{uuid.uuid4().hex[:12]}"
            # `link` names the old directory now: a replaced version like any other, deleted after the grace
            # period, which starts before it gets a version's name (another publisher's sweep may look at once)
            os.utime(link)
            os.rename(link, replaced)
            return
    old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(final, old)
    os.replace(link, final)
    shutil.rmtree(old, ignore_errors=True)


def _publish_by_renames(version: Path, final: Path) -> Path:
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
    os.rename(version, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_json(path: Path, data: object, indent: int | None = 2) -> None:
    """Replace `path` with `data` as JSON atomically: readers see the old file or the new one, never a part, and a
    failure (or a kill) leaves at most a hidden `.NAME.*.tmp` beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(data, ensure_ascii=False, indent=indent, default=str))
            handle.flush()
            os.fsync(handle.fileno())  # the replace below must never expose an empty file after a power cut
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())

"""Reading the next clips' files ahead of the decoding threads (core/read_ahead.py): only regular files the decoder
would open are touched, a window already in memory is left alone, the kernel reads what is asked for, and a
manifest of awkward rows still resamples to the same shard (the windows themselves: test_read_ahead_windows.py)."""

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr_pipeline.core import audio, read_ahead as read_ahead_module
from asr_pipeline.core.audio import resample_manifest
from asr_pipeline.core.audio_shard import AudioShard
from asr_pipeline.core.read_ahead import PROBE_FILES, read_ahead
from asr_pipeline.core.settings import AudioRoots

needs_fadvise = pytest.mark.skipif(not hasattr(os, "posix_fadvise") or not hasattr(os, "mkfifo"),
                                   reason="posix_fadvise and FIFOs are POSIX (Linux)")


def _clip(path: Path, seconds: float = 0.5, rate: int = 22_050, cached: bool = False) -> str:
    """A clip on disk, dropped from the page cache unless cached (a file just written is in memory)."""
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), rate, subtype="PCM_16")
    if not cached:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return str(path)


@pytest.fixture
def opened(monkeypatch):
    """Every path opened from here on (the real os.open still runs): clear it after making the files."""
    paths = []
    real_open = os.open

    def recording_open(path, flags, *args, **kwargs):
        paths.append(str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(read_ahead_module.os, "open", recording_open)
    return paths


@pytest.fixture
def in_memory(monkeypatch):
    """The probe's answer, by path: add paths to the set for them to count as in the page cache, the rest do not (a
    file system here may not tell, tmpfs, or not drop what it was told to)."""
    cached = set()
    monkeypatch.setattr(read_ahead_module, "_in_page_cache",
                        lambda fd, size: os.readlink(f"/proc/self/fd/{fd}") in {os.path.realpath(p) for p in cached})
    return cached


@needs_fadvise
def test_only_regular_files_under_the_roots_are_opened(tmp_path, opened, in_memory):
    inside, outside = tmp_path / "archive", tmp_path / "elsewhere"
    inside.mkdir(), outside.mkdir()
    good = [_clip(inside / f"clip{i}.wav") for i in range(3)]
    secret = _clip(outside / "secret.wav")
    os.symlink(secret, inside / "link_out.wav")  # inside by name, outside once resolved
    os.mkfifo(inside / "pipe.wav")  # opening a FIFO for reading would block until a writer came
    (inside / "folder.wav").mkdir()
    roots = AudioRoots((inside.resolve(),), "test")
    paths = [good[0], secret, str(inside / "link_out.wav"), str(inside / "pipe.wav"), str(inside / "folder.wav"),
             str(inside / "missing.wav"), None, "", "bad\0path", good[1], good[2]]

    opened.clear()
    assert read_ahead(paths, roots) == 3
    assert set(opened) == {str(Path(p).resolve()) for p in good}  # probed (the last one) and asked for


@needs_fadvise
def test_without_roots_every_regular_file_is_asked_for_and_nothing_else(tmp_path, opened, in_memory):
    clips = [_clip(tmp_path / f"clip{i}.wav") for i in range(2)]
    os.mkfifo(tmp_path / "pipe.wav")
    opened.clear()
    assert read_ahead([clips[0], str(tmp_path / "pipe.wav"), str(tmp_path / "nothing.wav"), clips[1]]) == 2
    assert opened == [clips[0], *clips]  # one probed (not in memory), then both asked for


@needs_fadvise
def test_a_window_whose_sampled_files_are_in_memory_is_left_alone(tmp_path, opened, in_memory):
    """An ingest of files already cached (run again, a small local archive) pays a few probes, not a window."""
    warm = [_clip(tmp_path / f"warm{i}.wav", cached=True) for i in range(4 * PROBE_FILES)]
    in_memory.update(warm)
    opened.clear()
    assert read_ahead(warm) == 0
    assert len(opened) == PROBE_FILES and warm[-1] in opened and warm[3] in opened  # spread over the window


@needs_fadvise
def test_a_window_partly_evicted_from_its_start_is_read_ahead(tmp_path, in_memory):
    """A cache that kept what was read last: the window's last files in memory do not hide its evicted first ones."""
    paths = [_clip(tmp_path / f"clip{i}.wav") for i in range(4 * PROBE_FILES)]
    in_memory.update(paths[PROBE_FILES:])
    assert read_ahead(paths) == len(paths)


@needs_fadvise
def test_one_sampled_file_not_in_memory_asks_for_every_file(tmp_path, opened, in_memory):
    paths = [_clip(tmp_path / f"clip{i}.wav") for i in range(PROBE_FILES + 4)]
    in_memory.update(paths[:-1])
    opened.clear()
    assert read_ahead(paths) == len(paths)
    assert opened[-len(paths):] == paths and paths[-1] in opened[:-len(paths)]  # probed up to it, then every one


@needs_fadvise
def test_fewer_files_than_the_probe_all_in_memory_are_left_alone(tmp_path, in_memory):
    paths = [_clip(tmp_path / f"clip{i}.wav", cached=True) for i in range(3)]
    in_memory.update(paths)
    assert read_ahead(paths) == 0
    in_memory.clear()
    assert read_ahead(paths) == 3


def _resident_share(path: str) -> float:
    """The share of the file's pages in the page cache (mincore on a private mapping of it)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = os.path.getsize(path)
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vector = (ctypes.c_ubyte * pages)()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        anchor = ctypes.c_char.from_buffer(mapped)
        failed = libc.mincore(ctypes.c_void_p(ctypes.addressof(anchor)), ctypes.c_size_t(size), vector) != 0
        del anchor  # the buffer export must end before the mapping closes
    if failed:
        pytest.skip("mincore is not available here")
    return sum(v & 1 for v in vector) / pages


@pytest.fixture
def long_clip_on_disk(tmp_path, monkeypatch) -> str:
    """A 4 MB file out of the page cache, far more than any readahead a one-byte probe could start, and a probe that
    never finds anything in memory."""
    clip = _clip(tmp_path / "long.wav", seconds=90.0)
    if _resident_share(clip) > 0.05:
        pytest.skip("dropping a file from the page cache does nothing on this file system")
    monkeypatch.setattr(read_ahead_module, "_in_page_cache", lambda fd, size: False)
    return clip


@needs_fadvise
def test_the_kernel_reads_the_whole_file_asked_for(long_clip_on_disk):
    assert read_ahead([long_clip_on_disk]) == 1
    deadline = time.monotonic() + 20
    while _resident_share(long_clip_on_disk) < 1.0:
        assert time.monotonic() < deadline, f"only {_resident_share(long_clip_on_disk):.0%} of the file was read"
        time.sleep(0.02)


@needs_fadvise
def test_without_the_advice_the_file_stays_on_disk(long_clip_on_disk, monkeypatch):
    """The check above can fail: with posix_fadvise doing nothing, the file is not read."""
    monkeypatch.setattr(read_ahead_module.os, "posix_fadvise", lambda *args: None)
    assert read_ahead([long_clip_on_disk]) == 1
    time.sleep(0.5)
    assert _resident_share(long_clip_on_disk) < 0.5


@needs_fadvise
def test_the_probe_tells_a_file_in_memory(tmp_path):
    warm = _clip(tmp_path / "warm.wav", cached=True)
    fd = os.open(warm, os.O_RDONLY)
    try:
        cached = read_ahead_module._in_page_cache(fd, os.path.getsize(warm))
    finally:
        os.close(fd)
    if not cached and hasattr(os, "RWF_NOWAIT"):
        pytest.skip("this file system cannot tell what is in memory (RWF_NOWAIT not supported)")
    assert cached == hasattr(os, "RWF_NOWAIT")


@needs_fadvise
def test_large_files_are_skipped_and_a_window_stops_at_its_byte_budget(tmp_path, monkeypatch, in_memory):
    asked = []
    clips = [_clip(tmp_path / f"clip{i}.wav", seconds=0.5 + i) for i in range(4)]
    sizes = [os.path.getsize(c) for c in clips]
    monkeypatch.setattr(read_ahead_module, "READ_AHEAD_BYTES", sizes[2])  # clip3 is too large to read ahead
    monkeypatch.setattr(read_ahead_module, "WINDOW_BYTES", sizes[0] + sizes[1] + sizes[2] - 1)  # clip2 does not fit
    monkeypatch.setattr(read_ahead_module.os, "posix_fadvise",
                        lambda fd, offset, length, advice: asked.append((offset, length, advice)))
    assert read_ahead([clips[3], clips[0], clips[1], clips[2]]) == 2
    assert asked == [(0, sizes[0], os.POSIX_FADV_WILLNEED), (0, sizes[1], os.POSIX_FADV_WILLNEED)]


@needs_fadvise
def test_a_manifest_with_a_fifo_and_rows_outside_the_roots_resamples_as_without_read_ahead(tmp_path, monkeypatch,
                                                                                           in_memory):
    inside, outside = tmp_path / "archive", tmp_path / "elsewhere"
    inside.mkdir(), outside.mkdir()
    os.mkfifo(inside / "pipe.wav")
    paths = [_clip(inside / f"clip{i}.wav", 0.4 + 0.1 * (i % 3), cached=True) for i in range(600)]  # three windows
    paths[5], paths[300] = str(inside / "pipe.wav"), _clip(outside / "secret.wav", cached=True)
    manifest = [{"id": i + 1, "audio_path": p, "transcript": f"문장 {i}"} for i, p in enumerate(paths)]
    roots = AudioRoots((inside.resolve(),), "test")

    def resample(out: Path) -> dict:
        out.mkdir()
        done = {}

        def run():
            try:
                done["summary"] = resample_manifest(manifest, out, emit=lambda _: None, roots=roots)
            except BaseException as error:  # noqa: BLE001 (reported below, in the test's thread)
                done["error"] = error

        worker = threading.Thread(target=run, daemon=True)  # a FIFO opened for reading hangs it, not the suite
        worker.start()
        worker.join(timeout=120)
        assert not worker.is_alive(), "resampling hung (a FIFO opened for reading?)"
        for thread in [t for t in threading.enumerate() if t.name == "read-ahead"]:
            thread.join(timeout=10)
            assert not thread.is_alive(), "a read-ahead hung (a FIFO opened for reading?)"
        if "error" in done:
            raise done["error"]
        return done["summary"]

    asked = []
    monkeypatch.setattr(audio, "read_ahead", lambda paths, roots=None: asked.append(read_ahead(paths, roots)))
    with_read_ahead = resample(tmp_path / "with")
    assert sum(asked) > 0  # it ran, and asked for files (none counts as in memory)
    monkeypatch.setattr(audio, "read_ahead", lambda paths, roots=None: 0)
    without = resample(tmp_path / "without")

    assert with_read_ahead == without and with_read_ahead["quarantined"] == 2
    assert AudioShard(tmp_path / "with").index.equals(AudioShard(tmp_path / "without").index)
    assert (tmp_path / "with" / "audio.arrow").read_bytes() == (tmp_path / "without" / "audio.arrow").read_bytes()

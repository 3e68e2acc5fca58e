"""Reading the next clips' files ahead of the decoding threads (core/read_ahead.py): only regular files the decoder
would open are touched, the windows stay in order and close behind the workers, and a manifest of awkward rows
still resamples to the same shard."""

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr_pipeline.core import audio, read_ahead as read_ahead_module
from asr_pipeline.core.audio import resample_manifest
from asr_pipeline.core.audio_shard import AudioShard
from asr_pipeline.core.read_ahead import PROBE_FILES, map_in_windows, read_ahead
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
    assert opened == [clips[1], *clips]  # the last one probed, then both asked for


@needs_fadvise
def test_a_window_whose_last_files_are_in_memory_is_left_alone(tmp_path, opened, in_memory):
    """An ingest of files already cached (run again, a small local archive) pays a few probes, not a window. The
    last files are probed: the decoding threads are reading the first ones already, into the cache."""
    warm = [_clip(tmp_path / f"warm{i}.wav", cached=True) for i in range(PROBE_FILES + 5)]
    in_memory.update(warm[5:])  # the first five count as not in memory: they are not probed
    opened.clear()
    assert read_ahead(warm) == 0
    assert opened == warm[::-1][:PROBE_FILES]


@needs_fadvise
def test_one_file_not_in_memory_among_the_last_asks_for_every_file(tmp_path, opened, in_memory):
    paths = [_clip(tmp_path / f"clip{i}.wav") for i in range(PROBE_FILES + 4)]
    in_memory.update(paths)
    in_memory.discard(paths[-3])
    opened.clear()
    assert read_ahead(paths) == len(paths)
    assert opened == paths[::-1][:3] + paths  # probed from the end up to the one not in memory, then every one


@needs_fadvise
def test_fewer_files_than_the_probe_all_in_memory_are_left_alone(tmp_path, in_memory):
    paths = [_clip(tmp_path / f"clip{i}.wav", cached=True) for i in range(3)]
    in_memory.update(paths)
    assert read_ahead(paths) == 0
    in_memory.clear()
    assert read_ahead(paths) == 3


@needs_fadvise
def test_the_kernel_reads_a_file_asked_for_and_the_probe_sees_it(tmp_path):
    cold, warm = _clip(tmp_path / "cold.wav"), _clip(tmp_path / "warm.wav", cached=True)
    fds = {path: os.open(path, os.O_RDONLY) for path in (cold, warm)}
    try:
        if not read_ahead_module._in_page_cache(fds[warm], os.path.getsize(warm)):
            pytest.skip("this file system cannot tell what is in memory (no RWF_NOWAIT)")
        if read_ahead_module._in_page_cache(fds[cold], os.path.getsize(cold)):
            pytest.skip("dropping a file from the page cache does nothing on this file system")
        assert read_ahead([cold]) == 1
        deadline = time.monotonic() + 10
        while not read_ahead_module._in_page_cache(fds[cold], os.path.getsize(cold)):
            assert time.monotonic() < deadline, "the file asked for was never read into memory"
            time.sleep(0.01)
        assert read_ahead([warm] * PROBE_FILES) == 0  # all in memory: nothing asked for
    finally:
        for fd in fds.values():
            os.close(fd)


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


def test_windows_are_handed_two_at_first_then_one_past_the_one_the_workers_start(monkeypatch):
    handed = []

    class Recording(read_ahead_module._Reader):
        def want(self, clips):
            handed.append(tuple(clips))
            super().want(clips)

    monkeypatch.setattr(read_ahead_module, "_Reader", Recording)
    with ThreadPoolExecutor(2) as pool:
        results = list(map_in_windows(pool, lambda i: i * 2, list(range(10)), lambda clips: None, window=4))
    assert results == [(i, i * 2) for i in range(10)]
    assert handed == [tuple(range(8)), (8, 9), ()]  # windows 0 and 1, then 2 when 1 starts; nothing past the end


def test_a_read_ahead_that_lags_skips_to_the_newest_window_and_holds_up_nothing():
    items, window = list(range(20)), 4
    started, release, second = threading.Event(), threading.Event(), threading.Event()
    calls, threads = [], set()

    def ahead(clips):
        calls.append(tuple(clips))
        threads.add(threading.get_ident())
        if len(calls) == 1:
            started.set()
            release.wait(30)  # a hung mount, until released
        else:
            second.set()

    with ThreadPoolExecutor(2) as pool:
        clips = map_in_windows(pool, lambda i: i * 2, items, ahead, window=window)
        results = [next(clips)]
        assert started.wait(30)
        results += [next(clips) for _ in range(12)]  # up to the fourth window's first clip, the read-ahead stuck
        release.set()
        assert second.wait(30)
        results += list(clips)

    assert results == [(i, i * 2) for i in items]  # every clip, in order, while the read-ahead was stuck
    # windows 2 and 3 were handed while it was stuck and replaced by window 4, two windows past the fourth's start
    assert calls == [tuple(range(8)), tuple(range(16, 20))]
    assert len(threads) == 1  # one thread: never two read-aheads at a time


def test_a_window_of_no_clips_is_refused():
    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="at least 1"):
        list(map_in_windows(pool, lambda i: i, [1, 2], None, window=0))


def test_a_failing_read_ahead_costs_no_clip():
    def ahead(window):
        raise OSError("the NAS went away")

    with ThreadPoolExecutor(2) as pool:
        results = [r for _, r in map_in_windows(pool, lambda i: i + 1, list(range(7)), ahead, window=3)]
    assert results == list(range(1, 8))


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

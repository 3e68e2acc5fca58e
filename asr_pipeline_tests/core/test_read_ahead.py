"""Reading the next clips' files ahead of the decoding threads (core/read_ahead.py): only regular files the decoder
would open are touched, the windows stay in order and close behind the workers, and a manifest of awkward rows
still resamples to the same shard."""

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr_pipeline.core import audio, read_ahead as read_ahead_module
from asr_pipeline.core.audio import _ordered_map, resample_manifest
from asr_pipeline.core.audio_shard import AudioShard
from asr_pipeline.core.read_ahead import PROBE_FILES, READ_AHEAD_BYTES, read_ahead
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


@needs_fadvise
def test_only_regular_files_under_the_roots_are_opened(tmp_path, opened):
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
    assert opened == [str(Path(p).resolve()) for p in good]


@needs_fadvise
def test_without_roots_every_regular_file_is_asked_for_and_nothing_else(tmp_path, opened):
    clips = [_clip(tmp_path / f"clip{i}.wav") for i in range(2)]
    os.mkfifo(tmp_path / "pipe.wav")
    opened.clear()
    assert read_ahead([clips[0], str(tmp_path / "pipe.wav"), str(tmp_path / "nothing.wav"), clips[1]]) == 2
    assert opened == clips


@needs_fadvise
def test_a_window_whose_first_files_are_in_memory_is_left_alone(tmp_path, opened):
    """An ingest of files already cached (run again, a small local archive) pays a few probes, not a window."""
    warm = [_clip(tmp_path / f"warm{i}.wav", cached=True) for i in range(PROBE_FILES + 5)]
    opened.clear()
    assert read_ahead(warm) == 0
    assert opened == warm[:PROBE_FILES]


@needs_fadvise
def test_one_file_not_in_memory_among_the_first_asks_for_it_and_every_later_one(tmp_path, opened):
    if not hasattr(os, "RWF_NOWAIT"):
        pytest.skip("no RWF_NOWAIT: nothing can be told to be in memory, so every file is asked for")
    paths = [_clip(tmp_path / f"clip{i}.wav", cached=i != 2 and i < PROBE_FILES) for i in range(PROBE_FILES + 4)]
    opened.clear()
    assert read_ahead(paths) == len(paths) - 2  # the two cached ones before it were probed and left
    assert opened == paths


@needs_fadvise
def test_at_most_the_cap_of_a_file_is_asked_for(tmp_path, monkeypatch):
    asked = []
    clip = _clip(tmp_path / "clip.wav")
    monkeypatch.setattr(read_ahead_module.os, "posix_fadvise",
                        lambda fd, offset, length, advice: asked.append((offset, length, advice)))
    read_ahead([clip])
    assert asked == [(0, READ_AHEAD_BYTES, os.POSIX_FADV_WILLNEED)]


def test_windows_are_read_ahead_in_order_at_most_two_past_the_workers():
    items = list(range(10))
    events, lock = [], threading.Lock()

    def ahead(window):
        with lock:
            events.append(("ahead", tuple(window)))

    def work(item):
        with lock:
            events.append(("work", item))
        return item * 2

    with ThreadPoolExecutor(2) as pool:
        results = list(_ordered_map(pool, work, items, ahead, window=4))

    assert results == [(i, i * 2) for i in items]  # in order, whatever the read-ahead does
    windows = [w for kind, w in events if kind == "ahead"]
    assert windows == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]  # each once, none empty
    for kind, item in events:  # a clip is decoded only after its window was handed to the read-ahead
        if kind == "work":
            handed = [w for k, w in events[:events.index((kind, item))] if k == "ahead"]
            assert any(item in w for w in handed)


def test_a_failing_read_ahead_costs_no_clip():
    def ahead(window):
        raise OSError("the NAS went away")

    with ThreadPoolExecutor(2) as pool:
        assert [r for _, r in _ordered_map(pool, lambda i: i + 1, list(range(7)), ahead, window=3)] == list(range(1, 8))


@needs_fadvise
def test_a_manifest_with_a_fifo_and_rows_outside_the_roots_resamples_as_without_read_ahead(tmp_path, monkeypatch):
    inside, outside = tmp_path / "archive", tmp_path / "elsewhere"
    inside.mkdir(), outside.mkdir()
    os.mkfifo(inside / "pipe.wav")
    paths = [_clip(inside / f"clip{i}.wav", 0.4 + 0.1 * (i % 3)) for i in range(600)]  # three windows
    paths[5], paths[300] = str(inside / "pipe.wav"), _clip(outside / "secret.wav")
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
        if "error" in done:
            raise done["error"]
        return done["summary"]

    with_read_ahead = resample(tmp_path / "with")
    monkeypatch.setattr(audio, "read_ahead", lambda paths, roots=None: 0)
    without = resample(tmp_path / "without")

    assert with_read_ahead == without and with_read_ahead["quarantined"] == 2
    assert AudioShard(tmp_path / "with").index.equals(AudioShard(tmp_path / "without").index)
    assert (tmp_path / "with" / "audio.arrow").read_bytes() == (tmp_path / "without" / "audio.arrow").read_bytes()

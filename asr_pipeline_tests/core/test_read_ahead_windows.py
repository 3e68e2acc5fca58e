"""map_in_windows (core/read_ahead.py): the clips come back in order whatever the read-ahead does, windows are handed
to one thread, a read-ahead that lags or fails costs no clip and holds up nothing."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from asr_pipeline.core import read_ahead as read_ahead_module
from asr_pipeline.core.read_ahead import map_in_windows


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
    # windows 2 and 3 were handed while it was stuck and replaced by window 4, one past the fourth (being decoded)
    assert calls == [tuple(range(8)), tuple(range(16, 20))]
    assert len(threads) == 1  # one thread: never two read-aheads at a time


def test_a_window_of_no_clips_is_refused_when_the_call_is_made():
    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="at least 1"):
        map_in_windows(pool, lambda i: i, [1, 2], None, window=0)


def test_a_failing_read_ahead_costs_no_clip_and_the_next_window_is_still_read_ahead():
    failed, second = threading.Event(), threading.Event()
    calls = []

    def ahead(clips):
        calls.append(tuple(clips))
        if len(calls) == 1:
            failed.set()
            raise OSError("the NAS went away")
        second.set()

    with ThreadPoolExecutor(2) as pool:
        clips = map_in_windows(pool, lambda i: i + 1, list(range(12)), ahead, window=3)
        results = [next(clips)]
        assert failed.wait(30)
        results += [next(clips) for _ in range(3)]  # into the second window: the third is handed over
        assert second.wait(30), "the read-ahead's thread died with the first failure"
        results += [r for r in clips]
    assert [r for _, r in results] == list(range(1, 13))
    assert calls[1] == (6, 7, 8)

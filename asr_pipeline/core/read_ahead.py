"""Start reading the next clips' files before the decoding threads get to them.

Each decoding thread reads its clip's file and waits for the disk or the NAS while it does, so with two workers at
most two reads are in flight and a cold cache or a NAS's latency is paid clip after clip. posix_fadvise(WILLNEED)
asks the kernel to read a file into the page cache in the background and returns at once: called on the files of
the window of clips the workers are about to decode, their reads overlap each other and the decoding.

When the files are in memory already (an ingest run again, a small archive on a local disk) the asking only costs
(docs/BENCHMARKS.md, "Reading the clips ahead"). So a few files spread over each window are probed first (a one-byte
read of each one's last byte, which must not wait for the disk: RWF_NOWAIT), and when they are all in memory the
window is left alone. File systems that cannot tell (NFS, CIFS, FUSE, tmpfs) have every file asked for, warm or
not: what that costs a warm run from a NAS was not measured.
"""

from __future__ import annotations

import os
import stat
import threading
from contextlib import closing
from typing import Callable, Iterable

from asr_pipeline.core.settings import AudioRoots

# a larger file is not read ahead: a clip the limits keep is far smaller (30 s of 96 kHz 24-bit stereo is 17 MB), and
# a row pointing at an hour-long programme is refused from its header, so reading any of it ahead would be waste
READ_AHEAD_BYTES = 32 * 2**20
# at most this much is asked for a window (256 clips of 30 s 48 kHz stereo are 1.5 GB): the rest of it is read as
# the workers get to it, and the page cache is not filled with what would be evicted before it is used
WINDOW_BYTES = 512 * 2**20

# files probed, spread over a window: all of them in the page cache, and the window is taken to be there too
PROBE_FILES = 8

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def map_in_windows(pool, fn, items, ahead: Callable[[list], object] | None = None, window: int = 256):
    """pool.map in windows, so at most `window` decoded clips wait in memory for their turn to be written.
    ahead(clips) runs on one daemon thread (read_ahead, say): handed the first two windows at once, then each next
    window as the one before it goes to the workers. A window handed while it is still busy replaces one it has not
    started, so a read-ahead that lags skips to where it is still ahead of the workers; it is never more than two
    windows past them, and one stuck on a hung mount holds up neither the step nor the process's exit."""
    if window < 1:  # here, not in the generator: a bad window is an error when the call is made
        raise ValueError(f"window must be at least 1 clip, not {window}")
    return _windows(pool, fn, items, ahead if items else None, window)


def _windows(pool, fn, items, ahead, window: int):
    reader = _Reader(ahead) if ahead else None
    try:
        for start in range(0, len(items), window):
            chunk = items[start: start + window]
            if reader:
                reader.want(items[start: start + 2 * window] if start == 0 else
                            items[start + window: start + 2 * window])
            yield from zip(chunk, pool.map(fn, chunk))
    finally:
        if reader:
            reader.stop()


class _Reader:
    """The read-ahead's thread: it runs ahead() on the newest clips it was handed, one call at a time."""

    def __init__(self, ahead: Callable[[list], object]):
        self._ahead, self._next, self._stopped = ahead, None, False
        self._handed = threading.Condition()
        threading.Thread(target=self._run, name="read-ahead", daemon=True).start()

    def want(self, clips: list) -> None:
        if clips:
            with self._handed:
                self._next = clips  # replaces clips handed earlier and not started: the workers are past them
                self._handed.notify()

    def stop(self) -> None:
        with self._handed:
            self._stopped, self._next = True, None
            self._handed.notify()

    def _run(self) -> None:
        while True:
            with self._handed:
                while self._next is None and not self._stopped:
                    self._handed.wait()
                if self._stopped:
                    return
                clips, self._next = self._next, None
            try:  # advice: its failure must cost no clip and print nothing the decoder will not report itself
                self._ahead(clips)
            except Exception:  # noqa: BLE001
                pass


def read_ahead(paths: Iterable[str | None], roots: AudioRoots | None = None) -> int:
    """Ask the kernel to start reading each regular file among paths, in order; returns how many it was asked for.

    Nothing is asked for when PROBE_FILES regular files spread over paths are all in the page cache: the rest are
    taken to be there too. Files over
    READ_AHEAD_BYTES are skipped, and asking stops at WINDOW_BYTES. Advisory only, and never opens a file the
    decoder would not: a path outside roots (when given), a missing file, or anything but a regular file (a FIFO
    would block an open, a device could be read from) is skipped, and any error is ignored; the decoder reports
    those rows. Without posix_fadvise (not Linux) it does nothing."""
    if not hasattr(os, "posix_fadvise"):
        return 0
    paths = list(paths)
    if _sample_in_memory(paths, roots):
        return 0
    asked, budget = 0, WINDOW_BYTES
    with closing(_readable(paths, roots)) as files:
        for fd, size in files:
            if size > budget:
                break
            try:
                os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)
            except OSError:
                continue
            budget -= size
            asked += 1
    return asked


def _sample_in_memory(paths: list, roots: AudioRoots | None) -> bool:
    """Whether PROBE_FILES regular files spread evenly over paths (every one, if fewer) are all in memory. Spread,
    because a partly evicted cache keeps what was read last, and the first call's first files are being read by the
    decoding threads already."""
    spread = sorted({max(0, (i + 1) * len(paths) // PROBE_FILES - 1) for i in range(PROBE_FILES)})
    probed = 0
    with closing(_readable([paths[i] for i in spread if i < len(paths)], roots)) as files:
        for fd, size in files:
            if not _in_page_cache(fd, size):
                return False
            probed += 1
    return probed > 0


def _readable(paths: list, roots: AudioRoots | None):
    """(descriptor, size) of each regular file among paths that is worth reading ahead (not empty, not over
    READ_AHEAD_BYTES); each descriptor is closed when the next is asked for or the loop stops."""
    for path in paths:
        fd = _open_regular(path, roots)
        if fd is None:
            continue
        try:
            size = os.fstat(fd).st_size
            if 0 < size <= READ_AHEAD_BYTES:
                yield fd, size
        except OSError:
            continue
        finally:
            os.close(fd)


def _open_regular(path: str | None, roots: AudioRoots | None) -> int | None:
    """A read-only descriptor of path when it is a regular file (under roots, when given), else None."""
    if not path:
        return None
    try:
        if roots is not None:
            path = roots.resolve(path)
            if path is None:
                return None
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        fd = os.open(path, _OPEN_FLAGS)
    except (OSError, ValueError, RuntimeError):  # missing, unreadable, a NUL byte, a symbolic-link loop
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):  # still a regular file: it could have been swapped since the stat
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _in_page_cache(fd: int, size: int) -> bool:
    """Whether the file's last byte can be read without waiting for the disk (the first page is the header every
    decode touches, the last to be evicted); False when that cannot be told (no RWF_NOWAIT, or a file system without
    it)."""
    nowait = getattr(os, "RWF_NOWAIT", None)
    if nowait is None:
        return False
    try:
        return os.preadv(fd, [bytearray(1)], size - 1, nowait) == 1
    except OSError:  # EAGAIN: not in memory; EOPNOTSUPP: cannot tell
        return False

"""Start reading the next clips' files before the decoding threads get to them.

Each decoding thread reads its clip's file and waits for the disk or the NAS while it does, so with two workers at
most two reads are in flight and a cold cache or a NAS's latency is paid clip after clip. posix_fadvise(WILLNEED)
asks the kernel to read a file into the page cache in the background and returns at once: called on the files of
the window of clips the workers are about to decode, their reads overlap each other and the decoding.

When the files are in memory already (an ingest run again, a small archive on a local disk) the asking only costs
(docs/BENCHMARKS.md, "Reading the clips ahead"). So the first files of each window are probed first (a one-byte read
of the last page asked for, which must not wait for the disk: RWF_NOWAIT), and when they are all in memory the rest
of the window is left alone. File systems that cannot tell (NFS, CIFS, FUSE, tmpfs) have every file asked for.
"""

from __future__ import annotations

import os
import stat
import threading
from typing import Callable, Iterable

from asr_pipeline.core.settings import AudioRoots

# a larger file is not read ahead: a clip the limits keep is far smaller (30 s of 96 kHz 24-bit stereo is 17 MB), and
# a row pointing at an hour-long programme is refused from its header, so reading any of it ahead would be waste
READ_AHEAD_BYTES = 32 * 2**20
# at most this much is asked for a window (256 clips of 30 s 48 kHz stereo are 1.5 GB): the rest of it is read as
# the workers get to it, and the page cache is not filled with what would be evicted before it is used
WINDOW_BYTES = 512 * 2**20

# files probed at the start of a window: all of them in the page cache, and the window is taken to be there too
PROBE_FILES = 8

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def map_in_windows(pool, fn, items, ahead: Callable[[list], object] | None = None, window: int = 256):
    """pool.map in windows, so at most `window` decoded clips wait in memory for their turn to be written.
    ahead(clips), on a daemon thread (read_ahead, say): the first two windows at once, then each next window as
    the one before it goes to the workers, unless the previous read-ahead is still running (then that window is
    skipped: the workers would get there first). At most one runs at a time, at most two windows past the workers,
    and one stuck on a hung mount holds up neither the step nor the process's exit."""
    reading = None
    for start in range(0, len(items), window):
        chunk = items[start: start + window]
        upcoming = items[start: start + 2 * window] if start == 0 else items[start + window: start + 2 * window]
        if ahead and upcoming and (reading is None or not reading.is_alive()):
            reading = threading.Thread(target=_quietly, args=(ahead, upcoming), name="read-ahead", daemon=True)
            reading.start()
        yield from zip(chunk, pool.map(fn, chunk))


def _quietly(ahead: Callable[[list], object], clips: list) -> None:
    """Read-ahead is advice: its failure must cost no clip and print nothing the decoder will not report itself."""
    try:
        ahead(clips)
    except Exception:  # noqa: BLE001
        pass


def read_ahead(paths: Iterable[str | None], roots: AudioRoots | None = None) -> int:
    """Ask the kernel to start reading each regular file among paths, in order; returns how many it was asked for.

    The first PROBE_FILES regular files are probed: when every one of them is in the page cache, the rest are taken
    to be too and nothing is asked for. Files over READ_AHEAD_BYTES are skipped, and asking stops at WINDOW_BYTES.
    Advisory only, and never opens a file the decoder would not: a path outside roots (when given), a missing file,
    or anything but a regular file (a FIFO would block an open, a device could be read from) is skipped, and any
    error is ignored; the decoder reports those rows. Without posix_fadvise (not Linux) it does nothing."""
    if not hasattr(os, "posix_fadvise"):
        return 0
    asked, probed, budget = 0, 0, WINDOW_BYTES
    for path in paths:
        fd = _open_regular(path, roots)
        if fd is None:
            continue
        try:
            size = os.fstat(fd).st_size
            if not 0 < size <= READ_AHEAD_BYTES:
                continue
            if probed < PROBE_FILES:
                probed += 1
                if _in_page_cache(fd, size):
                    if probed == PROBE_FILES:
                        return asked  # the window's first files are all in memory: so, most likely, is the rest
                    continue
                probed = PROBE_FILES  # one is not (or cannot tell): ask for every file from here on
            if size > budget:
                return asked
            os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)
            budget -= size
            asked += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return asked


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

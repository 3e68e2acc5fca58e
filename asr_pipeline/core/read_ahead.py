"""Start reading the next clips' files before the decoding threads get to them.

Each decoding thread reads its clip's file and waits for the disk or the NAS while it does, so with two workers at
most two reads are in flight and a cold cache or a NAS's latency is paid clip after clip. posix_fadvise(WILLNEED)
asks the kernel to read a file into the page cache in the background and returns at once: called on the files of
the window of clips the workers are about to decode, their reads overlap each other and the decoding.

When the files are in memory already (an ingest run again, a small archive on a local disk) the asking only costs:
measured on a local disk, a warm 1,000-clip ingest took 0.28 s longer with it. So the first files of each window are
probed first (a one-byte read that must not wait for the disk, RWF_NOWAIT), and when they are all in memory the rest
of the window is left alone.
"""

from __future__ import annotations

import os
import stat
from typing import Iterable

from asr_pipeline.core.settings import AudioRoots

# at most this much of a file is asked for: a clip the limits keep is far smaller (30 s of 96 kHz 24-bit stereo is
# 17 MB), and a row pointing at an hour-long programme is refused from its header, so reading it whole would be waste
READ_AHEAD_BYTES = 32 * 2**20

# files probed at the start of a window: all of them in the page cache, and the window is taken to be there too
PROBE_FILES = 8

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def read_ahead(paths: Iterable[str | None], roots: AudioRoots | None = None) -> int:
    """Ask the kernel to start reading each regular file among paths, in order; returns how many it was asked for.

    The first PROBE_FILES regular files are probed: when every one of them is in the page cache, the rest are taken
    to be too and nothing is asked for. Advisory only, and never opens what the decoder would refuse to: a path
    outside roots (when given), a missing file, or anything but a regular file (a FIFO would block an open, a device
    could be read from) is skipped, and any error is ignored; the decoder reports those rows. Without
    posix_fadvise (not Linux) it does nothing."""
    if not hasattr(os, "posix_fadvise"):
        return 0
    asked, probed = 0, 0
    for path in paths:
        fd = _open_regular(path, roots)
        if fd is None:
            continue
        try:
            if probed < PROBE_FILES:
                probed += 1
                if _in_page_cache(fd):
                    if probed == PROBE_FILES and asked == 0:
                        return 0  # the window's first files are all in memory: so, most likely, is the rest
                    continue
                probed = PROBE_FILES  # one is not (or cannot tell): ask for every file from here on
            os.posix_fadvise(fd, 0, READ_AHEAD_BYTES, os.POSIX_FADV_WILLNEED)
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


def _in_page_cache(fd: int) -> bool:
    """Whether the file's first byte can be read without waiting for the disk; False when that cannot be told
    (no RWF_NOWAIT, or a file system without it)."""
    nowait = getattr(os, "RWF_NOWAIT", None)
    if nowait is None:
        return False
    try:
        os.preadv(fd, [bytearray(1)], 0, nowait)
        return True
    except OSError:  # EAGAIN: not in memory; EOPNOTSUPP: cannot tell
        return False
